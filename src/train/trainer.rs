//! One training run, step by step: prepare, epoch, validate, checkpoint, finish.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use web_time::Instant;

use anyhow::Context as _;

use burn::module::Module;

use crate::dataset::split::SplitMix64;
use crate::fsio::csv_field;
use crate::model::ModelInfo;
use crate::model::backend::Compute;
use crate::model::decision::{self};
use crate::model::efficientnet::FEATURES;
use crate::model::extractor::{Extractor, load_backbone};
use crate::model::heads::{Head, SmallCnn};
use crate::runs::{RunDir, RunState};

use super::batches::*;
use super::data::Prepared;
use super::engine::{TrainJob, TrainOutcome};
use super::loss::*;
use super::net::*;
use super::ordinal;
use crate::experiment::config::{BatchNormMode, HeadInit, Mode, Schedule, TrainConfig};
use crate::experiment::events::{EpochSide, Phase, TrainEvent};
use crate::experiment::metrics::{self, Target, Task};

mod finish;

/// Per-epoch state saved with each checkpoint, enough to resume.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct Progress {
    /// Epochs completed.
    pub(super) epoch: u32,
    pub(super) best_epoch: u32,
    pub(super) best_val_loss: f64,
    pub(super) plateau_scale: f64,
    /// Epochs since the best validation loss.
    pub(super) stale_epochs: u32,
    pub(super) last_plateau_epoch: u32,
}

/// One training run in progress: everything the named steps share. [`Trainer::run`] is the
/// one loop every mode (probe, fine-tune, scratch) goes through:
/// [`prepare`](Trainer::prepare) → for each epoch [`train_epoch`](Trainer::train_epoch),
/// [`validate`](Trainer::validate), [`checkpoint`](Trainer::checkpoint) →
/// [`finish`](Trainer::finish).
pub(super) struct Trainer<'a> {
    config: &'a TrainConfig,
    data: &'a Prepared,
    run: &'a mut RunDir,
    sink: &'a mut dyn FnMut(&TrainEvent),
    cancel: &'a AtomicBool,
    started: Instant,
    /// The device without and with gradients.
    plain: burn::tensor::Device,
    ad: burn::tensor::Device,
    progress: Progress,
    /// `None` only while an epoch owns it.
    net: Option<Net>,
    /// The best network so far: the final artefacts come from it.
    best: Option<Net>,
    feeder: Feeder,
    optims: Vec<burn::optim::ModuleOptimizer>,
    weights: Vec<f32>,
    finetune_start: usize,
    /// Images that failed to load, warned about once per run.
    warned: std::collections::HashSet<PathBuf>,
    /// A probe solved to convergence: the fit the validation side scored (the kept model is
    /// refitted on training + validation) and what it chose.
    chosen: Option<ChosenProbe>,
}

/// A probe solved to convergence: the fit on the training side, what was chosen, and the
/// held-out predictions of fits with the chosen settings.
struct ChosenProbe {
    net: Net,
    selection: crate::experiment::selection::ProbeSelection,
    held_out: super::probe::HeldOut,
}

/// What validation found in one epoch.
struct Validation {
    net: Net,
    loss: f64,
    metrics: metrics::Metrics,
}

/// How an epoch ended.
enum EpochEnd {
    Trained {
        loss: f64,
        metrics: Box<metrics::Metrics>,
    },
    Cancelled,
}

