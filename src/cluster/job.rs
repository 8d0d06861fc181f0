//! cellbench jobs on a cluster: what a job runs ([`JobSpec`]), how it is packaged (the Linux
//! cellbench binary, the spec, the model assets and optionally a small dataset), and how its
//! results come back (the JSON event lines of its log, plus a shared folder when there is one).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::dataset::OpenOptions;
use crate::train::{TrainConfig, TrainEvent};

use super::{ClusterBackend, JobSubmission, PACKAGE_LIMIT_BYTES};

/// Largest dataset that may travel inside the package (`--pack-dataset`).
pub const PACKED_DATASET_LIMIT_BYTES: u64 = 40 * 1024 * 1024;

/// What a job does on the cluster.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum JobSpec {
    /// A training run, exactly as `cellbench train` runs it.
    Train {
        /// A path the cluster can read (shared filesystem), or `data` when packed.
        dataset: String,
        #[serde(default)]
        options: OpenOptions,
        config: TrainConfig,
        /// Where the run folder goes on the cluster: a shared folder, else the job's own.
        runs: String,
    },
    /// Feature extraction of one shard of a dataset into a shared feature cache (a
    /// `CELLBENCH_CACHE` folder).
    Featurize {
        dataset: String,
        #[serde(default)]
        options: OpenOptions,
        config: TrainConfig,
        shard: u32,
        shards: u32,
        cache: String,
    },
}

impl JobSpec {
    /// The run configuration the job carries.
    pub fn config(&self) -> &TrainConfig {
        match self {
            Self::Train { config, .. } | Self::Featurize { config, .. } => config,
        }
    }
}

/// How to package and submit.
#[derive(Clone, Debug, Default)]
pub struct SubmitOptions {
    /// The cellbench binary to ship (default: `cellbench-headless` beside this executable when
    /// it exists, else this executable; stripped when `strip` exists).
    pub binary: Option<PathBuf>,
    /// Copy the dataset folder into the package (small datasets only).
    pub pack_dataset: bool,
    pub cpus: Option<f64>,
    pub gpus: Option<f64>,
    /// Client-chosen id (default: a fresh one). Reusing it after a timeout never creates a
    /// second job.
    pub submission_id: Option<String>,
}

/// The binary to ship: `strip`ped copy of `binary` when `strip` is available.
fn shippable_binary(binary: &Path) -> anyhow::Result<(PathBuf, Option<tempfile::TempPath>)> {
    let tmp = tempfile::Builder::new()
        .prefix("cellbench-bin")
        .tempfile()?
        .into_temp_path();
    let stripped = std::process::Command::new("strip")
        .arg("-o")
        .arg(&*tmp)
        .arg(binary)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if stripped {
        Ok((tmp.to_path_buf(), Some(tmp)))
    } else {
        Ok((binary.to_owned(), None))
    }
}

fn dataset_files(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let walk = crate::dataset::scan::walk_images(dir);
    let mut total = 0u64;
    let mut files = Vec::new();
    for f in walk.images {
        total += f.bytes;
        anyhow::ensure!(
            total <= PACKED_DATASET_LIMIT_BYTES,
            "the dataset is larger than {} MB: put it on storage the cluster can read instead of --pack-dataset",
            PACKED_DATASET_LIMIT_BYTES / 1_000_000
        );
        files.push((format!("data/{}", f.rel), dir.join(&f.rel)));
    }
    Ok(files)
}

