//! k-fold cross-validation: every image is scored exactly once, by a model that never saw
//! its patient. On small cohorts (a few hundred cells, a handful of patients) one validation
//! split is too noisy to compare models; the mean and spread over folds are not.
//!
//! Selection is nested: in fold `i` the `i`-th part is the run's test side, scored once at the
//! end; every choice the run makes (best epoch, early stopping, the probe's settings) is made
//! on an inner validation part of the other folds, split off by patient and stratified by
//! label. The fold's score is then never the score the choices were made on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dataset::split::{Split, assign_folds};
use crate::experiment::cv::{CvSummary, Spread};
use crate::runs::RunState;

use super::engine::{TrainJob, TrainOutcome, train};
use crate::experiment::events::TrainEvent;

/// How a cross-validation ended.
#[derive(Debug)]
pub struct CvOutcome {
    /// Present when every fold finished.
    pub summary: Option<CvSummary>,
    pub summary_path: Option<PathBuf>,
    pub outcomes: Vec<TrainOutcome>,
}

/// Trains `folds` runs of `job`. Fold `i` holds out the `i`-th part of a patient-grouped,
/// stratified k-fold partition (seeded by the run's seed) as its test side, scored once; the
/// rest is split again, by patient and stratified, into training and an inner validation
/// part (`val_fraction` of it) on which the run makes its choices. A split given in the
/// manifest is ignored. Stops at the first fold that does not finish.
pub fn cross_validate(
    job: TrainJob,
    folds: usize,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
) -> anyhow::Result<CvOutcome> {
    anyhow::ensure!(job.resume.is_none(), "cross-validation cannot resume a run");
    let fold_of = assign_folds(
        &job.manifest.records,
        &job.manifest.copies,
        folds,
        job.config.seed,
    )?;
    let mut outcomes = Vec::with_capacity(folds);
    for fold in 0..folds {
        sink(&TrainEvent::Fold {
            fold: fold + 1,
            folds,
        });
        let manifest = fold_manifest(&job.manifest, &fold_of, fold, &job.config)?;
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
    let summary = summarise(&outcomes, job.config.seed);
    let path = summary.as_ref().map(|_| {
        job.runs_root
            .join(format!("cv-{}.json", crate::runs::utc_stamp()))
    });
    if let (Some(s), Some(p)) = (&summary, &path) {
        crate::fsio::write_atomic_bytes(p, &serde_json::to_vec_pretty(s)?)?;
    }
    if let Some(s) = &summary {
        sink(&TrainEvent::CrossValidation {
            summary: Box::new(s.clone()),
        });
    }
    Ok(CvOutcome {
        summary,
        summary_path: path,
        outcomes,
    })
}

/// The manifest of one fold: the fold's records on the test side, the others split into
/// training and inner validation by patient, stratified, seeded by the fold.
pub fn fold_manifest(
    manifest: &crate::dataset::Manifest,
    fold_of: &[Option<usize>],
    fold: usize,
    config: &super::TrainConfig,
) -> anyhow::Result<crate::dataset::Manifest> {
    use anyhow::Context as _;
    let mut manifest = manifest.clone();
    let rest: Vec<usize> = (0..manifest.records.len())
        .filter(|&i| fold_of[i].is_some_and(|f| f != fold))
        .collect();
    let records: Vec<crate::dataset::Record> =
        rest.iter().map(|&i| manifest.records[i].clone()).collect();
    let inner = crate::dataset::split::assign_splits(
        &records,
        &manifest.copies,
        &crate::dataset::split::SplitConfig {
            test: 0.0,
            val: config.val_fraction,
            seed: config.seed ^ (fold as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407),
            by_image: false,
        },
    )
    .with_context(|| format!("splitting the training side of fold {}", fold + 1))?;
    for r in &mut manifest.records {
        r.split = None;
    }
    for (i, f) in fold_of.iter().enumerate() {
        if *f == Some(fold) {
            manifest.records[i].split = Some(Split::Test);
        }
    }
    for (&i, side) in rest.iter().zip(inner) {
        manifest.records[i].split = side;
    }
    Ok(manifest)
}

/// The spread of the folds' held-out metrics (`None` if a fold has none).
fn summarise(outcomes: &[TrainOutcome], seed: u64) -> Option<CvSummary> {
    let metrics: Vec<&super::Metrics> = outcomes
        .iter()
        .map(|o| o.test_metrics.as_ref())
        .collect::<Option<_>>()?;
    let selection: Vec<&super::Metrics> = outcomes
        .iter()
        .map(|o| o.metrics.as_ref())
        .collect::<Option<_>>()?;
    let files: Vec<Option<crate::runs::MetricsFile>> = outcomes
        .iter()
        .map(|o| crate::runs::MetricsFile::read(&o.run_dir).ok())
        .collect();
    let chosen = files
        .iter()
        .map(|m| match m {
            Some(m) => match &m.val.chose {
                Some(c) => format!(
                    "C = {} (L2 λ = {:.2e}), class weighting {}, refitted on {}",
                    c.c, c.l2, c.class_weighting, c.refit_on
                ),
                None => format!("best epoch {}", m.best_epoch),
            },
            None => String::new(),
        })
        .collect();
    // A solved probe chooses on inner folds of the whole training side (training + inner
    // validation); other runs on the inner validation part.
    let probe: Option<Vec<u64>> = files
        .iter()
        .map(|m| {
            m.as_ref()
                .and_then(|m| m.val.chose.as_ref())
                .filter(|c| c.chosen_images > 0)
                .map(|c| c.chosen_images)
        })
        .collect();
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
        chosen_on: if probe.is_some() {
            "the pooled held-out predictions of inner folds of each fold's training side \
             (grouped by patient, stratified by label)"
        } else {
            "an inner validation part of each fold's training side (split off by patient, \
             stratified by label)"
        }
        .into(),
        scored_on: "each fold's held-out part, scored once by the model the inner selection \
                    chose"
            .into(),
        selection_images: probe.unwrap_or_else(|| selection.iter().map(|m| m.n).collect()),
        chosen,
        pooled: pooled(outcomes, seed),
    })
}

