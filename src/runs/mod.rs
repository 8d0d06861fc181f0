//! Run folders: `runs/<run-id>/` with `config.toml`, `events.jsonl`, `status.json`,
//! `metrics.json`, `confusion.json`, `predictions.csv`, `model.safetensors`, `checkpoint/`.
//! Every file but the event log is written atomically; the event log is appended line by line
//! and flushed, so a killed run leaves whole lines behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub mod archive;
pub mod checkpoint;
pub mod view;

use crate::experiment::metrics::{ConfusionMatrix, Metrics};
use crate::experiment::{TrainConfig, TrainEvent};
use crate::fsio::write_atomic_bytes;

pub use crate::fsio::{FORMAT_VERSION, check_format_version, read_json};

/// `metrics.json`: the final metrics of a finished run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsFile {
    /// Files written before versions existed read as 0.
    #[serde(default)]
    pub format_version: u32,
    /// The epoch whose weights the run kept (chosen on the validation side).
    pub best_epoch: u32,
    /// Validation side, at the best epoch.
    pub val: Metrics,
    /// Test side, scored once with the kept weights (when the split has one).
    #[serde(default)]
    pub test: Option<Metrics>,
    /// Validation side with each patient's cells averaged.
    #[serde(default)]
    pub val_patients: Option<Metrics>,
}

impl MetricsFile {
    pub fn read(run: &Path) -> anyhow::Result<Self> {
        let path = run.join("metrics.json");
        let m: Self = read_json(&path)?;
        check_format_version(m.format_version, &path)?;
        Ok(m)
    }
}

/// `confusion.json`: the validation confusion matrix of the kept epoch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConfusionFile {
    pub split: String,
    pub epoch: u32,
    pub matrix: ConfusionMatrix,
}

/// `dataset.json`: where a run's data came from and how it was split, so that any run —
/// started from the CLI, the GUI, a workbook or a cluster job — can be resumed on the same data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetFile {
    #[serde(default)]
    pub format_version: u32,
    /// The folder or CSV that was opened (absolute).
    pub source: PathBuf,
    #[serde(default)]
    pub options: crate::dataset::OpenOptions,
    /// The split the run was given (record path → side), when it was given one.
    #[serde(default)]
    pub splits: Option<std::collections::BTreeMap<String, crate::dataset::Split>>,
    /// A digest of the images, labels and sides training saw (computed by training from its
    /// prepared data); absent in runs of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl DatasetFile {
    /// The description of `manifest`, opened from `source` with `options`.
    pub fn of(manifest: &crate::dataset::Manifest, options: &crate::dataset::OpenOptions) -> Self {
        let splits = manifest.records.iter().any(|r| r.split.is_some()).then(|| {
            manifest
                .records
                .iter()
                .filter_map(|r| r.split.map(|s| (r.path.clone(), s)))
                .collect()
        });
        Self {
            format_version: FORMAT_VERSION,
            source: std::path::absolute(&manifest.source).unwrap_or(manifest.source.clone()),
            options: options.clone(),
            splits,
            fingerprint: None,
        }
    }

    pub fn read(run: &Path) -> anyhow::Result<Self> {
        let path = run.join("dataset.json");
        anyhow::ensure!(
            crate::fs::is_file(&path),
            "the run has no dataset.json (it was started by an older cellbench): {}",
            run.display()
        );
        let d: Self = read_json(&path)?;
        check_format_version(d.format_version, &path)?;
        Ok(d)
    }

    /// Opens the dataset again, with the run's split; fails when images the run used are gone
    /// or new ones appeared, since resuming on other data would not continue the same run.
    pub fn open(&self) -> anyhow::Result<crate::dataset::Manifest> {
        let mut manifest = crate::dataset::open(&self.source, &self.options)?;
        if let Some(splits) = &self.splits {
            let mut unknown = 0;
            for r in &mut manifest.records {
                r.split = splits.get(&r.path).copied();
                unknown += usize::from(r.split.is_none() && r.is_usable());
            }
            let present: std::collections::HashSet<&str> =
                manifest.records.iter().map(|r| r.path.as_str()).collect();
            let missing = splits
                .keys()
                .filter(|p| !present.contains(p.as_str()))
                .count();
            anyhow::ensure!(
                unknown == 0 && missing == 0,
                "the dataset changed since the run started ({unknown} new images, {missing} missing): {}",
                self.source.display()
            );
        }
        Ok(manifest)
    }
}

