//! The training loops (probe, fine-tune, scratch) behind `cellbench train`, the GUI's Train
//! cell and cluster jobs. All burn work of a run happens on the calling thread; callers run
//! it on a dedicated thread and receive [`TrainEvent`]s through `sink`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::store::{ModuleSnapshot as _, SafetensorsStore};
use burn::tensor::activation;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use crate::dataset::Manifest;
use crate::dataset::preprocess::{Augment, Preprocess};
use crate::dataset::split::SplitMix64;
use crate::model::backend::{self, Compute};
use crate::model::efficientnet::{EfficientNetLite, FEATURES, NUM_BLOCKS};
use crate::fsio::csv_field;
use crate::model::heads::{Head, SmallCnn};
use crate::model::decision::{self, Standardiser};
use crate::model::{FinetuneWeights, ModelInfo};
use crate::runs::{RunDir, RunState};

use super::config::{Imbalance, Mode, Optimizer, Schedule, TrainConfig};
use super::data::{Prepared, Target, prepare};
use super::events::{EpochSide, Phase, TrainEvent};
use super::features::{FeatureCache, featurize};
use crate::model::extractor::{Extractor, load_backbone};
use super::metrics::{self, Metrics, Task};
use super::ordinal;

/// Everything a training job needs.
pub struct TrainJob {
    pub config: TrainConfig,
    pub manifest: Manifest,
    /// How `manifest` was opened (saved in the run's `dataset.json`, so it can be resumed).
    pub options: crate::dataset::OpenOptions,
    /// Folder holding run folders (a new `<run-id>/` is created in it).
    pub runs_root: PathBuf,
    /// Continue this run folder from its last checkpoint instead of starting a new one.
    pub resume: Option<PathBuf>,
    /// Feature cache for probes (`None`: no caching).
    pub cache: Option<FeatureCache>,
}

/// How a job ended.
#[derive(Debug)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub run_id: String,
    pub state: RunState,
    /// Final validation metrics of the best epoch (finished runs).
    pub metrics: Option<Metrics>,
}

/// Per-epoch state saved with each checkpoint, enough to resume.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Progress {
    /// Epochs completed.
    epoch: u32,
    best_epoch: u32,
    best_val_loss: f64,
    plateau_scale: f64,
    /// Epochs since the best validation loss.
    stale_epochs: u32,
    last_plateau_epoch: u32,
}

/// The network being trained, with its input. One value per run: the size difference
/// between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Net {
    Probe(Head),
    Finetune {
        backbone: EfficientNetLite,
        head: Head,
    },
    Scratch(SmallCnn),
}

enum Input {
    Features(Tensor<2>),
    Images(Tensor<4>),
}

impl Net {
    fn logits(&self, input: Input, finetune_start: usize) -> Tensor<2> {
        match (self, input) {
            (Self::Probe(head), Input::Features(x)) => head.forward(x),
            (Self::Finetune { backbone, head }, Input::Images(x)) => {
                head.forward(backbone.forward_suffix(x, finetune_start))
            }
            (Self::Scratch(cnn), Input::Images(x)) => cnn.forward(x),
            _ => unreachable!("each network is fed its own input kind"),
        }
    }

    fn valid(&self) -> Self {
        match self {
            Self::Probe(h) => Self::Probe(h.valid()),
            Self::Finetune { backbone, head } => Self::Finetune {
                backbone: backbone.valid(),
                head: head.valid(),
            },
            Self::Scratch(c) => Self::Scratch(c.valid()),
        }
    }

    fn train_mode(self) -> Self {
        match self {
            Self::Probe(h) => Self::Probe(h.train()),
            Self::Finetune { backbone, head } => Self::Finetune {
                backbone: backbone.train(),
                head: head.train(),
            },
            Self::Scratch(c) => Self::Scratch(c.train()),
        }
    }

    /// One optimiser step; the optimiser state is per network part.
    fn step(self, optims: &mut [ModuleOptimizer], lr: f64, loss: Tensor<1>) -> Self {
        let grads = loss.backward();
        match self {
            Self::Probe(h) => {
                let g = GradientsParams::from_grads(grads, &h);
                Self::Probe(optims[0].step(lr, h, g))
            }
            Self::Finetune { backbone, head } => {
                let mut grads = grads;
                let gh = GradientsParams::from_module(&mut grads, &head);
                let gb = GradientsParams::from_module(&mut grads, &backbone);
                let head = optims[0].step(lr, head, gh);
                // Pretrained blocks move more slowly than the new head.
                let backbone = optims[1].step(lr * 0.3, backbone, gb);
                Self::Finetune { backbone, head }
            }
            Self::Scratch(c) => {
                let g = GradientsParams::from_grads(grads, &c);
                Self::Scratch(optims[0].step(lr, c, g))
            }
        }
    }

