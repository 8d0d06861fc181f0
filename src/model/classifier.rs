//! The one model contract: a trained run's model loaded once, from preprocessing to a
//! decision. Training's final predictions, `predict`, `serve`, `evaluate`, the GUI and
//! workbooks all go through [`Classifier`], so they cannot disagree about an image.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use burn::module::Module;
use burn::store::{ModuleSnapshot as _, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};

use crate::dataset::preprocess::Preprocess;

use super::decision::{self, Standardiser};
use super::efficientnet::{EfficientNetLite, FEATURES};
use super::extractor::Extractor;
use super::heads::{Head, SmallCnn};
use super::{Mode, Task};

/// Saliency maps are computed at this multiple of the model's input side (see
/// [`Classifier::saliency`]).
pub const SALIENCY_SCALE: u32 = 2;

/// What a trained model needs besides its weights, saved as `model.json`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelInfo {
    /// Run-folder format ([`crate::fsio::FORMAT_VERSION`]); files before versions read as 0.
    #[serde(default)]
    pub format_version: u32,
    pub mode: Mode,
    pub task: Task,
    pub labels: Vec<String>,
    pub preprocess: Preprocess,
    /// Fine-tuning: index of the first trained backbone block.
    pub finetune_start: usize,
    /// Probe: per-feature mean and standard deviation used to standardise features.
    pub feature_mean: Vec<f32>,
    pub feature_std: Vec<f32>,
    /// Folder the dataset's image paths are relative to (for showing images of a run).
    #[serde(default)]
    pub dataset_root: Option<PathBuf>,
    /// Ordinal: the network has `labels - 1` cumulative outputs `P(grade > j)`
    /// (see [`super::ordinal`]); older ordinal runs have one softmax output per grade.
    #[serde(default)]
    pub cumulative: bool,
    /// Probe: features are averaged over the 8 orientations (see
    /// [`super::extractor::Extractor::features_orientation_mean`]).
    #[serde(default)]
    pub orientation_mean: bool,
    /// The pretrained backbone (probe and fine-tune); runs before it was recorded used Lite0.
    #[serde(default)]
    pub backbone: super::efficientnet::Backbone,
    /// Probe: the features are multi-scale (the final pool, then earlier stages' pools; see
    /// [`super::extractor::FeatureKind`]).
    #[serde(default)]
    pub multiscale: bool,
    /// Single-label tasks: the temperature fitted on held-out predictions (`--calibrate`: the
    /// probe's inner folds, or an epoch-trained head's validation side);
    /// every prediction's probabilities are `softmax(logits / temperature)`.
    #[serde(default)]
    pub temperature: Option<f32>,
}

impl ModelInfo {
    /// Width of the network's last layer.
    pub fn outputs(&self) -> usize {
        if self.cumulative {
            super::ordinal::outputs(self.labels.len())
        } else {
            self.labels.len()
        }
    }

    /// What the head's feature vectors hold (fine-tuned heads: the final pool of one view).
    pub fn feature_kind(&self) -> super::extractor::FeatureKind {
        super::extractor::FeatureKind::for_mode(
            self.mode,
            self.backbone,
            self.orientation_mean,
            self.multiscale,
        )
    }

    /// What the model is, in words: the mode, the backbone and the features a probe reads.
    pub fn mode_name(&self) -> String {
        let lite = self
            .backbone
            .short_name()
            .replace("lite", "EfficientNet-Lite");
        match self.mode {
            Mode::Probe => {
                let mut features = String::from("features");
                if self.multiscale {
                    features.insert_str(0, "multi-scale ");
                }
                if self.orientation_mean {
                    features.push_str(" averaged over 8 orientations");
                }
                format!("linear probe on {lite} {features}")
            }
            Mode::Finetune => format!("fine-tuned {lite}"),
            Mode::Scratch => "small CNN trained from scratch".to_owned(),
        }
    }
}

/// A fine-tuned network as saved: backbone and head under one root.
#[derive(Module, Debug)]
pub struct FinetuneWeights {
    pub backbone: EfficientNetLite,
    pub head: Head,
}

/// A trained model ready for inference.
pub struct Classifier {
    pub info: ModelInfo,
    net: Net,
    standardiser: Standardiser,
    device: Device,
    /// Test-time augmentation (see [`Self::with_orientation_tta`]).
    tta: bool,
}

