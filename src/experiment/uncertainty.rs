//! How sure a score is: bootstrap confidence intervals of the headline metrics, and how well
//! the predicted probabilities are calibrated (reliability bins, expected calibration error).
//!
//! The bootstrap resamples *patients* when every scored image has a patient id (cells of one
//! patient are not independent: resampling them one by one would give intervals that are too
//! narrow), and images otherwise. Percentile intervals over a fixed, seeded number of
//! resamples, so the same predictions always give the same interval.

use serde::{Deserialize, Serialize};

use super::metrics::Metrics;

/// Resamples drawn for an interval.
pub const RESAMPLES: u32 = 1000;

/// One two-sided interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// Bootstrap confidence intervals of the headline metrics of one scored side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Intervals {
    /// Coverage, e.g. 0.95.
    pub level: f64,
    pub resamples: u32,
    /// What was resampled: `patients` or `images`.
    pub unit: String,
    /// How many of them there were.
    pub units: u64,
    pub accuracy: Option<Interval>,
    pub balanced_accuracy: Option<Interval>,
    pub macro_f1: Option<Interval>,
    pub macro_auc: Option<Interval>,
    pub kappa_quadratic: Option<Interval>,
    /// Cohen's kappa (unweighted).
    #[serde(default)]
    pub kappa: Option<Interval>,
}

/// The metrics of scored predictions with their 95% bootstrap intervals (seeded by `seed`)
/// and, for single-label tasks, their calibration in 10 bins.
pub fn score(
    task: super::metrics::Task,
    labels: &[String],
    targets: &[super::metrics::Target],
    patients: &[Option<String>],
    probs: &[Vec<f32>],
    seed: u64,
) -> Metrics {
    use super::metrics::Target;
    let k = labels.len();
    let metrics_of = |idx: &[usize]| {
        if task == super::metrics::Task::MultiLabel {
            let truth: Vec<Vec<bool>> = idx
                .iter()
                .map(|&i| match &targets[i] {
                    Target::Multi(f) => f.clone(),
                    Target::Class(c) => (0..k).map(|j| j == *c).collect(),
                })
                .collect();
            let p: Vec<Vec<f32>> = idx.iter().map(|&i| probs[i].clone()).collect();
            super::metrics::evaluate_multi_label(
                labels,
                &truth,
                &p,
                crate::model::decision::MULTI_LABEL_THRESHOLD,
            )
        } else {
            let truth: Vec<usize> = idx.iter().map(|&i| class_index(&targets[i])).collect();
            let p: Vec<Vec<f32>> = idx.iter().map(|&i| probs[i].clone()).collect();
            super::metrics::evaluate_single(task, labels, &truth, &p)
        }
    };
    let all: Vec<usize> = (0..targets.len().min(probs.len())).collect();
    let mut m = metrics_of(&all);
    m.ci = Some(bootstrap(
        &patients[..all.len().min(patients.len())],
        RESAMPLES,
        0.95,
        seed,
        metrics_of,
    ));
    if task != super::metrics::Task::MultiLabel {
        let truth: Vec<usize> = all.iter().map(|&i| class_index(&targets[i])).collect();
        m.calibration = calibration(&truth, probs, 10);
    }
    m
}

fn class_index(t: &super::metrics::Target) -> usize {
    match t {
        super::metrics::Target::Class(c) => *c,
        super::metrics::Target::Multi(_) => 0,
    }
}

