//! The frozen Lite0 backbone compiled for CPU inference.
//!
//! Feature extraction for a linear probe runs the backbone forward only, with fixed weights, so
//! it can be much cheaper than a general tensor graph:
//! - batch norm is folded into each convolution's weights and a bias (eval mode, running stats);
//! - activations are channels-last (`[H, W, C]`), so every 1×1 convolution is one matrix product
//!   (the `gemm` kernels) and a depthwise convolution walks contiguous channel rows;
//! - bias, ReLU6, the residual add and the global average pool are fused into the pass that
//!   follows each product, instead of one full pass per operation;
//! - each worker thread owns its activation buffers and reuses them from image to image.
//!
//! [`FusedLite`] is built from an [`EfficientNetLite`] and computes the same function as
//! [`EfficientNetLite::features`]; a test holds the two to each other and to PyTorch's logits.

use rayon::prelude::*;

use super::efficientnet::{EfficientNetLite, FEATURES};
#[cfg(test)]
use layers::to_vec;
use layers::{Block, Depthwise, Stem};
pub(super) use layers::{Pointwise, same};

mod layers;

/// EfficientNet-Lite0 features on the CPU, batch norm folded, channels-last.
#[derive(Clone, Debug)]
pub struct FusedLite {
    pub(super) stem: Stem,
    pub(super) blocks: Vec<Block>,
    pub(super) head: Pointwise,
}

/// One image's features in progress (see [`FusedLite::begin`]).
pub struct ImagePass {
    chw: Vec<f32>,
    h: usize,
    w: usize,
    /// Pieces run so far: the stem, then the blocks, then the head.
    done: usize,
    /// Multi-scale taps (blocks run when an activation is pooled) and their pools so far.
    taps: Vec<usize>,
    pooled: Vec<f32>,
    /// The activation's `(h, w, c)` in `scratch.x`.
    hwc: (usize, usize, usize),
    scratch: Scratch,
}

/// Activation buffers, grown on demand and reused (one set per thread, or per pass).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

impl FusedLite {
    /// Folds a (pretrained or fine-tuned) model's weights and batch-norm statistics.
    pub fn from_model(model: &EfficientNetLite) -> Self {
        Self {
            stem: Stem::from(&model.stem),
            blocks: model
                .blocks
                .iter()
                .map(|b| Block {
                    expand: b.expand.as_ref().map(Pointwise::from),
                    depthwise: Depthwise::from(&b.depthwise),
                    project: Pointwise::from(&b.project),
                    residual: b.residual,
                })
                .collect(),
            head: Pointwise::from(&model.head),
        }
    }

    /// Stem and the first `blocks` blocks of one channels-first image `[3, h, w]`; the result
    /// is left channels-last in `s.x`. Returns its `(h, w, c)`.
    fn trunk(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        blocks: usize,
        s: &mut Scratch,
        par: gemm::Parallelism,
    ) -> (usize, usize, usize) {
        self.trunk_seen(chw, h, w, blocks, s, par, |_, _, _| {})
    }

    /// As [`Self::trunk`], showing `seen(blocks run, (h, w, c), activation)` each block's
    /// channels-last output: where multi-scale features take their pools and maps.
    #[allow(clippy::too_many_arguments)]
    fn trunk_seen(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        blocks: usize,
        s: &mut Scratch,
        par: gemm::Parallelism,
        mut seen: impl FnMut(usize, (usize, usize, usize), &[f32]),
    ) -> (usize, usize, usize) {
        let mut hwc = self.stem_into(chw, h, w, s, par);
        for (i, block) in self.blocks.iter().take(blocks).enumerate() {
            hwc = Self::block_into(block, hwc, s, par);
            seen(i + 1, hwc, &s.x[..hwc.0 * hwc.1 * hwc.2]);
        }
        hwc
    }

    /// The stem of one channels-first image, channels-last into `s.x`.
    fn stem_into(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        s: &mut Scratch,
        par: gemm::Parallelism,
    ) -> (usize, usize, usize) {
        let (h, w) = self.stem.run(chw, h, w, &mut s.t1, &mut s.x, par);
        (h, w, self.stem.c_out)
    }