/// Builds the package of a job: `cellbench`, `job.toml`, `assets/…`, optionally `data/…`.
pub fn package(spec: &JobSpec, options: &SubmitOptions) -> anyhow::Result<Vec<u8>> {
    let exe = match &options.binary {
        Some(b) => b.clone(),
        None => {
            let exe = std::env::current_exe().context("locating the cellbench executable")?;
            // The lean build (`--features headless`, no window code) when it sits beside this
            // executable as `cellbench-headless`: a smaller upload for every job.
            let headless = exe.with_file_name("cellbench-headless");
            if headless.is_file() {
                log::info!("shipping {}", headless.display());
                headless
            } else {
                exe
            }
        }
    };
    let (binary, _keep) = shippable_binary(&exe)?;
    let assets = crate::assets_dir();
    // The job's backbone: the only weights it reads.
    let weights = spec.config().backbone.weights_file();
    let mut files = vec![
        ("cellbench".to_owned(), binary),
        (format!("assets/{weights}"), assets.join(&weights)),
        (
            "assets/imagenet_classes.txt".to_owned(),
            assets.join("imagenet_classes.txt"),
        ),
    ];
    let mut spec = spec.clone();
    if options.pack_dataset {
        let (JobSpec::Train { dataset, .. } | JobSpec::Featurize { dataset, .. }) = &mut spec;
        let dir = PathBuf::from(&*dataset);
        anyhow::ensure!(
            dir.is_dir(),
            "--pack-dataset needs a dataset folder, got {}",
            dir.display()
        );
        files.extend(dataset_files(&dir)?);
        *dataset = "data".into();
    }
    let job = toml::to_string_pretty(&spec)?;
    let zip = super::build_package(&files, &[("job.toml".to_owned(), job.into_bytes())])?;
    anyhow::ensure!(
        zip.len() as u64 <= PACKAGE_LIMIT_BYTES,
        "the package is {:.1} MB, over the cluster's {} MiB limit: ship a release build with --binary, or leave the dataset out",
        zip.len() as f64 / 1e6,
        PACKAGE_LIMIT_BYTES / (1024 * 1024)
    );
    Ok(zip)
}

/// Packages, uploads and submits a job; returns its submission id.
pub fn submit(
    backend: &dyn ClusterBackend,
    spec: &JobSpec,
    options: &SubmitOptions,
) -> anyhow::Result<String> {
    let zip = package(spec, options)?;
    let uri = backend.upload_package(&zip)?;
    let mut job = JobSubmission::new("./cellbench cluster worker job.toml");
    if let Some(id) = &options.submission_id {
        job.submission_id = id.clone();
    }
    job.working_dir = Some(uri);
    job.env_vars = BTreeMap::from([
        ("CELLBENCH_ASSETS".to_owned(), "assets".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ]);
    let kind = match spec {
        JobSpec::Train { .. } => "train",
        JobSpec::Featurize { .. } => "featurize",
    };
    job.metadata = BTreeMap::from([
        ("cellbench_kind".to_owned(), kind.to_owned()),
        (
            "cellbench_config".to_owned(),
            toml::to_string(spec.config())?,
        ),
    ]);
    if let JobSpec::Train {
        dataset,
        options: open,
        runs,
        ..
    } = spec
    {
        // What a run folder rebuilt from the log needs to resume: the data as the cluster
        // sees it (a packed dataset lives only in the job) and where the run folder went.
        job.metadata
            .insert(super::results::RUNS_KEY.to_owned(), runs.clone());
        if !options.pack_dataset {
            let record = crate::runs::DatasetFile {
                format_version: crate::runs::FORMAT_VERSION,
                source: PathBuf::from(dataset),
                options: open.clone(),
                splits: None,
                fingerprint: None,
            };
            job.metadata.insert(
                super::results::DATASET_KEY.to_owned(),
                serde_json::to_string(&record)?,
            );
        }
    }
    job.entrypoint_num_cpus = options.cpus;
    job.entrypoint_num_gpus = options.gpus;
    Ok(backend.submit(&job)?)
}

/// Runs a job spec on this machine (the cluster side of a job). Events go to stdout as JSON
/// lines, which is how the client follows the job.
pub fn run_worker(spec_path: &Path) -> anyhow::Result<u8> {
    let spec: JobSpec = toml::from_str(&crate::fs::read_to_string(spec_path)?)?;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        // Ray stops a job with SIGTERM: finish the batch, write the run folder, exit.
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, std::sync::atomic::Ordering::SeqCst)).ok();
    }
    let mut print = |e: &TrainEvent| print_line(&e.to_json_line());
    match spec {
        JobSpec::Train {
            dataset,
            options,
            config,
            runs,
        } => {
            let manifest = crate::dataset::open(Path::new(&dataset), &options)?;
            let outcome = crate::train::engine::train(
                crate::train::engine::TrainJob {
                    config,
                    manifest,
                    options,
                    runs_root: PathBuf::from(runs),
                    resume: None,
                    cache: Some(crate::train::features::FeatureCache::default_location()),
                },
                &mut print,
                &cancel,
            )?;
            // The run folder follows the events, so that a job without shared storage still
            // brings back a run that predicts and resumes.
            if let Err(e) =
                super::results::print_run_folder(&outcome.run_dir, &mut print_line, &mut print)
            {
                print(&TrainEvent::Warning {
                    message: format!("the run folder cannot travel in the log: {e:#}"),
                });
            }
            Ok(u8::from(outcome.state != crate::runs::RunState::Finished))
        }
        JobSpec::Featurize {
            dataset,
            options,
            config,
            shard,
            shards,
            cache,
        } => {
            let manifest = crate::dataset::open(Path::new(&dataset), &options)?;
            let done = featurize_shard(
                &manifest,
                &config,
                shard,
                shards,
                Path::new(&cache),
                &mut print,
                &cancel,
            )?;
            print(&TrainEvent::Info {
                message: format!("shard {shard}/{shards}: {done} feature vectors in {cache}"),
            });
            Ok(0)
        }
    }
}

