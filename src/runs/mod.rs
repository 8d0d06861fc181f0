//! Run folders: `runs/<run-id>/` with `config.toml`, `events.jsonl`, `status.json`,
//! `metrics.json`, `confusion.json`, `predictions.csv`, `model.safetensors`, `checkpoint/`.
//! Every file but the event log is written atomically; the event log is appended line by line
//! and flushed, so a killed run leaves whole lines behind.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

pub mod view;

use crate::fsio::write_atomic_bytes;
use crate::train::{TrainConfig, TrainEvent};

/// Lifecycle of a run, in `status.json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Finished,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunStatus {
    pub state: RunState,
    /// Last completed epoch (1-based; 0 = none).
    pub epoch: u32,
    /// Process that owns a running run, to tell a live run from an interrupted one.
    pub pid: Option<u32>,
    pub message: Option<String>,
}

/// An open run folder.
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
    events: std::fs::File,
}

impl RunDir {
    /// Creates `root/<id>` with a fresh id (`YYYYmmdd-HHMMSS-<mode>-<n>`).
    pub fn create(root: &Path, config: &TrainConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let stamp = utc_stamp();
        let mode = format!("{:?}", config.mode).to_lowercase();
        for n in 1.. {
            let id = format!("{stamp}-{mode}-{n}");
            let path = root.join(&id);
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    let toml = toml::to_string_pretty(config)?;
                    write_atomic_bytes(&path.join("config.toml"), toml.as_bytes())?;
                    return Self::open_events(id, path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        unreachable!("unbounded loop returns")
    }

    /// Opens an existing run folder to continue it (events are appended).
    pub fn reopen(path: &Path) -> anyhow::Result<Self> {
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("run folder name")?
            .to_owned();
        Self::open_events(id, path.to_owned())
    }

    fn open_events(id: String, path: PathBuf) -> anyhow::Result<Self> {
        let events = std::fs::OpenOptions::new()
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
                state,
                epoch,
                pid: (state == RunState::Running).then(std::process::id),
                message,
            },
        )
    }
}

/// The config of an existing run.
pub fn read_config(run: &Path) -> anyhow::Result<TrainConfig> {
    let text = std::fs::read_to_string(run.join("config.toml"))
        .with_context(|| format!("reading {}", run.join("config.toml").display()))?;
    Ok(toml::from_str(&text)?)
}

/// The status of an existing run; a `running` run whose process is gone reads as interrupted
/// (`Cancelled` with a message).
pub fn read_status(run: &Path) -> anyhow::Result<RunStatus> {
    let text = std::fs::read_to_string(run.join("status.json"))
        .with_context(|| format!("reading {}", run.join("status.json").display()))?;
    let mut status: RunStatus = serde_json::from_str(&text)?;
    if status.state == RunState::Running && !status.pid.is_some_and(process_alive) {
        status.state = RunState::Cancelled;
        status.message = Some("interrupted (the process is gone); resume with --resume".into());
    }
    Ok(status)
}

/// Every event of a run, skipping lines that are not events (e.g. a torn last line).
pub fn read_events(run: &Path) -> anyhow::Result<Vec<TrainEvent>> {
    let text = std::fs::read_to_string(run.join("events.jsonl"))
        .with_context(|| format!("reading {}", run.join("events.jsonl").display()))?;
    Ok(text.lines().filter_map(TrainEvent::parse_line).collect())
}

fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `YYYYmmdd-HHMMSS` in UTC, now.
pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::cluster::utc_compact(secs).replace('T', "-")
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
        std::fs::OpenOptions::new()
            .append(true)
            .open(a.path.join("events.jsonl"))
            .unwrap()
            .write_all(b"{\"event\":\"epo")
            .unwrap();
        assert_eq!(read_events(&a.path).unwrap().len(), 1);
        assert_eq!(read_config(&a.path).unwrap(), cfg);
        // A status left by a dead process reads as interrupted.
        std::fs::write(
            a.path.join("status.json"),
            r#"{"state":"running","epoch":2,"pid":4000000000,"message":null}"#,
        )
        .unwrap();
        let s = read_status(&a.path).unwrap();
        assert_eq!((s.state, s.epoch), (RunState::Cancelled, 2));
    }

    #[test]
    fn stamp_shape() {
        let s = utc_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
        assert_eq!(&s[8..9], "-");
    }
}
