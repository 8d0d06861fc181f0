//! Batches and losses: cached features or decoded, augmented images in a seeded order; the
//! loss of each task; one training epoch and a forward pass over one side of the data.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::optim::ModuleOptimizer;
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::dataset::preprocess::{Augment, Preprocess};
use crate::dataset::split::SplitMix64;
use crate::model::Classifier;
use crate::model::decision::{self};
use crate::model::efficientnet::FEATURES;
use crate::model::extractor::Extractor;

use super::data::Prepared;
use super::net::{Input, Net};
use super::ordinal;
use crate::experiment::config::{Imbalance, TrainConfig};
use crate::experiment::metrics::Target;
use crate::experiment::metrics::{self, Metrics, Task};

/// Feeds batches: cached features (probe) or decoded, augmented images. One value per run.
#[allow(clippy::large_enum_variant)]
pub(super) enum Feeder {
    Features {
        /// Standardised features per item (`None`: the image failed).
        rows: Vec<Option<Vec<f32>>>,
    },
    Images {
        preprocess: Preprocess,
        augment: Augment,
        /// Frozen part of a fine-tuned backbone, run without gradients.
        prefix: Option<(Extractor, usize)>,
    },
}

pub(super) struct Batch {
    pub(super) input: Input,
    /// Items actually in the batch (failed images left out).
    pub(super) items: Vec<usize>,
    pub(super) failures: Vec<(PathBuf, String)>,
}

impl Feeder {
    pub(super) fn batch(
        &self,
        data: &Prepared,
        idx: &[usize],
        train: bool,
        rng: &mut SplitMix64,
        device: &Device,
        plain: &Device,
    ) -> Batch {
        match self {
            Self::Features { rows } => {
                let items: Vec<usize> =
                    idx.iter().copied().filter(|&i| rows[i].is_some()).collect();
                let width = items
                    .first()
                    .and_then(|&i| rows[i].as_ref())
                    .map_or(FEATURES, Vec::len);
                let mut flat = Vec::with_capacity(items.len() * width);
                for &i in &items {
                    flat.extend_from_slice(rows[i].as_deref().unwrap_or_default());
                }
                let x = Tensor::<2>::from_data(TensorData::new(flat, [items.len(), width]), device);
                Batch {
                    input: Input::Features(x),
                    items,
                    failures: Vec::new(),
                }
            }
            Self::Images {
                preprocess,
                augment,
                ..
            } => {
                let seeds: Vec<u64> = idx.iter().map(|_| rng.next_u64()).collect();
                let decoded = decode_images(preprocess, augment, data, idx, train, &seeds);
                self.images_batch(decoded, device, plain)
            }
        }
    }

    /// The device half of a batch of images: the tensor, through the frozen prefix of a
    /// fine-tuned backbone when there is one.
    fn images_batch(&self, decoded: Decoded, device: &Device, plain: &Device) -> Batch {
        let Self::Images {
            preprocess, prefix, ..
        } = self
        else {
            unreachable!("only image feeders decode images")
        };
        let side = preprocess.size as usize;
        let Decoded {
            items,
            flat,
            failures,
        } = decoded;
        let n = items.len();
        let input = match prefix {
            Some((frozen, start)) => {
                let y = frozen.prefix(flat, n, side, *start, plain);
                Input::Images(if device.is_autodiff() {
                    y.autodiff()
                } else {
                    y
                })
            }
            None => Input::Images(Tensor::<4>::from_data(
                TensorData::new(flat, [n, 3, side, side]),
                device,
            )),
        };
        Batch {
            input,
            items,
            failures,
        }
    }
}

/// The CPU half of a batch of images: decoded, preprocessed and (when training) augmented,
/// each image with its own seed.
pub(super) struct Decoded {
    items: Vec<usize>,
    flat: Vec<f32>,
    failures: Vec<(PathBuf, String)>,
}

pub(super) fn decode_images(
    preprocess: &Preprocess,
    augment: &Augment,
    data: &Prepared,
    idx: &[usize],
    train: bool,
    seeds: &[u64],
) -> Decoded {
    let side = preprocess.size as usize;
    let loaded: Vec<(usize, Result<Vec<f32>, String>)> = idx
        .par_iter()
        .zip(seeds)
        .map(|(&i, &seed)| {
            let r = preprocess
                .load(&data.items[i].path)
                .map_err(|e| e.to_string());
            let r = r.map(|mut chw| {
                if train && !augment.is_identity() {
                    augment.apply(&mut chw, side, &mut SplitMix64::new(seed));
                }
                chw
            });
            (i, r)
        })
        .collect();
    let mut decoded = Decoded {
        items: Vec::new(),
        flat: Vec::new(),
        failures: Vec::new(),
    };
    for (i, r) in loaded {
        match r {
            Ok(chw) => {
                decoded.items.push(i);
                decoded.flat.extend(chw);
            }
            Err(e) => decoded.failures.push((data.items[i].path.clone(), e)),
        }
    }
    decoded
}

