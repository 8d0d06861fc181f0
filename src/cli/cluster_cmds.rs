//! `cellbench cluster …`: submit, follow, stop and collect jobs on a Ray cluster.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::cluster::job::{JobSpec, SubmitOptions};
use crate::cluster::{ClusterBackend, ClusterProfile, Profiles, RayClient};
use crate::dataset::OpenOptions;
use crate::train::TrainConfig;
use crate::workbook::{CellKind, Workbook, resolve_path};

/// Which cluster: a saved profile, or an address given inline.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// A profile from clusters.toml (`cellbench cluster profiles` lists them).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// The Ray dashboard address, e.g. http://127.0.0.1:8265 (instead of a profile).
    #[arg(long, global = true)]
    pub address: Option<String>,
    /// Environment variable holding the token (with --address).
    #[arg(long, global = true)]
    pub token_env: Option<String>,
    /// File holding the token (with --address).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

impl Target {
    pub fn profile(&self) -> anyhow::Result<ClusterProfile> {
        if let Some(address) = &self.address {
            let mut p = ClusterProfile::new("command-line", address.clone());
            p.token_env = self.token_env.clone();
            p.token_file = self.token_file.clone();
            return Ok(p);
        }
        let profiles = Profiles::load_default()?;
        let name = self
            .profile
            .clone()
            .or_else(|| (profiles.profiles.len() == 1).then(|| profiles.profiles[0].name.clone()))
            .context("name a cluster with --profile (see `cellbench cluster profiles`) or give --address")?;
        Ok(profiles.get(&name)?.clone())
    }