    /// The same network with weights from [`Self::to_bytes`] output.
    fn with_bytes(self, bytes: &[u8]) -> anyhow::Result<Self> {
        let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()));
        Ok(match self {
            Self::Probe(mut h) => {
                h.load_from(&mut store)?;
                Self::Probe(h)
            }
            Self::Finetune { backbone, head } => {
                let mut w = FinetuneWeights { backbone, head };
                w.load_from(&mut store)?;
                Self::Finetune {
                    backbone: w.backbone,
                    head: w.head,
                }
            }
            Self::Scratch(mut c) => {
                c.load_from(&mut store)?;
                Self::Scratch(c)
            }
        })
    }

    /// Parameter id by module path. Optimiser state is keyed by parameter id, and a network
    /// rebuilt from a checkpoint gets fresh ids: this map re-attaches the saved state.
    fn param_ids(&self) -> BTreeMap<String, u64> {
        let mut ids = IdPaths::default();
        match self {
            Self::Probe(h) => h.visit(&mut ids),
            Self::Finetune { backbone, head } => {
                ids.path.push("backbone".into());
                backbone.visit(&mut ids);
                ids.path = vec!["head".into()];
                head.visit(&mut ids);
            }
            Self::Scratch(c) => c.visit(&mut ids),
        }
        ids.ids
    }

    /// The same network with the parameter ids of `ids` (paths not in it keep theirs).
    fn with_param_ids(self, ids: BTreeMap<String, u64>) -> Self {
        let mut m = IdPaths {
            ids,
            path: Vec::new(),
        };
        match self {
            Self::Probe(h) => Self::Probe(h.map(&mut m)),
            Self::Finetune { backbone, head } => {
                m.path.push("backbone".into());
                let backbone = backbone.map(&mut m);
                m.path = vec!["head".into()];
                let head = head.map(&mut m);
                Self::Finetune { backbone, head }
            }
            Self::Scratch(c) => Self::Scratch(c.map(&mut m)),
        }
    }

    /// The weights as safetensors (fine-tuned networks as one [`FinetuneWeights`]).
    fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut store = SafetensorsStore::from_bytes(None);
        match self {
            Self::Probe(h) => h.save_into(&mut store)?,
            Self::Finetune { backbone, head } => FinetuneWeights {
                backbone: backbone.clone(),
                head: head.clone(),
            }
            .save_into(&mut store)?,
            Self::Scratch(c) => c.save_into(&mut store)?,
        }
        Ok(store.get_bytes()?)
    }
}

/// On resume: re-attaches the optimiser state saved with the checkpoint to `net` (rebuilt
/// from the checkpoint's weights) and loads the best epoch's weights. What is missing (a
/// checkpoint from an older version) is reported in the returned message, and training goes
/// on with fresh optimiser moments or without an earlier best.
fn restore_training_state(
    net: Net,
    config: &TrainConfig,
    optims: &mut [ModuleOptimizer],
    dir: &Path,
    best_epoch: u32,
) -> (Net, Option<Net>, Option<String>) {
    let mut missing = Vec::new();
    let ids: Option<BTreeMap<String, u64>> = std::fs::read(dir.join("param_ids.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let net = match ids {
        Some(ids) => {
            for (i, o) in optims.iter_mut().enumerate() {
                let state = std::fs::read(dir.join(format!("optimizer-{i}.bpk")));
                let restored = state.ok().and_then(|b| {
                    optimizer(config)
                        .from_bytes(burn::tensor::Bytes::from_bytes_vec(b))
                        .ok()
                });
                match restored {
                    Some(r) => *o = r,
                    None => missing.push(format!("optimizer-{i}.bpk")),
                }
            }
            net.with_param_ids(ids)
        }
        None => {
            missing.push("param_ids.json".to_owned());
            net
        }
    };
    let best = (best_epoch > 0)
        .then(|| std::fs::read(dir.join("best.safetensors")).ok())
        .flatten()
        .and_then(|b| net.valid().with_bytes(&b).ok());
    if best.is_none() && best_epoch > 0 {
        missing.push("best.safetensors".to_owned());
    }
    let message = (!missing.is_empty()).then(|| {
        format!(
            "the checkpoint has no {}: training goes on with fresh optimiser moments or from the last weights",
            missing.join(", ")
        )
    });
    (net, best, message)
}

/// Walks a module's float parameters by path (`fc.weight`), reading or setting their ids.
#[derive(Default)]
struct IdPaths {
    path: Vec<String>,
    ids: BTreeMap<String, u64>,
}

impl ModuleVisitor for IdPaths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.ids.insert(self.path.join("."), param.id.val());
    }
}