    /// One block on the activation in `s.x` (`(h, w, c)`), leaving its output there.
    fn block_into(
        block: &Block,
        (h, w, _): (usize, usize, usize),
        s: &mut Scratch,
        par: gemm::Parallelism,
    ) -> (usize, usize, usize) {
        let Scratch { x, t1, t2 } = s;
        let p = h * w;
        let input: &[f32] = match &block.expand {
            Some(e) => {
                t1.resize(p * e.c_out, 0.0);
                e.run(x, t1, None, par);
                t1
            }
            None => x,
        };
        let (h, w) = block.depthwise.run(input, h, w, t2);
        let c = block.project.c_out;
        t1.resize(h * w * c, 0.0);
        let residual = block.residual.then_some(&x[..]);
        block.project.run(t2, t1, residual, par);
        std::mem::swap(x, t1);
        (h, w, c)
    }

    /// The head convolution on `s.x` and global average pooling into `out`.
    fn head_pool(
        &self,
        (h, w, _): (usize, usize, usize),
        s: &mut Scratch,
        out: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let p = h * w;
        s.t1.resize(p * self.head.c_out, 0.0);
        self.head.run(&s.x, &mut s.t1, None, par);
        out.fill(0.0);
        for row in s.t1.chunks_exact(self.head.c_out) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
        let inv = 1.0 / p as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }

    /// Starts the features of one channels-first image `[3, h, w]` computed a piece at a time
    /// (see [`Self::advance`]): a page with one thread runs one piece per frame.
    pub fn begin(&self, chw: Vec<f32>, h: usize, w: usize) -> ImagePass {
        self.begin_pooled(chw, h, w, &[])
    }

    /// As [`Self::begin`], pooling the outputs of the blocks in `taps` as well (see
    /// [`Self::pooled`]).
    pub fn begin_pooled(&self, chw: Vec<f32>, h: usize, w: usize, taps: &[usize]) -> ImagePass {
        ImagePass {
            chw,
            h,
            w,
            taps: taps.to_vec(),
            pooled: Vec::new(),
            done: 0,
            hwc: (h, w, 3),
            scratch: Scratch::default(),
        }
    }

    /// Runs the next `pieces` pieces of `pass` (the stem, each block, and the head with the
    /// pooling are one piece each: 18 for Lite0). Returns the pooled features (`FEATURES`
    /// long, as [`Self::features`] computes them) once the last piece has run.
    pub fn advance(&self, pass: &mut ImagePass, pieces: usize) -> Option<Vec<f32>> {
        let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
        for _ in 0..pieces.max(1) {
            let s = &mut pass.scratch;
            if pass.done == 0 {
                pass.hwc = self.stem_into(&pass.chw, pass.h, pass.w, s, par);
            } else if pass.done <= self.blocks.len() {
                pass.hwc = Self::block_into(&self.blocks[pass.done - 1], pass.hwc, s, par);
                if pass.taps.contains(&pass.done) {
                    let (h, w, c) = pass.hwc;
                    let start = pass.pooled.len();
                    pass.pooled.resize(start + c, 0.0);
                    mean_rows(&s.x[..h * w * c], c, &mut pass.pooled[start..]);
                }
            } else {
                let mut out = vec![0.0; FEATURES];
                self.head_pool(pass.hwc, s, &mut out, par);
                out.append(&mut pass.pooled);
                pass.done += 1;
                return Some(out);
            }
            pass.done += 1;
        }
        None
    }

    /// Pooled features of one channels-first image `[3, h, w]` into `out` (`FEATURES` long).
    fn image(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        s: &mut Scratch,
        out: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let hwc = self.trunk(chw, h, w, self.blocks.len(), s, par);
        self.head_pool(hwc, s, out, par);
    }

