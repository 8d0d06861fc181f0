//! The training loops (probe, fine-tune, scratch) behind `cellbench train`, the GUI's Train
//! cell and cluster jobs. All burn work of a run happens on the calling thread; callers run
//! it on a dedicated thread and receive [`TrainEvent`]s through `sink`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use web_time::Instant;

use crate::dataset::Manifest;
use crate::dataset::split::SplitMix64;
use crate::model::backend::{self};
use crate::model::efficientnet::FEATURES;
use crate::model::heads::Head;
use crate::runs::{RunDir, RunState};
use burn::module::Module as _;

use super::batches::*;
use super::data::{Prepared, prepare};
use super::features::FeatureCache;
use super::loss::{loss_and_probs, loss_weights};
use super::net::*;
use super::trainer::*;
use crate::experiment::config::TrainConfig;
use crate::experiment::events::TrainEvent;
use crate::experiment::metrics::Target;
use crate::experiment::metrics::{Metrics, Task};

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
    /// The test side, scored once with the kept model (finished runs whose split has one).
    pub test_metrics: Option<Metrics>,
    /// The test side's predictions, for pooling over cross-validation folds.
    pub test_predictions: Option<ScoredSide>,
}

/// The predictions of one side of a run, with what is needed to score them again
/// (pooled over folds, resampled for confidence intervals).
#[derive(Clone, Debug)]
pub struct ScoredSide {
    pub task: Task,
    pub labels: Vec<String>,
    /// One per image: its target, its patient and its predicted probabilities.
    pub targets: Vec<Target>,
    pub patients: Vec<Option<String>>,
    pub probs: Vec<Vec<f32>>,
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
    let compute = backend::select(config.backend)?;
    let (plain, ad) = (compute.device.clone(), compute.device.clone().autodiff());
    let (data, feeder) = synthetic_features(n, classes, config.seed);
    let mut rng = SplitMix64::new(config.seed);
    let weights = loss_weights(&data, config.imbalance);
    let never = AtomicBool::new(false);
    let start = Instant::now();
    let mut net = Net::Probe(Head::zeros(FEATURES, classes, config.dropout, &ad)).train_mode();
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

/// Timing of fine-tuning steps on real images.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FinetuneBench {
    pub kind: &'static str,
    pub device: String,
    pub batch_size: usize,
    pub batches: usize,
    pub unfrozen_blocks: usize,
    /// The first step: kernel compilation, autotune, optimiser state.
    pub warmup_secs: f64,
    /// All timed steps, loading included.
    pub timed_secs: f64,
    /// Decoding and augmenting the timed batches alone, measured after the steps: the work
    /// the loader thread overlaps with them (on the same cores, on a CPU).
    pub decode_secs: f64,
    pub images_per_sec: f64,
}