    pub fn client(&self) -> anyhow::Result<RayClient> {
        Ok(RayClient::new(&self.profile()?)?)
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// List the configured cluster profiles (tokens are never stored in them).
    Profiles,
    /// Save a profile: where the cluster is and where its token lives.
    AddProfile {
        name: String,
        #[arg(long)]
        url: String,
        #[arg(long)]
        token_env_var: Option<String>,
        #[arg(long)]
        token_path: Option<PathBuf>,
        /// Extra header for a proxy, `Name=value` (values may reference ${VAR}).
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Package cellbench with a training job and submit it; prints the job id.
    Submit(SubmitArgs),
    /// Extract features of a dataset in N sharded jobs into a shared feature cache.
    Featurize(FeaturizeArgs),
    /// Print a job's state.
    Status { id: String },
    /// Print a job's whole log.
    Logs { id: String },
    /// Follow a job's events live until it ends.
    Follow { id: String },
    /// Stop a job.
    Stop { id: String },
    /// Delete a finished job from the cluster's list.
    Delete { id: String },
    /// List the cluster's jobs.
    List,
    /// Bring a finished job's results back as a run folder.
    Results {
        id: String,
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
    },
    /// Run a job spec (what runs on the cluster side).
    #[command(hide = true)]
    Worker { spec: PathBuf },
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// A workbook (its first Dataset and Train cells), or a run configuration TOML (with --dataset).
    pub input: PathBuf,
    /// The dataset as the cluster sees it (shared path), for run configurations.
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Folder on the cluster where the run folder goes (shared with this machine to get the
    /// model back); default: the job's own folder.
    #[arg(long)]
    pub runs: Option<String>,
    #[arg(long)]
    pub gpus: Option<f64>,
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Ship the dataset inside the package (folders up to 40 MB).
    #[arg(long)]
    pub pack_dataset: bool,
    /// The Linux cellbench binary to ship (default: this one).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Submission id (default: a fresh one); retrying with the same id never runs twice.
    #[arg(long)]
    pub id: Option<String>,
    /// Follow the job after submitting it.
    #[arg(long)]
    pub follow: bool,
    /// Override epochs of the configuration.
    #[arg(long)]
    pub epochs: Option<u32>,
}

#[derive(Args, Debug)]
pub struct FeaturizeArgs {
    /// The dataset as the cluster sees it (shared path).
    pub dataset: PathBuf,
    #[command(flatten)]
    pub csv: super::data_cmds::CsvArgs,
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Cache folder both sides can read; train with CELLBENCH_CACHE set to it afterwards.
    #[arg(long)]
    pub cache: String,
    #[arg(long)]
    pub gpus: Option<f64>,
    /// The pretrained network: lite0 (default), lite1 or lite2, as the probe will use; the
    /// image size follows it unless --image-size is given.
    #[arg(long)]
    pub backbone: Option<crate::model::efficientnet::Backbone>,
    /// Input side in pixels (default: the backbone's).
    #[arg(long)]
    pub image_size: Option<u32>,
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Wait for every shard: progress per shard, one line when the cache is complete, the
    /// reason when a shard fails (exit 1).
    #[arg(long)]
    pub follow: bool,
}

fn spec_from(args: &SubmitArgs) -> anyhow::Result<(JobSpec, Option<PathBuf>)> {
    let is_book = args.input.to_string_lossy().ends_with(".cellbook.toml");
    let (dataset, options, mut config) = if is_book {
        let book = Workbook::load(&args.input)?;
        let base = Workbook::base_dir(&args.input);
        let (path, options) = book
            .cells
            .iter()
            .find_map(|c| match &c.kind {
                CellKind::Dataset { path, options } => {
                    Some((resolve_path(path, &base), options.clone()))
                }
                _ => None,
            })
            .context("the workbook has no Dataset cell")?;
        let config = book
            .cells
            .iter()
            .find_map(|c| match &c.kind {
                CellKind::Train { config, .. } => Some(config.clone()),
                _ => None,
            })
            .context("the workbook has no Train cell")?;
        (args.dataset.clone().unwrap_or(path), options, config)
    } else {
        let text = crate::fs::read_to_string(&args.input)
            .map_err(|e| crate::fsio::with_path(e, "cannot read", &args.input))?;
        let config: TrainConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", args.input.display()))?;
        let dataset = args
            .dataset
            .clone()
            .context("a run configuration needs --dataset")?;
        (dataset, OpenOptions::default(), config)
    };
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    let dataset_abs = std::path::absolute(&dataset).unwrap_or(dataset);
    Ok((
        JobSpec::Train {
            dataset: dataset_abs.display().to_string(),
            options,
            config,
            runs: args.runs.clone().unwrap_or_else(|| "runs".into()),
        },
        Some(dataset_abs),
    ))
}

pub fn run(command: ClusterCommand, target: &Target) -> anyhow::Result<u8> {
    match command {
        ClusterCommand::Worker { spec } => crate::cluster::job::run_worker(&spec),
        ClusterCommand::Profiles => {
            let path = Profiles::default_path();
            let profiles = Profiles::load_default()?;
            if profiles.profiles.is_empty() {
                outln!(
                    "no cluster profiles in {}; add one with `cellbench cluster add-profile NAME --url http://host:8265 --token-env-var RAY_TOKEN`",
                    path.map_or_else(|| "clusters.toml".into(), |p| p.display().to_string())
                );
            }
            for p in &profiles.profiles {
                let token = match (&p.token_env, &p.token_file) {
                    (Some(v), _) => format!("token from ${v}"),
                    (None, Some(f)) => format!("token from {}", f.display()),
                    _ => "no token".into(),
                };
                outln!("{}\t{}\t{token}", p.name, p.address);
            }
            Ok(0)
        }
        ClusterCommand::AddProfile {
            name,
            url,
            token_env_var,
            token_path,
            headers,
        } => {
            let path = Profiles::default_path()
                .context("no configuration folder (set CELLBENCH_CONFIG)")?;
            let mut profiles = if path.exists() {
                Profiles::load(&path)?
            } else {
                Profiles::default()
            };
            let mut p = ClusterProfile::new(name.clone(), url);
            p.token_env = token_env_var;
            p.token_file = token_path;
            for h in headers {
                let (k, v) = h.split_once('=').context("headers are Name=value")?;
                p.headers.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            p.validate()?;
            profiles.profiles.retain(|x| x.name != name);
            profiles.profiles.push(p);
            profiles.save(&path)?;
            crate::errln!("saved profile {name} in {}", path.display());
            Ok(0)
        }
        ClusterCommand::Submit(args) => {
            let client = target.client()?;
            let (spec, _) = spec_from(&args)?;
            let options = SubmitOptions {
                binary: args.binary.clone(),
                pack_dataset: args.pack_dataset,
                cpus: args.cpus,
                gpus: args.gpus,
                submission_id: args.id.clone(),
            };
            crate::errln!("packaging and uploading to {}…", client.describe());
            let id = crate::cluster::job::submit(&client, &spec, &options)?;
            outln!("{id}");
            if args.follow {
                return follow(&client, &id);
            }
            Ok(0)
        }
        ClusterCommand::Featurize(args) => {
            let client = target.client()?;
            let mut config = TrainConfig::default();
            if let Some(b) = args.backbone {
                config = config.with_backbone(b);
            }
            if let Some(s) = args.image_size {
                config.preprocess.size = s;
            }
            let dataset = std::path::absolute(&args.dataset).unwrap_or(args.dataset.clone());
            let open = args.csv.options();
            let mut ids = Vec::new();
            for shard in 0..args.shards {
                let spec = JobSpec::Featurize {
                    dataset: dataset.display().to_string(),
                    options: open.clone(),
                    config: config.clone(),
                    shard,
                    shards: args.shards,
                    cache: args.cache.clone(),
                };
                let options = SubmitOptions {
                    binary: args.binary.clone(),
                    gpus: args.gpus,
                    ..Default::default()
                };
                let id = crate::cluster::job::submit(&client, &spec, &options)?;
                outln!("{id}");
                ids.push(id);
            }
            if args.follow {
                return follow_shards(
                    &client,
                    &ids,
                    &args.cache,
                    std::time::Duration::from_secs(2),
                );
            }
            crate::errln!(
                "{} featurize jobs submitted; when they succeed, train the probe with CELLBENCH_CACHE={} so the features come from the shared cache",
                ids.len(),
                args.cache
            );
            Ok(0)
        }
        ClusterCommand::Status { id } => {
            let info = target.client()?.status(&id)?;
            outln!(
                "{}\t{}\t{}",
                info.submission_id,
                info.status,
                info.message.as_deref().unwrap_or("")
            );
            Ok(0)
        }
        ClusterCommand::Logs { id } => {
            outln!("{}", target.client()?.logs(&id)?);
            Ok(0)
        }
        ClusterCommand::Follow { id } => follow(&target.client()?, &id),
        ClusterCommand::Stop { id } => {
            // The client itself warns when the job is still PENDING (Ray ignores the stop then).
            target.client()?.stop(&id)?;
            crate::errln!("stop requested for {id}");
            Ok(0)
        }
        ClusterCommand::Delete { id } => {
            target.client()?.delete(&id)?;
            crate::errln!("deleted {id}");
            Ok(0)
        }
        ClusterCommand::List => {
            for j in target.client()?.list()? {
                outln!(
                    "{}\t{}\t{}",
                    j.submission_id,
                    j.status,
                    j.message.as_deref().unwrap_or("")
                );
            }
            Ok(0)
        }
        ClusterCommand::Results { id, runs } => {
            let dir = crate::cluster::job::import_results(&target.client()?, &id, &runs)?;
            crate::errln!("results of {id} in {}", dir.display());
            Ok(0)
        }
    }
}

/// Follows a job with the same progress view as a local run; the exit code reflects its end.
/// Follows featurize shards until each has ended: a line per shard when its state changes or
/// its progress passes another tenth, then one line when the cache is complete, or each failed
/// shard with its reason and the end of its log (exit 1).
fn follow_shards(
    client: &dyn ClusterBackend,
    ids: &[String],
    cache: &str,
    every: std::time::Duration,
) -> anyhow::Result<u8> {
    use crate::train::TrainEvent;
    let n = ids.len();
    // Per shard: the state and progress last printed, and whether it has ended.
    let mut shown: Vec<(String, usize)> = vec![(String::new(), usize::MAX); n];
    let mut ended: Vec<Option<(crate::cluster::JobInfo, Vec<TrainEvent>, String)>> = vec![None; n];
    while ended.iter().any(Option::is_none) {
        for (i, id) in ids.iter().enumerate() {
            if ended[i].is_some() {
                continue;
            }
            let info = client.status(id)?;
            let log = client.logs(id).unwrap_or_default();
            let events: Vec<TrainEvent> = log.lines().filter_map(TrainEvent::parse_line).collect();
            let progress = events.iter().rev().find_map(|e| match e {
                TrainEvent::Progress { done, total, .. } => Some((*done, *total)),
                _ => None,
            });
            let tenth = progress.map_or(0, |(d, t)| d * 10 / t.max(1));
            let state = info.status.as_str().to_owned();
            if shown[i] != (state.clone(), tenth) {
                let images =
                    progress.map_or_else(String::new, |(d, t)| format!(", {d}/{t} images"));
                crate::errln!("shard {i}/{n} ({id}): {state}{images}");
                shown[i] = (state, tenth);
            }
            if info.status.is_terminal() {
                ended[i] = Some((info, events, log));
            }
        }
        if ended.iter().any(Option::is_none) {
            std::thread::sleep(every);
        }
    }
    let mut vectors = 0usize;
    let mut failed = 0;
    for (i, end) in ended.into_iter().enumerate() {
        let Some((info, events, log)) = end else {
            continue;
        };
        if info.status == crate::cluster::JobStatus::Succeeded {
            // The worker's last line: "shard i/n: N feature vectors in <cache>".
            vectors += events
                .iter()
                .rev()
                .find_map(|e| match e {
                    TrainEvent::Info { message } => message
                        .split(": ")
                        .nth(1)
                        .and_then(|s| s.split(' ').next())
                        .and_then(|s| s.parse::<usize>().ok()),
                    _ => None,
                })
                .unwrap_or(0);
            continue;
        }
        failed += 1;
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        crate::errln!(
            "shard {i}/{n} ({}) {}: {}\n  last lines of its log:\n    {}",
            info.submission_id,
            info.status.as_str(),
            info.message.as_deref().unwrap_or("no message"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
        );
    }
    if failed > 0 {
        crate::errln!("{failed} of {n} shards failed: the cache in {cache} is incomplete");
        return Ok(1);
    }
    crate::errln!(
        "the cache is complete: {vectors} feature vectors from {n} shard{} in {cache}; a probe run with CELLBENCH_CACHE={cache} reads them from there",
        if n == 1 { "" } else { "s" }
    );
    Ok(0)
}

fn follow(client: &RayClient, id: &str) -> anyhow::Result<u8> {
    let mut view = super::ProgressView::new(false);
    crate::cluster::job::follow(client, id, &mut |e| view.show(e))?;
    view.finish();
    let info = client.status(id)?;
    let message = info
        .message
        .as_deref()
        .filter(|m| !m.is_empty())
        .map_or_else(String::new, |m| format!(" ({m})"));
    crate::errln!("job {id}: {}{message}", info.status);
    Ok(match info.status {
        crate::cluster::JobStatus::Succeeded => 0,
        crate::cluster::JobStatus::Stopped => 130,
        _ => 1,
    })
}
