//! `train`: the command, its options, and its progress view (also used by `cluster` and `featurize`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Args;

use crate::dataset::{DatasetFormat, OpenOptions};
use crate::experiment::config::{Imbalance, Mode, Optimizer, Schedule, Task, TrainConfig};
use crate::experiment::events::{Phase, TrainEvent};
use crate::model::backend::BackendChoice;
use crate::train::engine::{TrainJob, train};
use crate::train::features::FeatureCache;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder or CSV (a split CSV from `cellbench split` works too).
    #[arg(required_unless_present_any = ["split", "resume"], conflicts_with = "split")]
    pub dataset: Option<PathBuf>,
    /// A split CSV (with a `split` column) to train on instead of splitting here.
    #[arg(long)]
    pub split: Option<PathBuf>,
    /// How to read the dataset: its format, and for a CSV its columns and images folder, as
    /// `cellbench dataset` reads it.
    #[command(flatten)]
    pub csv: super::data_cmds::CsvArgs,
    /// k-fold cross-validation: k runs, each validating on one patient-grouped, stratified
    /// fold; prints the mean ± sd of the validation metrics (a given split is ignored).
    #[arg(long, conflicts_with = "resume", value_parser = clap::value_parser!(u32).range(2..=50))]
    pub folds: Option<u32>,
    /// A TOML run configuration; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub mode: Option<Mode>,
    /// binary, multi-class, multi-label or ordinal (default: from the data).
    #[arg(long, value_parser = parse_task)]
    pub task: Option<Task>,
    #[arg(long)]
    pub epochs: Option<u32>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long = "lr")]
    pub learning_rate: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// sgd, adam or adamw.
    #[arg(long)]
    pub optimizer: Option<Optimizer>,
    /// constant, cosine or plateau.
    #[arg(long)]
    pub schedule: Option<Schedule>,
    /// none, class-weights or oversample.
    #[arg(long)]
    pub imbalance: Option<Imbalance>,
    /// The pretrained network: lite0 (default, 224²), lite1 (240²) or lite2 (260²); the image
    /// size follows it unless --image-size is given.
    #[arg(long)]
    pub backbone: Option<crate::model::efficientnet::Backbone>,
    /// Input side in pixels (default: the backbone's).
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Fine-tuning: number of last backbone blocks to train.
    #[arg(long)]
    pub unfreeze: Option<usize>,
    /// Fine-tuning: where the head starts — probe (default: the probe solved on the training
    /// side, so fine-tuning starts where the probe ends) or random.
    #[arg(long)]
    pub head_init: Option<crate::experiment::config::HeadInit>,
    /// Fine-tuning: what the trained blocks' batch norms normalise by — frozen (default: the
    /// pretrained running statistics, as in prediction) or batch (each batch's statistics).
    #[arg(long)]
    pub batch_norm: Option<crate::experiment::config::BatchNormMode>,
    #[arg(long)]
    pub patience: Option<u32>,
    #[arg(long)]
    pub no_augment: bool,
    /// Probe: average each image's features over its 8 orientations (flips, 90° turns).
    #[arg(long)]
    pub orientation_mean: bool,
    /// Probe: multi-scale features — the pooled outputs of two earlier stages (112 and 192
    /// channels on Lite0) after the final 1280, each weighted alike; same forward pass. The
    /// default; the flag is kept for scripts that give it (and to override `multiscale =
    /// false` in a --config file).
    #[arg(long, conflicts_with = "single_scale")]
    pub multiscale: bool,
    /// Probe: the final pool alone (1280 values on Lite0), as probes read before multi-scale
    /// features became the default.
    #[arg(long)]
    pub single_scale: bool,
    /// Binary and multi-class tasks: fit a temperature on held-out predictions (a probe's
    /// inner folds, else the validation side) that calibrates the probabilities (temperature
    /// scaling), saved with the model and used by predict, serve and evaluate. The test side
    /// reports its calibration error before and after.
    #[arg(long)]
    pub calibrate: bool,
    /// Probe: lbfgs (default: logistic regression solved to convergence, its L2 strength
    /// and class weighting chosen by the log loss of 3 patient-grouped inner folds, of
    /// training + validation when a test side scores the model (then refitted on both), else
    /// of the training side; --epochs, --lr, --optimizer, --weight-decay and
    /// --imbalance do not apply)
    /// or sgd (epochs of mini-batch steps, the best epoch chosen on the validation side).
    #[arg(long)]
    pub solver: Option<crate::experiment::config::Solver>,
    /// Dropout before the classification head.
    #[arg(long)]
    pub dropout: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// auto, wgpu or cpu.
    #[arg(long)]
    pub backend: Option<BackendChoice>,
    /// Folder that holds run folders.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Continue an interrupted run from its last checkpoint.
    #[arg(long, value_name = "RUN")]
    pub resume: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print every event as a JSON line on stdout (instead of a progress bar).
    #[arg(long)]
    pub json: bool,
    /// Write the backbone features of every image (and its --folds fold) to this CSV
    /// instead of training: for checking the probe against other tools.
    #[arg(long, hide = true, value_name = "CSV")]
    pub export_features: Option<PathBuf>,
}

