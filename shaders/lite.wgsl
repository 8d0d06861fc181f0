// EfficientNet-Lite features on a GPU: the batch-norm-folded network of `src/model/fused.rs`
// (the same weights, layouts and TF "SAME" padding), one compute pass per batch.
//
// Activations are channels-last `[n, h, w, c]`, so a 1×1 convolution over a batch is one
// matrix product `[n·h·w, c_in] × [c_in, c_out]`. The input images are channels-first
// `[n, 3, h, w]`, as preprocessing produces them. All weights live in one buffer; each
// operation reads its slice at the offsets in its parameters.

struct Params {
    // Images in the batch, input and output sizes.
    n: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    c_in: u32,
    c_out: u32,
    // Depthwise kernel, stride and the leading padding of TF "SAME".
    k: u32,
    stride: u32,
    pad_y: u32,
    pad_x: u32,
    // Offsets (in values) of this operation's weights and bias in `weights`.
    w_off: u32,
    b_off: u32,
    // 0: bias only; 1: bias and ReLU6; 2: bias and the residual `extra`.
    act: u32,
    // Pooling: values per image of the output and where this pool starts in it.
    out_width: u32,
    out_off: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<f32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<storage, read> extra: array<f32>;

const GROUP: u32 = 64u;

// The flat index of a one-dimensional job dispatched as a grid of workgroups (a dimension
// holds at most 65,535 of them).
fn flat(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * GROUP;
}

// The 3×3 stride-2 stem, 3 → c_out channels, bias and ReLU6. Weights `[(c_in, ky, kx), c_out]`.
@compute @workgroup_size(64)
fn stem(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    if (i >= p.n * p.oh * p.ow * p.c_out) {
        return;
    }
    let co = i % p.c_out;
    let pix = i / p.c_out;
    let ox = pix % p.ow;
    let oy = (pix / p.ow) % p.oh;
    let b = pix / (p.ow * p.oh);
    var acc = weights[p.b_off + co];
    for (var ci = 0u; ci < 3u; ci++) {
        for (var ky = 0u; ky < 3u; ky++) {
            let iy = i32(oy * 2u + ky) - i32(p.pad_y);
            if (iy < 0 || iy >= i32(p.h)) {
                continue;
            }
            for (var kx = 0u; kx < 3u; kx++) {
                let ix = i32(ox * 2u + kx) - i32(p.pad_x);
                if (ix < 0 || ix >= i32(p.w)) {
                    continue;
                }
                let x = src[((b * 3u + ci) * p.h + u32(iy)) * p.w + u32(ix)];
                acc += x * weights[p.w_off + (ci * 9u + ky * 3u + kx) * p.c_out + co];
            }
        }
    }
    dst[i] = clamp(acc, 0.0, 6.0);
}

// A 1×1 convolution: `dst[rows, c_out] = act(src[rows, c_in] × W[c_in, c_out] + bias)`, with
// rows = n·h·w. Tiles of 64 rows × 64 columns per workgroup, 4×4 outputs per invocation, the
// shared dimension 16 at a time through workgroup memory.
const TILE: u32 = 64u;
const DEPTH: u32 = 16u;
var<workgroup> tile_a: array<array<f32, TILE>, DEPTH>;
var<workgroup> tile_b: array<array<f32, TILE>, DEPTH>;

@compute @workgroup_size(16, 16)
fn pointwise(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let rows = p.n * p.h * p.w;
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let local = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var k0 = 0u; k0 < p.c_in; k0 += DEPTH) {
        // 256 invocations load 64×16 values of each operand, 4 each.
        for (var j = 0u; j < 4u; j++) {
            let e = local + j * 256u;
            // A: row r = e / 16 of the tile, depth d = e % 16; stored transposed.
            let ar = e / DEPTH;
            let ad = e % DEPTH;
            let row = row0 + ar;
            let ka = k0 + ad;
            var a = 0.0;
            if (row < rows && ka < p.c_in) {
                a = src[row * p.c_in + ka];
            }
            tile_a[ad][ar] = a;
            // B: depth d = e / 64, column c = e % 64.
            let bd = e / TILE;
            let bc = e % TILE;
            let kb = k0 + bd;
            let col = col0 + bc;
            var bv = 0.0;
            if (kb < p.c_in && col < p.c_out) {
                bv = weights[p.w_off + kb * p.c_out + col];
            }
            tile_b[bd][bc] = bv;
        }
        workgroupBarrier();
        for (var d = 0u; d < DEPTH; d++) {
            var a4: array<f32, 4>;
            var b4: array<f32, 4>;
            for (var q = 0u; q < 4u; q++) {
                a4[q] = tile_a[d][lid.y * 4u + q];
                b4[q] = tile_b[d][lid.x * 4u + q];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r][c] += a4[r] * b4[c];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let row = row0 + lid.y * 4u + r;
        if (row >= rows) {
            continue;
        }
        for (var c = 0u; c < 4u; c++) {
            let col = col0 + lid.x * 4u + c;
            if (col >= p.c_out) {
                continue;
            }
            var v = acc[r][c] + weights[p.b_off + col];
            let o = row * p.c_out + col;
            if (p.act == 1u) {
                v = clamp(v, 0.0, 6.0);
            } else if (p.act == 2u) {
                v += extra[o];
            }
            dst[o] = v;
        }
    }
}

// A k×k depthwise convolution with stride, bias and ReLU6. Weights `[(ky, kx), c]`.
@compute @workgroup_size(64)
fn depthwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    let c = p.c_out;
    if (i >= p.n * p.oh * p.ow * c) {
        return;
    }
    let ch = i % c;
    let pix = i / c;
    let ox = pix % p.ow;
    let oy = (pix / p.ow) % p.oh;
    let b = pix / (p.ow * p.oh);
    var acc = weights[p.b_off + ch];
    for (var ky = 0u; ky < p.k; ky++) {
        let iy = i32(oy * p.stride + ky) - i32(p.pad_y);
        if (iy < 0 || iy >= i32(p.h)) {
            continue;
        }
        for (var kx = 0u; kx < p.k; kx++) {
            let ix = i32(ox * p.stride + kx) - i32(p.pad_x);
            if (ix < 0 || ix >= i32(p.w)) {
                continue;
            }
            let x = src[((b * p.h + u32(iy)) * p.w + u32(ix)) * c + ch];
            acc += x * weights[p.w_off + (ky * p.k + kx) * c + ch];
        }
    }
    dst[i] = clamp(acc, 0.0, 6.0);
}

// The global average of each image's channels-last activation `[h·w, c_in]`, written to
// `dst[b · out_width + out_off + ch]`.
@compute @workgroup_size(64)
fn pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat(gid, groups);
    let c = p.c_in;
    if (i >= p.n * c) {
        return;
    }
    let ch = i % c;
    let b = i / c;
    let hw = p.h * p.w;
    var sum = 0.0;
    for (var q = 0u; q < hw; q++) {
        sum += src[(b * hw + q) * c + ch];
    }
    dst[b * p.out_width + p.out_off + ch] = sum / f32(hw);
}
