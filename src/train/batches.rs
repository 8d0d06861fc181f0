//! Batches: cached features or decoded, augmented images in a seeded order; one training
//! epoch, a forward pass over one side of the data, and its scoring by the saved model.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::optim::ModuleOptimizer;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::dataset::preprocess::{Augment, Preprocess};
use crate::dataset::split::SplitMix64;
use crate::model::Classifier;
use crate::model::decision::{self};
use crate::model::efficientnet::FEATURES;
use crate::model::extractor::Extractor;

use super::data::Prepared;
use super::loss::loss_and_probs;
use super::net::{Input, Net};

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
    use crate::train::loss::loss_weights;
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
}
