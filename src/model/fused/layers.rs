//! The layers of the compiled backbone: the 1×1, depthwise and stem convolutions with their
//! batch norm folded in, and the fused bias/ReLU6/residual passes that follow each product.

// The matrix kernels (gemm) and the AVX2/FMA depthwise path are unsafe calls; each block
// states why it is sound.
#![allow(unsafe_code)]

use crate::model::efficientnet::ConvBn;

const BN_EPS: f32 = 1e-3;

/// A 1×1 convolution with folded batch norm: `[P, c_in] × [c_in, c_out] + bias`.
#[derive(Clone, Debug)]
pub(in crate::model) struct Pointwise {
    pub(in crate::model) c_in: usize,
    pub(in crate::model) c_out: usize,
    /// `[c_in, c_out]`, row-major.
    pub(in crate::model) w: Vec<f32>,
    pub(in crate::model) b: Vec<f32>,
    pub(in crate::model) relu6: bool,
}

/// A k×k depthwise convolution with folded batch norm and ReLU6, TF "SAME" padding.
#[derive(Clone, Debug)]
pub(in crate::model) struct Depthwise {
    pub(in crate::model) c: usize,
    pub(in crate::model) k: usize,
    pub(in crate::model) stride: usize,
    /// `[k * k, c]`: one row of channel weights per kernel tap.
    pub(in crate::model) w: Vec<f32>,
    pub(in crate::model) b: Vec<f32>,
}

#[derive(Clone, Debug)]
pub(in crate::model) struct Block {
    pub(in crate::model) expand: Option<Pointwise>,
    pub(in crate::model) depthwise: Depthwise,
    pub(in crate::model) project: Pointwise,
    pub(in crate::model) residual: bool,
}

/// The 3×3 stride-2 stem (3 → 32 channels), as an im2col product.
#[derive(Clone, Debug)]
pub(in crate::model) struct Stem {
    pub(in crate::model) c_out: usize,
    /// `[3 * 3 * 3, c_out]`, rows ordered `(c_in, ky, kx)`.
    pub(in crate::model) w: Vec<f32>,
    pub(in crate::model) b: Vec<f32>,
}
pub(super) fn to_vec<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor data")
}

/// Conv weight `[c_out, c_in/groups, k, k]` and the folded batch-norm `(scale, shift)`.
fn fold(cb: &ConvBn) -> (Vec<f32>, [usize; 4], Vec<f32>, Vec<f32>) {
    let dims = cb.conv.weight.dims();
    let w = to_vec(cb.conv.weight.val());
    let gamma = to_vec(cb.bn.gamma.val());
    let beta = to_vec(cb.bn.beta.val());
    let mean = to_vec(cb.bn.running_mean.value());
    let var = to_vec(cb.bn.running_var.value());
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + BN_EPS).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (w, dims, scale, shift)
}

impl Pointwise {
    pub(super) fn from(cb: &ConvBn) -> Self {
        let (w, [c_out, c_in, _, _], scale, b) = fold(cb);
        let mut t = vec![0.0; c_in * c_out];
        for o in 0..c_out {
            for i in 0..c_in {
                t[i * c_out + o] = w[o * c_in + i] * scale[o];
            }
        }
        Self {
            c_in,
            c_out,
            w: t,
            b,
            relu6: cb.relu6,
        }
    }

    /// `out[P, c_out] = act(input[P, c_in] × w + b) (+ residual)`.
    pub(super) fn run(
        &self,
        input: &[f32],
        out: &mut [f32],
        residual: Option<&[f32]>,
        par: gemm::Parallelism,
    ) {
        let p = input.len() / self.c_in;
        debug_assert_eq!(out.len(), p * self.c_out);
        matmul(input, p, self.c_in, &self.w, self.c_out, out, par);
        let rows = out.chunks_exact_mut(self.c_out);
        match residual {
            Some(r) => {
                for (row, r) in rows.zip(r.chunks_exact(self.c_out)) {
                    bias_add_residual(row, &self.b, r);
                }
            }
            None if self.relu6 => rows.for_each(|row| bias_relu6(row, &self.b)),
            None => rows.for_each(|row| bias_add(row, &self.b)),
        }
    }
}

/// `out[m, n] = a[m, k] × b[k, n]`, all row-major and contiguous.
fn matmul(
    a: &[f32],
    m: usize,
    k: usize,
    b: &[f32],
    n: usize,
    out: &mut [f32],
    par: gemm::Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n);
    // SAFETY: the three buffers are distinct slices (one `&mut`, two `&`) whose lengths were
    // checked above against the strides given: row-major, unit column stride.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

#[inline]
fn bias_relu6(row: &mut [f32], b: &[f32]) {
    for (v, b) in row.iter_mut().zip(b) {
        *v = (*v + b).clamp(0.0, 6.0);
    }
}

#[inline]
fn bias_add(row: &mut [f32], b: &[f32]) {
    for (v, b) in row.iter_mut().zip(b) {
        *v += b;
    }
}

