//! How a training job's run folder comes back as a local run folder that resumes, predicts and
//! compares like any other. In order of preference:
//! - copied from the shared `--runs` folder, when this machine can read it (checkpoint
//!   included);
//! - unpacked from the job's log, where the worker leaves its run folder as one line (a zip,
//!   base64) after the run ends;
//! - rebuilt from the job's event lines (a job that failed before its run folder existed, or
//!   one run by an older cellbench): config, events, metrics and status, plus `dataset.json`
//!   when the job recorded where its data was.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::runs::{DatasetFile, RunDir, RunState, RunStatus};
use crate::train::{TrainConfig, TrainEvent};

use super::{ClusterBackend, JobInfo, JobStatus};

/// Job metadata: the folder the job's run folder goes to, as the cluster sees it.
pub(super) const RUNS_KEY: &str = "cellbench_runs";
/// Job metadata: where the job's data was (a `dataset.json` without a split), as JSON.
pub(super) const DATASET_KEY: &str = "cellbench_dataset";
/// Start of the log line that carries a run folder.
const RUN_FOLDER_LINE: &str = "cellbench-run-folder ";
/// The most of a run folder that travels in a job's log; beyond it the checkpoint, then the
/// model, stay on the cluster (a shared `--runs` folder brings them back).
pub const LOG_LIMIT_BYTES: u64 = 16 << 20;

/// The worker's side: prints the run folder `run` as one log line, leaving out the
/// checkpoint, then the model, when they would pass [`LOG_LIMIT_BYTES`] (each said by a
/// warning event).
pub(super) fn print_run_folder(
    run: &Path,
    print_line: &mut dyn FnMut(&str),
    print_event: &mut dyn FnMut(&TrainEvent),
) -> anyhow::Result<()> {
    let size = |files: &[PathBuf]| -> u64 {
        files
            .iter()
            .filter_map(|f| crate::fs::metadata(run.join(f)).ok())
            .map(|m| m.len())
            .sum()
    };
    let mut files = crate::runs::archive::portable_files(run);
    let too_big = |files: &[PathBuf]| size(files) > LOG_LIMIT_BYTES;
    if too_big(&files) {
        files.retain(|f| !f.starts_with("checkpoint"));
        print_event(&TrainEvent::Warning {
            message: "the checkpoint is too large to come back in the job's log: it stays in the job's run folder (use a shared --runs folder to resume from it)".into(),
        });
    }
    if too_big(&files) {
        files.retain(|f| f != Path::new("model.safetensors"));
        print_event(&TrainEvent::Warning {
            message: "the model is too large to come back in the job's log: it stays in the job's run folder (use a shared --runs folder to bring it back)".into(),
        });
    }
    let zip = crate::runs::archive::zip_run(run, &files)?;
    print_line(&format!("{RUN_FOLDER_LINE}{}", base64_encode(&zip)));
    Ok(())
}

/// Brings a finished job's results back as a run folder `runs_root/<id>/` (replacing an
/// earlier import of the same job). Returns the folder.
pub fn import_results(
    backend: &dyn ClusterBackend,
    id: &str,
    runs_root: &Path,
) -> anyhow::Result<PathBuf> {
    let info = backend.status(id)?;
    let log = backend.logs(id)?;
    import_from(&info, &log, runs_root)
}