/// Calls `f` with the batches of `chunks`, in order. Images are decoded and augmented on a
/// loader thread up to two batches ahead of `f`, so the device (a GPU above all) does not wait
/// for the CPU; their tensors are made on the calling thread. The images, their seeds and the
/// order are those of decoding each batch inline ([`Feeder::batch`]), so a run is the same
/// with or without the loader. `f` stops the pass by returning `Break`.
pub(super) fn for_each_batch(
    feeder: &Feeder,
    data: &Prepared,
    chunks: &[&[usize]],
    train: bool,
    rng: &mut SplitMix64,
    (device, plain): (&Device, &Device),
    f: &mut dyn FnMut(usize, Batch) -> anyhow::Result<std::ops::ControlFlow<()>>,
) -> anyhow::Result<()> {
    let Feeder::Images {
        preprocess,
        augment,
        ..
    } = feeder
    else {
        for (b, chunk) in chunks.iter().enumerate() {
            if f(b, feeder.batch(data, chunk, train, rng, device, plain))?.is_break() {
                break;
            }
        }
        return Ok(());
    };
    let seeds: Vec<Vec<u64>> = chunks
        .iter()
        .map(|c| c.iter().map(|_| rng.next_u64()).collect())
        .collect();
    let decode = |b: usize| decode_images(preprocess, augment, data, chunks[b], train, &seeds[b]);
    // The browser has no threads: decode inline, between the steps.
    #[cfg(target_arch = "wasm32")]
    for b in 0..chunks.len() {
        if f(b, feeder.images_batch(decode(b), device, plain))?.is_break() {
            break;
        }
    }
    #[cfg(target_arch = "wasm32")]
    return Ok(());
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Decoded>(1);
        let decode = &decode;
        let loader = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn_scoped(scope, move || {
                for b in 0..chunks.len() {
                    // The receiver is gone when the pass stopped early.
                    if tx.send(decode(b)).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = loader {
            log::warn!("no batch loader thread ({e}); decoding between the steps");
            for b in 0..chunks.len() {
                if f(b, feeder.images_batch(decode(b), device, plain))?.is_break() {
                    break;
                }
            }
            return Ok(());
        }
        for (b, decoded) in rx.iter().enumerate() {
            if f(b, feeder.images_batch(decoded, device, plain))?.is_break() {
                break;
            }
        }
        Ok(())
    })
}

/// Loss weights per class (single-label) or positive weights per label (multi-label).
pub(super) fn loss_weights(data: &Prepared, imbalance: Imbalance) -> Vec<f32> {
    let counts = data.train_class_counts();
    let k = counts.len();
    let n = data.train.len() as f32;
    if imbalance != Imbalance::ClassWeights {
        return vec![1.0; k];
    }
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else if data.task == Task::MultiLabel {
                ((n - c as f32) / c as f32).clamp(1.0, 50.0)
            } else {
                n / (k as f32 * c as f32)
            }
        })
        .collect()
}

/// `log(1 + e^x)`, stable for large `|x|`.
pub(super) fn softplus(x: Tensor<2>) -> Tensor<2> {
    x.clone().clamp_min(0.0) + (x.abs().neg().exp() + 1.0).log()
}