/// Lifecycle of a run, in `status.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Failed,
    Cancelled,
    /// Was running when its process died (killed, crashed, power lost); `--resume` continues it.
    Interrupted,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStatus {
    #[serde(default)]
    pub format_version: u32,
    pub state: RunState,
    /// Last completed epoch (1-based; 0 = none).
    pub epoch: u32,
    /// Process that owns a running run, to tell a live run from an interrupted one.
    pub pid: Option<u32>,
    pub message: Option<String>,
}

/// An open run folder. While it is open this process holds the folder's lock (`lock`,
/// holding the owner's pid); it is released when the value is dropped.
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
    events: crate::fs::File,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        crate::fs::remove_file(self.path.join(LOCK)).ok();
    }
}

/// The lock file of a run folder.
const LOCK: &str = "lock";

/// Takes the lock of a run folder: refused while another live process holds it; a lock left
/// by a dead process is taken over.
fn take_lock(path: &Path) -> anyhow::Result<()> {
    let lock = path.join(LOCK);
    for _ in 0..2 {
        match crate::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(mut f) => {
                f.write_all(crate::fs::process_id().to_string().as_bytes())?;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = crate::fs::read_to_string(&lock)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok());
                if let Some(pid) = owner
                    && process_alive(pid)
                {
                    anyhow::bail!(
                        "the run is being trained by process {pid}; stop it first or wait: {}",
                        path.display()
                    );
                }
                // The owner is gone (killed): the lock is stale.
                crate::fs::remove_file(&lock)
                    .with_context(|| format!("removing the stale lock {}", lock.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("locking {}", lock.display())),
        }
    }
    anyhow::bail!("could not lock {}", lock.display())
}

impl RunDir {
    /// Creates `root/<id>` with a fresh id (`YYYYmmdd-HHMMSS-<mode>-<n>`).
    pub fn create(root: &Path, config: &TrainConfig) -> anyhow::Result<Self> {
        crate::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let stamp = utc_stamp();
        let mode = format!("{:?}", config.mode).to_lowercase();
        for n in 1.. {
            let id = format!("{stamp}-{mode}-{n}");
            let path = root.join(&id);
            match crate::fs::create_dir(&path) {
                Ok(()) => return Self::start(id, path, config),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        unreachable!("unbounded loop returns")
    }

    /// Creates `root/<id>` with the id given (a run made elsewhere, such as a cluster job);
    /// fails when the folder exists.
    pub fn create_named(root: &Path, id: &str, config: &TrainConfig) -> anyhow::Result<Self> {
        let path = root.join(id);
        crate::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        crate::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Self::start(id.to_owned(), path, config)
    }

    /// Locks a new run folder and writes its config.
    fn start(id: String, path: PathBuf, config: &TrainConfig) -> anyhow::Result<Self> {
        take_lock(&path)?;
        let toml = toml::to_string_pretty(config)?;
        write_atomic_bytes(&path.join("config.toml"), toml.as_bytes())?;
        Self::open_events(id, path)
    }

    /// Opens an existing run folder to continue it (events are appended).
    pub fn reopen(path: &Path) -> anyhow::Result<Self> {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("run folder name")?
            .to_owned();
        anyhow::ensure!(
            crate::fs::is_file(&path.join("config.toml")),
            "not a run folder (no config.toml): {}",
            path.display()
        );
        take_lock(path)?;
        Self::open_events(id, path.to_owned())
    }

    fn open_events(id: String, path: PathBuf) -> anyhow::Result<Self> {
        let events = crate::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("events.jsonl"))
            .with_context(|| format!("opening {}", path.join("events.jsonl").display()))?;
        Ok(Self { id, path, events })
    }

    /// Appends one event line and flushes it.
    pub fn log(&mut self, event: &TrainEvent) -> std::io::Result<()> {
        let mut line = event.to_json_line();
        line.push('\n');
        self.events.write_all(line.as_bytes())?;
        self.events.flush()
    }

    pub fn write_json(&self, name: &str, value: &impl serde::Serialize) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(value)?;
        write_atomic_bytes(&self.path.join(name), &bytes).with_context(|| format!("writing {name}"))
    }

    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        write_atomic_bytes(&self.path.join(name), bytes).with_context(|| format!("writing {name}"))
    }

    pub fn set_status(
        &self,
        state: RunState,
        epoch: u32,
        message: Option<String>,
    ) -> anyhow::Result<()> {
        self.write_json(
            "status.json",
            &RunStatus {
                format_version: FORMAT_VERSION,
                state,
                epoch,
                pid: (state == RunState::Running).then(crate::fs::process_id),
                message,
            },
        )
    }
}