#[inline]
fn bias_add_residual(row: &mut [f32], b: &[f32], r: &[f32]) {
    for ((v, b), r) in row.iter_mut().zip(b).zip(r) {
        *v += b + r;
    }
}

/// Output size and leading padding of TF "SAME": `ceil(n / stride)`, with the odd pixel of
/// padding at the end.
pub(in crate::model) fn same(n: usize, k: usize, stride: usize) -> (usize, usize) {
    let out = n.div_ceil(stride);
    let total = ((out - 1) * stride + k).saturating_sub(n);
    (out, total / 2)
}

impl Depthwise {
    pub(super) fn from(cb: &ConvBn) -> Self {
        let (w, [c, _, k, _], scale, b) = fold(cb);
        let stride = cb.conv.stride[0];
        let mut t = vec![0.0; k * k * c];
        for ch in 0..c {
            for tap in 0..k * k {
                t[tap * c + ch] = w[ch * k * k + tap] * scale[ch];
            }
        }
        Self {
            c,
            k,
            stride,
            w: t,
            b,
        }
    }

    /// `[h, w, c]` → `[oh, ow, c]`; returns `(oh, ow)`.
    pub(super) fn run(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        out: &mut Vec<f32>,
    ) -> (usize, usize) {
        let (oh, _) = same(h, self.k, self.stride);
        let (ow, _) = same(w, self.k, self.stride);
        out.resize(oh * ow * self.c, 0.0);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { self.run_avx2(input, h, w, out) };
            return (oh, ow);
        }
        self.run_portable(input, h, w, out);
        (oh, ow)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        self.run_portable(input, h, w, out);
    }

    /// The loop nest; inlined into each instruction-set variant so it is vectorised for it.
    #[inline(always)]
    fn run_portable(&self, input: &[f32], h: usize, w: usize, out: &mut [f32]) {
        let (c, k, s) = (self.c, self.k, self.stride);
        let (_, pad_y) = same(h, k, s);
        let (ow, pad_x) = same(w, k, s);
        for (oy, out_row) in out.chunks_exact_mut(ow * c).enumerate() {
            // Kernel rows that land inside the image for this output row.
            let y0 = oy * s;
            let ky_lo = pad_y.saturating_sub(y0);
            let ky_hi = k.min(h + pad_y - y0);
            for (ox, acc) in out_row.chunks_exact_mut(c).enumerate() {
                let x0 = ox * s;
                let kx_lo = pad_x.saturating_sub(x0);
                let kx_hi = k.min(w + pad_x - x0);
                acc.copy_from_slice(&self.b);
                for ky in ky_lo..ky_hi {
                    let iy = y0 + ky - pad_y;
                    for kx in kx_lo..kx_hi {
                        let ix = x0 + kx - pad_x;
                        let src = &input[(iy * w + ix) * c..][..c];
                        let wt = &self.w[(ky * k + kx) * c..][..c];
                        for ((a, x), wv) in acc.iter_mut().zip(src).zip(wt) {
                            *a += x * wv;
                        }
                    }
                }
                for a in acc.iter_mut() {
                    *a = a.clamp(0.0, 6.0);
                }
            }
        }
    }
}

impl Stem {
    pub(super) fn from(cb: &ConvBn) -> Self {
        let (w, [c_out, c_in, k, _], scale, b) = fold(cb);
        let taps = c_in * k * k;
        let mut t = vec![0.0; taps * c_out];
        for o in 0..c_out {
            for i in 0..taps {
                t[i * c_out + o] = w[o * taps + i] * scale[o];
            }
        }
        Self { c_out, w: t, b }
    }

    /// `[3, h, w]` (channels first, as preprocessing produces) → `[oh, ow, c_out]`.
    pub(super) fn run(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        cols: &mut Vec<f32>,
        out: &mut Vec<f32>,
        par: gemm::Parallelism,
    ) -> (usize, usize) {
        const K: usize = 3;
        let (oh, pad_y) = same(h, K, 2);
        let (ow, pad_x) = same(w, K, 2);
        let taps = 3 * K * K;
        cols.clear();
        cols.resize(oh * ow * taps, 0.0);
        for (p, col) in cols.chunks_exact_mut(taps).enumerate() {
            let (oy, ox) = (p / ow, p % ow);
            for ci in 0..3 {
                let plane = &chw[ci * h * w..][..h * w];
                for ky in 0..K {
                    let Some(iy) = (oy * 2 + ky).checked_sub(pad_y).filter(|&y| y < h) else {
                        continue;
                    };
                    for kx in 0..K {
                        if let Some(ix) = (ox * 2 + kx).checked_sub(pad_x).filter(|&x| x < w) {
                            col[ci * K * K + ky * K + kx] = plane[iy * w + ix];
                        }
                    }
                }
            }
        }
        out.resize(oh * ow * self.c_out, 0.0);
        matmul(cols, oh * ow, taps, &self.w, self.c_out, out, par);
        for row in out.chunks_exact_mut(self.c_out) {
            bias_relu6(row, &self.b);
        }
        (oh, ow)
    }
}