/// Loss of a batch and the probabilities (detached, for metrics).
pub(super) fn loss_and_probs(
    task: Task,
    logits: Tensor<2>,
    data: &Prepared,
    items: &[usize],
    weights: &[f32],
) -> (Tensor<1>, Vec<Vec<f32>>) {
    let device = logits.device();
    let [b, k] = logits.dims();
    if task == Task::Ordinal {
        // `k` cumulative logits for `k + 1` grades; binary cross-entropy per threshold,
        // each sample weighted by its grade's class weight.
        let grades: Vec<usize> = items.iter().map(|&i| class_of(data, i)).collect();
        let t: Vec<f32> = grades
            .iter()
            .flat_map(|&g| ordinal::targets(g, k + 1))
            .collect();
        let w: Vec<f32> = grades.iter().map(|&g| weights[g]).collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [b, k]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
        let bce =
            t.clone() * softplus(logits.clone().neg()) + (t.neg() + 1.0) * softplus(logits.clone());
        let per_sample: Tensor<1> = bce.mean_dim(1).reshape([b]);
        let loss = (per_sample * w.clone()).sum() / w.sum();
        let probs = decision::probabilities(task, true, logits.detach());
        return (loss, probs);
    }
    if task == Task::MultiLabel {
        let t: Vec<f32> = items
            .iter()
            .flat_map(|&i| match &data.items[i].target {
                Target::Multi(f) => f
                    .iter()
                    .map(|&v| f32::from(u8::from(v)))
                    .collect::<Vec<_>>(),
                Target::Class(c) => (0..k).map(|j| f32::from(u8::from(j == *c))).collect(),
            })
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [b, k]), &device);
        let pw =
            Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [k]), &device).reshape([1, k]);
        // Weighted BCE with logits: pw·t·softplus(−x) + (1−t)·softplus(x).
        let pos = t.clone() * pw * softplus(logits.clone().neg());
        let neg = (t.neg() + 1.0) * softplus(logits.clone());
        let loss = (pos + neg).mean();
        (loss, decision::probabilities(task, false, logits.detach()))
    } else {
        let y: Vec<i64> = items
            .iter()
            .map(|&i| match &data.items[i].target {
                Target::Class(c) => *c as i64,
                Target::Multi(_) => 0,
            })
            .collect();
        let w: Vec<f32> = y.iter().map(|&c| weights[c as usize]).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [b]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
        let lp = activation::log_softmax(logits.clone(), 1);
        let picked: Tensor<1> = lp.gather(1, y.reshape([b, 1])).reshape([b]);
        let loss = (picked * w.clone()).sum().neg() / w.sum();
        (loss, decision::probabilities(task, false, logits.detach()))
    }
}

pub(super) fn evaluate(data: &Prepared, items: &[usize], probs: &[Vec<f32>]) -> Metrics {
    if data.task == Task::MultiLabel {
        let truth: Vec<Vec<bool>> = items
            .iter()
            .map(|&i| match &data.items[i].target {
                Target::Multi(f) => f.clone(),
                Target::Class(_) => vec![false; data.labels.len()],
            })
            .collect();
        metrics::evaluate_multi_label(&data.labels, &truth, probs, decision::MULTI_LABEL_THRESHOLD)
    } else {
        let truth: Vec<usize> = items.iter().map(|&i| class_of(data, i)).collect();
        metrics::evaluate_single(data.task, &data.labels, &truth, probs)
    }
}

pub(super) fn class_of(data: &Prepared, i: usize) -> usize {
    match &data.items[i].target {
        Target::Class(c) => *c,
        Target::Multi(_) => 0,
    }
}

/// One pass over the training side.
pub(super) struct EpochResult {
    pub(super) net: Net,
    /// Items trained on, in order, with the probabilities the network gave them.
    pub(super) seen: Vec<usize>,
    pub(super) probs: Vec<Vec<f32>>,
    /// Mean training loss.
    pub(super) loss: f64,
    pub(super) failures: Vec<(PathBuf, String)>,
    /// Stopped through the cancel flag before the end of the epoch.
    pub(super) cancelled: bool,
}

