//! What a cross-validation reports: the spread of each metric over the folds and the
//! summary saved beside the fold runs.

use std::collections::BTreeMap;

/// Mean and sample standard deviation of one metric over the folds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    /// One value per fold, in fold order.
    pub folds: Vec<f64>,
}

impl Spread {
    pub fn of(values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Self {
            mean,
            sd,
            folds: values,
        }
    }
}

/// What a cross-validation produced: one run folder per fold and the spread of their
/// held-out (test side) metrics. Saved as `cv-<timestamp>.json` beside the run folders.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CvSummary {
    pub folds: usize,
    /// Run ids, fold order.
    pub runs: Vec<String>,
    /// Scored (held-out) images per fold.
    pub images: Vec<u64>,
    /// `accuracy`, `balanced_accuracy`, `macro_f1`, `loss`, and `macro_auc` and
    /// `kappa_quadratic` where every fold has them: each fold's held-out part, scored once.
    pub metrics: BTreeMap<String, Spread>,
    /// Which data made the choices of each fold's run.
    #[serde(default)]
    pub chosen_on: String,
    /// Which data the reported metrics come from.
    #[serde(default)]
    pub scored_on: String,
    /// Images the choices of each fold's run were made on (a solved probe's inner folds, or
    /// the inner validation part).
    #[serde(default)]
    pub selection_images: Vec<u64>,
    /// What each fold's run chose, fold order.
    #[serde(default)]
    pub chosen: Vec<String>,
    /// All folds' held-out predictions scored together (each image once), with bootstrap
    /// 95% intervals and calibration.
    #[serde(default)]
    pub pooled: Option<super::metrics::Metrics>,
}