    /// Pooled features of one image with multi-scale taps: the final pool (`FEATURES`), then
    /// the pooled output of the first `t` blocks for each `t` of `taps`, in order.
    #[allow(clippy::too_many_arguments)]
    fn image_pooled(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        taps: &[usize],
        s: &mut Scratch,
        out: &mut [f32],
        par: gemm::Parallelism,
    ) {
        let (head_out, mut rest) = out.split_at_mut(FEATURES);
        let hwc = self.trunk_seen(
            chw,
            h,
            w,
            self.blocks.len(),
            s,
            par,
            |done, (_, _, c), x| {
                if taps.contains(&done) {
                    let (this, after) = std::mem::take(&mut rest).split_at_mut(c);
                    mean_rows(x, c, this);
                    rest = after;
                }
            },
        );
        self.head_pool(hwc, s, head_out, par);
    }

    /// Output width of [`Self::pooled`] with `taps`.
    pub fn pooled_width(&self, taps: &[usize]) -> usize {
        FEATURES
            + taps
                .iter()
                .map(|&t| self.blocks[t - 1].project.c_out)
                .sum::<usize>()
    }

    /// Multi-scale pooled features `[n, FEATURES + …]` of `n` channels-first images: per
    /// image the final pool, then the global average of the output of the first `t` blocks
    /// for each `t` of `taps` (ascending, each at most the number of blocks).
    pub fn pooled(&self, batch: &[f32], h: usize, w: usize, taps: &[usize]) -> Vec<f32> {
        if taps.is_empty() {
            return self.features(batch, h, w);
        }
        assert!(
            taps.windows(2).all(|p| p[0] < p[1])
                && taps.iter().all(|&t| (1..=self.blocks.len()).contains(&t)),
            "taps must be ascending block counts"
        );
        Self::each_image(batch, h, w, self.pooled_width(taps), |img, s, o, par| {
            self.image_pooled(img, h, w, taps, s, o, par)
        })
    }

    /// `(c, h, w)` of the input of block `blocks` for an `h × w` image.
    pub fn prefix_shape(&self, h: usize, w: usize, blocks: usize) -> (usize, usize, usize) {
        let (mut h, mut w) = (same(h, 3, 2).0, same(w, 3, 2).0);
        let mut c = self.stem.c_out;
        for b in self.blocks.iter().take(blocks) {
            h = same(h, b.depthwise.k, b.depthwise.stride).0;
            w = same(w, b.depthwise.k, b.depthwise.stride).0;
            c = b.project.c_out;
        }
        (c, h, w)
    }

    /// Runs `f(image, scratch, output, parallelism)` for each image of `[n, 3, h, w]`, each
    /// writing `out_len` values: images in parallel, one per worker thread; a batch smaller
    /// than the thread pool runs its images in turn with the matrix products spread over
    /// the threads.
    fn each_image(
        batch: &[f32],
        h: usize,
        w: usize,
        out_len: usize,
        f: impl Fn(&[f32], &mut Scratch, &mut [f32], gemm::Parallelism) + Sync,
    ) -> Vec<f32> {
        let per_image = 3 * h * w;
        assert!(
            per_image > 0 && batch.len().is_multiple_of(per_image),
            "input is not [n, 3, {h}, {w}]"
        );
        let n = batch.len() / per_image;
        let mut out = vec![0.0; n * out_len];
        let threads = rayon::current_num_threads();
        if n >= threads {
            out.par_chunks_mut(out_len)
                .zip(batch.par_chunks(per_image))
                .for_each(|(o, img)| {
                    SCRATCH.with_borrow_mut(|s| f(img, s, o, gemm::Parallelism::None))
                });
        } else {
            let par = gemm::Parallelism::Rayon(threads);
            SCRATCH.with_borrow_mut(|s| {
                for (o, img) in out.chunks_mut(out_len).zip(batch.chunks(per_image)) {
                    f(img, s, o, par);
                }
            });
        }
        out
    }

    /// Pooled features `[n, FEATURES]` of `n` channels-first images `[n, 3, h, w]`.
    pub fn features(&self, batch: &[f32], h: usize, w: usize) -> Vec<f32> {
        Self::each_image(batch, h, w, FEATURES, |img, s, o, par| {
            self.image(img, h, w, s, o, par)
        })
    }