/// Images per second of fine-tuning steps exactly as a fine-tune run takes them (decode,
/// augment, the frozen prefix without gradients, forward and backward through the last
/// `unfreeze` blocks and the head, one AdamW step) on the bundled demo images at the default
/// input side, batch `batch_size`: one warm-up step, then `batches` timed steps. Each step
/// reads its loss back, so GPU work is finished inside the clock.
pub fn bench_finetune(
    choice: backend::BackendChoice,
    backbone: crate::model::efficientnet::Backbone,
    batch_size: usize,
    batches: usize,
    unfreeze: usize,
) -> anyhow::Result<FinetuneBench> {
    use crate::model::extractor::{Extractor, load_backbone};
    let (batch_size, batches) = (batch_size.max(1), batches.max(1));
    let manifest = crate::dataset::open(&crate::demo_dataset(), &Default::default())
        .map_err(|e| anyhow::anyhow!("opening the demo dataset: {e}"))?;
    let config = TrainConfig {
        backend: choice,
        batch_size,
        unfreeze_blocks: unfreeze,
        ..TrainConfig::for_mode(crate::experiment::config::Mode::Finetune).with_backbone(backbone)
    };
    let data = prepare(&manifest, &config)?;
    let compute = backend::select(choice)?;
    let (plain, ad) = (compute.device.clone(), compute.device.clone().autodiff());
    let blocks = config.backbone.num_blocks();
    let start_block = blocks.saturating_sub(unfreeze.min(blocks));
    let backbone = load_backbone(config.backbone, &plain)?;
    let feeder = Feeder::Images {
        preprocess: config.preprocess.clone(),
        augment: config.augment.clone(),
        prefix: Some((Extractor::new(backbone.valid(), &plain), start_block)),
    };
    let mut net = Net::Finetune {
        backbone: backbone.fork(&ad),
        head: Head::new(FEATURES, data.labels.len(), config.dropout, &ad),
    }
    .train_mode();
    let mut optims = vec![optimizer(&config), optimizer(&config)];
    let weights = loss_weights(&data, config.imbalance);
    let mut rng = SplitMix64::new(config.seed);
    let all: Vec<usize> = (0..data.items.len()).collect();
    let chunk = |i: usize| -> Vec<usize> {
        all.iter()
            .cycle()
            .skip(i * batch_size)
            .take(batch_size)
            .copied()
            .collect()
    };
    let mut step = |net: Net, batch: super::batches::Batch| -> anyhow::Result<Net> {
        anyhow::ensure!(batch.failures.is_empty(), "a demo image failed to load");
        let logits = net.logits(batch.input, start_block);
        let (loss, _) = loss_and_probs(data.task, logits, &data, &batch.items, &weights);
        let net = net.step(&mut optims, config.learning_rate, loss.clone());
        let loss = f64::from(loss.into_scalar::<f32>());
        anyhow::ensure!(loss.is_finite(), "the loss became {loss}");
        Ok(net)
    };
    // Warm-up: one step, its images decoded inline.
    let t = Instant::now();
    let batch = feeder.batch(&data, &chunk(0), true, &mut rng, &ad, &plain);
    net = step(net, batch)?;
    let warmup_secs = t.elapsed().as_secs_f64();
    // Timed: the trainer's own pass, images decoded on the loader thread ahead of the steps.
    let owned: Vec<Vec<usize>> = (1..=batches).map(chunk).collect();
    let chunks: Vec<&[usize]> = owned.iter().map(Vec::as_slice).collect();
    let mut net = Some(net);
    let t = Instant::now();
    super::batches::for_each_batch(
        &feeder,
        &data,
        &chunks,
        true,
        &mut rng,
        (&ad, &plain),
        &mut |_, batch| {
            let current = net.take().expect("the network is back after each step");
            net = Some(step(current, batch)?);
            Ok(std::ops::ControlFlow::Continue(()))
        },
    )?;
    let timed_secs = t.elapsed().as_secs_f64();
    drop(net);
    // What the loader thread did during those steps, alone: if it is near `timed_secs`, the
    // steps waited for images.
    let t = Instant::now();
    let Feeder::Images {
        preprocess,
        augment,
        ..
    } = &feeder
    else {
        unreachable!("a fine-tune feeds images")
    };
    for c in &chunks {
        let seeds: Vec<u64> = c.iter().map(|_| rng.next_u64()).collect();
        super::batches::decode_images(preprocess, augment, &data, c, true, &seeds);
    }
    let decode_secs = t.elapsed().as_secs_f64();
    Ok(FinetuneBench {
        kind: "finetune",
        device: compute.description,
        batch_size,
        batches,
        unfrozen_blocks: unfreeze.min(blocks),
        warmup_secs,
        timed_secs,
        decode_secs,
        images_per_sec: (batch_size * batches) as f64 / timed_secs,
    })
}