/// Settings only one mode reads: the configuration key, the flag, the mode.
const MODE_ONLY: [(&str, &str, Mode); 6] = [
    ("multiscale", "--multiscale", Mode::Probe),
    ("orientation_mean", "--orientation-mean", Mode::Probe),
    ("solver", "--solver", Mode::Probe),
    ("head_init", "--head-init", Mode::Finetune),
    ("batch_norm", "--batch-norm", Mode::Finetune),
    ("unfreeze_blocks", "--unfreeze", Mode::Finetune),
];

/// Keys of a run configuration file (its top-level table) that no setting reads (top level
/// and one table down), as `key` or `table.key`.
fn unknown_keys(given: &toml::Table) -> Vec<String> {
    let Ok(toml::Value::Table(known)) = toml::Value::try_from(TrainConfig::default()) else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    for (key, value) in given {
        match (known.get(key), value) {
            (None, _) if key != "task" => unknown.push(key.clone()),
            // A tagged table (`[optimizer] kind = …`) has keys per variant: only its
            // serialised default's keys are known here, so its keys are not judged.
            (Some(toml::Value::Table(inner)), toml::Value::Table(sub))
                if !inner.contains_key("kind") =>
            {
                unknown.extend(
                    sub.keys()
                        .filter(|k| !inner.contains_key(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            _ => {}
        }
    }
    unknown
}

pub(super) fn parse_task(s: &str) -> Result<Task, String> {
    match s {
        "binary" => Ok(Task::Binary),
        "multi-class" | "multiclass" => Ok(Task::MultiClass),
        "multi-label" | "multilabel" => Ok(Task::MultiLabel),
        "ordinal" => Ok(Task::Ordinal),
        _ => Err("expected binary, multi-class, multi-label or ordinal".into()),
    }
}

impl TrainArgs {
    /// The run options given on the command line (not where the data or runs live).
    fn run_options(&self) -> Vec<&'static str> {
        let given = [
            ("--config", self.config.is_some()),
            ("--mode", self.mode.is_some()),
            ("--task", self.task.is_some()),
            ("--epochs", self.epochs.is_some()),
            ("--batch-size", self.batch_size.is_some()),
            ("--lr", self.learning_rate.is_some()),
            ("--weight-decay", self.weight_decay.is_some()),
            ("--optimizer", self.optimizer.is_some()),
            ("--schedule", self.schedule.is_some()),
            ("--imbalance", self.imbalance.is_some()),
            ("--backbone", self.backbone.is_some()),
            ("--image-size", self.image_size.is_some()),
            ("--unfreeze", self.unfreeze.is_some()),
            ("--head-init", self.head_init.is_some()),
            ("--batch-norm", self.batch_norm.is_some()),
            ("--patience", self.patience.is_some()),
            ("--no-augment", self.no_augment),
            ("--orientation-mean", self.orientation_mean),
            ("--multiscale", self.multiscale),
            ("--single-scale", self.single_scale),
            ("--calibrate", self.calibrate),
            ("--solver", self.solver.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--seed", self.seed.is_some()),
        ];
        given
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name)
            .collect()
    }

    /// Options given that the run's mode does not use, each with why.
    fn unused_options(&self, config: &TrainConfig) -> Vec<String> {
        let given = |key: &str| match key {
            "multiscale" => self.multiscale || self.single_scale,
            "orientation_mean" => self.orientation_mean,
            "solver" => self.solver.is_some(),
            "head_init" => self.head_init.is_some(),
            "batch_norm" => self.batch_norm.is_some(),
            _ => self.unfreeze.is_some(),
        };
        MODE_ONLY
            .iter()
            .filter(|(key, _, mode)| *mode != config.mode && given(key))
            .map(|(key, flag, mode)| {
                // `multiscale` has two flags: name the one given.
                let flag = if *key == "multiscale" && !self.multiscale {
                    "--single-scale"
                } else {
                    *flag
                };
                (flag, mode)
            })
            .map(|(flag, mode)| match mode {
                Mode::Probe => format!("{flag} (probes only)"),
                _ => format!("{flag} (fine-tuning only)"),
            })
            .collect()
    }

    fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(p) => {
                let text = crate::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                let mut c: TrainConfig =
                    toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
                // A run folder's config.toml without these keys was written before the choices
                // existed and reads as what it did then; a configuration file given here means
                // today's defaults.
                let given: toml::Table = toml::from_str(&text).unwrap_or_default();
                let has = |k: &str| given.contains_key(k);
                if !has("head_init") {
                    c.head_init = Default::default();
                }
                if !has("batch_norm") {
                    c.batch_norm = Default::default();
                }
                if !has("multiscale") {
                    c.multiscale = TrainConfig::default().multiscale;
                }
                let mode = self.mode.unwrap_or(c.mode);
                let unused: Vec<&str> = MODE_ONLY
                    .iter()
                    .filter(|(key, _, only)| *only != mode && has(key))
                    .map(|(key, _, _)| *key)
                    .collect();
                if !unused.is_empty() {
                    crate::errln!(
                        "note: not used by a {} run: {} (in {})",
                        format!("{mode:?}").to_lowercase(),
                        unused.join(", "),
                        p.display()
                    );
                }
                let unknown = unknown_keys(&given);
                if !unknown.is_empty() {
                    crate::errln!(
                        "note: {} has settings cellbench does not know, ignored: {} (a misspelling?)",
                        p.display(),
                        unknown.join(", ")
                    );
                }
                c
            }
            None => TrainConfig::for_mode(self.mode.unwrap_or_default()),
        };
        if let Some(v) = self.mode {
            c.mode = v;
        }
        c.task = self.task.or(c.task);
        macro_rules! set {
            ($($field:ident <- $arg:expr),*) => { $( if let Some(v) = $arg { c.$field = v; } )* };
        }
        set!(epochs <- self.epochs, batch_size <- self.batch_size, learning_rate <- self.learning_rate,
             weight_decay <- self.weight_decay, optimizer <- self.optimizer, schedule <- self.schedule,
             imbalance <- self.imbalance, unfreeze_blocks <- self.unfreeze, dropout <- self.dropout, seed <- self.seed, backend <- self.backend,
             solver <- self.solver, head_init <- self.head_init,
             batch_norm <- self.batch_norm);
        if let Some(b) = self.backbone {
            c = c.with_backbone(b);
        }
        if let Some(s) = self.image_size {
            c.preprocess.size = s;
        }
        if let Some(p) = self.patience {
            c.early_stopping_patience = Some(p);
        }
        if self.no_augment {
            c.augment = crate::dataset::preprocess::Augment::none();
        }
        c.orientation_mean |= self.orientation_mean;
        c.multiscale = (c.multiscale || self.multiscale) && !self.single_scale;
        c.calibrate |= self.calibrate;
        Ok(c)
    }
}

pub fn train_cmd(args: TrainArgs) -> anyhow::Result<u8> {
    let (config, manifest, options) = match &args.resume {
        Some(run) => {
            // The run's own record of its data and split: any run can be resumed, whoever
            // started it (CLI, GUI, workbook or cluster job).
            anyhow::ensure!(
                crate::fs::is_dir(run),
                "no such run folder: {}",
                run.display()
            );
            anyhow::ensure!(
                crate::fs::is_file(&run.join("config.toml")),
                "not a run folder (no config.toml): {}",
                run.display()
            );
            let d = crate::runs::DatasetFile::read(run)?;
            let mut given: Vec<String> =
                args.run_options().into_iter().map(str::to_owned).collect();
            if let Some(data) = args.dataset.as_ref().or(args.split.as_ref()) {
                given.insert(
                    0,
                    format!(
                        "the dataset {} (it uses the data it recorded)",
                        data.display()
                    ),
                );
            } else if args.csv.options() != OpenOptions::default() {
                given.insert(
                    0,
                    "the dataset options (it reads the data as it recorded)".to_owned(),
                );
            }
            if !given.is_empty() {
                crate::errln!(
                    "note: a resumed run continues as recorded in its config.toml; ignored: {}",
                    given.join(", ")
                );
            }
            (crate::runs::read_config(run)?, d.open()?, d.options)
        }
        None => {
            let (source, options) = match (&args.split, &args.dataset) {
                (Some(split), _) => {
                    // A split CSV (from `cellbench split`) names its columns, and its paths
                    // are relative to its own folder.
                    if args.csv.options() != OpenOptions::default() {
                        crate::errln!(
                            "note: the dataset options are ignored with --split: {} names its columns, and its image paths are relative to its folder",
                            split.display()
                        );
                    }
                    (
                        split.clone(),
                        OpenOptions {
                            format: Some(DatasetFormat::Csv),
                            ..Default::default()
                        },
                    )
                }
                (None, Some(d)) => (d.clone(), args.csv.options()),
                (None, None) => anyhow::bail!("give a dataset, --split or --resume"),
            };
            let manifest = crate::dataset::open(&source, &options)?;
            // What `explore` flags is said before anything trains on it.
            let problems = manifest.problem_summary();
            if !problems.is_empty() {
                let total: usize = problems.iter().map(|p| p.count).sum();
                crate::errln!(
                    "warning: the dataset has {total} problem(s); `cellbench explore {}` lists them:",
                    source.display()
                );
                for p in &problems {
                    crate::errln!(
                        "  {} × {}{}",
                        p.count,
                        p.description,
                        p.examples
                            .first()
                            .map(|e| format!(" (e.g. {})", crate::table::clip_chars(e, 120)))
                            .unwrap_or_default()
                    );
                }
            }
            if args.folds.is_some() && manifest.records.iter().any(|r| r.split.is_some()) {
                crate::errln!(
                    "note: cross-validation makes its own patient-grouped folds; the split in {} is not used",
                    source.display()
                );
            }
            let config = args.config()?;
            let unused = args.unused_options(&config);
            if !unused.is_empty() {
                crate::errln!(
                    "note: not used by a {} run: {}",
                    format!("{:?}", config.mode).to_lowercase(),
                    unused.join(", ")
                );
            }
            (config, manifest, options)
        }
    };
    let job = TrainJob {
        config,
        manifest,
        options,
        runs_root: args.runs.clone(),
        resume: args.resume.clone(),
        cache: (!args.no_cache).then(FeatureCache::default_location),
    };
    if let Some(out) = &args.export_features {
        let rows =
            crate::train::export::export_features(&job, args.folds.map(|k| k as usize), out)?;
        crate::errln!("wrote the features of {rows} images to {}", out.display());
        return Ok(0);
    }
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || {
            if cancel.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            crate::errln!("\nstopping after the current batch (Ctrl-C again to quit at once)…");
        })
        .ok();
    }
    let (tx, rx) = std::sync::mpsc::channel::<TrainEvent>();
    // All burn work of the run on one dedicated thread.
    let folds = args.folds.map(|k| k as usize);
    let worker = {
        let cancel = cancel.clone();
        std::thread::Builder::new()
            .name("train".into())
            .spawn(move || {
                let mut sink = |e: &TrainEvent| {
                    tx.send(e.clone()).ok();
                };
                match folds {
                    Some(k) => crate::train::cv::cross_validate(job, k, &mut sink, &cancel)
                        .map(|cv| Finished::Folds(Box::new(cv))),
                    None => train(job, &mut sink, &cancel).map(|o| Finished::Run(Box::new(o))),
                }
            })?
    };
    let mut bar = ProgressView::new(args.json);
    for event in rx {
        bar.show(&event);
    }
    bar.finish();
    let outcome = match worker
        .join()
        .map_err(|_| anyhow::anyhow!("the training thread panicked"))??
    {
        Finished::Run(o) => *o,
        Finished::Folds(cv) => return Ok(report_folds(*cv, args.json)),
    };
    crate::errln!("run folder: {}", outcome.run_dir.display());
    if let Some(m) = &outcome.metrics
        && !args.json
    {
        for t in crate::train::report::metrics_tables("validation (chose the kept model)", m) {
            outln!("{t}");
        }
        // The test side, when the split has one: scored once, with the weights the
        // validation side chose.
        if let Some(test) = crate::runs::MetricsFile::read(&outcome.run_dir)
            .ok()
            .and_then(|f| f.test)
        {
            for t in crate::train::report::metrics_tables("test (scored once)", &test) {
                outln!("{t}");
            }
        }
    }
    Ok(match outcome.state {
        crate::runs::RunState::Finished => 0,
        crate::runs::RunState::Cancelled => 130,
        _ => 1,
    })
}