/// [`import_results`] from a job's info and log.
pub fn import_from(info: &JobInfo, log: &str, runs_root: &Path) -> anyhow::Result<PathBuf> {
    let id = info.submission_id.as_str();
    let staging = runs_root.join(format!(".import-{id}"));
    if crate::fs::exists(&staging) {
        crate::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let result = stage(info, log, &staging).and_then(|staged| {
        let dir = runs_root.join(id);
        if crate::fs::exists(&dir) {
            crate::fs::remove_dir_all(&dir)
                .with_context(|| format!("replacing {}", dir.display()))?;
        }
        crate::fs::rename(&staged, &dir)
            .with_context(|| format!("moving {} to {}", staged.display(), dir.display()))?;
        settle(info, &dir)?;
        Ok(dir)
    });
    crate::fs::remove_dir_all(&staging).ok();
    result
}

/// Puts the job's run folder under `staging`; returns where.
fn stage(info: &JobInfo, log: &str, staging: &Path) -> anyhow::Result<PathBuf> {
    let events: Vec<TrainEvent> = log.lines().filter_map(TrainEvent::parse_line).collect();
    let run_id = events.iter().find_map(|e| match e {
        TrainEvent::Started { run_id, .. } => Some(run_id.clone()),
        _ => None,
    });
    // The shared folder, as the cluster named it; a relative one is the job's own folder.
    let shared = info
        .metadata
        .get(RUNS_KEY)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .zip(run_id)
        .map(|(runs, run_id)| runs.join(run_id))
        .filter(|d| crate::runs::archive::is_run_folder(d));
    if let Some(from) = shared {
        let to = staging.join(from.file_name().context("run folder name")?);
        for rel in crate::runs::archive::portable_files(&from) {
            let target = to.join(&rel);
            if let Some(parent) = target.parent() {
                crate::fs::create_dir_all(parent)?;
            }
            crate::fs::copy(from.join(&rel), &target)
                .with_context(|| format!("copying {}", from.join(&rel).display()))?;
        }
        return Ok(to);
    }
    if let Some(packed) = log
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(RUN_FOLDER_LINE))
    {
        let zip = base64_decode(packed.trim()).context("the run folder in the job's log")?;
        crate::runs::archive::unpack_zip(&zip, staging)
            .context("the run folder in the job's log")?;
        return crate::runs::archive::run_folders_below(staging)
            .into_iter()
            .next()
            .context("the job's log carries no run folder");
    }
    rebuild(info, &events, staging)
}

/// A run folder made from the job's event lines.
fn rebuild(info: &JobInfo, events: &[TrainEvent], staging: &Path) -> anyhow::Result<PathBuf> {
    let config: TrainConfig = match info.metadata.get("cellbench_config") {
        Some(text) => toml::from_str(text).context("the job's run configuration")?,
        None => TrainConfig::default(),
    };
    let mut run = RunDir::create_named(staging, &info.submission_id, &config)?;
    for e in events {
        run.log(e)?;
    }
    if let Some(text) = info.metadata.get(DATASET_KEY) {
        let dataset: DatasetFile =
            serde_json::from_str(text).context("the job's record of its data")?;
        run.write_json("dataset.json", &dataset)?;
    }
    let finished = events.iter().rev().find_map(|e| match e {
        TrainEvent::Finished {
            best_epoch,
            metrics,
            patient_metrics,
            ..
        } => Some((*best_epoch, metrics, patient_metrics)),
        _ => None,
    });
    if let Some((best_epoch, metrics, patients)) = finished {
        run.write_json(
            "metrics.json",
            &crate::runs::MetricsFile {
                format_version: crate::runs::FORMAT_VERSION,
                best_epoch,
                val: (**metrics).clone(),
                test: None,
                val_patients: patients.as_deref().cloned(),
            },
        )?;
        if let Some(c) = &metrics.confusion {
            run.write_json(
                "confusion.json",
                &crate::runs::ConfusionFile {
                    split: "val".into(),
                    epoch: best_epoch,
                    matrix: c.clone(),
                },
            )?;
        }
    }
    let state = if finished.is_some() {
        RunState::Finished
    } else if events
        .iter()
        .any(|e| matches!(e, TrainEvent::Cancelled { .. }))
        || info.status == JobStatus::Stopped
    {
        RunState::Cancelled
    } else {
        RunState::Failed
    };
    let epoch = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Epoch { .. }))
        .count() as u32;
    run.set_status(state, epoch, Some(job_message(info)))?;
    Ok(run.path.clone())
}

fn job_message(info: &JobInfo) -> String {
    format!("cluster job {}: {}", info.submission_id, info.status)
}

