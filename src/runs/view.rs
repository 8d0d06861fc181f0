//! Reading finished (or running) runs back for display and comparison: plain data only.

use std::path::Path;

use anyhow::Context as _;

use crate::experiment::TrainConfig;
use crate::experiment::events::TrainEvent;
use crate::experiment::metrics::{self, Metrics, Task};

use super::{RunState, read_config, read_events, read_status};

/// Run folder names under `root`, oldest first (ids start with a UTC timestamp).
pub fn list_runs(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = crate::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| crate::fs::is_file(&e.path().join("config.toml")))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Cross-validation summaries under `root` (`cv-<timestamp>.json`, written beside the run
/// folders), by id (the file name without `.json`), oldest first.
pub fn list_cross_validations(root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = crate::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter_map(|n| {
            n.strip_prefix("cv-")
                .and_then(|rest| rest.strip_suffix(".json"))
                .map(|stamp| format!("cv-{stamp}"))
        })
        .collect();
    ids.sort();
    ids
}

/// The cross-validation summary `id` (see [`list_cross_validations`]).
pub fn load_cross_validation(
    root: &Path,
    id: &str,
) -> anyhow::Result<crate::experiment::cv::CvSummary> {
    anyhow::ensure!(
        id.starts_with("cv-") && !id.contains(['/', '\\']),
        "not a cross-validation id: {id}"
    );
    crate::runs::read_json(&root.join(format!("{id}.json")))
}

/// One epoch's headline numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPoint {
    pub epoch: u32,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    pub val_auc: Option<f64>,
    pub val_macro_f1: Option<f64>,
}

/// Curves of a run from its events.
pub fn curves(events: &[TrainEvent]) -> Vec<EpochPoint> {
    let mut out: Vec<EpochPoint> = Vec::new();
    for e in events {
        if let TrainEvent::Epoch {
            epoch, train, val, ..
        } = e
        {
            // A resumed run repeats epochs after its checkpoint: the later value wins.
            out.retain(|p| p.epoch < *epoch);
            out.push(EpochPoint {
                epoch: *epoch,
                train_loss: train.loss,
                train_accuracy: train.accuracy,
                val_loss: val.as_ref().map(|v| v.loss),
                val_accuracy: val.as_ref().map(|v| v.accuracy),
                val_auc: val.as_ref().and_then(|v| v.macro_auc),
                val_macro_f1: val.as_ref().map(|v| v.macro_f1),
            });
        }
    }
    out
}

/// What Compare shows of a run.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub id: String,
    pub config: TrainConfig,
    pub state: RunState,
    pub state_message: Option<String>,
    pub device: Option<String>,
    pub curves: Vec<EpochPoint>,
    /// Validation metrics of the best epoch (finished runs).
    pub val: Option<Metrics>,
    pub best_epoch: Option<u32>,
    /// The dataset the run was trained on (from `model.json`; finished runs).
    pub dataset_root: Option<std::path::PathBuf>,
    /// The task and labels the model answers (finished runs).
    pub task: Option<Task>,
    pub labels: Vec<String>,
}