/// What the training thread produced.
enum Finished {
    Run(Box<crate::train::engine::TrainOutcome>),
    Folds(Box<crate::train::cv::CvOutcome>),
}

/// Prints a cross-validation's mean ± sd table (or its JSON) and returns the exit code.
fn report_folds(cv: crate::train::cv::CvOutcome, json: bool) -> u8 {
    for o in &cv.outcomes {
        crate::errln!("run folder: {}", o.run_dir.display());
    }
    let Some(summary) = cv.summary else {
        let cancelled = cv
            .outcomes
            .last()
            .is_some_and(|o| o.state == crate::runs::RunState::Cancelled);
        crate::errln!(
            "cross-validation stopped after {} fold(s); no summary written",
            cv.outcomes.len()
        );
        return if cancelled { 130 } else { 1 };
    };
    // With --json the summary was printed as the `cross_validation` event.
    if !json {
        outln!("{}", crate::train::report::cv_table(&summary));
        let inner: Vec<String> = summary
            .selection_images
            .iter()
            .map(u64::to_string)
            .collect();
        outln!(
            "chosen on: {} ({} images per fold); scored on: {}",
            summary.chosen_on,
            inner.join(", "),
            summary.scored_on
        );
        for (i, c) in summary.chosen.iter().enumerate() {
            outln!("  fold {}: {c}", i + 1);
        }
        if let Some(p) = &summary.pooled {
            use crate::train::report::with_interval;
            let ci = p.ci.as_ref();
            outln!(
                "all folds' held-out predictions together ({} images; 95% bootstrap intervals over {}): accuracy {}, balanced accuracy {}, macro F1 {}, macro AUC {}{}{}",
                p.n,
                ci.map_or_else(|| "-".into(), |c| format!("{} {}", c.units, c.unit)),
                with_interval(Some(p.accuracy), ci.and_then(|c| c.accuracy)),
                with_interval(
                    Some(p.balanced_accuracy),
                    ci.and_then(|c| c.balanced_accuracy)
                ),
                with_interval(Some(p.macro_f1), ci.and_then(|c| c.macro_f1)),
                with_interval(p.macro_auc, ci.and_then(|c| c.macro_auc)),
                p.kappa_quadratic.map_or_else(String::new, |k| format!(
                    ", quadratic kappa {}",
                    with_interval(Some(k), ci.and_then(|c| c.kappa_quadratic))
                )),
                p.calibration
                    .as_ref()
                    .map_or_else(String::new, |c| format!(", ECE {:.4}", c.ece)),
            );
        }
    }
    if let Some(p) = &cv.summary_path {
        crate::errln!("summary: {}", p.display());
    }
    0
}

