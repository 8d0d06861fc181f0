//! The command line: every subcommand maps its flags onto the library's config structs and
//! calls the same functions the GUI calls.

use std::path::PathBuf;

/// `println!` that ends the process quietly when stdout is closed (`cellbench … | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::dataset::OpenOptions;
use crate::model::backend::BackendChoice;

mod cluster_cmds;
mod data_cmds;
mod model_cmds;
mod train_cmd;
pub use data_cmds::{Check, DatasetArgs, ExploreArgs, SplitArgs, SynthArgs};
pub use train_cmd::ProgressView;

/// Exit codes, documented in the README.
pub mod exit {
    /// The command could not run (bad input, I/O error).
    pub const ERROR: u8 = 1;
    /// Bad usage (unknown flag, missing argument).
    pub const USAGE: u8 = 2;
    /// `--strict` and the dataset (or the predictions file) has problems.
    pub const PROBLEMS: u8 = 3;
    /// A patient sits on more than one side of a split.
    pub const LEAKAGE: u8 = 4;
}

#[derive(Parser, Debug)]
#[command(name = "cellbench", version, about = "A workbench for classifying microscopy cell images.", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open the workbench window (the default without a subcommand).
    Gui {
        /// Dataset folder or CSV to open in the workbook.
        dataset: Option<PathBuf>,
        /// Workbook to open (default: the last one, or a demo workbook).
        #[arg(long)]
        workbook: Option<PathBuf>,
    },
    /// Run a workbook's cells headless, in order, and save the run ids back into it.
    Run { workbook: PathBuf },
    /// Count images, labels, patients and problems of a dataset.
    Explore(ExploreArgs),
    /// Split a dataset by patient, stratified by label; or check an existing split for leakage.
    Split(SplitArgs),
    /// Write a synthetic C-NMC-style dataset (real BMP files) for demos, tests and benchmarks.
    Synth(SynthArgs),
    /// Train a model (linear probe, fine-tuning or a small CNN) and write a run folder.
    Train(train_cmd::TrainArgs),
    /// Predict images with a trained run; writes a CSV of probabilities.
    Predict(model_cmds::PredictArgs),
    /// Where a run's model looks: class activation maps as overlay PNGs and raw CSV maps.
    Explain(model_cmds::ExplainArgs),
    /// A 2-D map of a dataset's backbone features (PCA) as CSV, optionally a PNG.
    Embed(model_cmds::EmbedArgs),
    /// Compute every metric from a predictions CSV.
    Evaluate(EvaluateCmdArgs),
    /// Serve a trained run over HTTP (POST /predict, GET /health).
    Serve(model_cmds::ServeArgs),
    /// Run jobs on a Ray cluster: submit, follow, stop, collect results.
    Cluster {
        #[command(subcommand)]
        command: cluster_cmds::ClusterCommand,
        #[command(flatten)]
        target: cluster_cmds::Target,
    },
    /// Extract backbone features of (a shard of) a dataset into the feature cache.
    Featurize {
        dataset: PathBuf,
        /// `i/N`: the i-th (0-based) of N shards.
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// Cache folder (as CELLBENCH_CACHE; default: the user cache).
        #[arg(long)]
        cache: Option<PathBuf>,
        #[arg(long)]
        image_size: Option<u32>,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    },
    /// Pretrained weights.
    #[command(subcommand)]
    Weights(WeightsCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum WeightsCommand {
    /// Print the ImageNet top-5 of a photo through a bundled backbone.
    Check {
        /// A photo (default: the bundled cat picture).
        image: Option<PathBuf>,
        /// lite0, lite1 or lite2.
        #[arg(long, default_value = "lite0")]
        backbone: crate::model::efficientnet::Backbone,
        #[arg(long, default_value = "auto")]
        backend: BackendChoice,
    },
}

/// `evaluate`: the flags of the metrics report plus `--strict`.
#[derive(Args, Debug)]
pub struct EvaluateCmdArgs {
    #[command(flatten)]
    pub args: model_cmds::EvaluateArgs,
    /// Exit with code 3 when a row is skipped for its probabilities (missing, not a number,
    /// not finite, outside [0, 1]) or a single-label row's probabilities do not sum to 1.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Frame time of the embedding map's draw (our WGSL point sprites) offscreen on the
    /// machine's wgpu adapter, panned and zoomed every frame: no window, so it runs on a
    /// headless GPU machine too.
    Map {
        /// Points drawn.
        #[arg(long, default_value_t = 100_000)]
        points: usize,
        /// Target width in pixels.
        #[arg(long, default_value_t = 1280)]
        width: u32,
        /// Target height in pixels.
        #[arg(long, default_value_t = 800)]
        height: u32,
        /// Timed frames (after one warm-up frame).
        #[arg(long, default_value_t = 300)]
        frames: usize,
        /// One JSON object instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Files per second of walk + parse + count over a folder.
    Scan {
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long)]
        json: bool,
    },
    /// Time of a linear probe (the same training loop as `train --mode probe`) on cached features.
    Probe {
        #[arg(long, default_value_t = 10_000)]
        features: usize,
        #[arg(long, default_value_t = 5)]
        classes: usize,
        #[arg(long, default_value_t = 30)]
        epochs: u32,
        #[arg(long, default_value_t = 256)]
        batch_size: usize,
        #[arg(long, default_value = "cpu")]
        backend: BackendChoice,
    },
    /// Images per second of backbone feature extraction at its input size, per backend.
    Featurize {
        /// lite0 (224²), lite1 (240²) or lite2 (260²).
        #[arg(long, default_value = "lite0")]
        backbone: crate::model::efficientnet::Backbone,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Timed batches (after one warm-up batch).
        #[arg(long, default_value_t = 3)]
        batches: usize,
        /// Backends to measure (default: cpu and, when present, wgpu).
        #[arg(long)]
        backend: Vec<BackendChoice>,
        /// On the CPU, time the general burn graph (flex backend) instead of the fused network.
        #[arg(long)]
        graph: bool,
        /// Time our own WGSL network (shaders/lite.wgsl, the browser's WebGPU path) on this
        /// machine's wgpu adapter instead of the backends.
        #[arg(long, conflicts_with_all = ["backend", "graph"])]
        wgsl: bool,
        /// One JSON object per backend instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Images per second of fine-tuning steps (decode, augment, forward, backward, AdamW) at
    /// the backbone's input size on the demo images, per backend.
    Finetune {
        /// lite0 (224²), lite1 (240²) or lite2 (260²).
        #[arg(long, default_value = "lite0")]
        backbone: crate::model::efficientnet::Backbone,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 3)]
        batches: usize,
        /// Last backbone blocks trained (with the head).
        #[arg(long, default_value_t = 2)]
        unfreeze: usize,
        /// Backends to measure (default: cpu and, when present, wgpu).
        #[arg(long)]
        backend: Vec<BackendChoice>,
        /// One JSON object per backend instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// The backends a benchmark measures: those asked for, else the CPU and, when a hardware
/// adapter is present, wgpu.
fn bench_backends(asked: Vec<BackendChoice>) -> Vec<BackendChoice> {
    if !asked.is_empty() {
        return asked;
    }
    let mut b = vec![BackendChoice::Cpu];
    if crate::model::backend::adapters().iter().any(|a| !a.is_cpu) {
        b.push(BackendChoice::Wgpu);
    }
    b
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    init_logging();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            err.print().ok();
            return ExitCode::from(if err.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            crate::errln!("error: {err:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// `RUST_LOG` logging (default `warn`, without wgpu's OpenGL probe: on a machine without a
/// display it reports a failed EGL start at error level although nothing is wrong), except the
/// debug and trace records of the HTTP, TLS and WebSocket client crates: they dump requests
/// byte by byte, the cluster token and proxy headers included, so they never reach the log
/// whatever `RUST_LOG` asks for.
fn init_logging() {
    /// Crates whose records below `info` are dropped (a prefix covers `ureq_proto` too).
    const WIRE_DUMPERS: [&str; 4] = ["ureq", "rustls", "tungstenite", "http"];
    struct Guarded(env_logger::Logger);
    impl Guarded {
        fn allowed(metadata: &log::Metadata<'_>) -> bool {
            metadata.level() <= log::Level::Info
                || !WIRE_DUMPERS.iter().any(|c| {
                    metadata.target().strip_prefix(c).is_some_and(|rest| {
                        rest.is_empty() || rest.starts_with("::") || rest.starts_with('_')
                    })
                })
        }
    }
    impl log::Log for Guarded {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            Self::allowed(metadata) && self.0.enabled(metadata)
        }
        fn log(&self, record: &log::Record<'_>) {
            if Self::allowed(record.metadata()) {
                self.0.log(record);
            }
        }
        fn flush(&self) {
            self.0.flush();
        }
    }
    let logger = env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu_hal::gles=off"),
    )
    .build();
    let max_level = logger.filter();
    if log::set_boxed_logger(Box::new(Guarded(logger))).is_ok() {
        log::set_max_level(max_level);
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        #[cfg(feature = "gui")]
        None => crate::ui::run_native(None, None).map(|()| 0),
        #[cfg(feature = "gui")]
        Some(Command::Gui { dataset, workbook }) => {
            crate::ui::run_native(workbook, dataset).map(|()| 0)
        }
        #[cfg(not(feature = "gui"))]
        None | Some(Command::Gui { .. }) => anyhow::bail!(
            "this is the headless build of cellbench (no window): use its commands, e.g. `cellbench train`, `cellbench --help`"
        ),
        Some(Command::Run { workbook }) => model_cmds::run_workbook(&workbook),
        Some(Command::Explore(args)) => data_cmds::explore(args),
        Some(Command::Split(args)) => data_cmds::split(args),
        Some(Command::Synth(args)) => data_cmds::synth(args),
        Some(Command::Train(args)) => train_cmd::train_cmd(args),
        Some(Command::Predict(args)) => model_cmds::predict_cmd(args),
        Some(Command::Explain(args)) => model_cmds::explain_cmd(args),
        Some(Command::Embed(args)) => model_cmds::embed_cmd(args),
        Some(Command::Evaluate(args)) => evaluate(args),
        Some(Command::Serve(args)) => model_cmds::serve_cmd(args),
        Some(Command::Cluster { command, target }) => cluster_cmds::run(command, &target),
        Some(Command::Featurize {
            dataset,
            shard,
            cache,
            image_size,
            backend,
        }) => {
            let (i, n) = shard
                .split_once('/')
                .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
                .ok_or_else(|| anyhow::anyhow!("--shard is i/N, e.g. 0/4"))?;
            let manifest = crate::dataset::open(&dataset, &OpenOptions::default())?;
            let mut config = crate::train::TrainConfig {
                backend,
                ..Default::default()
            };
            if let Some(s) = image_size {
                config.preprocess.size = s;
            }
            let cache = cache.unwrap_or_else(|| {
                let dir = crate::train::features::FeatureCache::default_location().dir;
                dir.parent().map_or(dir.clone(), std::path::Path::to_owned)
            });
            let cancel = std::sync::atomic::AtomicBool::new(false);
            let mut view = ProgressView::new(false);
            let n_done = crate::cluster::job::featurize_shard(
                &manifest,
                &config,
                i,
                n,
                &cache,
                &mut |e| view.show(e),
                &cancel,
            )?;
            view.finish();
            crate::errln!(
                "shard {i}/{n}: {n_done} feature vectors in {}",
                cache.display()
            );
            Ok(0)
        }
        Some(Command::Weights(WeightsCommand::Check {
            image,
            backbone,
            backend,
        })) => model_cmds::weights_check(image.as_deref(), backbone, backend),
        Some(Command::Bench(BenchCommand::Probe {
            features,
            classes,
            epochs,
            batch_size,
            backend,
        })) => {
            let config = crate::train::TrainConfig {
                epochs,
                batch_size,
                backend,
                ..Default::default()
            };
            let r = crate::train::engine::bench_probe(features, classes, &config)?;
            outln!(
                "probe [{}]: {} cached features, {} classes, {} epochs (batch {batch_size}) in {:.2} s; validation accuracy {:.3}",
                r.device,
                r.features,
                r.classes,
                r.epochs,
                r.secs,
                r.val_accuracy
            );
            Ok(0)
        }
        Some(Command::Bench(BenchCommand::Featurize {
            backbone,
            batch_size,
            batches,
            backend,
            graph,
            wgsl,
            json,
        })) => {
            anyhow::ensure!(
                batch_size >= 1 && batches >= 1,
                "--batch-size and --batches must be at least 1"
            );
            anyhow::ensure!(
                batch_size <= 1024,
                "--batch-size {batch_size}: at most 1024 images per batch (each takes megabytes)"
            );
            let choices = if wgsl {
                vec![BackendChoice::Wgpu]
            } else {
                bench_backends(backend)
            };
            for choice in choices {
                let r =
                    crate::bench::featurize(choice, backbone, batch_size, batches, graph, wgsl)?;
                if json {
                    outln!("{}", serde_json::to_string(&r)?);
                    continue;
                }
                outln!(
                    "featurize {} [{}]: {:.1} images/s at {}x{} (batch {}, {} timed batches, {:.2} s; first batch incl. warm-up {:.2} s)",
                    r.backbone,
                    r.device,
                    r.images_per_sec,
                    r.size,
                    r.size,
                    r.batch_size,
                    r.batches,
                    r.timed_secs,
                    r.warmup_secs
                );
            }
            Ok(0)
        }
        Some(Command::Bench(BenchCommand::Finetune {
            backbone,
            batch_size,
            batches,
            unfreeze,
            backend,
            json,
        })) => {
            anyhow::ensure!(
                batch_size >= 1 && batches >= 1,
                "--batch-size and --batches must be at least 1"
            );
            anyhow::ensure!(
                batch_size <= 1024,
                "--batch-size {batch_size}: at most 1024 images per batch (each takes megabytes)"
            );
            anyhow::ensure!(
                unfreeze <= backbone.num_blocks(),
                "--unfreeze: {backbone} has {} blocks",
                backbone.num_blocks()
            );
            for choice in bench_backends(backend) {
                let r = crate::train::engine::bench_finetune(
                    choice, backbone, batch_size, batches, unfreeze,
                )?;
                if json {
                    outln!("{}", serde_json::to_string(&r)?);
                    continue;
                }
                outln!(
                    "finetune [{}]: {:.1} images/s of training steps at 224x224 (batch {}, last {} blocks and the head trained, {} timed steps in {:.2} s, images decoded on a loader thread ahead of them (decoding them alone: {:.2} s); first step incl. warm-up {:.2} s)",
                    r.device,
                    r.images_per_sec,
                    r.batch_size,
                    r.unfrozen_blocks,
                    r.batches,
                    r.timed_secs,
                    r.decode_secs,
                    r.warmup_secs
                );
            }
            Ok(0)
        }
        Some(Command::Bench(BenchCommand::Map {
            points,
            width,
            height,
            frames,
            json,
        })) => {
            let r = crate::render::points::bench(points, width, height, frames)?;
            if json {
                outln!("{}", serde_json::to_string(&r)?);
            } else {
                outln!(
                    "map [{}]: {} points on {}x{}: frame p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms over {} frames (new view, one instanced draw, waiting for the device); upload {:.1} ms",
                    r.adapter,
                    r.points,
                    r.width,
                    r.height,
                    r.frame_p50_ms,
                    r.frame_p95_ms,
                    r.frame_max_ms,
                    r.frames,
                    r.upload_ms
                );
            }
            Ok(0)
        }
        Some(Command::Bench(BenchCommand::Scan { dir, repeats, json })) => {
            let r = crate::bench::scan(&dir, repeats)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!(
                    "scan {}: {} files, best {:.3} s (walk+parse {:.3} s), median {:.3} s over {} runs → {:.0} files/s",
                    dir.display(),
                    r.files,
                    r.best_secs,
                    r.walk_parse_secs,
                    r.median_secs,
                    r.repeats,
                    r.files_per_sec
                );
            }
            Ok(0)
        }
    }
}

/// `evaluate`. Skipped rows and rows not summing to 1 are reported on stderr as they are
/// found; with `--strict` the file is checked first and any of them fails the command.
fn evaluate(cmd: EvaluateCmdArgs) -> anyhow::Result<u8> {
    if cmd.strict {
        let args = &cmd.args;
        let e = crate::infer::evaluate::evaluate_csv(&args.pred, args.truth.as_deref(), args.task)?;
        if !e.is_clean() {
            crate::errln!(
                "evaluate --strict: {} row(s) skipped for their probabilities, {} row(s) whose probabilities do not sum to 1, {} row(s) without a truth label: {}",
                e.problems.len(),
                e.unnormalised_rows,
                e.rows_without_truth,
                args.pred.display()
            );
            return Ok(exit::PROBLEMS);
        }
    }
    model_cmds::evaluate_cmd(cmd.args)
}