/// One line of the job's log, flushed at once (the client follows the log live).
fn print_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").ok();
    out.flush().ok();
}

/// Extracts features of shard `shard` (0-based) of `shards` into the feature cache under
/// `cache` (a `CELLBENCH_CACHE` folder: vectors go to `<cache>/features`, where a probe run with
/// `CELLBENCH_CACHE=<cache>` finds them). Returns how many vectors the shard holds.
pub fn featurize_shard(
    manifest: &crate::dataset::Manifest,
    config: &TrainConfig,
    shard: u32,
    shards: u32,
    cache: &Path,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<usize> {
    anyhow::ensure!(
        shards >= 1 && shard < shards,
        "shard {shard} of {shards} does not exist"
    );
    let compute = crate::model::backend::select(config.backend)?;
    let extractor = crate::model::extractor::Extractor::bundled(config.backbone, &compute.device)?;
    let paths: Vec<PathBuf> = manifest
        .records
        .iter()
        .filter(|r| r.is_usable())
        .enumerate()
        .filter(|(i, _)| *i as u32 % shards == shard)
        .map(|(_, r)| manifest.image_path(r))
        .collect();
    let cache = crate::train::features::FeatureCache {
        dir: cache.join("features"),
    };
    let f = crate::train::features::featurize(
        &extractor,
        config.feature_kind(),
        &config.preprocess,
        &paths,
        Some(&cache),
        config.batch_size.clamp(8, 64),
        &mut |done, total| {
            sink(&TrainEvent::Progress {
                phase: crate::experiment::events::Phase::Features,
                done,
                total,
            });
        },
        cancel,
    );
    for (p, reason) in &f.failures {
        sink(&TrainEvent::Warning {
            message: format!("skipped unreadable image ({reason}): {}", p.display()),
        });
    }
    Ok(f.features.iter().filter(|f| f.is_some()).count())
}

/// Follows a job: every event line of its log goes to `on_event` as it arrives (WebSocket
/// tail, polling as fallback) until the job ends. Returns the events seen.
pub fn follow(
    backend: &dyn ClusterBackend,
    id: &str,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> anyhow::Result<Vec<TrainEvent>> {
    let mut events = Vec::new();
    backend.tail(id, &mut |line| {
        if let Some(e) = TrainEvent::parse_line(line) {
            on_event(&e);
            events.push(e);
        }
        ControlFlow::Continue(())
    })?;
    Ok(events)
}

pub use super::results::import_results;
