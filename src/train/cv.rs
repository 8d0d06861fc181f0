//! k-fold cross-validation: every image is validated exactly once, by a model that never saw
//! its patient. On small cohorts (a few hundred cells, a handful of patients) one validation
//! split is too noisy to compare models; the mean and spread over folds are not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dataset::split::{Split, assign_folds};
use crate::runs::RunState;

use super::engine::{TrainJob, TrainOutcome, train};
use super::events::TrainEvent;

/// Mean and sample standard deviation of one metric over the folds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    /// One value per fold, in fold order.
    pub folds: Vec<f64>,
}

impl Spread {
    fn of(values: Vec<f64>) -> Self {
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
/// validation metrics. Saved as `cv-<timestamp>.json` beside the run folders.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CvSummary {
    pub folds: usize,
    /// Run ids, fold order.
    pub runs: Vec<String>,
    /// Validation images per fold.
    pub images: Vec<u64>,
    /// `accuracy`, `balanced_accuracy`, `macro_f1`, `loss`, and `macro_auc` and
    /// `kappa_quadratic` where every fold has them.
    pub metrics: BTreeMap<String, Spread>,
}

/// How a cross-validation ended.
#[derive(Debug)]
pub struct CvOutcome {
    /// Present when every fold finished.
    pub summary: Option<CvSummary>,
    pub summary_path: Option<PathBuf>,
    pub outcomes: Vec<TrainOutcome>,
}

/// Trains `folds` runs of `job`, fold `i` validating on the `i`-th part of a patient-grouped,
/// stratified k-fold partition (seeded by the run's seed) and training on the rest. A split
/// given in the manifest is ignored. Stops at the first fold that does not finish.
pub fn cross_validate(
    job: TrainJob,
    folds: usize,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
) -> anyhow::Result<CvOutcome> {
    anyhow::ensure!(job.resume.is_none(), "cross-validation cannot resume a run");
    let fold_of = assign_folds(&job.manifest.records, folds, job.config.seed)?;
    let mut outcomes = Vec::with_capacity(folds);
    for fold in 0..folds {
        let mut manifest = job.manifest.clone();
        for (r, f) in manifest.records.iter_mut().zip(&fold_of) {
            r.split = f.map(|f| if f == fold { Split::Val } else { Split::Train });
        }
        let outcome = train(
            TrainJob {
                config: job.config.clone(),
                manifest,
                options: job.options.clone(),
                runs_root: job.runs_root.clone(),
                resume: None,
                cache: job.cache.clone(),
            },
            sink,
            cancel,
        )?;
        let finished = outcome.state == RunState::Finished;
        outcomes.push(outcome);
        if !finished || cancel.load(Ordering::Relaxed) {
            return Ok(CvOutcome {
                summary: None,
                summary_path: None,
                outcomes,
            });
        }
    }
    let summary = summarise(&outcomes);
    let path = summary.as_ref().map(|_| {
        job.runs_root
            .join(format!("cv-{}.json", crate::runs::utc_stamp()))
    });
    if let (Some(s), Some(p)) = (&summary, &path) {
        crate::fsio::write_atomic_bytes(p, &serde_json::to_vec_pretty(s)?)?;
    }
    Ok(CvOutcome {
        summary,
        summary_path: path,
        outcomes,
    })
}

/// The spread of the folds' final validation metrics (`None` if a fold has none).
fn summarise(outcomes: &[TrainOutcome]) -> Option<CvSummary> {
    let metrics: Vec<&super::Metrics> = outcomes
        .iter()
        .map(|o| o.metrics.as_ref())
        .collect::<Option<_>>()?;
    let mut out = BTreeMap::new();
    let mut put = |name: &str, values: Option<Vec<f64>>| {
        if let Some(v) = values {
            out.insert(name.to_owned(), Spread::of(v));
        }
    };
    put(
        "accuracy",
        Some(metrics.iter().map(|m| m.accuracy).collect()),
    );
    put(
        "balanced_accuracy",
        Some(metrics.iter().map(|m| m.balanced_accuracy).collect()),
    );
    put(
        "macro_f1",
        Some(metrics.iter().map(|m| m.macro_f1).collect()),
    );
    put("loss", metrics.iter().map(|m| m.loss).collect());
    put("macro_auc", metrics.iter().map(|m| m.macro_auc).collect());
    put(
        "kappa_quadratic",
        metrics.iter().map(|m| m.kappa_quadratic).collect(),
    );
    Some(CvSummary {
        folds: outcomes.len(),
        runs: outcomes.iter().map(|o| o.run_id.clone()).collect(),
        images: metrics.iter().map(|m| m.n).collect(),
        metrics: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_mean_and_sample_sd() {
        let s = Spread::of(vec![0.6, 0.7, 0.8]);
        assert!((s.mean - 0.7).abs() < 1e-12);
        assert!((s.sd - 0.1).abs() < 1e-12);
        assert_eq!(Spread::of(vec![0.5]).sd, 0.0);
    }
}