impl RunSummary {
    /// Why these runs cannot be ranked against each other (different datasets, tasks or
    /// labels), or `None` when they can.
    pub fn incomparable(runs: &[RunSummary]) -> Option<String> {
        let first = runs.first()?;
        let datasets: std::collections::BTreeSet<String> = runs
            .iter()
            .filter_map(|r| r.dataset_root.as_ref())
            .map(|p| p.display().to_string())
            .collect();
        if datasets.len() > 1 {
            return Some(format!(
                "these runs were trained on different datasets ({})",
                datasets.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if runs
            .iter()
            .any(|r| r.task.is_some() && r.task != first.task)
        {
            return Some("these runs solve different tasks".to_owned());
        }
        if runs.iter().any(|r| r.labels != first.labels) {
            return Some("these runs have different labels".to_owned());
        }
        None
    }
}

pub fn load_summary(runs_root: &Path, id: &str) -> anyhow::Result<RunSummary> {
    let dir = runs_root.join(id);
    let config = read_config(&dir)?;
    let status = read_status(&dir).ok();
    let events = read_events(&dir).unwrap_or_default();
    let info: Option<crate::model::ModelInfo> = crate::fs::read(dir.join("model.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let metrics = super::MetricsFile::read(&dir).ok();
    Ok(RunSummary {
        id: id.to_owned(),
        config,
        state: status.as_ref().map_or(RunState::Running, |s| s.state),
        state_message: status.and_then(|s| s.message),
        device: events.iter().find_map(|e| match e {
            TrainEvent::Started { device, .. } => Some(device.clone()),
            _ => None,
        }),
        curves: curves(&events),
        val: metrics.as_ref().map(|m| m.val.clone()),
        best_epoch: metrics.as_ref().map(|m| m.best_epoch),
        dataset_root: info.as_ref().and_then(|i| i.dataset_root.clone()),
        task: info.as_ref().map(|i| i.task),
        labels: info.map(|i| i.labels).unwrap_or_default(),
    })
}

/// One row of a run's `predictions.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictionRow {
    /// As written by the run (relative to the dataset root).
    pub path: String,
    pub patient: String,
    pub split: String,
    pub truth: String,
    pub predicted: String,
    pub probs: Vec<f32>,
}

impl PredictionRow {
    /// Probability of the predicted label (confidence).
    pub fn confidence(&self, labels: &[String]) -> f32 {
        labels
            .iter()
            .position(|l| *l == self.predicted)
            .and_then(|i| self.probs.get(i).copied())
            .unwrap_or(0.0)
    }
}

/// A ROC curve of one class (one-vs-rest).
#[derive(Clone, Debug, PartialEq)]
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub auc: Option<f64>,
}

/// Everything the Evaluate cell shows.
#[derive(Clone, Debug)]
pub struct RunEvaluation {
    pub id: String,
    pub task: Task,
    pub labels: Vec<String>,
    /// Validation side (as the run reported it).
    pub split: String,
    pub metrics: Metrics,
    /// The test side, scored once with the kept weights (when the split had one).
    pub test: Option<Metrics>,
    pub rows: Vec<PredictionRow>,
    pub roc: Vec<RocCurve>,
    /// Folder the prediction paths are relative to.
    pub dataset_root: Option<std::path::PathBuf>,
}

/// Loads a run's evaluation on its validation side.
pub fn load_evaluation(runs_root: &Path, id: &str) -> anyhow::Result<RunEvaluation> {
    let dir = runs_root.join(id);
    let info: crate::model::ModelInfo = super::read_json(&dir.join("model.json"))
        .with_context(|| format!("{id}: no readable model.json"))?;
    super::check_format_version(info.format_version, &dir.join("model.json"))?;
    anyhow::ensure!(
        crate::fs::is_file(&dir.join("metrics.json")),
        "{id}: the run has not finished (no metrics.json)"
    );
    let file = super::MetricsFile::read(&dir)?;
    let metrics: Metrics = file.val.clone();
    let df = crate::fsio::CsvTable::read(&dir.join("predictions.csv"))?;
    let col = |name: &str| -> Vec<String> {
        df.column(name)
            .unwrap_or_else(|| vec![String::new(); df.height()])
    };
    let (path, patient, split, truth, predicted) = (
        col("path"),
        col("patient"),
        col("split"),
        col("truth"),
        col("predicted"),
    );
    let prob_cols: Vec<Vec<f32>> = info
        .labels
        .iter()
        .map(|l| {
            col(&format!("p_{l}"))
                .iter()
                .map(|v| v.parse().unwrap_or(f32::NAN))
                .collect()
        })
        .collect();
    let rows: Vec<PredictionRow> = (0..df.height())
        .filter(|&i| split[i] == "val")
        .map(|i| PredictionRow {
            path: path[i].clone(),
            patient: patient[i].clone(),
            split: split[i].clone(),
            truth: truth[i].clone(),
            predicted: predicted[i].clone(),
            probs: prob_cols.iter().map(|c| c[i]).collect(),
        })
        .collect();
    let roc = info
        .labels
        .iter()
        .enumerate()
        .map(|(k, label)| {
            let scores: Vec<f32> = rows.iter().map(|r| r.probs[k]).collect();
            let positives: Vec<bool> = rows
                .iter()
                .map(|r| r.truth.split('|').any(|t| t == label))
                .collect();
            RocCurve {
                label: label.clone(),
                points: metrics::roc_curve(&scores, &positives),
                auc: metrics::roc_auc(&scores, &positives),
            }
        })
        .collect();
    let dataset_root = info.dataset_root.clone();
    Ok(RunEvaluation {
        id: id.to_owned(),
        task: info.task,
        labels: info.labels,
        split: "val".into(),
        metrics,
        test: file.test,
        rows,
        roc,
        dataset_root,
    })
}
