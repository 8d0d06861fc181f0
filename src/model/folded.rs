//! EfficientNet-Lite0 with batch norm folded into its convolutions, as burn modules: the
//! frozen backbone on a wgpu device (feature extraction, and the frozen prefix of a
//! fine-tune). The CPU has its own folded, channels-last network ([`super::fused`]).
//!
//! For a convolution followed by batch norm in eval mode (running statistics `μ`, `σ²`):
//!
//! ```text
//! s = γ / √(σ² + ε)      W' = W · s (per output channel)      b' = β − μ · s
//! BN(conv(x, W)) = conv(x, W') + b'
//! ```
//!
//! so each layer is one convolution (with bias) and a clamp instead of a convolution and four
//! elementwise passes. Tested against PyTorch's reference logits, like the burn model.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::efficientnet::{ConvBn, EfficientNetLite, MbConv};

/// A convolution with its batch norm folded in, and the ReLU6 that follows it (if any).
#[derive(Clone, Debug)]
struct FoldedConv {
    conv: Conv2d,
    relu6: bool,
}

impl FoldedConv {
    fn of(cb: &ConvBn) -> Self {
        let bn = &cb.bn;
        let scale = bn.gamma.val() / bn.running_var.value().add_scalar(bn.epsilon).sqrt();
        let shift = bn.beta.val() - bn.running_mean.value() * scale.clone();
        let [c_out, ..] = cb.conv.weight.dims();
        let weight = cb.conv.weight.val() * scale.reshape([c_out, 1, 1, 1]);
        let mut conv = cb.conv.clone();
        conv.weight = Param::from_tensor(weight);
        conv.bias = Some(Param::from_tensor(shift));
        Self {
            conv,
            relu6: cb.relu6,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv.forward(x);
        if self.relu6 { y.clamp(0.0, 6.0) } else { y }
    }
}

/// An inverted-residual block with folded batch norms.
#[derive(Clone, Debug)]
struct FoldedBlock {
    expand: Option<FoldedConv>,
    depthwise: FoldedConv,
    project: FoldedConv,
    residual: bool,
}

impl FoldedBlock {
    fn of(b: &MbConv) -> Self {
        Self {
            expand: b.expand.as_ref().map(FoldedConv::of),
            depthwise: FoldedConv::of(&b.depthwise),
            project: FoldedConv::of(&b.project),
            residual: b.residual,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.expand {
            Some(e) => e.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.project.forward(self.depthwise.forward(y));
        if self.residual { y + x } else { y }
    }
}

/// The Lite0 backbone (no ImageNet classifier) with batch norm folded, on the device of the
/// model it was folded from.
#[derive(Clone, Debug)]
pub struct FoldedLite {
    stem: FoldedConv,
    blocks: Vec<FoldedBlock>,
    head: FoldedConv,
}

impl FoldedLite {
    /// Folds a (pretrained or fine-tuned) model's weights and batch-norm statistics.
    pub fn of(model: &EfficientNetLite) -> Self {
        Self {
            stem: FoldedConv::of(&model.stem),
            blocks: model.blocks.iter().map(FoldedBlock::of).collect(),
            head: FoldedConv::of(&model.head),
        }
    }

    /// Stem and the first `n` blocks: `[batch, 3, H, W]` → the input of block `n`.
    pub fn forward_prefix(&self, x: Tensor<4>, n: usize) -> Tensor<4> {
        let mut x = self.stem.forward(x);
        for block in self.blocks.iter().take(n) {
            x = block.forward(x);
        }
        x
    }

    /// Multi-scale pooled features: the final pool, then the pooled output of the first `t`
    /// blocks for each `t` of `taps` (ascending), concatenated: `[batch, 1280 + …]`.
    pub fn pooled(&self, x: Tensor<4>, taps: &[usize]) -> Tensor<2> {
        let mut x = self.stem.forward(x);
        let mut parts = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if taps.contains(&(i + 1)) {
                parts.push(x.clone().mean_dims(&[2, 3]).flatten::<2>(1, 3));
            }
        }
        let head = self.head.forward(x).mean_dims(&[2, 3]).flatten::<2>(1, 3);
        parts.insert(0, head);
        Tensor::cat(parts, 1)
    }

    /// Pooled features `[batch, 1280]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let mut x = self.forward_prefix(x, self.blocks.len());
        x = self.head.forward(x);
        x.mean_dims(&[2, 3]).flatten::<2>(1, 3)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;
    use crate::model::efficientnet::{Backbone, bundled_weights, reference};

    /// The bundled Lite0 on `device`.
    fn lite0(device: &Device) -> EfficientNetLite {
        EfficientNetLite::load(
            Backbone::Lite0,
            &bundled_weights(Backbone::Lite0).unwrap(),
            device,
        )
        .unwrap()
    }

    fn logits(
        model: &EfficientNetLite,
        folded: &FoldedLite,
        batch: Vec<f32>,
        n: usize,
    ) -> Vec<f32> {
        let device = model.classifier.weight.device();
        let x = Tensor::<4>::from_data(TensorData::new(batch, [n, 3, 224, 224]), &device);
        model
            .classifier
            .forward(folded.features(x))
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    /// Folded on the CPU device, the backbone still reproduces PyTorch's logits.
    #[test]
    fn folded_reproduces_pytorch_reference_logits() {
        let device = Device::flex();
        let model = lite0(&device);
        let folded = FoldedLite::of(&model);
        let (batch, expected) = reference::fixture(Backbone::Lite0);
        let n = expected.len();
        reference::assert_matches(&logits(&model, &folded, batch, n), &expected);
    }

    /// The burn path's multi-scale features are the fused CPU network's: the final pool,
    /// then the pools after the tapped blocks.
    #[test]
    fn folded_multiscale_features_match_the_fused_network() {
        let device = Device::flex();
        let model = lite0(&device);
        let taps: Vec<usize> = Backbone::Lite0.taps().iter().map(|t| t.0).collect();
        let (batch, _) = reference::fixture(Backbone::Lite0);
        let one = batch[..3 * 224 * 224].to_vec();
        let want = super::super::fused::FusedLite::from_model(&model).pooled(&one, 224, 224, &taps);
        let got = FoldedLite::of(&model)
            .pooled(
                Tensor::<4>::from_data(TensorData::new(one, [1, 3, 224, 224]), &device),
                &taps,
            )
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(got.len(), 1280 + 112 + 192);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-3, "max difference {err}");
    }

    /// On a wgpu device (Mesa's software Vulkan where there is no GPU) the folded backbone
    /// reproduces PyTorch's logits: the path `Extractor` takes on a GPU. One fixture image
    /// keeps it short on a software rasteriser (about a minute and a half on 2 cores).
    #[test]
    fn folded_on_wgpu_reproduces_pytorch_reference_logits() {
        let compute = crate::model::backend::select(crate::model::backend::BackendChoice::Wgpu)
            .expect("a wgpu adapter (the test command installs Mesa's software Vulkan)");
        let model = lite0(&compute.device);
        let folded = FoldedLite::of(&model);
        let (batch, expected) = reference::fixture(Backbone::Lite0);
        let n = 1;
        let batch = batch[..n * 3 * 224 * 224].to_vec();
        reference::assert_matches(&logits(&model, &folded, batch, n), &expected[..n]);
    }
}