/// `n` synthetic 1280-d feature vectors of `classes` Gaussian clusters (item `i` in class
/// `i % classes`), the first 80% on the training side and the rest on the validation side.
pub(super) fn synthetic_features(n: usize, classes: usize, seed: u64) -> (Prepared, Feeder) {
    use super::data::Item;
    let mut rng = SplitMix64::new(seed);
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
    (data, feeder)
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

    let fresh = || Progress {
        best_val_loss: f64::INFINITY,
        plateau_scale: 1.0,
        ..Default::default()
    };
    let mut restarted = false;
    let (mut run, progress) = match &job.resume {
        Some(path) => {
            // A finished run has nothing left to do; training it again would replace the
            // model its evaluations and predictions were made with.
            if let Ok(status) = crate::runs::read_status(path)
                && status.state == crate::runs::RunState::Finished
            {
                anyhow::bail!(
                    "run {} already finished (epoch {}): nothing to resume; start a new run to train again",
                    path.display(),
                    status.epoch
                );
            }
            same_data(path, &data)?;
            let run = RunDir::reopen(path)?;
            // A run stopped before its first checkpoint has nothing to lose: it starts again.
            let progress = match crate::runs::checkpoint::latest(path)? {
                Some(generation) => crate::runs::read_json(&generation.join("state.json"))?,
                None => {
                    restarted = true;
                    fresh()
                }
            };
            (run, progress)
        }
        None => (
            RunDir::create(&job.runs_root, &config.as_used(data.task))?,
            fresh(),
        ),
    };
    if restarted {
        emit(
            &mut run,
            sink,
            TrainEvent::Warning {
                message: "the run stopped before its first checkpoint: it starts again from the beginning".into(),
            },
        );
    }
    // A split given with the data is used as it is, but never in silence when it leaks: a
    // patient or copies of one image on both sides make validation scores optimistic.
    if data.split_given && job.resume.is_none() {
        let report =
            crate::dataset::split::SplitReport::of(&job.manifest.records, &job.manifest.copies);
        if !report.passed() {
            emit(
                &mut run,
                sink,
                TrainEvent::Warning {
                    message: format!(
                        "the given split puts {} patient(s) and {} group(s) of identical images on more than one side: validation scores on it are optimistic (`cellbench split --check` lists them)",
                        report.leaks.len(),
                        report.copy_leaks.len()
                    ),
                },
            );
        }
    }
    let result = Trainer::run(
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

/// Labels a side has no image of (a label with one image lands on one side only): the model
/// cannot learn a label it never sees, and one missing from validation is neither measured
/// nor weighed when the kept model is chosen.
pub(crate) fn missing_labels(data: &crate::train::data::Prepared) -> Vec<String> {
    let k = data.labels.len();
    let count = |side: &[usize]| {
        let mut n = vec![0usize; k];
        for &i in side {
            match &data.items[i].target {
                Target::Class(c) => n[*c] += 1,
                Target::Multi(flags) => {
                    for (j, f) in flags.iter().enumerate() {
                        n[j] += usize::from(*f);
                    }
                }
            }
        }
        n
    };
    let (train, val) = (count(&data.train), count(&data.val));
    let none = |n: &[usize]| -> Vec<&str> {
        (0..k)
            .filter(|&c| n[c] == 0)
            .map(|c| data.labels[c].as_str())
            .collect()
    };
    let mut out = Vec::new();
    let (untrained, unmeasured) = (none(&train), none(&val));
    if !untrained.is_empty() {
        out.push(format!(
            "no training image of label(s) {}: the model cannot learn them",
            label_list(&untrained)
        ));
    }
    if !unmeasured.is_empty() {
        out.push(format!(
            "no validation image of label(s) {}: their recall and AUC are not measured, and the kept model is chosen without them",
            label_list(&unmeasured)
        ));
    }
    out
}

/// Labels for a message: at most 10 named, each cut to 60 characters, so that a warning stays
/// readable whatever the labels are (a CSV column of free text gives thousands of long ones).
fn label_list(labels: &[&str]) -> String {
    const NAMED: usize = 10;
    const CHARS: usize = 60;
    let mut out: Vec<String> = labels
        .iter()
        .take(NAMED)
        .map(|l| match l.char_indices().nth(CHARS) {
            Some((i, _)) => format!("{}…", &l[..i]),
            None => (*l).to_owned(),
        })
        .collect();
    if labels.len() > NAMED {
        out.push(format!("and {} more", labels.len() - NAMED));
    }
    out.join(", ")
}

/// A run resumes only on the data it started with: the labels and image counts of its
/// `started` event, and the digest of images, labels and sides in its `dataset.json`
/// (runs of older versions have none). Checked before the run folder is touched.
fn same_data(run: &std::path::Path, data: &crate::train::data::Prepared) -> anyhow::Result<()> {
    let refuse = |what: String| {
        anyhow::anyhow!(
            "the data changed since run {} started ({what}): resuming would continue training \
             on other data. Put the data back as it was, or start a new run",
            run.display()
        )
    };
    let started = crate::runs::read_events(run)
        .unwrap_or_default()
        .into_iter()
        .find_map(|e| match e {
            TrainEvent::Started {
                labels,
                train_images,
                val_images,
                ..
            } => Some((labels, train_images, val_images)),
            _ => None,
        });
    if let Some((labels, train, val)) = started {
        if labels != data.labels {
            return Err(refuse(format!(
                "labels then: {}; now: {}",
                labels.join(", "),
                data.labels.join(", ")
            )));
        }
        if (train, val) != (data.train.len(), data.val.len()) {
            return Err(refuse(format!(
                "training/validation images then: {train}/{val}; now: {}/{}",
                data.train.len(),
                data.val.len()
            )));
        }
    }
    let recorded = crate::runs::DatasetFile::read(run)
        .ok()
        .and_then(|d| d.fingerprint);
    if let Some(recorded) = recorded
        && recorded != data.fingerprint()
    {
        return Err(refuse(
            "the same labels and counts, but other images, labels of images or sides — e.g. \
             two class folders swapped"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::label_list;

    /// A warning names at most 10 labels, each cut to 60 characters.
    #[test]
    fn a_label_list_stays_readable() {
        let long = "L".repeat(70_000);
        let many: Vec<String> = (0..25).map(|i| format!("label {i}")).collect();
        let mut labels: Vec<&str> = vec![&long];
        labels.extend(many.iter().map(String::as_str));
        let text = label_list(&labels);
        assert_eq!(text.matches(", ").count(), 10, "{text}");
        assert!(
            text.starts_with(&format!("{}…, label 0", "L".repeat(60))),
            "{text}"
        );
        assert!(text.ends_with("label 8, and 16 more"), "{text}");
        assert_eq!(label_list(&["a", "b"]), "a, b");
    }

    use super::*;
    use crate::train::data::{Item, Prepared};

    /// A label with no image on a side is named: never learnt (training) or never measured
    /// (validation); a label present on both sides is not.
    #[test]
    fn labels_missing_from_a_side_are_named() {
        let item = |c: usize| Item {
            path: PathBuf::from(format!("{c}.png")),
            name: format!("{c}.png"),
            patient: None,
            target: Target::Class(c),
        };
        let data = Prepared {
            task: Task::MultiClass,
            labels: vec!["a".into(), "b".into(), "rare".into()],
            items: vec![item(0), item(1), item(0), item(1), item(2)],
            train: vec![0, 1, 4],
            val: vec![2, 3],
            test: Vec::new(),
            split_given: false,
        };
        let warnings = missing_labels(&data);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("no validation image of label(s) rare:"));
        let data = Prepared {
            train: vec![0, 1],
            val: vec![2, 3, 4],
            ..data
        };
        let warnings = missing_labels(&data);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("no training image of label(s) rare:"));
    }
}