/// `level` percentile bootstrap intervals of `score` over resamples of the items `0..n`.
///
/// `patients[i]` is the patient of item `i`; when every item has one, whole patients are
/// drawn with replacement, else single items. `score` gets the item indices of one resample
/// (with repeats) and returns its metrics. A metric undefined in a resample (an AUC without
/// both classes) is left out of that metric's interval; one undefined in every resample has
/// no interval.
pub fn bootstrap(
    patients: &[Option<String>],
    resamples: u32,
    level: f64,
    seed: u64,
    score: impl Fn(&[usize]) -> Metrics,
) -> Intervals {
    let n = patients.len();
    let by_patient = n > 0 && patients.iter().all(Option::is_some);
    let groups: Vec<Vec<usize>> = if by_patient {
        let mut map: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
        for (i, p) in patients.iter().enumerate() {
            map.entry(p.as_deref().unwrap_or_default())
                .or_default()
                .push(i);
        }
        map.into_values().collect()
    } else {
        (0..n).map(|i| vec![i]).collect()
    };
    let mut rng = crate::dataset::split::SplitMix64::new(seed);
    let mut values: [Vec<f64>; 6] = Default::default();
    let mut idx = Vec::with_capacity(n * 2);
    for _ in 0..if groups.is_empty() { 0 } else { resamples } {
        idx.clear();
        for _ in 0..groups.len() {
            idx.extend_from_slice(&groups[rng.below(groups.len() as u64) as usize]);
        }
        let m = score(&idx);
        let got = [
            Some(m.accuracy),
            Some(m.balanced_accuracy),
            Some(m.macro_f1),
            m.macro_auc,
            m.kappa_quadratic,
            m.kappa,
        ];
        for (v, g) in values.iter_mut().zip(got) {
            if let Some(g) = g.filter(|g| g.is_finite()) {
                v.push(g);
            }
        }
    }
    let [
        accuracy,
        balanced_accuracy,
        macro_f1,
        macro_auc,
        kappa_quadratic,
        kappa,
    ] = values.map(|mut v| percentile_interval(&mut v, level));
    Intervals {
        level,
        resamples,
        unit: if by_patient { "patients" } else { "images" }.into(),
        units: groups.len() as u64,
        accuracy,
        balanced_accuracy,
        macro_f1,
        macro_auc,
        kappa_quadratic,
        kappa,
    }
}

/// The central `level` part of `values` (sorted here); `None` when empty.
fn percentile_interval(values: &mut [f64], level: f64) -> Option<Interval> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        // Linear interpolation between order statistics, as numpy's default percentile.
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    let tail = (1.0 - level) / 2.0;
    Some(Interval {
        low: at(tail),
        high: at(1.0 - tail),
    })
}

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Confidence range `[low, high)` (the last bin includes 1).
    pub low: f64,
    pub high: f64,
    /// Predictions whose confidence falls in the bin.
    pub count: u64,
    /// Mean confidence of those predictions (0 when empty).
    pub confidence: f64,
    /// Fraction of them that were right (0 when empty).
    pub accuracy: f64,
}

/// Calibration of the predicted class: confidence (the top probability) against accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Expected calibration error: `Σ_bins (count / n) · |accuracy − confidence|`.
    pub ece: f64,
    /// Equal-width confidence bins over [0, 1].
    pub bins: Vec<ReliabilityBin>,
}