/// The folds' held-out predictions scored as one set (`None` if a fold has none).
fn pooled(outcomes: &[TrainOutcome], seed: u64) -> Option<super::Metrics> {
    let sides: Vec<&super::engine::ScoredSide> = outcomes
        .iter()
        .map(|o| o.test_predictions.as_ref())
        .collect::<Option<_>>()?;
    let first = sides.first()?;
    let targets: Vec<crate::experiment::metrics::Target> =
        sides.iter().flat_map(|s| s.targets.clone()).collect();
    let patients: Vec<Option<String>> = sides.iter().flat_map(|s| s.patients.clone()).collect();
    let probs: Vec<Vec<f32>> = sides.iter().flat_map(|s| s.probs.clone()).collect();
    Some(crate::experiment::uncertainty::score(
        first.task,
        &first.labels,
        &targets,
        &patients,
        &probs,
        seed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 patients with 1–4 images each, three labels.
    fn cohort() -> crate::dataset::Manifest {
        let mut records = Vec::new();
        for p in 0..30 {
            for i in 0..(1 + p % 4) {
                records.push(crate::dataset::Record {
                    path: format!("p{p}/{i}.png"),
                    labels: vec![["a", "b", "c"][p % 3].into()],
                    patient: Some(format!("P{p}")),
                    ..Default::default()
                });
            }
        }
        crate::dataset::Manifest {
            root: "/nowhere".into(),
            source: "/nowhere".into(),
            format: crate::dataset::DatasetFormat::Csv,
            records,
            problems: Vec::new(),
            copies: Vec::new(),
        }
    }

    /// In every fold the scored part (test side) is exactly the fold, the choices are made on
    /// an inner validation part disjoint from it, and no patient crosses sides.
    #[test]
    fn each_fold_is_scored_on_data_no_selection_saw() {
        let manifest = cohort();
        let config = crate::train::TrainConfig::default();
        let fold_of = assign_folds(&manifest.records, &manifest.copies, 4, config.seed).unwrap();
        let mut scored = vec![0; manifest.records.len()];
        for fold in 0..4 {
            let m = fold_manifest(&manifest, &fold_of, fold, &config).unwrap();
            let side = |s: Split| -> std::collections::BTreeSet<usize> {
                (0..m.records.len())
                    .filter(|&i| m.records[i].split == Some(s))
                    .collect()
            };
            let (train, val, test) = (side(Split::Train), side(Split::Val), side(Split::Test));
            assert!(!train.is_empty() && !val.is_empty() && !test.is_empty());
            assert!(test.is_disjoint(&val) && test.is_disjoint(&train));
            assert!(val.is_disjoint(&train));
            assert_eq!(train.len() + val.len() + test.len(), m.records.len());
            for &i in &test {
                assert_eq!(fold_of[i], Some(fold));
                scored[i] += 1;
            }
            assert!(crate::dataset::split::check_leakage(&m.records).is_empty());
        }
        assert!(scored.iter().all(|&n| n == 1), "{scored:?}");
    }

    #[test]
    fn spread_is_mean_and_sample_sd() {
        let s = Spread::of(vec![0.6, 0.7, 0.8]);
        assert!((s.mean - 0.7).abs() < 1e-12);
        assert!((s.sd - 0.1).abs() < 1e-12);
        assert_eq!(Spread::of(vec![0.5]).sd, 0.0);
    }
}
