//! Using a trained model: loading a run, batch prediction to CSV, and the HTTP endpoint.

pub mod evaluate;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use burn::store::{ModuleSnapshot as _, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData, activation};

use crate::model::efficientnet::{EfficientNetLite, FEATURES};
use crate::model::heads::{Head, SmallCnn};
use crate::train::engine::{FinetuneWeights, ModelInfo, csv_field};
use crate::train::features::Extractor;
use crate::train::{Mode, Task};

/// A trained model ready for inference.
pub struct Classifier {
    pub info: ModelInfo,
    net: Net,
    device: Device,
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
        let info: ModelInfo = serde_json::from_slice(
            &std::fs::read(run.join("model.json"))
                .with_context(|| format!("no model.json in {}", run.display()))?,
        )?;
        let bytes = std::fs::read(run.join("model.safetensors")).with_context(|| {
            format!(
                "no model.safetensors in {} (did the run finish?)",
                run.display()
            )
        })?;
        let k = info.outputs();
        let mut store = SafetensorsStore::from_bytes(Some(bytes));
        let net = match info.mode {
            Mode::Probe => {
                let mut head = Head::new(FEATURES, k, 0.0, device);
                head.load_from(&mut store)?;
                Net::Features {
                    backbone: Extractor::bundled(device)?,
                    head,
                }
            }
            Mode::Finetune => {
                let mut w = FinetuneWeights {
                    backbone: EfficientNetLite::lite0(device),
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
        Ok(Self {
            info,
            net,
            device: device.clone(),
        })
    }

    /// Class probabilities (softmax; sigmoid per label for multi-label) of preprocessed
    /// CHW inputs, `n` images concatenated.
    pub fn probabilities(&self, chw: Vec<f32>, n: usize) -> Vec<Vec<f32>> {
        if n == 0 {
            return Vec::new();
        }
        let side = self.info.preprocess.size as usize;
        let logits = match &self.net {
            Net::Features { backbone, head } => {
                let mut f = if self.info.orientation_mean {
                    backbone.features_orientation_mean(chw, n, side)
                } else {
                    backbone.features(chw, n, side)
                };
                // A probe was trained on standardised features; a fine-tuned head on raw ones.
                let (mean, std) = (&self.info.feature_mean, &self.info.feature_std);
                if mean.len() == FEATURES && std.len() == FEATURES {
                    for row in f.chunks_exact_mut(FEATURES) {
                        for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                            *v = (*v - m) / s;
                        }
                    }
                }
                head.forward(Tensor::<2>::from_data(
                    TensorData::new(f, [n, FEATURES]),
                    &self.device,
                ))
            }
            Net::Scratch(c) => c.forward(Tensor::<4>::from_data(
                TensorData::new(chw, [n, 3, side, side]),
                &self.device,
            )),
        };
        let probs = if self.info.task == Task::MultiLabel || self.info.cumulative {
            activation::sigmoid(logits)
        } else {
            activation::softmax(logits, 1)
        };
        let k = self.info.outputs();
        let v: Vec<f32> = probs
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default();
        v.chunks(k)
            .map(|row| {
                if self.info.cumulative {
                    crate::train::ordinal::class_probs(row)
                } else {
                    row.to_vec()
                }
            })
            .collect()
    }

    /// Probabilities for one decoded image.
    pub fn classify(&self, img: &image::DynamicImage) -> Vec<f32> {
        self.probabilities(self.info.preprocess.apply(img), 1)
            .pop()
            .unwrap_or_default()
    }

    /// The predicted label(s) for a probability vector.
    pub fn predicted(&self, probs: &[f32]) -> String {
        if self.info.task == Task::MultiLabel {
            let on: Vec<&str> = probs
                .iter()
                .zip(&self.info.labels)
                .filter(|(p, _)| **p >= 0.5)
                .map(|(_, l)| l.as_str())
                .collect();
            on.join("|")
        } else {
            let best = (0..probs.len())
                .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
                .unwrap_or(0);
            self.info.labels.get(best).cloned().unwrap_or_default()
        }
    }
}

/// Outcome of a batch prediction.
#[derive(Debug, serde::Serialize)]
pub struct PredictSummary {
    pub images: usize,
    pub predicted: usize,
    pub failed: Vec<(String, String)>,
}

/// Collects image files: a single image, a folder (recursively) or a dataset manifest CSV.
pub fn collect_inputs(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if input.is_dir() {
        let walk = crate::dataset::scan::walk_images(input);
        return Ok(walk.images.into_iter().map(|f| input.join(f.rel)).collect());
    }
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("csv") {
        let m = crate::dataset::open(input, &Default::default())?;
        return Ok(m.records.iter().map(|r| m.image_path(r)).collect());
    }
    anyhow::ensure!(
        input.exists(),
        "no such file or folder: {}",
        input.display()
    );
    Ok(vec![input.to_owned()])
}

/// Predicts every image and writes `path,predicted,p_<label>…` to `out` (atomically).
/// Unreadable images are listed in the summary and skipped.
pub fn predict_to_csv(
    classifier: &Classifier,
    paths: &[PathBuf],
    out: &Path,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PredictSummary> {
    use rayon::prelude::*;
    let mut text = String::from("path,predicted");
    for l in &classifier.info.labels {
        text.push_str(&format!(",{}", csv_field(&format!("p_{l}"))));
    }
    text.push('\n');
    let mut summary = PredictSummary {
        images: paths.len(),
        predicted: 0,
        failed: Vec::new(),
    };
    for (b, chunk) in paths.chunks(batch_size.max(1)).enumerate() {
        let loaded: Vec<Result<Vec<f32>, String>> = chunk
            .par_iter()
            .map(|p| {
                classifier
                    .info
                    .preprocess
                    .load(p)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let mut ok_paths = Vec::new();
        let mut flat = Vec::new();
        for (p, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(chw) => {
                    ok_paths.push(p);
                    flat.extend(chw);
                }
                Err(e) => summary.failed.push((p.display().to_string(), e)),
            }
        }
        let probs = classifier.probabilities(flat, ok_paths.len());
        for (p, pr) in ok_paths.iter().zip(&probs) {
            text.push_str(&format!(
                "{},{}",
                csv_field(&p.display().to_string()),
                csv_field(&classifier.predicted(pr))
            ));
            for v in pr {
                text.push_str(&format!(",{v:.6}"));
            }
            text.push('\n');
            summary.predicted += 1;
        }
        progress(((b + 1) * batch_size).min(paths.len()), paths.len());
    }
    crate::fsio::write_atomic_bytes(out, text.as_bytes())?;
    Ok(summary)
}
