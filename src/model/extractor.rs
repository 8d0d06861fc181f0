//! The frozen pretrained backbone as a function from preprocessed images to features.

use burn::tensor::{Device, Tensor, TensorData};

use super::efficientnet::{Backbone, EfficientNetLite, FEATURES};
use super::folded::FoldedLite;
use super::fused::FusedLite;

/// What one image's feature vector holds: which backbone computed it, whether it is averaged
/// over the 8 orientations, and whether earlier stages' pools follow the final pool
/// (multi-scale, see [`Backbone::taps`]). Different kinds are different features: each has
/// its own cache entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FeatureKind {
    pub backbone: Backbone,
    pub orientation_mean: bool,
    pub multiscale: bool,
}

impl FeatureKind {
    /// The final 1280-d pool of one view.
    pub fn plain(backbone: Backbone) -> Self {
        Self {
            backbone,
            orientation_mean: false,
            multiscale: false,
        }
    }

    /// The features a head of `mode` reads: a probe's as asked; a fine-tuned head (and a
    /// scratch CNN, which reads none) the final pool of one view.
    pub fn for_mode(
        mode: super::task::Mode,
        backbone: Backbone,
        orientation_mean: bool,
        multiscale: bool,
    ) -> Self {
        let probe = mode == super::task::Mode::Probe;
        Self {
            backbone,
            orientation_mean: probe && orientation_mean,
            multiscale: probe && multiscale,
        }
    }

    /// Blocks run before each pooled tap (empty unless multi-scale).
    pub fn taps(&self) -> Vec<usize> {
        if self.multiscale {
            self.backbone.taps().iter().map(|t| t.0).collect()
        } else {
            Vec::new()
        }
    }

    /// The parts of a vector, in order: the final pool, then each tap's pool.
    pub fn parts(&self) -> Vec<std::ops::Range<usize>> {
        let mut parts = Vec::with_capacity(3);
        parts.push(0..FEATURES);
        if self.multiscale {
            for (_, c) in self.backbone.taps() {
                let start = parts.last().map_or(0, |r| r.end);
                parts.push(start..start + c);
            }
        }
        parts
    }

    /// The vector computed and cached for this kind: the multi-scale one, whose first part is
    /// this kind's vector (see [`Self::parts`]; pooling two earlier stages costs next to
    /// nothing). A map's plain features and a probe's multi-scale ones are thus one pass of
    /// the network and one cache entry per image, whichever is asked for first.
    pub fn stored(&self) -> Self {
        Self {
            multiscale: true,
            ..*self
        }
    }

    /// Values per vector.
    pub fn width(&self) -> usize {
        self.parts().last().map_or(FEATURES, |r| r.end)
    }

    /// The name in cache keys: the backbone's, with `+orientation-mean` and `+multiscale`.
    pub fn cache_name(&self) -> String {
        let mut name = self.backbone.name().to_owned();
        if self.orientation_mean {
            name.push_str("+orientation-mean");
        }
        if self.multiscale {
            name.push_str("+multiscale");
        }
        name
    }
}

/// The frozen backbone as a function from preprocessed images to pooled features: on the CPU
/// the batch-norm-folded channels-last network ([`FusedLite`]), on a wgpu device the burn
/// model with its batch norms folded into the convolutions ([`FoldedLite`]).
/// One value per process or run: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Extractor {
    /// Shared: the bundled weights are folded once per process.
    Cpu(std::sync::Arc<FusedLite>),
    Burn {
        model: FoldedLite,
        device: Device,
    },
}

impl Extractor {
    /// Wraps a loaded model for the device it lives on.
    pub fn new(model: EfficientNetLite, device: &Device) -> Self {
        if crate::model::backend::is_cpu(device) {
            Self::Cpu(std::sync::Arc::new(FusedLite::from_model(&model)))
        } else {
            Self::Burn {
                model: FoldedLite::of(&model),
                device: device.clone(),
            }
        }
    }