    /// The last feature map of one channels-first image `[3, h, w]` before pooling,
    /// channels-last `[h' · w', FEATURES]`, with `(h', w')` (7×7 at 224²): the map that
    /// [`Self::features`] averages and that class activation maps weigh.
    pub fn feature_map(&self, chw: &[f32], h: usize, w: usize) -> (Vec<f32>, usize, usize) {
        SCRATCH.with_borrow_mut(|s| {
            let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
            let (oh, ow, _) = self.trunk(chw, h, w, self.blocks.len(), s, par);
            let mut out = vec![0.0; oh * ow * self.head.c_out];
            self.head.run(&s.x, &mut out, None, par);
            (out, oh, ow)
        })
    }

    /// The activations after the first `t` blocks for each `t` of `taps`, channels-last, with
    /// their `(h', w', c)`: the maps whose pools [`Self::pooled`] appends.
    pub fn tap_maps(
        &self,
        chw: &[f32],
        h: usize,
        w: usize,
        taps: &[usize],
    ) -> Vec<(Vec<f32>, (usize, usize, usize))> {
        SCRATCH.with_borrow_mut(|s| {
            let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
            let last = taps.iter().copied().max().unwrap_or(0);
            let mut out = Vec::new();
            self.trunk_seen(chw, h, w, last, s, par, |done, hwc, x| {
                if taps.contains(&done) {
                    out.push((x.to_vec(), hwc));
                }
            });
            out
        })
    }

    /// The input of block `blocks`, channels-first `[n, c, h', w']` with `(c, h', w')` from
    /// [`Self::prefix_shape`]: what [`EfficientNetLite::forward_prefix`] computes, for
    /// fine-tuning the blocks after a frozen prefix.
    pub fn prefix(&self, batch: &[f32], h: usize, w: usize, blocks: usize) -> Vec<f32> {
        let (c, oh, ow) = self.prefix_shape(h, w, blocks);
        Self::each_image(batch, h, w, c * oh * ow, |img, s, o, par| {
            self.trunk(img, h, w, blocks, s, par);
            // Channels-last → channels-first.
            for (p, row) in s.x.chunks_exact(c).enumerate() {
                for (ch, v) in row.iter().enumerate() {
                    o[ch * oh * ow + p] = *v;
                }
            }
        })
    }
}