/// Trains one epoch: batches in a seeded (or class-balanced) order, one optimiser step each.
/// Fails on a non-finite loss; stops between batches when `cancel` is set.
#[allow(clippy::too_many_arguments)]
pub(super) fn train_epoch(
    net: Net,
    optims: &mut [ModuleOptimizer],
    feeder: &Feeder,
    data: &Prepared,
    config: &TrainConfig,
    (epoch, lr): (u32, f64),
    weights: &[f32],
    rng: &mut SplitMix64,
    (ad, plain): (&Device, &Device),
    finetune_start: usize,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<EpochResult> {
    let order = epoch_order(data, config.imbalance, rng);
    let (mut seen, mut probs, mut failures, mut loss_sum) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0);
    let total = order.len();
    let chunks: Vec<&[usize]> = order.chunks(config.batch_size.max(1)).collect();
    let mut net = Some(net);
    let mut cancelled = false;
    for_each_batch(
        feeder,
        data,
        &chunks,
        true,
        rng,
        (ad, plain),
        &mut |b, batch| {
            if cancel.load(Ordering::Relaxed) {
                cancelled = true;
                return Ok(std::ops::ControlFlow::Break(()));
            }
            failures.extend(batch.failures);
            if batch.items.is_empty() {
                return Ok(std::ops::ControlFlow::Continue(()));
            }
            let current = net.take().expect("the network is back after each step");
            let logits = current.logits(batch.input, finetune_start);
            let (loss, p) = loss_and_probs(data.task, logits, data, &batch.items, weights);
            let loss_value = f64::from(loss.clone().into_scalar::<f32>());
            if !loss_value.is_finite() {
                anyhow::bail!(
                    "the loss became {loss_value} in epoch {epoch}, batch {}: lower the learning rate (now {lr:.2e})",
                    b + 1
                );
            }
            // A probe minimises the mean loss plus `weight_decay · ½‖W‖²`.
            let objective = match current.l2_term() {
                Some(l2) if config.weight_decay > 0.0 => loss + l2 * config.weight_decay,
                _ => loss,
            };
            net = Some(current.step(optims, lr, objective));
            loss_sum += loss_value * batch.items.len() as f64;
            seen.extend(batch.items);
            probs.extend(p);
            progress(((b + 1) * config.batch_size).min(total), total);
            Ok(std::ops::ControlFlow::Continue(()))
        },
    )?;
    let net = net.expect("the network is back after the pass");
    if cancelled {
        return Ok(EpochResult {
            net,
            seen,
            probs,
            loss: f64::NAN,
            failures,
            cancelled: true,
        });
    }
    let loss = loss_sum / seen.len().max(1) as f64;
    Ok(EpochResult {
        net,
        seen,
        probs,
        loss,
        failures,
        cancelled: false,
    })
}

/// Predictions of one side of the data.
pub(super) struct SidePredictions {
    /// Items predicted (images that failed to load are left out).
    pub(super) kept: Vec<usize>,
    pub(super) probs: Vec<Vec<f32>>,
    /// Mean loss over `kept`.
    pub(super) loss: f64,
    pub(super) failures: Vec<(PathBuf, String)>,
}