#[allow(clippy::large_enum_variant)] // one per loaded model
enum Net {
    /// Backbone features into a head: a probe (standardised features, frozen pretrained
    /// backbone) or a fine-tuned network.
    Features {
        backbone: Extractor,
        head: Head,
    },
    Scratch(SmallCnn),
}

impl Classifier {
    /// Loads `model.safetensors` and `model.json` of a run folder onto `device`.
    pub fn load(run: &Path, device: &Device) -> anyhow::Result<Self> {
        let path = run.join("model.json");
        let bytes = crate::fs::read(&path)
            .with_context(|| format!("no model.json in {}", run.display()))?;
        // The version first: a newer cellbench's model.json may not read as this one's.
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(default)]
            format_version: u32,
        }
        let version: Version = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {} (damaged?)", path.display()))?;
        crate::fsio::check_format_version(version.format_version, &path)?;
        let info: ModelInfo = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading {} (damaged?)", path.display()))?;
        let bytes = crate::fs::read(run.join("model.safetensors")).with_context(|| {
            format!(
                "no model.safetensors in {} (did the run finish?)",
                run.display()
            )
        })?;
        Self::from_bytes(info, bytes, device)
            .with_context(|| format!("loading the model of {}", run.display()))
    }

    /// A model from its description and safetensors bytes (as a run saves them).
    pub fn from_bytes(info: ModelInfo, bytes: Vec<u8>, device: &Device) -> anyhow::Result<Self> {
        let k = info.outputs();
        let width = info.feature_kind().width();
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        let net = match info.mode {
            Mode::Probe => {
                let mut head = Head::new(width, k, 0.0, device);
                head.load_from(&mut store)?;
                Net::Features {
                    backbone: Extractor::bundled(info.backbone, device)?,
                    head,
                }
            }
            Mode::Finetune => {
                let mut w = FinetuneWeights {
                    backbone: EfficientNetLite::new(info.backbone, device),
                    head: Head::new(FEATURES, k, 0.0, device),
                };
                w.load_from(&mut store)?;
                Net::Features {
                    backbone: Extractor::new(w.backbone, device),
                    head: w.head,
                }
            }
            Mode::Scratch => {
                let mut cnn = SmallCnn::new(k, 0.0, device);
                cnn.load_from(&mut store)?;
                Net::Scratch(cnn)
            }
        };
        // A probe was trained on standardised features; a fine-tuned head on raw ones.
        let standardiser = if info.feature_mean.len() == width && info.feature_std.len() == width {
            Standardiser {
                mean: info.feature_mean.clone(),
                std: info.feature_std.clone(),
            }
        } else {
            Standardiser::default()
        };
        Ok(Self {
            info,
            net,
            standardiser,
            device: device.clone(),
            tta: false,
        })
    }

    /// Test-time augmentation: each image's probabilities become the mean of those of its 8
    /// orientations (flips and quarter turns; cells have no up), at 8 times the compute.
    /// Applies to [`Self::probabilities`] and what calls it (batch prediction, the endpoint).
    pub fn with_orientation_tta(mut self, on: bool) -> Self {
        self.tta = on;
        self
    }

    /// Whether [`Self::with_orientation_tta`] is on.
    pub fn orientation_tta(&self) -> bool {
        self.tta
    }

    /// The backbone features this model's head reads for preprocessed CHW inputs (`n`
    /// images concatenated), before standardisation; `None` for a CNN trained from scratch.
    pub fn features(&self, chw: Vec<f32>, n: usize) -> Option<Vec<f32>> {
        let side = self.info.preprocess.size as usize;
        match &self.net {
            Net::Features { backbone, .. } => {
                Some(backbone.features_of(&self.info.feature_kind(), chw, n, side))
            }
            Net::Scratch(_) => None,
        }
    }

    /// The probabilities of logits: the decision rule, at the fitted temperature if any.
    fn decide(&self, logits: Tensor<2>) -> Vec<Vec<f32>> {
        let logits = match self.info.temperature {
            Some(t) if t > 0.0 && !self.info.cumulative && self.info.task != Task::MultiLabel => {
                logits.div_scalar(t)
            }
            _ => logits,
        };
        decision::probabilities(self.info.task, self.info.cumulative, logits)
    }

    /// Probabilities from backbone features (`n` rows of the feature kind's width, as
    /// [`Self::features`] gives them): standardisation, head, decision rules.
    pub fn probabilities_from_features(&self, mut features: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        let Net::Features { head, .. } = &self.net else {
            return Vec::new();
        };
        if n == 0 {
            return Vec::new();
        }
        self.standardiser.apply(&mut features);
        let width = self.info.feature_kind().width();
        let logits = head.forward(Tensor::<2>::from_data(
            TensorData::new(features, [n, width]),
            &self.device,
        ));
        self.decide(logits)
    }

    /// Class probabilities (softmax; sigmoid per label for multi-label; one per grade for an
    /// ordinal head) of preprocessed CHW inputs, `n` images concatenated; with test-time
    /// augmentation on, the mean over each image's orientations.
    pub fn probabilities(&self, chw: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        if n == 0 {
            return Vec::new();
        }
        if !self.tta {
            return self.probabilities_once(chw, n);
        }
        use crate::dataset::preprocess::{ORIENTATIONS, orientations};
        let side = self.info.preprocess.size as usize;
        let per_image = 3 * side * side;
        let mut out = Vec::with_capacity(n);
        // A few images at a time bounds the memory of their views.
        for group in chw.chunks(per_image * 4) {
            let images = group.len() / per_image;
            let probs = self.probabilities_once(orientations(group, side), images * ORIENTATIONS);
            for per_view in probs.chunks(ORIENTATIONS) {
                let mut mean = vec![0.0f32; per_view.first().map_or(0, Vec::len)];
                for p in per_view {
                    mean.iter_mut().zip(p).for_each(|(m, v)| *m += v);
                }
                out.push(
                    mean.into_iter()
                        .map(|m| m / per_view.len() as f32)
                        .collect(),
                );
            }
        }
        out
    }

    /// [`Self::probabilities`] of the images as given.
    fn probabilities_once(&self, chw: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        match &self.net {
            Net::Features { .. } => {
                let f = self.features(chw, n).unwrap_or_default();
                self.probabilities_from_features(f, n)
            }
            Net::Scratch(c) => {
                let side = self.info.preprocess.size as usize;
                let logits = c.forward(Tensor::<4>::from_data(
                    TensorData::new(chw, [n, 3, side, side]),
                    &self.device,
                ));
                self.decide(logits)
            }
        }
    }

    /// Probabilities for one decoded image.
    pub fn classify(&self, img: &image::DynamicImage) -> Vec<f32> {
        self.probabilities(self.info.preprocess.apply(img), 1)
            .pop()
            .unwrap_or_default()
    }

    /// Where the score of output `class` (default: the most probable class) comes from in a
    /// decoded image: the exact class activation map of the backbone's last feature map
    /// through the head ([`super::saliency`]). For a cumulative ordinal head the map explains
    /// the grade score (all thresholds together). Computed on the CPU network.
    pub fn saliency(
        &self,
        img: &image::DynamicImage,
        class: Option<usize>,
    ) -> anyhow::Result<super::saliency::Saliency> {
        let Net::Features { backbone, head } = &self.net else {
            anyhow::bail!(
                "saliency maps need the pretrained backbone (a probe or a fine-tuned model); this run is a small CNN trained from scratch"
            );
        };
        let Extractor::Cpu(net) = backbone else {
            anyhow::bail!(
                "saliency maps are computed on the CPU: load the model with the CPU backend"
            );
        };
        let chw = self.info.preprocess.apply(img);
        let outputs = self.info.outputs();
        // The map is computed on the image at twice the model's input side: the network is
        // convolutional up to the pooling, so the same head weighs a 14×14 grid instead of
        // 7×7 (16-pixel cells of the model's view rather than 32).
        let fine = Preprocess {
            size: self.info.preprocess.size * SALIENCY_SCALE,
            ..self.info.preprocess.clone()
        };
        let fine_side = fine.size as usize;
        let fine_chw = fine.apply(img);
        let class = match class {
            Some(c) => {
                anyhow::ensure!(
                    c < self.info.labels.len(),
                    "no class {c}: the model has {} labels",
                    self.info.labels.len()
                );
                c
            }
            None => decision::argmax(&self.probabilities(chw.clone(), 1).pop().unwrap_or_default()),
        };
        let (map, height, width) = net.feature_map(&fine_chw, fine_side, fine_side);
        // burn's layout: weight[feature][output].
        let weight = head
            .fc
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the head's weights: {e:?}"))?;
        let row: Vec<f32> = if self.info.cumulative {
            weight
                .chunks_exact(outputs)
                .map(|w| w.iter().sum())
                .collect()
        } else {
            weight.chunks_exact(outputs).map(|w| w[class]).collect()
        };
        let kind = self.info.feature_kind();
        let std: &[f32] = if self.standardiser.std.len() == kind.width() {
            &self.standardiser.std
        } else {
            &[]
        };
        let parts = kind.parts();
        let part_std = |i: usize| std.get(parts[i].clone()).unwrap_or(&[]);
        let mut values = super::saliency::class_activation_map(
            &map,
            FEATURES,
            &row[parts[0].clone()],
            part_std(0),
        );
        // Multi-scale: each earlier stage's share of the score, on the final grid.
        let taps = kind.taps();
        for (i, (tap, (h, w, c))) in net
            .tap_maps(&fine_chw, fine_side, fine_side, &taps)
            .into_iter()
            .enumerate()
        {
            let cam = super::saliency::class_activation_map(
                &tap,
                c,
                &row[parts[i + 1].clone()],
                part_std(i + 1),
            );
            let cam = super::saliency::to_grid(&cam, (h, w), (height, width));
            values.iter_mut().zip(cam).for_each(|(v, t)| *v += t);
        }
        let label = self.info.labels.get(class).cloned().unwrap_or_default();
        let mut explains = if self.info.cumulative {
            "the grade score (all thresholds)".to_owned()
        } else {
            format!("the score of {label}")
        };
        if self.info.orientation_mean {
            explains.push_str(" (upright view of a model trained on 8 orientations)");
        }
        Ok(super::saliency::Saliency {
            width,
            height,
            values,
            class,
            explains,
            input_side: fine_side,
        })
    }

    /// The predicted label(s) for a probability vector ([`decision::predicted_label`]).
    pub fn predicted(&self, probs: &[f32]) -> String {
        decision::predicted_label(self.info.task, &self.info.labels, probs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(extra: serde_json::Value) -> ModelInfo {
        let mut v = serde_json::json!({
            "mode": "probe",
            "task": "multi-class",
            "labels": ["a", "b", "c"],
            "preprocess": Preprocess::default(),
            "finetune_start": 0,
            "feature_mean": [],
            "feature_std": [],
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    /// A run saved by a newer cellbench is refused by its version, named with its file, even
    /// when the rest of its model.json no longer reads as this version's; a damaged one names
    /// its file too.
    #[test]
    fn a_newer_or_damaged_model_is_refused_with_its_file_named() {
        let run = tempfile::tempdir().unwrap();
        let path = run.path().join("model.json");
        let device = Device::flex();
        crate::fs::write(&path, r#"{"format_version": 99, "head": {"kind": "new"}}"#).unwrap();
        let err = format!("{:#}", Classifier::load(run.path(), &device).err().unwrap());
        assert!(err.contains("format 99 by a newer cellbench"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        crate::fs::write(&path, r#"{"format_version": 1, "mode": "pro"#).unwrap();
        let err = format!("{:#}", Classifier::load(run.path(), &device).err().unwrap());
        assert!(err.contains("(damaged?)"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }

    /// A model says what it is: its backbone and the features its probe reads; a
    /// `model.json` from before multi-scale features reads as plain ones.
    #[test]
    fn a_model_names_its_backbone_and_features() {
        let old = info(serde_json::json!({}));
        assert!(!old.multiscale);
        assert_eq!(old.feature_kind().width(), FEATURES);
        assert_eq!(
            old.mode_name(),
            "linear probe on EfficientNet-Lite0 features"
        );
        let multi = info(serde_json::json!({
            "backbone": "efficientnet-lite2",
            "multiscale": true,
            "orientation_mean": true,
        }));
        assert_eq!(
            multi.mode_name(),
            "linear probe on EfficientNet-Lite2 multi-scale features averaged over 8 orientations"
        );
        assert_eq!(multi.feature_kind().width(), FEATURES + 120 + 208);
        let tuned = info(serde_json::json!({"mode": "finetune", "multiscale": true}));
        assert_eq!(tuned.mode_name(), "fine-tuned EfficientNet-Lite0");
        assert_eq!(
            tuned.feature_kind().width(),
            FEATURES,
            "a fine-tuned head reads the final pool"
        );
    }
}