/// The imported folder's status as the job ended: a run still marked running was ended by
/// the cluster (stopped or killed) and reads as cancelled or failed.
fn settle(info: &JobInfo, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("status.json");
    let status: Option<RunStatus> = crate::runs::read_json(&path).ok();
    let (state, epoch) = match status {
        Some(s) if s.state != RunState::Running || !info.status.is_terminal() => return Ok(()),
        Some(s) => (s.state, s.epoch),
        None => (RunState::Failed, 0),
    };
    let ended = match (state, info.status) {
        (RunState::Running, JobStatus::Stopped) => RunState::Cancelled,
        _ => RunState::Failed,
    };
    let run = RunDir::reopen(dir)?;
    run.set_status(ended, epoch, Some(job_message(info)))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut value = [u8::MAX; 256];
    for (i, &c) in BASE64.iter().enumerate() {
        value[usize::from(c)] = i as u8;
    }
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        anyhow::ensure!(chunk.len() > 1, "truncated base64");
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value[usize::from(c)];
            anyhow::ensure!(v != u8::MAX, "not base64");
            n |= u32::from(v) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::metrics::{Task, evaluate_single};
    use crate::runs::MetricsFile;

    fn metrics() -> crate::experiment::metrics::Metrics {
        let labels = ["a".to_owned(), "b".to_owned()];
        let probs = vec![vec![0.9, 0.1], vec![0.2, 0.8], vec![0.6, 0.4]];
        evaluate_single(Task::MultiClass, &labels, &[0, 1, 1], &probs)
    }

    /// A run folder as the engine leaves it on the cluster, still locked by `RunDir`.
    fn cluster_run(root: &Path, state: RunState) -> RunDir {
        let config = TrainConfig {
            epochs: 3,
            ..TrainConfig::default()
        };
        let mut run = RunDir::create(root, &config).unwrap();
        run.log(&started(&run.id)).unwrap();
        run.write_json("dataset.json", &dataset()).unwrap();
        run.write_bytes("model.json", b"{\"format_version\":1}")
            .unwrap();
        run.write_bytes("model.safetensors", &[7u8; 1000]).unwrap();
        run.write_json(
            "metrics.json",
            &MetricsFile {
                format_version: crate::runs::FORMAT_VERSION,
                best_epoch: 2,
                val: metrics(),
                test: Some(metrics()),
                val_patients: None,
            },
        )
        .unwrap();
        for epoch in [1, 2] {
            let g = crate::runs::checkpoint::Generation::begin(&run.path, epoch).unwrap();
            g.write("state.json", b"{}").unwrap();
            g.commit().unwrap();
        }
        // A checkpoint write the cluster cut short.
        let partial = run.path.join("checkpoint/epoch-3.partial");
        crate::fs::create_dir_all(&partial).unwrap();
        crate::fs::write(partial.join("state.json"), b"{").unwrap();
        run.set_status(state, 2, None).unwrap();
        run
    }

    fn started(run_id: &str) -> TrainEvent {
        TrainEvent::Started {
            run_id: run_id.into(),
            mode: crate::experiment::config::Mode::Probe,
            task: Task::MultiClass,
            labels: vec!["a".into(), "b".into()],
            train_images: 6,
            val_images: 3,
            device: "cpu".into(),
            epochs: 3,
        }
    }

    fn dataset() -> DatasetFile {
        DatasetFile {
            format_version: crate::runs::FORMAT_VERSION,
            source: "/shared/data/cells".into(),
            options: Default::default(),
            splits: None,
            fingerprint: Some("f00d".into()),
        }
    }

    fn job(status: JobStatus, runs: &str) -> JobInfo {
        JobInfo {
            submission_id: "cellbench-job-1".into(),
            status,
            entrypoint: String::new(),
            message: None,
            error_type: None,
            start_time: None,
            end_time: None,
            metadata: [
                (
                    "cellbench_config".to_owned(),
                    toml::to_string(&TrainConfig::default()).unwrap(),
                ),
                (RUNS_KEY.to_owned(), runs.to_owned()),
                (
                    DATASET_KEY.to_owned(),
                    serde_json::to_string(&DatasetFile {
                        fingerprint: None,
                        ..dataset()
                    })
                    .unwrap(),
                ),
            ]
            .into(),
            entrypoint_num_cpus: None,
            entrypoint_num_gpus: None,
            driver_exit_code: None,
        }
    }

    /// The job's log: the cluster's own header, then the worker's lines.
    fn job_log(run: &RunDir, with_folder: bool) -> String {
        let mut lines = vec![
            "Job started on the cluster".to_owned(),
            started(&run.id).to_json_line(),
        ];
        if with_folder {
            let mut warnings = Vec::new();
            let mut folder = Vec::new();
            print_run_folder(&run.path, &mut |l| folder.push(l.to_owned()), &mut |e| {
                warnings.push(e.to_json_line())
            })
            .unwrap();
            assert!(warnings.is_empty(), "{warnings:?}");
            lines.extend(folder);
        }
        lines.join("\n") + "\n"
    }

    /// What every imported run must hold to resume, predict and show its test side.
    fn assert_complete(dir: &Path) {
        assert_eq!(DatasetFile::read(dir).unwrap(), dataset());
        assert!(MetricsFile::read(dir).unwrap().test.is_some());
        assert_eq!(
            crate::fs::read(dir.join("model.safetensors")).unwrap(),
            [7u8; 1000]
        );
        assert!(crate::fs::is_file(&dir.join("model.json")));
        let latest = crate::runs::checkpoint::latest(dir).unwrap().unwrap();
        assert!(latest.ends_with("epoch-2"), "{}", latest.display());
        assert!(!crate::fs::exists(&dir.join("checkpoint/epoch-3.partial")));
        assert!(!crate::fs::exists(&dir.join("lock")));
        assert_eq!(crate::runs::read_config(dir).unwrap().epochs, 3);
        assert!(crate::runs::read_events(dir).unwrap().len() == 1);
        // The imported folder is a run folder like any other: it can be reopened to resume.
        drop(RunDir::reopen(dir).unwrap());
    }

    #[test]
    fn a_run_comes_back_whole_through_the_jobs_log() {
        let tmp = tempfile::tempdir().unwrap();
        let run = cluster_run(&tmp.path().join("job-dir/runs"), RunState::Finished);
        let log = job_log(&run, true);
        // The job's own folder ("runs", relative) is not readable here: the log carries it.
        let local = tmp.path().join("runs");
        let dir = import_from(&job(JobStatus::Succeeded, "runs"), &log, &local).unwrap();
        assert_eq!(dir, local.join("cellbench-job-1"));
        assert_complete(&dir);
        assert_eq!(
            crate::runs::read_status(&dir).unwrap().state,
            RunState::Finished
        );
        // Importing again replaces the folder; nothing else is left beside it.
        import_from(&job(JobStatus::Succeeded, "runs"), &log, &local).unwrap();
        assert_eq!(crate::fs::read_dir(&local).unwrap().count(), 1);
    }

    #[test]
    fn a_run_on_shared_storage_is_copied_and_a_killed_one_reads_as_cancelled() {
        let tmp = tempfile::tempdir().unwrap();
        let shared = tmp.path().join("shared-runs");
        // Stopped by the cluster before it could write its own end.
        let run = cluster_run(&shared, RunState::Running);
        let log = job_log(&run, false);
        let info = job(JobStatus::Stopped, shared.to_str().unwrap());
        let dir = import_from(&info, &log, &tmp.path().join("runs")).unwrap();
        assert_complete(&dir);
        let status = crate::runs::read_status(&dir).unwrap();
        assert_eq!((status.state, status.epoch), (RunState::Cancelled, 2));
        // The shared run itself is left as it is.
        assert!(crate::fs::exists(&run.path.join("lock")));
        assert!(crate::fs::exists(
            &run.path.join("checkpoint/epoch-3.partial")
        ));
    }

    #[test]
    fn a_run_without_a_folder_is_rebuilt_from_its_events_with_its_data_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let finished = TrainEvent::Finished {
            best_epoch: 1,
            metrics: Box::new(metrics()),
            patient_metrics: None,
            elapsed_secs: 1.0,
        };
        let log = format!(
            "header\n{}\n{}\n",
            started("r").to_json_line(),
            finished.to_json_line()
        );
        let dir = import_from(
            &job(JobStatus::Succeeded, "runs"),
            &log,
            &tmp.path().join("runs"),
        )
        .unwrap();
        let recorded = DatasetFile::read(&dir).unwrap();
        assert_eq!(recorded.source, Path::new("/shared/data/cells"));
        assert_eq!(MetricsFile::read(&dir).unwrap().best_epoch, 1);
        assert_eq!(
            crate::runs::read_status(&dir).unwrap().state,
            RunState::Finished
        );
        assert_eq!(crate::runs::read_events(&dir).unwrap().len(), 2);
        assert!(!crate::fs::exists(&dir.join("lock")));
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(97)).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert!(base64_decode("T!==").is_err());
    }
}
