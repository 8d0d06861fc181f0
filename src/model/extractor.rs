//! The frozen pretrained backbone as a function from preprocessed images to features.

use burn::tensor::{Device, Tensor, TensorData};

use super::efficientnet::{Backbone, EfficientNetLite, FEATURES};
use super::folded::FoldedLite;
use super::fused::FusedLite;

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

    /// Features averaged over the 8 orientations of each image (the symmetries of the square):
    /// the same for an image in any orientation. Same layout as [`Self::features`].
    pub fn features_orientation_mean(&self, chw: Vec<f32>, n: usize, side: usize) -> Vec<f32> {
        use crate::dataset::preprocess::{ORIENTATIONS as VIEWS, orientations};
        let per_image = 3 * side * side;
        let mut out = Vec::with_capacity(n * FEATURES);
        // A few images at a time bounds the memory of their 8 views.
        for group in chw.chunks(per_image * 4) {
            let images = group.len() / per_image;
            let f = self.features(orientations(group, side), images * VIEWS, side);
            for per_view in f.chunks_exact(FEATURES * VIEWS) {
                let mut mean = vec![0.0f32; FEATURES];
                for row in per_view.chunks_exact(FEATURES) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                out.extend(mean.into_iter().map(|m| m / VIEWS as f32));
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