/// Column means of the rows of `x` (`c` wide) into `out`: a channels-last activation's
/// pool, or the mean of an image's feature vectors over its views.
pub(crate) fn mean_rows(x: &[f32], c: usize, out: &mut [f32]) {
    out.fill(0.0);
    let rows = x.len() / c;
    for row in x.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
    let inv = 1.0 / rows.max(1) as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::efficientnet::Backbone;
    use burn::tensor::{Device, Tensor, TensorData};

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 → 112 with a 3×3 stride-2 kernel: one pixel of padding, at the end.
        assert_eq!(same(224, 3, 2), (112, 0));
        // 5×5 stride 1 keeps the size with two pixels each side.
        assert_eq!(same(14, 5, 1), (14, 2));
        // 5×5 stride 2 on 56: out 28, total padding 3 → 1 before, 2 after.
        assert_eq!(same(56, 5, 2), (28, 1));
        assert_eq!(same(7, 3, 1), (7, 1));
    }

    /// Through the ImageNet classifier, the fused features reproduce PyTorch's logits for
    /// the reference photos (the same fixture the burn model is held to).
    #[test]
    fn reproduces_pytorch_reference_logits() {
        check_against_pytorch(Backbone::Lite0);
    }

    /// Lite1 (240²) and Lite2 (260²) through the same code: their odd sizes (65 → 33, 17 → 9)
    /// pad stride-2 convolutions evenly, where Lite0's sizes put the odd pixel at the end.
    #[test]
    fn lite1_and_lite2_reproduce_pytorch_reference_logits() {
        assert_eq!(same(65, 5, 2), (33, 2));
        assert_eq!(same(33, 3, 2), (17, 1));
        check_against_pytorch(Backbone::Lite1);
        check_against_pytorch(Backbone::Lite2);
    }

    fn check_against_pytorch(backbone: Backbone) {
        use crate::model::efficientnet::reference;
        let device = Device::flex();
        let model = load(backbone, &device);
        let fused = FusedLite::from_model(&model);
        let (batch, expected) = reference::fixture(backbone);
        let side = backbone.input_size() as usize;
        let f = fused.features(&batch, side, side);
        let f = Tensor::<2>::from_data(TensorData::new(f, [expected.len(), FEATURES]), &device);
        reference::assert_matches(&to_vec(model.classifier.forward(f)), &expected);
    }

    fn load(backbone: Backbone, device: &Device) -> EfficientNetLite {
        let bytes = crate::model::efficientnet::bundled_weights(backbone).unwrap();
        EfficientNetLite::load(backbone, &bytes, device).unwrap()
    }

    /// The fused prefix is the burn model's `forward_prefix`, channels-first.
    #[test]
    fn prefix_matches_the_burn_model() {
        let device = Device::flex();
        let model = load(Backbone::Lite0, &device);
        let fused = FusedLite::from_model(&model);
        let (n, h, w, blocks) = (2, 40, 40, 14);
        let x = noise(n * 3 * h * w);
        let want = model.forward_prefix(
            Tensor::<4>::from_data(TensorData::new(x.clone(), [n, 3, h, w]), &device),
            blocks,
        );
        let (c, oh, ow) = fused.prefix_shape(h, w, blocks);
        assert_eq!(want.dims(), [n, c, oh, ow]);
        let want = to_vec(want);
        let got = fused.prefix(&x, h, w, blocks);
        assert_close(&got, &want, "prefix");
    }

    /// Computed a piece at a time, an image's features are the ones computed at once.
    #[test]
    fn a_pass_in_pieces_gives_the_same_features() {
        let device = Device::flex();
        let fused = FusedLite::from_model(&load(Backbone::Lite0, &device));
        let x = noise(3 * 64 * 64);
        let mut pass = fused.begin(x.clone(), 64, 64);
        let mut pieces = 0;
        let got = loop {
            pieces += 1;
            if let Some(f) = fused.advance(&mut pass, 1) {
                break f;
            }
        };
        assert_eq!(
            pieces,
            2 + fused.blocks.len(),
            "the stem, each block, the head"
        );
        assert_eq!(got, fused.features(&x, 64, 64));
    }

    /// The feature map's average over positions is the pooled feature vector.
    #[test]
    fn feature_map_pools_to_the_features() {
        let device = Device::flex();
        let fused = FusedLite::from_model(&load(Backbone::Lite0, &device));
        let x = noise(3 * 64 * 64);
        let (map, h, w) = fused.feature_map(&x, 64, 64);
        assert_eq!((h, w), (2, 2));
        let mut pooled = vec![0.0f32; FEATURES];
        for row in map.chunks_exact(FEATURES) {
            pooled.iter_mut().zip(row).for_each(|(p, v)| *p += v / 4.0);
        }
        assert_close(&pooled, &fused.features(&x, 64, 64), "pooled map");
    }

    fn noise(len: usize) -> Vec<f32> {
        let mut state = 0x9e37_79b9_u32;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let max_err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        assert!(scale > 0.1, "{what}: values are not trivially zero");
        assert!(
            max_err < 1e-3 * scale.max(1.0),
            "{what}: max abs error {max_err} (largest value {scale})"
        );
    }

    /// The fused network computes the burn model's features, for odd sizes too (padding
    /// edges) and for both the per-image-parallel and the single-image path.
    #[test]
    fn matches_the_burn_model() {
        let device = Device::flex();
        let model = load(Backbone::Lite0, &device);
        let fused = FusedLite::from_model(&model);
        for (n, h, w) in [(1, 67, 45), (3, 64, 64)] {
            let x = noise(n * 3 * h * w);
            let want = to_vec(model.features(Tensor::<4>::from_data(
                TensorData::new(x.clone(), [n, 3, h, w]),
                &device,
            )));
            assert_close(&fused.features(&x, h, w), &want, &format!("{n}x{h}x{w}"));
        }
    }
}