/// The config of an existing run.
pub fn read_config(run: &Path) -> anyhow::Result<TrainConfig> {
    let text = crate::fs::read_to_string(run.join("config.toml"))
        .with_context(|| format!("reading {}", run.join("config.toml").display()))?;
    Ok(toml::from_str(&text)?)
}

/// The status of an existing run; a `running` run whose process is gone reads as interrupted
/// (`Cancelled` with a message).
pub fn read_status(run: &Path) -> anyhow::Result<RunStatus> {
    let path = run.join("status.json");
    let mut status: RunStatus = read_json(&path)?;
    check_format_version(status.format_version, &path)?;
    if status.state == RunState::Running && !status.pid.is_some_and(process_alive) {
        status.state = RunState::Interrupted;
        status.message = Some("interrupted (the process is gone); resume with --resume".into());
    }
    Ok(status)
}

/// Every event of a run, skipping lines that are not events (e.g. a torn last line).
pub fn read_events(run: &Path) -> anyhow::Result<Vec<TrainEvent>> {
    let text = crate::fs::read_to_string(run.join("events.jsonl"))
        .with_context(|| format!("reading {}", run.join("events.jsonl").display()))?;
    Ok(text.lines().filter_map(TrainEvent::parse_line).collect())
}

fn process_alive(pid: u32) -> bool {
    if pid == crate::fs::process_id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `YYYYmmdd-HHMMSS` in UTC, now.
pub fn utc_stamp() -> String {
    let secs = web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::clock::utc_compact(secs).replace('T', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_folder_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig::default();
        let mut a = RunDir::create(dir.path(), &cfg).unwrap();
        let b = RunDir::create(dir.path(), &cfg).unwrap();
        assert_ne!(a.id, b.id);
        a.log(&TrainEvent::Warning {
            message: "skipped x.png".into(),
        })
        .unwrap();
        a.set_status(RunState::Running, 0, None).unwrap();
        assert_eq!(read_status(&a.path).unwrap().state, RunState::Running);
        // A torn last line (killed mid-write) is ignored.
        crate::fs::OpenOptions::new()
            .append(true)
            .open(a.path.join("events.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"epo")
            .unwrap();
        assert_eq!(read_events(&a.path).unwrap().len(), 1);
        assert_eq!(read_config(&a.path).unwrap(), cfg);
        // A status left by a dead process reads as interrupted.
        crate::fs::write(
            a.path.join("status.json"),
            r#"{"state":"running","epoch":2,"pid":4000000000,"message":null}"#,
        )
        .unwrap();
        let s = read_status(&a.path).unwrap();
        assert_eq!((s.state, s.epoch), (RunState::Interrupted, 2));
        // A newer format is refused with a message, not misread.
        crate::fs::write(
            a.path.join("status.json"),
            r#"{"format_version":99,"state":"finished","epoch":2,"pid":null,"message":null}"#,
        )
        .unwrap();
        let err = format!("{:#}", read_status(&a.path).unwrap_err());
        assert!(
            err.contains("format 99")
                || err.contains("format_version 99")
                || err.contains("run-folder format 99"),
            "{err}"
        );
    }

    #[test]
    fn a_run_folder_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let a = RunDir::create(dir.path(), &TrainConfig::default()).unwrap();
        let path = a.path.clone();
        // Held by this (live) process: a second trainer is refused.
        crate::fs::write(path.join(LOCK), "1").unwrap(); // pid 1 is always alive
        let err = RunDir::reopen(&path).err().expect("refused");
        assert!(
            format!("{err:#}").contains("being trained by process 1"),
            "{err:#}"
        );
        // A lock left by a dead process is taken over.
        crate::fs::write(path.join(LOCK), "4000000000").unwrap();
        let b = RunDir::reopen(&path).unwrap();
        assert_eq!(
            crate::fs::read_to_string(path.join(LOCK)).unwrap(),
            crate::fs::process_id().to_string()
        );
        drop(b);
        assert!(!path.join(LOCK).exists());
        drop(a);
    }

    #[test]
    fn stamp_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
        assert_eq!(&s[8..9], "-");
    }
}
