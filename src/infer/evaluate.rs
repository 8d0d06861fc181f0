//! `cellbench evaluate`: every metric from any predictions CSV (ours or another tool's).
//!
//! Expected columns: `p_<label>` probability columns, a truth column (`truth`, `label`,
//! `true` or `target`; `A|B` for multi-label) unless a separate truth CSV is given (joined on
//! `path`, or on file name), and optionally `patient` for patient-level metrics.

use std::collections::HashMap;
use std::path::Path;

use crate::dataset::csv_manifest::read_csv_strings;
use crate::dataset::naming::split_labels;
use crate::train::metrics::{self, Metrics, Task};

/// The evaluation of a predictions file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    pub rows: usize,
    pub labels: Vec<String>,
    pub metrics: Metrics,
    /// Cells averaged per patient (single-label tasks with a `patient` column).
    pub patient_metrics: Option<Metrics>,
}

fn column(df: &polars::prelude::DataFrame, name: &str) -> Option<Vec<String>> {
    let c = df.column(name).ok()?.str().ok()?.clone();
    Some(
        c.iter()
            .map(|v| v.unwrap_or_default().trim().to_owned())
            .collect(),
    )
}

fn base_name(p: &str) -> &str {
    p.rsplit(['/', '\\']).next().unwrap_or(p)
}

pub fn evaluate_csv(
    predictions: &Path,
    truth_csv: Option<&Path>,
    task: Option<Task>,
) -> anyhow::Result<Evaluation> {
    let df = read_csv_strings(predictions)?;
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let prob_cols: Vec<&String> = names.iter().filter(|n| n.starts_with("p_")).collect();
    anyhow::ensure!(
        prob_cols.len() >= 2,
        "no probability columns (p_<label>) in {} (columns: {})",
        predictions.display(),
        names.join(", ")
    );
    let labels: Vec<String> = prob_cols.iter().map(|c| c[2..].to_owned()).collect();
    let n = df.height();
    let mut probs = vec![Vec::with_capacity(labels.len()); n];
    for c in &prob_cols {
        let values = column(&df, c).unwrap_or_default();
        for (row, v) in values.iter().enumerate() {
            probs[row].push(v.parse::<f32>().unwrap_or(f32::NAN));
        }
    }
    let truth: Vec<String> = match truth_csv {
        None => ["truth", "label", "true", "target"]
            .iter()
            .find_map(|c| column(&df, c))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no truth column (truth, label, true, target) in {}: give --truth",
                    predictions.display()
                )
            })?,
        Some(t) => {
            let tdf = read_csv_strings(t)?;
            let paths = column(&tdf, "path")
                .ok_or_else(|| anyhow::anyhow!("no `path` column in {}", t.display()))?;
            let labels_col = ["label", "truth", "labels", "target"]
                .iter()
                .find_map(|c| column(&tdf, c))
                .ok_or_else(|| anyhow::anyhow!("no label column in {}", t.display()))?;
            let mut by_path: HashMap<String, String> = HashMap::new();
            let mut by_name: HashMap<String, String> = HashMap::new();
            for (p, l) in paths.iter().zip(labels_col) {
                by_name.insert(base_name(p).to_owned(), l.clone());
                by_path.insert(p.clone(), l);
            }
            let pred_paths = column(&df, "path")
                .ok_or_else(|| anyhow::anyhow!("no `path` column in {}", predictions.display()))?;
            pred_paths
                .iter()
                .map(|p| {
                    by_path
                        .get(p)
                        .or_else(|| by_name.get(base_name(p)))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        }
    };
    let keep: Vec<usize> = (0..n).filter(|&i| !truth[i].is_empty()).collect();
    anyhow::ensure!(!keep.is_empty(), "no row has a known truth");
    let multi = truth.iter().any(|t| t.contains('|'));
    let task = task.unwrap_or(if multi {
        Task::MultiLabel
    } else if labels.len() == 2 {
        Task::Binary
    } else {
        Task::MultiClass
    });
    let probs: Vec<Vec<f32>> = keep.iter().map(|&i| probs[i].clone()).collect();
    let index = |l: &str| labels.iter().position(|x| x == l);
    let (metrics, patient_metrics) = if task == Task::MultiLabel {
        let t: Vec<Vec<bool>> = keep
            .iter()
            .map(|&i| {
                let set = split_labels(&truth[i]);
                labels.iter().map(|l| set.contains(l)).collect()
            })
            .collect();
        (
            metrics::evaluate_multi_label(&labels, &t, &probs, 0.5),
            None,
        )
    } else {
        let mut t = Vec::with_capacity(keep.len());
        for &i in &keep {
            t.push(index(&truth[i]).ok_or_else(|| {
                anyhow::anyhow!(
                    "row {}: truth {:?} is not one of the labels {labels:?}",
                    i + 2,
                    truth[i]
                )
            })?);
        }
        let m = metrics::evaluate_single(task, &labels, &t, &probs);
        let pm = column(&df, "patient")
            .filter(|p| keep.iter().all(|&i| !p[i].is_empty()))
            .map(|p| {
                let patients: Vec<&str> = keep.iter().map(|&i| p[i].as_str()).collect();
                let (_, pt, pp) = metrics::aggregate_by_patient(&patients, &t, &probs);
                metrics::evaluate_single(task, &labels, &pt, &pp)
            });
        (m, pm)
    };
    Ok(Evaluation {
        rows: keep.len(),
        labels,
        metrics,
        patient_metrics,
    })
}