/// Top-label calibration of single-label predictions in `bins` equal-width bins; `None`
/// without predictions. The predicted class is the argmax (ties: the lowest index).
pub fn calibration(truth: &[usize], probs: &[Vec<f32>], bins: usize) -> Option<Calibration> {
    let n = truth.len().min(probs.len());
    if n == 0 || bins == 0 {
        return None;
    }
    let mut count = vec![0u64; bins];
    let mut conf = vec![0.0; bins];
    let mut right = vec![0.0; bins];
    for (&t, p) in truth.iter().zip(probs).take(n) {
        let (pred, top) = p
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv { (i, v) } else { (bi, bv) }
            });
        let c = f64::from(top).clamp(0.0, 1.0);
        let b = ((c * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        conf[b] += c;
        right[b] += f64::from(u8::from(pred == t));
    }
    let mut ece = 0.0;
    let bins_out = (0..bins)
        .map(|b| {
            let k = count[b] as f64;
            let (confidence, accuracy) = if count[b] == 0 {
                (0.0, 0.0)
            } else {
                (conf[b] / k, right[b] / k)
            };
            ece += k / n as f64 * (accuracy - confidence).abs();
            ReliabilityBin {
                low: b as f64 / bins as f64,
                high: (b + 1) as f64 / bins as f64,
                count: count[b],
                confidence,
                accuracy,
            }
        })
        .collect();
    Some(Calibration {
        ece,
        bins: bins_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::metrics::{Task, evaluate_single};

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    /// `n` predictions of which the share `right` is right, confident ones.
    fn predictions(n: usize, right: f64) -> (Vec<usize>, Vec<Vec<f32>>) {
        let truth: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let probs = truth
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let ok = (i as f64 + 0.5) / n as f64 <= right;
                let hit = if ok { t } else { 1 - t };
                let mut p = vec![0.2_f32; 2];
                p[hit] = 0.8;
                // Scores that still rank some wrong ones above: AUC stays below 1.
                p[1] += (i % 7) as f32 * 0.01;
                p
            })
            .collect();
        (truth, probs)
    }

    fn intervals(truth: &[usize], probs: &[Vec<f32>], patients: &[Option<String>]) -> Intervals {
        bootstrap(patients, RESAMPLES, 0.95, 3, |idx| {
            let t: Vec<usize> = idx.iter().map(|&i| truth[i]).collect();
            let p: Vec<Vec<f32>> = idx.iter().map(|&i| probs[i].clone()).collect();
            evaluate_single(Task::Binary, &labels(), &t, &p)
        })
    }

    #[test]
    fn intervals_hold_the_estimate_and_shrink_with_more_data() {
        let (t, p) = predictions(60, 0.8);
        let point = evaluate_single(Task::Binary, &labels(), &t, &p);
        let small = intervals(&t, &p, &vec![None; 60]);
        assert_eq!(small.unit, "images");
        assert_eq!(small.units, 60);
        for (ci, v) in [
            (small.accuracy, point.accuracy),
            (small.balanced_accuracy, point.balanced_accuracy),
            (small.macro_f1, point.macro_f1),
            (small.macro_auc, point.macro_auc.unwrap()),
        ] {
            let ci = ci.unwrap();
            assert!(ci.contains(v), "{v} outside {ci:?}");
            assert!(ci.width() > 0.0, "{ci:?}");
        }
        // Binary task: no kappa, no interval.
        assert!(small.kappa_quadratic.is_none());
        let (t4, p4) = predictions(960, 0.8);
        let large = intervals(&t4, &p4, &vec![None; 960]);
        let (ws, wl) = (
            small.accuracy.unwrap().width(),
            large.accuracy.unwrap().width(),
        );
        // Sixteen times the data: about a quarter of the width.
        assert!(wl < ws * 0.4 && wl > ws * 0.1, "{ws} → {wl}");
        // Seeded: the same predictions give the same interval.
        assert_eq!(intervals(&t, &p, &vec![None; 60]), small);
    }

    /// When the errors sit with a few patients, resampling patients gives a wider interval
    /// than resampling cells as if they were independent.
    #[test]
    fn patients_are_resampled_whole() {
        let (t, p) = predictions(100, 0.8);
        // Wrong predictions are items 80..100: give them 2 patients, the rest 8.
        let patients: Vec<Option<String>> = (0..100)
            .map(|i| Some(format!("P{}", if i >= 80 { i % 2 } else { 2 + i % 8 })))
            .collect();
        let by_patient = intervals(&t, &p, &patients);
        let by_image = intervals(&t, &p, &vec![None; 100]);
        assert_eq!(by_patient.unit, "patients");
        assert_eq!(by_patient.units, 10);
        assert!(
            by_patient.accuracy.unwrap().width() > 1.5 * by_image.accuracy.unwrap().width(),
            "{by_patient:?} {by_image:?}"
        );
    }

    #[test]
    fn expected_calibration_error_by_hand() {
        // Bin [0.9, 1.0]: confidences 0.95, 0.95, right 1 of 2 → |0.5 − 0.95| = 0.45.
        // Bin [0.6, 0.7): confidence 0.6, right → |1 − 0.6| = 0.4.
        // ECE = 2/3 · 0.45 + 1/3 · 0.4.
        let truth = [0, 1, 1];
        let probs = vec![vec![0.95, 0.05], vec![0.95, 0.05], vec![0.4, 0.6]];
        let c = calibration(&truth, &probs, 10).unwrap();
        assert!(
            (c.ece - (2.0 / 3.0 * 0.45 + 0.4 / 3.0)).abs() < 1e-6,
            "{c:?}"
        );
        assert_eq!(c.bins.len(), 10);
        assert_eq!(c.bins[9].count, 2);
        assert!((c.bins[9].accuracy - 0.5).abs() < 1e-12);
        assert_eq!(c.bins[6].count, 1);
        assert_eq!(c.bins.iter().map(|b| b.count).sum::<u64>(), 3);
        // Right as often as it says: nearly no error.
        let truth: Vec<usize> = (0..1000).map(|i| usize::from(i % 10 >= 7)).collect();
        let probs = vec![vec![0.7_f32, 0.3]; 1000];
        assert!(calibration(&truth, &probs, 10).unwrap().ece < 1e-6);
        assert!(calibration(&[], &[], 10).is_none());
    }
}