/// Runs a forward pass without gradients over `items`.
#[allow(clippy::too_many_arguments)]
pub(super) fn predict_side(
    net: &Net,
    feeder: &Feeder,
    data: &Prepared,
    items: &[usize],
    batch_size: usize,
    finetune_start: usize,
    weights: &[f32],
    plain: &Device,
) -> SidePredictions {
    let mut rng = SplitMix64::new(0);
    let (mut kept, mut probs, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    let chunks: Vec<&[usize]> = items.chunks(batch_size.max(1)).collect();
    let pass = for_each_batch(
        feeder,
        data,
        &chunks,
        false,
        &mut rng,
        (plain, plain),
        &mut |_, batch| {
            failures.extend(batch.failures);
            if !batch.items.is_empty() {
                let logits = net.logits(batch.input, finetune_start);
                let (loss, p) = loss_and_probs(data.task, logits, data, &batch.items, weights);
                loss_sum += f64::from(loss.into_scalar::<f32>()) * batch.items.len() as f64;
                kept.extend(batch.items);
                probs.extend(p);
            }
            Ok(std::ops::ControlFlow::Continue(()))
        },
    );
    // The pass fails only when `f` does, and it never does.
    debug_assert!(pass.is_ok());
    let mean = if kept.is_empty() {
        f64::NAN
    } else {
        loss_sum / kept.len() as f64
    };
    SidePredictions {
        kept,
        probs,
        loss: mean,
        failures,
    }
}

/// One side's probabilities through the saved model's contract ([`Classifier`]): the
/// preprocessing, forward pass and probabilities of `cellbench predict`, `serve`, evaluation
/// and the GUI, so that a run's `predictions.csv` is what they answer. Cached probe features
/// are handed over in the backbone's own scale (the classifier standardises them as it does
/// for features it extracts); images are decoded without augmentation. Items whose image
/// failed are left out.
pub(super) fn classify_side(
    classifier: &Classifier,
    feeder: &Feeder,
    data: &Prepared,
    items: &[usize],
    batch_size: usize,
) -> (Vec<usize>, Vec<Vec<f32>>) {
    let (mut kept, mut probs) = (Vec::new(), Vec::new());
    let scale = decision::Standardiser {
        mean: classifier.info.feature_mean.clone(),
        std: classifier.info.feature_std.clone(),
    };
    for chunk in items.chunks(batch_size.max(1)) {
        match feeder {
            Feeder::Features { rows } => {
                let present: Vec<usize> = chunk
                    .iter()
                    .copied()
                    .filter(|&i| rows[i].is_some())
                    .collect();
                let mut flat = Vec::new();
                for &i in &present {
                    flat.extend_from_slice(rows[i].as_deref().unwrap_or_default());
                }
                scale.restore(&mut flat);
                probs.extend(classifier.probabilities_from_features(flat, present.len()));
                kept.extend(present);
            }
            Feeder::Images { augment, .. } => {
                let seeds = vec![0; chunk.len()];
                let decoded = decode_images(
                    &classifier.info.preprocess,
                    augment,
                    data,
                    chunk,
                    false,
                    &seeds,
                );
                probs.extend(classifier.probabilities(decoded.flat, decoded.items.len()));
                kept.extend(decoded.items);
            }
        }
    }
    (kept, probs)
}

/// The mean loss of `probs` for `items`, as [`loss_and_probs`] computes it from logits (the
/// reported loss of a side is that of the probabilities it reports): class-weighted
/// cross-entropy; for multi-label, binary cross-entropy per label with the positive weights;
/// for an ordinal task, binary cross-entropy per threshold `P(grade > j)` (sums of the grade
/// probabilities), each image weighted by its grade's weight. Probabilities are floored at
/// 1e-12.
pub(super) fn side_loss(
    data: &Prepared,
    items: &[usize],
    probs: &[Vec<f32>],
    weights: &[f32],
) -> f64 {
    let ln = |p: f64| p.max(1e-12).ln();
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (&i, p) in items.iter().zip(probs) {
        match data.task {
            Task::MultiLabel => {
                let truth: Vec<bool> = match &data.items[i].target {
                    Target::Multi(f) => f.clone(),
                    Target::Class(c) => (0..p.len()).map(|j| j == *c).collect(),
                };
                for ((&q, t), w) in p.iter().zip(truth).zip(weights) {
                    let q = f64::from(q);
                    sum -= if t {
                        f64::from(*w) * ln(q)
                    } else {
                        ln(1.0 - q)
                    };
                    total += 1.0;
                }
            }
            Task::Ordinal => {
                let grade = class_of(data, i);
                let w = f64::from(weights.get(grade).copied().unwrap_or(1.0));
                let thresholds = p.len().saturating_sub(1).max(1);
                let mut above: f64 = p.iter().map(|&q| f64::from(q)).sum();
                let mut per_image = 0.0;
                for (j, &q) in p.iter().take(p.len().saturating_sub(1)).enumerate() {
                    above -= f64::from(q);
                    per_image -= if grade > j {
                        ln(above)
                    } else {
                        ln(1.0 - above)
                    };
                }
                sum += w * per_image / thresholds as f64;
                total += w;
            }
            Task::Binary | Task::MultiClass => {
                let c = class_of(data, i);
                let w = f64::from(weights.get(c).copied().unwrap_or(1.0));
                sum -= w * ln(f64::from(p[c]));
                total += w;
            }
        }
    }
    if total > 0.0 { sum / total } else { f64::NAN }
}

/// Training order of one epoch: a seeded shuffle, or class-balanced sampling with replacement.
pub(super) fn epoch_order(
    data: &Prepared,
    imbalance: Imbalance,
    rng: &mut SplitMix64,
) -> Vec<usize> {
    let mut order = data.train.clone();
    if imbalance == Imbalance::Oversample && data.task != Task::MultiLabel {
        let counts = data.train_class_counts();
        let weight = |i: usize| 1.0 / counts[class_of(data, i)].max(1) as f64;
        let total: f64 = data.train.iter().map(|&i| weight(i)).sum();
        order = (0..data.train.len())
            .map(|_| {
                let mut r = rng.unit() * total;
                for &i in &data.train {
                    r -= weight(i);
                    if r <= 0.0 {
                        return i;
                    }
                }
                *data.train.last().expect("non-empty")
            })
            .collect();
    } else {
        rng.shuffle(&mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::config::Mode;
    use crate::model::heads::Head;
    use crate::train::engine::synthetic_features;
    use crate::train::net::optimizer;

    /// Trains the epoch-based probe on synthetic features; returns `‖W‖` and the validation
    /// loss.
    fn probe_norm(weight_decay: f64) -> (f64, f64) {
        let config = TrainConfig {
            mode: Mode::Probe,
            epochs: 30,
            learning_rate: 1e-2,
            weight_decay,
            ..TrainConfig::default()
        };
        let (data, feeder) = synthetic_features(120, 3, 5);
        let plain = Device::flex();
        let ad = plain.clone().autodiff();
        let weights = loss_weights(&data, config.imbalance);
        let mut net = Net::Probe(Head::zeros(FEATURES, 3, 0.0, &ad)).train_mode();
        let mut optims = vec![optimizer(&config), optimizer(&config)];
        let mut rng = SplitMix64::new(1);
        for epoch in 0..config.epochs {
            net = train_epoch(
                net,
                &mut optims,
                &feeder,
                &data,
                &config,
                (epoch + 1, config.learning_rate_at(epoch, 1.0)),
                &weights,
                &mut rng,
                (&ad, &plain),
                0,
                &AtomicBool::new(false),
                &mut |_, _| {},
            )
            .unwrap()
            .net;
        }
        let net = net.valid();
        let Net::Probe(head) = &net else {
            unreachable!()
        };
        let norm = f64::from(
            head.half_squared_norm()
                .into_scalar::<f32>()
                .mul_add(2.0, 0.0)
                .sqrt(),
        );
        let val = predict_side(&net, &feeder, &data, &data.val, 32, 0, &weights, &plain);
        (norm, val.loss)
    }

    /// The probe's weight decay is the L2 term of its objective: each tenfold step shrinks the
    /// weights, where AdamW's decoupled decay left every setting below 1 indistinguishable.
    #[test]
    fn probe_weight_decay_shrinks_the_weights() {
        let norms: Vec<f64> = [1e-4, 1e-2, 1e-1, 1.0]
            .iter()
            .map(|&wd| probe_norm(wd).0)
            .collect();
        for w in norms.windows(2) {
            assert!(w[1] < w[0] * 0.98, "norms by weight decay: {norms:?}");
        }
        assert!(
            norms[3] < norms[0] * 0.5,
            "norms by weight decay: {norms:?}"
        );
    }

    /// The loss a side reports from its probabilities is the training loss of its logits, for
    /// every task (class weights and positive weights included).
    #[test]
    fn side_loss_of_probabilities_is_the_loss_of_the_logits() {
        let device = Device::flex();
        let item = |target: Target| crate::train::data::Item {
            path: PathBuf::from("x"),
            name: "x".into(),
            patient: None,
            target,
        };
        let cases: Vec<(Task, usize, Vec<Target>)> = vec![
            (
                Task::Binary,
                2,
                vec![Target::Class(0), Target::Class(1), Target::Class(1)],
            ),
            (
                Task::MultiClass,
                3,
                vec![Target::Class(2), Target::Class(0), Target::Class(1)],
            ),
            (
                Task::MultiLabel,
                3,
                vec![
                    Target::Multi(vec![true, false, true]),
                    Target::Multi(vec![false, false, false]),
                    Target::Multi(vec![false, true, false]),
                ],
            ),
            // Four grades: three cumulative logits.
            (
                Task::Ordinal,
                3,
                vec![Target::Class(0), Target::Class(3), Target::Class(2)],
            ),
        ];
        for (task, outputs, targets) in cases {
            let labels = if task == Task::Ordinal { 4 } else { outputs };
            let data = Prepared {
                task,
                labels: (0..labels).map(|c| format!("c{c}")).collect(),
                items: targets.into_iter().map(item).collect(),
                train: Vec::new(),
                val: vec![0, 1, 2],
                test: Vec::new(),
                split_given: true,
            };
            let weights: Vec<f32> = (0..labels).map(|c| 0.5 + c as f32 * 0.75).collect();
            let raw: Vec<f32> = (0..3 * outputs)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.6)
                .collect();
            let mut logits = raw.clone();
            if task == Task::Ordinal {
                // Rank-consistent: the cumulative logits fall with the threshold.
                for row in logits.chunks_mut(outputs) {
                    row.sort_by(|a, b| b.total_cmp(a));
                }
            }
            let logits = Tensor::<2>::from_data(TensorData::new(logits, [3, outputs]), &device);
            let (loss, probs) = loss_and_probs(task, logits, &data, &data.val, &weights);
            let from_logits = f64::from(loss.into_scalar::<f32>());
            let from_probs = side_loss(&data, &data.val, &probs, &weights);
            assert!(
                (from_logits - from_probs).abs() < 1e-4 * from_logits.abs().max(1.0),
                "{task:?}: {from_logits} from logits, {from_probs} from probabilities"
            );
        }
    }
}