    /// The bundled pretrained `backbone` for `device`. On the CPU the folded network is built
    /// once per process and backbone, and shared (a run, a prediction and the browser's feature
    /// slices reuse it).
    pub fn bundled(backbone: Backbone, device: &Device) -> anyhow::Result<Self> {
        type Folded = Vec<(Backbone, std::sync::Arc<FusedLite>)>;
        static CPU: std::sync::Mutex<Folded> = std::sync::Mutex::new(Vec::new());
        if !crate::model::backend::is_cpu(device) {
            return Ok(Self::new(load_backbone(backbone, device)?, device));
        }
        let mut cached = CPU.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, net)) = cached.iter().find(|(b, _)| *b == backbone) {
            return Ok(Self::Cpu(net.clone()));
        }
        let net = std::sync::Arc::new(FusedLite::from_model(&load_backbone(backbone, device)?));
        cached.push((backbone, net.clone()));
        Ok(Self::Cpu(net))
    }

    /// Pooled features `[n * FEATURES]` of `n` preprocessed channels-first images `[n, 3, side, side]`.
    pub fn features(&self, chw: Vec<f32>, n: usize, side: usize) -> Vec<f32> {
        if n == 0 {
            return Vec::new();
        }
        match self {
            Self::Cpu(net) => net.features(&chw, side, side),
            Self::Burn { model, device } => {
                let x = Tensor::<4>::from_data(TensorData::new(chw, [n, 3, side, side]), device);
                model
                    .features(x)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default()
            }
        }
    }

    /// Pooled features with multi-scale `taps` (see [`FusedLite::pooled`]): `n` rows of
    /// `FEATURES` plus the taps' channels.
    fn pooled(&self, chw: Vec<f32>, n: usize, side: usize, taps: &[usize]) -> Vec<f32> {
        if taps.is_empty() || n == 0 {
            return self.features(chw, n, side);
        }
        match self {
            Self::Cpu(net) => net.pooled(&chw, side, side, taps),
            Self::Burn { model, device } => {
                let x = Tensor::<4>::from_data(TensorData::new(chw, [n, 3, side, side]), device);
                model
                    .pooled(x, taps)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap_or_default()
            }
        }
    }

    /// Features of `kind` (`n` rows of `kind.width()`) of `n` preprocessed channels-first
    /// images `[n, 3, side, side]`. Averaged over orientations, they are the mean over the
    /// 8 symmetries of the square of each image: the same for an image in any orientation.
    pub fn features_of(
        &self,
        kind: &FeatureKind,
        chw: Vec<f32>,
        n: usize,
        side: usize,
    ) -> Vec<f32> {
        use crate::dataset::preprocess::{ORIENTATIONS as VIEWS, orientations};
        let taps = kind.taps();
        if !kind.orientation_mean {
            return self.pooled(chw, n, side, &taps);
        }
        let width = kind.width();
        let per_image = 3 * side * side;
        let mut out = Vec::with_capacity(n * width);
        // A few images at a time bounds the memory of their 8 views.
        for group in chw.chunks(per_image * 4) {
            let images = group.len() / per_image;
            let f = self.pooled(orientations(group, side), images * VIEWS, side, &taps);
            for per_view in f.chunks_exact(width * VIEWS) {
                let start = out.len();
                out.resize(start + width, 0.0);
                super::fused::mean_rows(per_view, width, &mut out[start..]);
            }
        }
        out
    }

    /// The input of block `blocks` for `n` preprocessed images `[n, 3, side, side]`, as a
    /// channels-first tensor on `device`: the frozen prefix of a fine-tuned backbone.
    pub fn prefix(
        &self,
        chw: Vec<f32>,
        n: usize,
        side: usize,
        blocks: usize,
        device: &Device,
    ) -> Tensor<4> {
        match self {
            Self::Cpu(net) => {
                let (c, h, w) = net.prefix_shape(side, side, blocks);
                let y = net.prefix(&chw, side, side, blocks);
                Tensor::from_data(TensorData::new(y, [n, c, h, w]), device)
            }
            Self::Burn { model, device: own } => {
                let x = Tensor::<4>::from_data(TensorData::new(chw, [n, 3, side, side]), own);
                model.forward_prefix(x, blocks)
            }
        }
    }
}

/// Loads the bundled pretrained `backbone` onto `device`.
pub fn load_backbone(backbone: Backbone, device: &Device) -> anyhow::Result<EfficientNetLite> {
    use anyhow::Context as _;
    anyhow::ensure!(
        !cfg!(target_arch = "wasm32") || backbone == Backbone::Lite0,
        "this run uses {backbone}; the page carries EfficientNet-Lite0 only (open the run in the desktop app)"
    );
    let bytes = crate::model::efficientnet::bundled_weights(backbone).with_context(|| {
        format!(
            "reading the bundled {backbone} weights ({}; set CELLBENCH_ASSETS to the folder that holds weights/)",
            backbone.weights_path().display()
        )
    })?;
    Ok(EfficientNetLite::load(backbone, &bytes, device)?)
}