impl ModuleMapper for IdPaths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(&self.path.join(".")) {
            param.id = ParamId::from(id);
        }
        param
    }
}

fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let wd = config.weight_decay as f32;
    match config.optimizer {
        Optimizer::Sgd { momentum } => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0),
            ))
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
        Optimizer::Adam => AdamConfig::new()
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
        Optimizer::AdamW => AdamWConfig::new().with_weight_decay(wd).init(),
    }
}

/// Feeds batches: cached features (probe) or decoded, augmented images. One value per run.
#[allow(clippy::large_enum_variant)]
enum Feeder {
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

struct Batch {
    input: Input,
    /// Items actually in the batch (failed images left out).
    items: Vec<usize>,
    failures: Vec<(PathBuf, String)>,
}

impl Feeder {
    fn batch(
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
                let mut flat = Vec::with_capacity(items.len() * FEATURES);
                for &i in &items {
                    flat.extend_from_slice(rows[i].as_deref().unwrap_or_default());
                }
                let x =
                    Tensor::<2>::from_data(TensorData::new(flat, [items.len(), FEATURES]), device);
                Batch {
                    input: Input::Features(x),
                    items,
                    failures: Vec::new(),
                }
            }
            Self::Images {
                preprocess,
                augment,
                prefix,
            } => {
                let side = preprocess.size as usize;
                let seeds: Vec<u64> = idx.iter().map(|_| rng.next_u64()).collect();
                let loaded: Vec<(usize, Result<Vec<f32>, String>)> = idx
                    .par_iter()
                    .zip(seeds)
                    .map(|(&i, seed)| {
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
                let mut items = Vec::new();
                let mut flat = Vec::new();
                let mut failures = Vec::new();
                for (i, r) in loaded {
                    match r {
                        Ok(chw) => {
                            items.push(i);
                            flat.extend(chw);
                        }
                        Err(e) => failures.push((data.items[i].path.clone(), e)),
                    }
                }
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
    }
}

/// Loss weights per class (single-label) or positive weights per label (multi-label).
fn loss_weights(data: &Prepared, imbalance: Imbalance) -> Vec<f32> {
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
fn softplus(x: Tensor<2>) -> Tensor<2> {
    x.clone().clamp_min(0.0) + (x.abs().neg().exp() + 1.0).log()
}

/// Loss of a batch and the probabilities (detached, for metrics).
fn loss_and_probs(
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

fn evaluate(data: &Prepared, items: &[usize], probs: &[Vec<f32>]) -> Metrics {
    if data.task == Task::MultiLabel {
        let truth: Vec<Vec<bool>> = items
            .iter()
            .map(|&i| match &data.items[i].target {
                Target::Multi(f) => f.clone(),
                Target::Class(_) => vec![false; data.labels.len()],
            })
            .collect();
        metrics::evaluate_multi_label(
            &data.labels,
            &truth,
            probs,
            decision::MULTI_LABEL_THRESHOLD,
        )
    } else {
        let truth: Vec<usize> = items.iter().map(|&i| class_of(data, i)).collect();
        metrics::evaluate_single(data.task, &data.labels, &truth, probs)
    }
}

fn class_of(data: &Prepared, i: usize) -> usize {
    match &data.items[i].target {
        Target::Class(c) => *c,
        Target::Multi(_) => 0,
    }
}

/// One pass over the training side.
struct EpochResult {
    net: Net,
    /// Items trained on, in order, with the probabilities the network gave them.
    seen: Vec<usize>,
    probs: Vec<Vec<f32>>,
    /// Mean training loss.
    loss: f64,
    failures: Vec<(PathBuf, String)>,
    /// Stopped through the cancel flag before the end of the epoch.
    cancelled: bool,
}

/// Trains one epoch: batches in a seeded (or class-balanced) order, one optimiser step each.
/// Fails on a non-finite loss; stops between batches when `cancel` is set.
#[allow(clippy::too_many_arguments)]
fn train_epoch(
    mut net: Net,
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
    for (b, chunk) in order.chunks(config.batch_size.max(1)).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Ok(EpochResult {
                net,
                seen,
                probs,
                loss: f64::NAN,
                failures,
                cancelled: true,
            });
        }
        let batch = feeder.batch(data, chunk, true, rng, ad, plain);
        failures.extend(batch.failures);
        if batch.items.is_empty() {
            continue;
        }
        let logits = net.logits(batch.input, finetune_start);
        let (loss, p) = loss_and_probs(data.task, logits, data, &batch.items, weights);
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        if !loss_value.is_finite() {
            anyhow::bail!(
                "the loss became {loss_value} in epoch {epoch}, batch {}: lower the learning rate (now {lr:.2e})",
                b + 1
            );
        }
        net = net.step(optims, lr, loss);
        loss_sum += loss_value * batch.items.len() as f64;
        seen.extend(batch.items);
        probs.extend(p);
        progress(((b + 1) * config.batch_size).min(total), total);
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

/// Timing of a linear probe on cached features.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeBench {
    pub device: String,
    pub features: usize,
    pub classes: usize,
    pub epochs: u32,
    /// Training (all epochs) plus a validation pass after each, in seconds.
    pub secs: f64,
    pub val_accuracy: f64,
}

/// Trains the probe head exactly as a probe run does (same batches, loss, optimiser and
/// validation) on `n` synthetic 1280-d feature vectors of `classes` Gaussian clusters: the
/// "features already cached" part of a probe run, without the backbone.
pub fn bench_probe(n: usize, classes: usize, config: &TrainConfig) -> anyhow::Result<ProbeBench> {
    use super::data::Item;
    let compute = backend::select(config.backend)?;
    let (plain, ad) = (compute.device.clone(), compute.device.clone().autodiff());
    let mut rng = SplitMix64::new(config.seed);
    let gauss = |rng: &mut SplitMix64| {
        let (u, v) = (rng.unit().max(1e-12), rng.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..FEATURES).map(|_| 0.15 * gauss(&mut rng)).collect())
        .collect();
    let mut items = Vec::with_capacity(n);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        rows.push(Some(
            centres[c]
                .iter()
                .map(|m| m + gauss(&mut rng))
                .collect::<Vec<f32>>(),
        ));
        items.push(Item {
            path: PathBuf::from(format!("synthetic/{i}")),
            name: format!("synthetic/{i}"),
            patient: None,
            target: Target::Class(c),
        });
    }
    let split = n * 4 / 5;
    let data = Prepared {
        task: if classes == 2 {
            Task::Binary
        } else {
            Task::MultiClass
        },
        labels: (0..classes).map(|c| format!("class {c}")).collect(),
        items,
        train: (0..split).collect(),
        val: (split..n).collect(),
        test: Vec::new(),
        split_given: true,
    };
    let feeder = Feeder::Features { rows };
    let weights = loss_weights(&data, config.imbalance);
    let never = AtomicBool::new(false);
    let start = Instant::now();
    let mut net = Net::Probe(Head::new(FEATURES, classes, config.dropout, &ad)).train_mode();
    let mut optims = vec![optimizer(config), optimizer(config)];
    let mut accuracy = 0.0;
    for epoch in 0..config.epochs {
        let lr = config.learning_rate_at(epoch, 1.0);
        net = train_epoch(
            net,
            &mut optims,
            &feeder,
            &data,
            config,
            (epoch + 1, lr),
            &weights,
            &mut rng,
            (&ad, &plain),
            0,
            &never,
            &mut |_, _| {},
        )?
        .net;
        let v = predict_side(
            &net.valid(),
            &feeder,
            &data,
            &data.val,
            config.batch_size,
            0,
            &weights,
            &plain,
        );
        accuracy = evaluate(&data, &v.kept, &v.probs).accuracy;
    }
    Ok(ProbeBench {
        device: compute.description,
        features: n,
        classes,
        epochs: config.epochs,
        secs: start.elapsed().as_secs_f64(),
        val_accuracy: accuracy,
    })
}

/// Predictions of one side of the data.
struct SidePredictions {
    /// Items predicted (images that failed to load are left out).
    kept: Vec<usize>,
    probs: Vec<Vec<f32>>,
    /// Mean loss over `kept`.
    loss: f64,
    failures: Vec<(PathBuf, String)>,
}

/// Runs a forward pass without gradients over `items`.
#[allow(clippy::too_many_arguments)]
fn predict_side(
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
    for chunk in items.chunks(batch_size.max(1)) {
        let batch = feeder.batch(data, chunk, false, &mut rng, plain, plain);
        failures.extend(batch.failures);
        if batch.items.is_empty() {
            continue;
        }
        let logits = net.logits(batch.input, finetune_start);
        let (loss, p) = loss_and_probs(data.task, logits, data, &batch.items, weights);
        loss_sum += f64::from(loss.into_scalar::<f32>()) * batch.items.len() as f64;
        kept.extend(batch.items);
        probs.extend(p);
    }
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

/// Trains a model as configured, writing a run folder. Returns when the run finished, failed
/// (an error is also recorded in the run folder) or was cancelled through `cancel`.
pub fn train(
    job: TrainJob,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
) -> anyhow::Result<TrainOutcome> {
    let started = Instant::now();
    let config = job.config.clone();
    config.validate()?;
    let data = prepare(&job.manifest, &config)?;
    let compute = backend::select(config.backend)?;

    let (mut run, progress) = match &job.resume {
        Some(path) => {
            let run = RunDir::reopen(path)?;
            let generation = crate::runs::checkpoint::latest(path)?
                .with_context(|| format!("the run has no checkpoint to resume from: {}", path.display()))?;
            let progress: Progress = crate::runs::read_json(&generation.join("state.json"))?;
            (run, progress)
        }
        None => (
            RunDir::create(&job.runs_root, &config)?,
            Progress {
                best_val_loss: f64::INFINITY,
                plateau_scale: 1.0,
                ..Default::default()
            },
        ),
    };
    let result = run_loop(
        &job, &config, &data, &compute, &mut run, progress, sink, cancel, started,
    );
    match result {
        Ok(outcome) => Ok(outcome),
        Err(err) => {
            let event = TrainEvent::Failed {
                error: format!("{err:#}"),
            };
            run.log(&event).ok();
            sink(&event);
            run.set_status(RunState::Failed, 0, Some(format!("{err:#}")))
                .ok();
            Err(err)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_loop(
    job: &TrainJob,
    config: &TrainConfig,
    data: &Prepared,
    compute: &Compute,
    run: &mut RunDir,
    mut progress: Progress,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
    started: Instant,
) -> anyhow::Result<TrainOutcome> {
    let plain = compute.device.clone();
    let ad = plain.clone().autodiff();
    plain.seed(config.seed);
    run.set_status(RunState::Running, progress.epoch, None)?;
    if job.resume.is_none() {
        run.write_json(
            "dataset.json",
            &crate::runs::DatasetFile::of(&job.manifest, &job.options),
        )?;
    }
    emit(
        run,
        sink,
        TrainEvent::Started {
            run_id: run.id.clone(),
            mode: config.mode,
            task: data.task,
            labels: data.labels.clone(),
            train_images: data.train.len(),
            val_images: data.val.len(),
            device: compute.description.clone(),
            epochs: config.epochs,
        },
    );
    let k = data.labels.len();
    // Network outputs: one per class, or the cumulative thresholds of an ordinal task.
    let outputs = if data.task == Task::Ordinal {
        ordinal::outputs(k)
    } else {
        k
    };
    let finetune_start = NUM_BLOCKS.saturating_sub(config.unfreeze_blocks.min(NUM_BLOCKS));
    let mut info = ModelInfo {
        format_version: crate::runs::FORMAT_VERSION,
        mode: config.mode,
        task: data.task,
        labels: data.labels.clone(),
        preprocess: config.preprocess.clone(),
        finetune_start,
        feature_mean: Vec::new(),
        feature_std: Vec::new(),
        cumulative: data.task == Task::Ordinal,
        orientation_mean: config.mode == Mode::Probe && config.orientation_mean,
        dataset_root: Some(
            std::path::absolute(&job.manifest.root).unwrap_or_else(|_| job.manifest.root.clone()),
        ),
    };

    // Images that failed to load, warned about once per run.
    let mut warned: std::collections::HashSet<PathBuf> = Default::default();
    // Networks and feeders per mode.
    // The checkpoint generation a resumed run continues from.
    let resume_from = match &job.resume {
        Some(path) => crate::runs::checkpoint::latest(path)?,
        None => None,
    };
    let resume_bytes = match &resume_from {
        Some(g) => Some(
            std::fs::read(g.join("model.safetensors"))
                .with_context(|| format!("reading {}", g.join("model.safetensors").display()))?,
        ),
        None => None,
    };
    let (mut net, feeder) = match config.mode {
        Mode::Probe => {
            let extractor = Extractor::bundled(&plain)?;
            let all: Vec<PathBuf> = data.items.iter().map(|i| i.path.clone()).collect();
            let mut last = Instant::now();
            let f = featurize(
                &extractor,
                &config.backbone,
                config.orientation_mean,
                &config.preprocess,
                &all,
                job.cache.as_ref(),
                config.batch_size.clamp(8, 64),
                &mut |done, total| {
                    if last.elapsed().as_millis() > 250 || done == total {
                        last = Instant::now();
                        let e = TrainEvent::Progress {
                            phase: Phase::Features,
                            done,
                            total,
                        };
                        sink(&e);
                    }
                },
                cancel,
            );
            warn_skipped(run, sink, &mut warned, f.failures);
            if f.from_cache > 0 {
                emit(
                    run,
                    sink,
                    TrainEvent::Warning {
                        message: format!(
                            "{} of {} feature vectors came from the cache",
                            f.from_cache,
                            all.len()
                        ),
                    },
                );
            }
            let standardiser = Standardiser::fit(
                data.train
                    .iter()
                    .filter_map(|&i| f.features[i].as_deref()),
                FEATURES,
            );
            let rows = f
                .features
                .into_iter()
                .map(|r| {
                    r.map(|mut v| {
                        standardiser.apply(&mut v);
                        v
                    })
                })
                .collect();
            info.feature_mean = standardiser.mean;
            info.feature_std = standardiser.std;
            let head = Head::new(FEATURES, outputs, config.dropout, &ad);
            (Net::Probe(head), Feeder::Features { rows })
        }
        Mode::Finetune => {
            let backbone = load_backbone(&plain)?;
            let frozen = Extractor::new(backbone.valid(), &plain);
            (
                Net::Finetune {
                    backbone: backbone.fork(&ad),
                    head: Head::new(FEATURES, outputs, config.dropout, &ad),
                },
                Feeder::Images {
                    preprocess: config.preprocess.clone(),
                    augment: config.augment.clone(),
                    prefix: Some((frozen, finetune_start)),
                },
            )
        }
        Mode::Scratch => (
            Net::Scratch(SmallCnn::new(outputs, config.dropout, &ad)),
            Feeder::Images {
                preprocess: config.preprocess.clone(),
                augment: config.augment.clone(),
                prefix: None,
            },
        ),
    };
    if let Some(bytes) = &resume_bytes {
        net = net.with_bytes(bytes)?;
    }
    run.write_json("model.json", &info)?;
    net = net.train_mode();
    let mut optims = vec![optimizer(config), optimizer(config)];
    let weights = loss_weights(data, config.imbalance);
    // The best network so far: its final artefacts come from it.
    let mut best: Option<Net> = None;
    if let Some(generation) = &resume_from {
        let restored =
            restore_training_state(net, config, &mut optims, generation, progress.best_epoch);
        net = restored.0;
        best = restored.1;
        if let Some(message) = restored.2 {
            emit(run, sink, TrainEvent::Warning { message });
        }
    }

    while progress.epoch < config.epochs {
        let epoch = progress.epoch + 1;
        // One stream per epoch, so a resumed run sees the order and augmentation that an
        // uninterrupted one would.
        let epoch_seed = config.seed ^ u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = SplitMix64::new(epoch_seed);
        // The backend's generator (dropout masks) restarts each epoch too.
        plain.seed(epoch_seed);
        let lr = config.learning_rate_at(progress.epoch, progress.plateau_scale);
        let epoch_result = train_epoch(
            net,
            &mut optims,
            &feeder,
            data,
            config,
            (epoch, lr),
            &weights,
            &mut rng,
            (&ad, &plain),
            finetune_start,
            cancel,
            &mut |done, total| {
                sink(&TrainEvent::Progress {
                    phase: Phase::Train,
                    done,
                    total,
                })
            },
        )?;
        net = epoch_result.net;
        warn_skipped(run, sink, &mut warned, epoch_result.failures);
        if epoch_result.cancelled {
            return cancelled(run, sink, progress.epoch);
        }
        let (seen, probs) = (epoch_result.seen, epoch_result.probs);
        let train_loss = epoch_result.loss;
        let train_metrics = evaluate(data, &seen, &probs);

        let eval_net = net.valid();
        let SidePredictions {
            kept,
            probs: val_probs,
            loss: val_loss,
            failures,
        } = predict_side(
            &eval_net,
            &feeder,
            data,
            &data.val,
            config.batch_size,
            finetune_start,
            &weights,
            &plain,
        );
        warn_skipped(run, sink, &mut warned, failures);
        let mut val_metrics = evaluate(data, &kept, &val_probs);
        val_metrics.loss = Some(val_loss);
        emit(
            run,
            sink,
            TrainEvent::Epoch {
                epoch,
                learning_rate: lr,
                train: EpochSide::from_metrics(train_loss, &train_metrics),
                val: Some(EpochSide::from_metrics(val_loss, &val_metrics)),
                elapsed_secs: started.elapsed().as_secs_f64(),
            },
        );
        if let Some(matrix) = &val_metrics.confusion {
            emit(
                run,
                sink,
                TrainEvent::Confusion {
                    epoch,
                    split: "val".into(),
                    matrix: matrix.clone(),
                },
            );
        }

        progress.epoch = epoch;
        if val_loss < progress.best_val_loss || best.is_none() {
            progress.best_val_loss = val_loss;
            progress.best_epoch = epoch;
            progress.stale_epochs = 0;
            best = Some(eval_net);
        } else {
            progress.stale_epochs += 1;
        }
        if let Schedule::Plateau { patience, factor } = config.schedule
            && progress.stale_epochs >= patience
            && epoch - progress.last_plateau_epoch >= patience
        {
            progress.plateau_scale *= factor;
            progress.last_plateau_epoch = epoch;
        }
        // Checkpoint: one generation folder holding the weights, optimiser state, parameter
        // ids, the best weights so far and the progress; visible only once complete.
        let bytes = net.valid().to_bytes()?;
        let generation = crate::runs::checkpoint::Generation::begin(&run.path, epoch)?;
        generation.write("model.safetensors", &bytes)?;
        generation.write("param_ids.json", &serde_json::to_vec(&net.param_ids())?)?;
        for (i, o) in optims.iter().enumerate() {
            let state = o
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("saving optimiser state: {e:?}"))?;
            generation.write(&format!("optimizer-{i}.bpk"), &state)?;
        }
        if progress.best_epoch == epoch {
            generation.write("best.safetensors", &bytes)?;
        } else if let Some(b) = &best {
            generation.write("best.safetensors", &b.to_bytes()?)?;
        }
        generation.write("state.json", &serde_json::to_vec(&progress)?)?;
        let generation = generation.commit()?;
        run.set_status(RunState::Running, epoch, None)?;
        emit(
            run,
            sink,
            TrainEvent::Checkpoint {
                epoch,
                path: generation
                    .strip_prefix(&run.path)
                    .unwrap_or(&generation)
                    .join("model.safetensors")
                    .to_string_lossy()
                    .into_owned(),
            },
        );
        if config
            .early_stopping_patience
            .is_some_and(|p| progress.stale_epochs >= p)
        {
            emit(
                run,
                sink,
                TrainEvent::Warning {
                    message: format!(
                        "early stop: no better validation loss for {} epochs",
                        progress.stale_epochs
                    ),
                },
            );
            break;
        }
    }

    // Final artefacts from the best epoch.
    let final_net = best.unwrap_or_else(|| net.valid());
    let mut predictions = Vec::new();
    let mut val_metrics = None;
    let mut test_metrics = None;
    let mut patient_metrics = None;
    for (side, items) in [("val", &data.val), ("test", &data.test)] {
        if items.is_empty() {
            continue;
        }
        let SidePredictions {
            kept, probs, loss, ..
        } = predict_side(
            &final_net,
            &feeder,
            data,
            items,
            config.batch_size,
            finetune_start,
            &weights,
            &plain,
        );
        let mut m = evaluate(data, &kept, &probs);
        m.loss = Some(loss);
        for (&i, p) in kept.iter().zip(&probs) {
            predictions.push((side, i, p.clone()));
        }
        if side == "val" {
            if data.task != Task::MultiLabel
                && kept.iter().all(|&i| data.items[i].patient.is_some())
            {
                let patients: Vec<&str> = kept
                    .iter()
                    .map(|&i| data.items[i].patient.as_deref().unwrap_or(""))
                    .collect();
                let truth: Vec<usize> = kept.iter().map(|&i| class_of(data, i)).collect();
                let (_, pt, pp) = metrics::aggregate_by_patient(&patients, &truth, &probs);
                patient_metrics = Some(metrics::evaluate_single(data.task, &data.labels, &pt, &pp));
            }
            val_metrics = Some(m);
        } else {
            test_metrics = Some(m);
        }
    }
    let val_metrics = val_metrics.context("no validation predictions")?;
    run.write_bytes("model.safetensors", &final_net.to_bytes()?)?;
    run.write_bytes(
        "predictions.csv",
        predictions_csv(data, &predictions).as_bytes(),
    )?;
    run.write_json(
        "metrics.json",
        &crate::runs::MetricsFile {
            format_version: crate::runs::FORMAT_VERSION,
            best_epoch: progress.best_epoch,
            val: val_metrics.clone(),
            test: test_metrics.clone(),
            val_patients: patient_metrics.clone(),
        },
    )?;
    if let Some(c) = &val_metrics.confusion {
        run.write_json(
            "confusion.json",
            &crate::runs::ConfusionFile {
                split: "val".into(),
                epoch: progress.best_epoch,
                matrix: c.clone(),
            },
        )?;
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    emit(
        run,
        sink,
        TrainEvent::Finished {
            best_epoch: progress.best_epoch,
            metrics: Box::new(val_metrics.clone()),
            patient_metrics: patient_metrics.map(Box::new),
            elapsed_secs,
        },
    );
    run.set_status(RunState::Finished, progress.epoch, None)?;
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        run_id: run.id.clone(),
        state: RunState::Finished,
        metrics: Some(val_metrics),
    })
}

/// One warning per unreadable image, the first time it fails in a run.
fn warn_skipped(
    run: &mut RunDir,
    sink: &mut dyn FnMut(&TrainEvent),
    warned: &mut std::collections::HashSet<PathBuf>,
    failures: Vec<(PathBuf, String)>,
) {
    for (path, reason) in failures {
        if warned.insert(path.clone()) {
            emit(
                run,
                sink,
                TrainEvent::Warning {
                    message: format!("skipped unreadable image ({reason}): {}", path.display()),
                },
            );
        }
    }
}

/// Records an event in the run folder and hands it to the caller.
fn emit(run: &mut RunDir, sink: &mut dyn FnMut(&TrainEvent), e: TrainEvent) {
    if let Err(err) = run.log(&e) {
        log::error!("writing events.jsonl: {err}");
    }
    sink(&e);
}

fn cancelled(
    run: &mut RunDir,
    sink: &mut dyn FnMut(&TrainEvent),
    epoch: u32,
) -> anyhow::Result<TrainOutcome> {
    emit(run, sink, TrainEvent::Cancelled { epoch });
    run.set_status(
        RunState::Cancelled,
        epoch,
        Some(format!(
            "cancelled during epoch {}; resume with --resume",
            epoch + 1
        )),
    )?;
    Ok(TrainOutcome {
        run_dir: run.path.clone(),
        run_id: run.id.clone(),
        state: RunState::Cancelled,
        metrics: None,
    })
}

/// Training order of one epoch: a seeded shuffle, or class-balanced sampling with replacement.
fn epoch_order(data: &Prepared, imbalance: Imbalance, rng: &mut SplitMix64) -> Vec<usize> {
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

/// `path,patient,split,truth,predicted,p_<label>…` rows.
fn predictions_csv(data: &Prepared, rows: &[(&str, usize, Vec<f32>)]) -> String {
    let mut out = String::from("path,patient,split,truth,predicted");
    for l in &data.labels {
        out.push_str(&format!(",{}", csv_field(&format!("p_{l}"))));
    }
    out.push('\n');
    for (side, i, p) in rows {
        let item = &data.items[*i];
        let truth = match &item.target {
            Target::Class(c) => data.labels[*c].clone(),
            Target::Multi(flags) => flags
                .iter()
                .zip(&data.labels)
                .filter(|(f, _)| **f)
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("|"),
        };
        let pred = decision::predicted_label(data.task, &data.labels, p);
        out.push_str(&format!(
            "{},{},{side},{},{}",
            csv_field(&item.name),
            csv_field(item.patient.as_deref().unwrap_or("")),
            csv_field(&truth),
            csv_field(&pred)
        ));
        for v in p {
            out.push_str(&format!(",{v:.6}"));
        }
        out.push('\n');
    }
    out
}