impl<'a> Trainer<'a> {
    /// Trains to the end (or until cancelled), writing the run folder.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        job: &'a TrainJob,
        config: &'a TrainConfig,
        data: &'a Prepared,
        compute: &Compute,
        run: &'a mut RunDir,
        progress: Progress,
        sink: &'a mut dyn FnMut(&TrainEvent),
        cancel: &'a AtomicBool,
        started: Instant,
    ) -> anyhow::Result<TrainOutcome> {
        let mut t = Self::prepare(
            job, config, data, compute, run, progress, sink, cancel, started,
        )?;
        if config.solves_probe() {
            if cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return t.cancelled();
            }
            t.solve_probe()?;
            return t.finish();
        }
        while t.progress.epoch < t.config.epochs {
            let epoch = t.progress.epoch + 1;
            let lr = t
                .config
                .learning_rate_at(t.progress.epoch, t.progress.plateau_scale);
            let (train_loss, train_metrics) = match t.train_epoch(epoch, lr)? {
                EpochEnd::Trained { loss, metrics } => (loss, metrics),
                EpochEnd::Cancelled => return t.cancelled(),
            };
            let validation = t.validate()?;
            t.report_epoch(epoch, lr, train_loss, &train_metrics, &validation);
            let early_stop = t.advance(epoch, validation);
            t.checkpoint(epoch)?;
            if early_stop {
                break;
            }
        }
        t.finish()
    }

    /// Starts the run: status, `dataset.json`, the started event, the network and its inputs
    /// for the mode (probe features are extracted here, through the cache), `model.json`,
    /// and on resume the weights, optimiser state and best network of the last checkpoint.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        job: &'a TrainJob,
        config: &'a TrainConfig,
        data: &'a Prepared,
        compute: &Compute,
        run: &'a mut RunDir,
        progress: Progress,
        sink: &'a mut dyn FnMut(&TrainEvent),
        cancel: &'a AtomicBool,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let plain = compute.device.clone();
        let ad = plain.clone().autodiff();
        plain.seed(config.seed);
        run.set_status(RunState::Running, progress.epoch, None)?;
        if job.resume.is_none() {
            run.write_json(
                "dataset.json",
                &crate::runs::DatasetFile {
                    fingerprint: Some(data.fingerprint()),
                    ..crate::runs::DatasetFile::of(&job.manifest, &job.options)
                },
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
                epochs: if config.solves_probe() {
                    1
                } else {
                    config.epochs
                },
            },
        );
        if job.resume.is_none() {
            for message in super::engine::missing_labels(data) {
                emit(run, sink, TrainEvent::Warning { message });
            }
        }
        let k = data.labels.len();
        // Network outputs: one per class, or the cumulative thresholds of an ordinal task.
        let outputs = if data.task == Task::Ordinal {
            ordinal::outputs(k)
        } else {
            k
        };
        let blocks = config.backbone.num_blocks();
        let finetune_start = blocks.saturating_sub(config.unfreeze_blocks.min(blocks));
        let kind = config.feature_kind();
        let mut info = ModelInfo {
            format_version: crate::runs::FORMAT_VERSION,
            mode: config.mode,
            task: data.task,
            labels: data.labels.clone(),
            preprocess: config.preprocess.clone(),
            backbone: config.backbone,
            finetune_start,
            feature_mean: Vec::new(),
            feature_std: Vec::new(),
            cumulative: data.task == Task::Ordinal,
            temperature: None,
            orientation_mean: kind.orientation_mean,
            multiscale: kind.multiscale,
            dataset_root: Some(
                std::path::absolute(&job.manifest.root)
                    .unwrap_or_else(|_| job.manifest.root.clone()),
            ),
        };
        let mut warned = std::collections::HashSet::new();
        // The checkpoint generation a resumed run continues from.
        let resume_from = match &job.resume {
            Some(path) => crate::runs::checkpoint::latest(path)?,
            None => None,
        };
        let (net, feeder) = match config.mode {
            Mode::Probe => {
                let (rows, standardiser) = super::probe::probe_features(
                    job,
                    config,
                    data,
                    &plain,
                    run,
                    sink,
                    cancel,
                    &mut warned,
                )?;
                info.feature_mean = standardiser.mean;
                info.feature_std = standardiser.std;
                let head = Head::zeros(kind.width(), outputs, config.dropout, &ad);
                (Net::Probe(head), Feeder::Features { rows })
            }
            Mode::Finetune => {
                let backbone = load_backbone(config.backbone, &plain)?;
                let frozen = Extractor::new(backbone.valid(), &plain);
                // A resumed run takes its head from the checkpoint.
                let start = if config.head_init == HeadInit::Probe && resume_from.is_none() {
                    super::probe::probe_start(
                        job,
                        config,
                        data,
                        outputs,
                        &plain,
                        run,
                        sink,
                        cancel,
                        &mut warned,
                    )?
                } else {
                    None
                };
                let head = match start {
                    Some(super::probe::ProbeStart {
                        weight,
                        bias,
                        selection,
                    }) => {
                        let message =
                            format!("the head starts from the probe: {}", selection.summary());
                        emit(run, sink, TrainEvent::Info { message });
                        Head {
                            dropout: burn::nn::DropoutConfig::new(config.dropout).init(),
                            ..Head::from_weights(&weight, &bias, &ad)
                        }
                    }
                    None => {
                        if resume_from.is_none() && config.head_init == HeadInit::Random {
                            let message = "the head starts at random (head_init = \"random\"; a configuration written before the choice existed reads as this)".to_owned();
                            emit(run, sink, TrainEvent::Warning { message });
                        }
                        Head::new(FEATURES, outputs, config.dropout, &ad)
                    }
                };
                if resume_from.is_none() && config.batch_norm == BatchNormMode::Batch {
                    let message = "the trained blocks' batch norms normalise by each batch's statistics (batch_norm = \"batch\"; a configuration written before the choice existed reads as this)".to_owned();
                    emit(run, sink, TrainEvent::Warning { message });
                }
                let backbone = backbone.fork(&ad);
                let backbone = match config.batch_norm {
                    BatchNormMode::Frozen => backbone.with_frozen_statistics(),
                    BatchNormMode::Batch => backbone,
                };
                (
                    Net::Finetune { backbone, head },
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
        let mut net = match &resume_from {
            Some(g) => {
                net.with_bytes(&crate::fs::read(g.join("model.safetensors")).with_context(
                    || format!("reading {}", g.join("model.safetensors").display()),
                )?)?
            }
            None => net,
        };
        run.write_json("model.json", &info)?;
        net = net.train_mode();
        let mut optims = vec![optimizer(config), optimizer(config)];
        let mut best = None;
        if let Some(generation) = &resume_from {
            let restored =
                restore_training_state(net, config, &mut optims, generation, progress.best_epoch)?;
            net = restored.0;
            best = restored.1;
            if let Some(message) = restored.2 {
                emit(run, sink, TrainEvent::Warning { message });
            }
        }
        Ok(Self {
            config,
            data,
            run,
            sink,
            cancel,
            started,
            plain,
            ad,
            progress,
            net: Some(net),
            best,
            feeder,
            optims,
            weights: loss_weights(data, config.imbalance),
            finetune_start,
            warned,
            chosen: None,
        })
    }

    /// A probe solved to convergence: the grid searched on the validation side, the choice
    /// refitted on training + validation (one "epoch", one checkpoint). Deterministic, so a
    /// resumed run simply solves again.
    fn solve_probe(&mut self) -> anyhow::Result<()> {
        let Feeder::Features { rows } = &self.feeder else {
            unreachable!("a probe is fed features")
        };
        let outputs = if self.data.task == Task::Ordinal {
            ordinal::outputs(self.data.labels.len())
        } else {
            self.data.labels.len()
        };
        let refit = !self.data.test.is_empty();
        let solved = super::probe::select_and_fit(
            self.data,
            rows,
            outputs,
            refit,
            self.config.seed,
            &self.plain,
        )?;
        emit(
            self.run,
            self.sink,
            TrainEvent::Info {
                message: solved.selection.summary(),
            },
        );
        let head = |fit: &super::logreg::Fit, device: &burn::tensor::Device| {
            Net::Probe(Head::from_weights(&fit.weight_rows(), &fit.bias, device))
        };
        let chosen = head(&solved.chosen, &self.plain);
        // The epoch event: the chosen fit on the training and validation sides.
        let train = predict_side(
            &chosen,
            &self.feeder,
            self.data,
            &self.data.train,
            self.config.batch_size,
            self.finetune_start,
            &self.weights,
            &self.plain,
        );
        let train_metrics = evaluate(self.data, &train.kept, &train.probs);
        let validation = Validation {
            net: head(&solved.refit, &self.plain),
            ..self.validate_with(&chosen)?
        };
        self.report_epoch(1, 0.0, train.loss, &train_metrics, &validation);
        self.progress.epoch = 1;
        self.progress.best_epoch = 1;
        self.progress.best_val_loss = validation.loss;
        self.best = Some(validation.net);
        self.net = Some(head(&solved.refit, &self.ad));
        self.chosen = Some(ChosenProbe {
            net: chosen,
            selection: solved.selection,
            held_out: solved.held_out,
        });
        self.checkpoint(1)
    }

    fn net(&self) -> &Net {
        self.net
            .as_ref()
            .expect("the network is back after each epoch")
    }

    /// One pass over the training side with its own random stream (order, augmentation and
    /// the backend's dropout masks), so a resumed run sees what an uninterrupted one would.
    fn train_epoch(&mut self, epoch: u32, lr: f64) -> anyhow::Result<EpochEnd> {
        let epoch_seed = self.config.seed ^ u64::from(epoch).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = SplitMix64::new(epoch_seed);
        self.plain.seed(epoch_seed);
        let sink = &mut *self.sink;
        let result = train_epoch(
            self.net
                .take()
                .expect("the network is back after each epoch"),
            &mut self.optims,
            &self.feeder,
            self.data,
            self.config,
            (epoch, lr),
            &self.weights,
            &mut rng,
            (&self.ad, &self.plain),
            self.finetune_start,
            self.cancel,
            &mut |done, total| {
                sink(&TrainEvent::Progress {
                    phase: Phase::Train,
                    done,
                    total,
                })
            },
        )?;
        self.net = Some(result.net);
        warn_skipped(self.run, self.sink, &mut self.warned, result.failures);
        if result.cancelled {
            return Ok(EpochEnd::Cancelled);
        }
        anyhow::ensure!(
            !result.seen.is_empty(),
            "no usable images: none of the {} training images could be read",
            self.data.train.len()
        );
        Ok(EpochEnd::Trained {
            loss: result.loss,
            metrics: Box::new(evaluate(self.data, &result.seen, &result.probs)),
        })
    }

    /// The validation side through the network in evaluation mode. A side whose images all
    /// failed, or a loss that is not finite, stops the run: nothing is chosen on NaN.
    fn validate(&mut self) -> anyhow::Result<Validation> {
        let net = self.net().valid();
        self.validate_with(&net).map(|v| Validation { net, ..v })
    }

    /// The validation side through `net` (the returned network is a copy of it).
    fn validate_with(&mut self, net: &Net) -> anyhow::Result<Validation> {
        let net = net.valid();
        let side = predict_side(
            &net,
            &self.feeder,
            self.data,
            &self.data.val,
            self.config.batch_size,
            self.finetune_start,
            &self.weights,
            &self.plain,
        );
        warn_skipped(self.run, self.sink, &mut self.warned, side.failures);
        anyhow::ensure!(
            !side.kept.is_empty(),
            "no usable images on the validation side: none of its {} images could be read",
            self.data.val.len()
        );
        anyhow::ensure!(
            side.loss.is_finite(),
            "the validation loss became {}: lower the learning rate (now {:.2e})",
            side.loss,
            self.config.learning_rate
        );
        let mut metrics = evaluate(self.data, &side.kept, &side.probs);
        metrics.loss = Some(side.loss);
        Ok(Validation {
            net,
            loss: side.loss,
            metrics,
        })
    }

    /// The epoch's event and confusion matrix.
    fn report_epoch(
        &mut self,
        epoch: u32,
        lr: f64,
        train_loss: f64,
        train: &metrics::Metrics,
        val: &Validation,
    ) {
        emit(
            self.run,
            self.sink,
            TrainEvent::Epoch {
                epoch,
                learning_rate: lr,
                train: EpochSide::from_metrics(train_loss, train),
                val: Some(EpochSide::from_metrics(val.loss, &val.metrics)),
                elapsed_secs: self.started.elapsed().as_secs_f64(),
            },
        );
        if let Some(matrix) = &val.metrics.confusion {
            emit(
                self.run,
                self.sink,
                TrainEvent::Confusion {
                    epoch,
                    split: "val".into(),
                    matrix: matrix.clone(),
                },
            );
        }
    }

    /// Keeps the best network, steps the plateau schedule; true when early stopping ends the
    /// run after this epoch.
    fn advance(&mut self, epoch: u32, val: Validation) -> bool {
        let p = &mut self.progress;
        p.epoch = epoch;
        if val.loss < p.best_val_loss || self.best.is_none() {
            p.best_val_loss = val.loss;
            p.best_epoch = epoch;
            p.stale_epochs = 0;
            self.best = Some(val.net);
        } else {
            p.stale_epochs += 1;
        }
        if let Schedule::Plateau { patience, factor } = self.config.schedule
            && p.stale_epochs >= patience
            && epoch - p.last_plateau_epoch >= patience
        {
            p.plateau_scale *= factor;
            p.last_plateau_epoch = epoch;
        }
        let stop = self
            .config
            .early_stopping_patience
            .is_some_and(|patience| p.stale_epochs >= patience);
        if stop {
            let message = format!(
                "early stop: no better validation loss for {} epochs",
                p.stale_epochs
            );
            emit(self.run, self.sink, TrainEvent::Info { message });
        }
        stop
    }

    /// One checkpoint generation: the weights, optimiser state, parameter ids, the best
    /// weights so far and the progress, visible only once complete.
    fn checkpoint(&mut self, epoch: u32) -> anyhow::Result<()> {
        let net = self.net();
        let bytes = net.valid().to_bytes()?;
        let generation = crate::runs::checkpoint::Generation::begin(&self.run.path, epoch)?;
        generation.write("model.safetensors", &bytes)?;
        generation.write("param_ids.json", &serde_json::to_vec(&net.param_ids())?)?;
        for (i, o) in self.optims.iter().enumerate() {
            let state = o
                .into_bytes()
                .map_err(|e| anyhow::anyhow!("saving optimiser state: {e:?}"))?;
            generation.write(&format!("optimizer-{i}.bpk"), &state)?;
        }
        if self.progress.best_epoch == epoch {
            generation.write("best.safetensors", &bytes)?;
        } else if let Some(b) = &self.best {
            generation.write("best.safetensors", &b.to_bytes()?)?;
        }
        generation.write("state.json", &serde_json::to_vec(&self.progress)?)?;
        let generation = generation.commit()?;
        self.run.set_status(RunState::Running, epoch, None)?;
        let path = generation
            .strip_prefix(&self.run.path)
            .unwrap_or(&generation)
            .join("model.safetensors")
            .to_string_lossy()
            .into_owned();
        emit(self.run, self.sink, TrainEvent::Checkpoint { epoch, path });
        Ok(())
    }

    fn cancelled(self) -> anyhow::Result<TrainOutcome> {
        cancelled(self.run, self.sink, self.progress.epoch)
    }

    /// The final artefacts, from the best epoch's network: predictions of the validation
    /// and test sides, `model.safetensors`, `metrics.json`, `confusion.json`, the finished
    /// event and status.
    /// Says so when every training image of a label failed to read (the model then never
    /// learnt it), and when a setting asked for does not apply to the task.
    fn warn_unlearnt(&mut self) {
        let k = self.data.labels.len();
        let (mut total, mut unread) = (vec![0usize; k], vec![0usize; k]);
        for &i in &self.data.train {
            let item = &self.data.items[i];
            let labels: Vec<usize> = match &item.target {
                Target::Class(c) => vec![*c],
                Target::Multi(flags) => (0..k).filter(|&j| flags[j]).collect(),
            };
            for c in labels.into_iter().filter(|&c| c < k) {
                total[c] += 1;
                unread[c] += usize::from(self.warned.contains(&item.path));
            }
        }
        for c in 0..k {
            if total[c] > 0 && unread[c] == total[c] {
                let message = format!(
                    "none of the {} training images of label {} could be read: the model never learnt it and will not predict it",
                    total[c], self.data.labels[c]
                );
                emit(self.run, self.sink, TrainEvent::Warning { message });
            }
        }
        if self.config.calibrate && !matches!(self.data.task, Task::Binary | Task::MultiClass) {
            let message = format!(
                "calibration (temperature scaling) applies to binary and multi-class tasks; this {:?} run is not calibrated",
                self.data.task
            );
            emit(self.run, self.sink, TrainEvent::Warning { message });
        }
    }
}

/// One warning per unreadable image, the first time it fails in a run.
pub(super) fn warn_skipped(
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
                    message: format!(
                        "skipped unreadable image ({}): {}",
                        reason.split_whitespace().collect::<Vec<_>>().join(" "),
                        path.display()
                    ),
                },
            );
        }
    }
}

/// Records an event in the run folder and hands it to the caller.
pub(super) fn emit(run: &mut RunDir, sink: &mut dyn FnMut(&TrainEvent), e: TrainEvent) {
    if let Err(err) = run.log(&e) {
        log::error!("writing events.jsonl: {err}");
    }
    sink(&e);
}

pub(super) fn cancelled(
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
        test_metrics: None,
        test_predictions: None,
    })
}