/// Renders events as a progress bar and log lines (or JSON lines).
pub struct ProgressView {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    phase: Option<Phase>,
}

impl ProgressView {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            bar: None,
            phase: None,
        }
    }

    fn println(&self, s: String) {
        match &self.bar {
            Some(b) if !b.is_hidden() => b.println(s),
            _ => crate::errln!("{s}"),
        }
    }

    pub fn show(&mut self, event: &TrainEvent) {
        if self.json {
            outln!("{}", event.to_json_line());
            return;
        }
        match event {
            TrainEvent::Started {
                run_id,
                mode,
                task,
                labels,
                train_images,
                val_images,
                device,
                epochs,
            } => {
                crate::errln!(
                    "run {run_id}: {mode:?} {task:?} on {device}; {} labels, {train_images} train / {val_images} val images, {epochs} epoch{}",
                    labels.len(),
                    if *epochs == 1 { "" } else { "s" }
                );
            }
            TrainEvent::Progress { phase, done, total } => {
                if self.phase != Some(*phase) {
                    if let Some(b) = self.bar.take() {
                        b.finish_and_clear();
                    }
                    let b = indicatif::ProgressBar::new(*total as u64);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg:>9} [{bar:40}] {pos}/{len} ({eta} left)",
                        )
                        .expect("template")
                        .progress_chars("=> "),
                    );
                    b.set_message(format!("{phase:?}").to_lowercase());
                    self.bar = Some(b);
                    self.phase = Some(*phase);
                }
                if let Some(b) = &self.bar {
                    b.set_length(*total as u64);
                    b.set_position(*done as u64);
                }
            }
            TrainEvent::Epoch {
                epoch,
                learning_rate,
                train,
                val,
                ..
            } => {
                self.phase = None;
                if let Some(b) = &self.bar {
                    b.set_position(0);
                }
                let v = val.as_ref().map_or_else(String::new, |v| {
                    format!(
                        "  val loss {:.4} acc {:.3} bal {:.3} F1 {:.3} AUC {}",
                        v.loss,
                        v.accuracy,
                        v.balanced_accuracy,
                        v.macro_f1,
                        v.macro_auc.map_or("-".into(), |a| format!("{a:.3}"))
                    )
                });
                self.println(format!(
                    "epoch {epoch:>3}  lr {learning_rate:.2e}  train loss {:.4} acc {:.3}{v}",
                    train.loss, train.accuracy
                ));
            }
            TrainEvent::Warning { message } => self.println(format!("warning: {message}")),
            TrainEvent::Info { message } => self.println(message.clone()),
            TrainEvent::Finished {
                best_epoch,
                elapsed_secs,
                patient_metrics,
                ..
            } => {
                self.println(format!(
                    "finished in {elapsed_secs:.1} s; best epoch {best_epoch}"
                ));
                if let Some(p) = patient_metrics {
                    self.println(format!(
                        "patient level ({} patients): accuracy {:.3}, balanced {:.3}, macro F1 {:.3}",
                        p.n, p.accuracy, p.balanced_accuracy, p.macro_f1
                    ));
                }
            }
            TrainEvent::Failed { error } => self.println(format!("failed: {error}")),
            TrainEvent::Fold { fold, folds } => {
                self.println(format!("cross-validation: fold {fold} of {folds}"));
            }
            // Printed as a table when the folds are done.
            TrainEvent::CrossValidation { .. } => {}
            TrainEvent::Cancelled { epoch } => self.println(format!(
                "cancelled after epoch {epoch}; resume with --resume <run>"
            )),
            TrainEvent::Confusion { .. } | TrainEvent::Checkpoint { .. } => {}
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A misspelt setting is named; known ones, tagged tables and an optional task are not.
    #[test]
    fn unknown_config_keys_are_named() {
        let text = "mode = \"finetune\"\nhead_int = \"random\"\ntask = \"binary\"\n\
                    [preprocess]\nsize = 64\nsise = 3\n[optimizer]\nkind = \"sgd\"\nmomentum = 0.9\n";
        let table = |t: &str| toml::from_str::<toml::Table>(t).unwrap();
        assert_eq!(unknown_keys(&table(text)), ["head_int", "preprocess.sise"]);
        let defaults = toml::to_string(&TrainConfig::default()).unwrap();
        assert!(unknown_keys(&table(&defaults)).is_empty());
    }

    /// The probe reads multi-scale features unless told `--single-scale`; `--multiscale` is
    /// still accepted, and the two together are refused.
    #[test]
    fn multiscale_by_default_and_single_scale_on_request() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            train: TrainArgs,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from(["train", "data"].iter().chain(extra)).map(|c| c.train)
        };
        let config = |extra: &[&str]| parse(extra).unwrap().config().unwrap();
        assert!(config(&[]).multiscale);
        assert_eq!(config(&[]).feature_kind().width(), 1280 + 112 + 192);
        assert!(config(&["--multiscale"]).multiscale);
        assert!(!config(&["--single-scale"]).multiscale);
        assert_eq!(config(&["--single-scale"]).feature_kind().width(), 1280);
        assert!(parse(&["--multiscale", "--single-scale"]).is_err());
        let tuned = parse(&["--mode", "finetune", "--single-scale"]).unwrap();
        assert_eq!(
            tuned.unused_options(&tuned.config().unwrap()),
            ["--single-scale (probes only)"]
        );
        // A configuration file that does not say means today's default; one that says keeps it.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("probe.toml");
        let file_str = file.to_str().unwrap();
        std::fs::write(&file, "epochs = 3\n").unwrap();
        assert!(config(&["--config", file_str]).multiscale);
        std::fs::write(&file, "multiscale = false\n").unwrap();
        assert!(!config(&["--config", file_str]).multiscale);
        assert!(config(&["--config", file_str, "--multiscale"]).multiscale);
    }
}
