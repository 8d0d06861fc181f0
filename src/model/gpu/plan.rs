//! The network as a list of dispatches of `shaders/lite.wgsl`, before any buffer exists:
//! each kernel's parameters, where it reads and writes, and the packed weights.

use crate::model::fused::{FusedLite, Pointwise, same};

/// The shader's `Params`, sixteen `u32` in declaration order.
#[derive(Clone, Copy, Default)]
pub(super) struct Params {
    pub(super) n: u32,
    pub(super) h: u32,
    pub(super) w: u32,
    pub(super) oh: u32,
    pub(super) ow: u32,
    pub(super) c_in: u32,
    pub(super) c_out: u32,
    pub(super) k: u32,
    pub(super) stride: u32,
    pub(super) pad_y: u32,
    pub(super) pad_x: u32,
    pub(super) w_off: u32,
    pub(super) b_off: u32,
    pub(super) act: u32,
    pub(super) out_width: u32,
    pub(super) out_off: u32,
}

impl Params {
    pub(super) fn bytes(&self) -> Vec<u8> {
        [
            self.n,
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.c_in,
            self.c_out,
            self.k,
            self.stride,
            self.pad_y,
            self.pad_x,
            self.w_off,
            self.b_off,
            self.act,
            self.out_width,
            self.out_off,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// The shader's entry points; a kernel's number is its pipeline's index.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    Stem,
    Pointwise,
    Depthwise,
    Pool,
}

/// Entry point names, in [`Kernel`] order.
pub(super) const KERNELS: [&str; 4] = ["stem", "pointwise", "depthwise", "pool"];

/// Where an operation reads or writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Buf {
    Input,
    /// One of the three activation buffers.
    Act(usize),
    Output,
    Weights,
}

/// One dispatch, before buffers exist.
pub(super) struct Step {
    pub(super) kernel: Kernel,
    pub(super) params: Params,
    pub(super) src: Buf,
    pub(super) dst: Buf,
    pub(super) extra: Buf,
    /// Values written (for the activation buffers' size) and the workgroup grid.
    pub(super) written: usize,
    pub(super) groups: (u32, u32),
}

/// Invocations per workgroup of the one-dimensional kernels (the shader's `GROUP`).
pub(super) const GROUP: usize = 64;

/// A grid of workgroups covering `threads` one-dimensional invocations.
pub(super) fn grid(threads: usize) -> (u32, u32) {
    let groups = threads.div_ceil(GROUP).max(1);
    let x = groups.min(32_768);
    (x as u32, groups.div_ceil(x) as u32)
}

/// The network as a list of dispatches for a batch of `n` images of `side × side`, with the
/// packed weights. Pools the final activation at 0 of each image's output and the outputs of
/// the first `t` blocks for each `t` of `taps` after it.
pub(super) fn plan(
    net: &FusedLite,
    n: usize,
    side: usize,
    taps: &[usize],
) -> (Vec<Step>, Vec<f32>, usize) {
    let mut weights = Vec::new();
    let mut pack = |w: &[f32], b: &[f32]| {
        let w_off = weights.len() as u32;
        weights.extend_from_slice(w);
        let b_off = weights.len() as u32;
        weights.extend_from_slice(b);
        (w_off, b_off)
    };
    let width = net.pooled_width(taps);
    let mut steps = Vec::new();
    let u = |v: usize| v as u32;

    let (oh, pad_y) = same(side, 3, 2);
    let (ow, pad_x) = same(side, 3, 2);
    let (w_off, b_off) = pack(&net.stem.w, &net.stem.b);
    let c = net.stem.c_out;
    steps.push(Step {
        kernel: Kernel::Stem,
        params: Params {
            n: u(n),
            h: u(side),
            w: u(side),
            oh: u(oh),
            ow: u(ow),
            c_in: 3,
            c_out: u(c),
            pad_y: u(pad_y),
            pad_x: u(pad_x),
            w_off,
            b_off,
            act: 1,
            ..Params::default()
        },
        src: Buf::Input,
        dst: Buf::Act(0),
        extra: Buf::Weights,
        written: n * oh * ow * c,
        groups: grid(n * oh * ow * c),
    });

    let pointwise = |pw: &Pointwise,
                     (w_off, b_off): (u32, u32),
                     (h, w): (usize, usize),
                     src: Buf,
                     dst: Buf,
                     residual: Option<Buf>| Step {
        kernel: Kernel::Pointwise,
        params: Params {
            n: u(n),
            h: u(h),
            w: u(w),
            oh: u(h),
            ow: u(w),
            c_in: u(pw.c_in),
            c_out: u(pw.c_out),
            w_off,
            b_off,
            act: if residual.is_some() {
                2
            } else {
                u32::from(pw.relu6)
            },
            ..Params::default()
        },
        src,
        dst,
        extra: residual.unwrap_or(Buf::Weights),
        written: n * h * w * pw.c_out,
        groups: (u(pw.c_out.div_ceil(64)), u((n * h * w).div_ceil(64)).max(1)),
    };
    let pool = |(h, w, c): (usize, usize, usize), src: Buf, out_off: usize| Step {
        kernel: Kernel::Pool,
        params: Params {
            n: u(n),
            h: u(h),
            w: u(w),
            c_in: u(c),
            out_width: u(width),
            out_off: u(out_off),
            ..Params::default()
        },
        src,
        dst: Buf::Output,
        extra: Buf::Weights,
        written: 0,
        groups: grid(n * c),
    };

    // The activation in `x`, scratch in `t1` and `t2`, as the CPU network does.
    let (mut x, mut t1, t2) = (0, 1, 2);
    let (mut h, mut w) = (oh, ow);
    let mut tap_off = crate::model::efficientnet::FEATURES;
    for (i, block) in net.blocks.iter().enumerate() {
        let input = match &block.expand {
            Some(e) => {
                let offs = pack(&e.w, &e.b);
                steps.push(pointwise(e, offs, (h, w), Buf::Act(x), Buf::Act(t1), None));
                t1
            }
            None => x,
        };
        let d = &block.depthwise;
        let (oh, pad_y) = same(h, d.k, d.stride);
        let (ow, pad_x) = same(w, d.k, d.stride);
        let (w_off, b_off) = pack(&d.w, &d.b);
        steps.push(Step {
            kernel: Kernel::Depthwise,
            params: Params {
                n: u(n),
                h: u(h),
                w: u(w),
                oh: u(oh),
                ow: u(ow),
                c_in: u(d.c),
                c_out: u(d.c),
                k: u(d.k),
                stride: u(d.stride),
                pad_y: u(pad_y),
                pad_x: u(pad_x),
                w_off,
                b_off,
                act: 1,
                ..Params::default()
            },
            src: Buf::Act(input),
            dst: Buf::Act(t2),
            extra: Buf::Weights,
            written: n * oh * ow * d.c,
            groups: grid(n * oh * ow * d.c),
        });
        (h, w) = (oh, ow);
        let offs = pack(&block.project.w, &block.project.b);
        let residual = block.residual.then_some(Buf::Act(x));
        steps.push(pointwise(
            &block.project,
            offs,
            (h, w),
            Buf::Act(t2),
            Buf::Act(t1),
            residual,
        ));
        std::mem::swap(&mut x, &mut t1);
        if taps.contains(&(i + 1)) {
            let c = block.project.c_out;
            steps.push(pool((h, w, c), Buf::Act(x), tap_off));
            tap_off += c;
        }
    }
    let offs = pack(&net.head.w, &net.head.b);
    steps.push(pointwise(
        &net.head,
        offs,
        (h, w),
        Buf::Act(x),
        Buf::Act(t1),
        None,
    ));
    steps.push(pool((h, w, net.head.c_out), Buf::Act(t1), 0));
    (steps, weights, width)
}
