//! Evaluation metrics for the four task kinds (binary, multi-class, multi-label, ordinal),
//! computed from plain data (probability vectors and class indices, no tensors).
//!
//! Every definition follows scikit-learn, and `tests/fixtures/metrics/sklearn.json`
//! (written by `tools/metrics_fixtures.py`) checks the results against it:
//!
//! * per-class precision / recall / F1 / support =
//!   `precision_recall_fscore_support(y, p, labels=range(K), zero_division=0)`: a class that is
//!   never predicted has precision 0, a class with no support has recall 0, and
//!   F1 = 2·TP / (2·TP + FP + FN), 0 when that denominator is 0;
//! * macro averages run over *all* `K` classes, including those with zero support; weighted
//!   averages are weighted by support (and fall back to the plain mean when the total
//!   support is 0, as sklearn does);
//! * balanced accuracy = `balanced_accuracy_score`: mean recall over the classes present in
//!   the ground truth;
//! * ROC AUC = `roc_auc_score` (ties get average ranks); the quadratic kappa =
//!   `cohen_kappa_score(weights="quadratic", labels=range(K))`.
//!
//! Deliberate differences from sklearn, which raises or returns NaN in these cases:
//! * `macro_auc` is the mean of the per-class one-vs-rest AUCs that are *defined*; classes
//!   absent from the ground truth (or present in every sample) are skipped, where
//!   `roc_auc_score(multi_class="ovr")` raises an error;
//! * a NaN probability is the lowest possible score (below `-inf`); NaNs tie with each other;
//! * an undefined value (no samples, a one-class kappa) is `None` in [`Metrics`], never NaN, so
//!   a [`Metrics`] always survives a JSON round trip; nothing here panics.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The target of one image.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Class index (binary, multi-class, ordinal).
    Class(usize),
    /// One flag per label (multi-label).
    Multi(Vec<bool>),
}

pub use crate::model::task::Task;

/// Metrics of one class (single-label tasks) or one label (multi-label task).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// Class / label name.
    pub label: String,
    /// TP / (TP + FP); 0 when the class is never predicted.
    pub precision: f64,
    /// TP / (TP + FN), i.e. sensitivity; 0 when the class has no support.
    pub recall: f64,
    /// Harmonic mean of precision and recall, 2·TP / (2·TP + FP + FN); 0 when undefined.
    pub f1: f64,
    /// Number of samples whose ground truth contains this class.
    pub support: u64,
    /// One-vs-rest ROC AUC of this class's probability; `None` when the ground truth has
    /// only one side (the class is absent, or present in every sample).
    pub auc: Option<f64>,
}

/// Confusion matrix of a single-label task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    /// Class names, in index order (rows and columns).
    pub labels: Vec<String>,
    /// `counts[true][pred]`: number of samples of true class `true` predicted as `pred`.
    pub counts: Vec<Vec<u64>>,
}

impl ConfusionMatrix {
    /// Each row divided by its total, so `row_normalised()[t][p]` is the fraction of class
    /// `t` samples predicted as `p` (each row of a class with support sums to 1); rows of
    /// classes without samples are all zeros.
    pub fn row_normalised(&self) -> Vec<Vec<f64>> {
        self.counts
            .iter()
            .map(|row| {
                let total: u64 = row.iter().sum();
                row.iter()
                    .map(|&c| {
                        if total == 0 {
                            0.0
                        } else {
                            c as f64 / total as f64
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// All metrics of one evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Task the metrics were computed for.
    pub task: Task,
    /// Number of evaluated samples.
    pub n: u64,
    /// Mean loss; not computed here, filled in by the caller.
    pub loss: Option<f64>,
    /// Fraction of correctly classified samples; multi-label: subset accuracy (fraction of
    /// samples whose predicted label set equals the true one exactly).
    pub accuracy: f64,
    /// Single-label tasks: mean recall over the classes present in the ground truth
    /// (sklearn `balanced_accuracy_score`). Multi-label: mean over labels of each label's
    /// binary balanced accuracy.
    pub balanced_accuracy: f64,
    /// Unweighted mean of the per-class precisions over all classes.
    pub macro_precision: f64,
    /// Unweighted mean of the per-class recalls over all classes.
    pub macro_recall: f64,
    /// Unweighted mean of the per-class F1 scores over all classes.
    pub macro_f1: f64,
    /// Support-weighted mean of the per-class precisions.
    pub weighted_precision: f64,
    /// Support-weighted mean of the per-class recalls.
    pub weighted_recall: f64,
    /// Support-weighted mean of the per-class F1 scores.
    pub weighted_f1: f64,
    /// Binary task: AUC of the positive class (index 1). Otherwise the mean of the per-class
    /// one-vs-rest AUCs that are defined (`None` if none is).
    pub macro_auc: Option<f64>,
    /// Quadratic weighted Cohen's kappa between true and predicted grade: ordinal task only,
    /// `None` for the other tasks and when undefined (no samples, or a single grade in both).
    pub kappa_quadratic: Option<f64>,
    /// Cohen's kappa (unweighted) between true and predicted class: single-label tasks,
    /// `None` for multi-label and when undefined (no samples, or a single class in both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kappa: Option<f64>,
    /// Multi-label task only: fraction of wrong (sample, label) decisions.
    pub hamming_loss: Option<f64>,
    /// Per-class (per-label) metrics, in label order.
    pub classes: Vec<ClassMetrics>,
    /// Confusion matrix; single-label tasks only.
    pub confusion: Option<ConfusionMatrix>,
    /// Bootstrap 95% confidence intervals of the headline metrics, where computed (the
    /// final validation and test sides of a run, pooled cross-validation predictions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci: Option<super::uncertainty::Intervals>,
    /// Reliability bins and expected calibration error of the predicted class, where
    /// computed (single-label tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<super::uncertainty::Calibration>,
    /// The settings this side chose (the validation side of a probe solved to convergence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chose: Option<super::selection::ProbeSelection>,
    /// Temperature scaling applied to these probabilities (`--calibrate`), with the
    /// calibration error before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<TemperatureScaling>,
}

/// A temperature fitted on the validation side and the expected calibration error of the
/// side it was applied to, before and after.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TemperatureScaling {
    pub temperature: f32,
    pub fitted_on: String,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// Total order on scores: NaN is below everything (including `-inf`), NaNs are equal to each
/// other, `-0.0 == 0.0`.
fn cmp_score(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Index of the largest of the first `n_classes` entries by the one decision rule
/// ([`crate::model::decision::argmax`]): ties, including all-NaN rows, go to the lowest index.
fn argmax(row: &[f32], n_classes: usize) -> usize {
    crate::model::decision::argmax(&row[..n_classes.min(row.len())])
}

/// Value of a probability vector at `k`, NaN when the vector is too short.
fn prob_at(row: &[f32], k: usize) -> f32 {
    row.get(k).copied().unwrap_or(f32::NAN)
}

/// Confusion counts of one class: enough for precision, recall and F1.
#[derive(Clone, Copy, Default)]
struct ClassCounts {
    true_pos: u64,
    /// Number of samples predicted as this class (TP + FP).
    predicted: u64,
    /// Number of samples truly of this class (TP + FN), the support.
    actual: u64,
}

impl ClassCounts {
    /// (precision, recall, F1) with sklearn's `zero_division=0`.
    fn precision_recall_f1(&self) -> (f64, f64, f64) {
        let ratio = |num: u64, den: u64| {
            if den == 0 {
                0.0
            } else {
                num as f64 / den as f64
            }
        };
        (
            ratio(self.true_pos, self.predicted),
            ratio(self.true_pos, self.actual),
            ratio(2 * self.true_pos, self.actual + self.predicted),
        )
    }
}

/// Per-class metrics plus their macro and support-weighted averages.
struct Averages {
    classes: Vec<ClassMetrics>,
    macro_prf: [f64; 3],
    weighted_prf: [f64; 3],
}

/// Builds [`ClassMetrics`] from counts and AUCs and averages them like sklearn
/// (macro over all classes; weighted by support, plain mean if the total support is 0).
fn average_classes(labels: &[String], counts: &[ClassCounts], aucs: Vec<Option<f64>>) -> Averages {
    let classes: Vec<ClassMetrics> = labels
        .iter()
        .zip(counts)
        .zip(aucs)
        .map(|((label, c), auc)| {
            let (precision, recall, f1) = c.precision_recall_f1();
            ClassMetrics {
                label: label.clone(),
                precision,
                recall,
                f1,
                support: c.actual,
                auc,
            }
        })
        .collect();
    let k = classes.len();
    let pick = |m: &ClassMetrics, i: usize| [m.precision, m.recall, m.f1][i];
    let total_support: u64 = classes.iter().map(|m| m.support).sum();
    let mut macro_prf = [0.0; 3];
    let mut weighted_prf = [0.0; 3];
    if k > 0 {
        for i in 0..3 {
            macro_prf[i] = classes.iter().map(|m| pick(m, i)).sum::<f64>() / k as f64;
            weighted_prf[i] = if total_support == 0 {
                macro_prf[i]
            } else {
                classes
                    .iter()
                    .map(|m| pick(m, i) * m.support as f64)
                    .sum::<f64>()
                    / total_support as f64
            };
        }
    }
    Averages {
        classes,
        macro_prf,
        weighted_prf,
    }
}

/// Mean of the defined values, `None` if there is none.
fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, count) = values
        .into_iter()
        .flatten()
        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

/// A [`Metrics`] with no samples: `n = 0`, all scores 0 and all optional scores `None`.
fn empty_metrics(task: Task, labels: &[String]) -> Metrics {
    let single_label = task != Task::MultiLabel;
    Metrics {
        task,
        n: 0,
        loss: None,
        accuracy: 0.0,
        balanced_accuracy: 0.0,
        macro_precision: 0.0,
        macro_recall: 0.0,
        macro_f1: 0.0,
        weighted_precision: 0.0,
        weighted_recall: 0.0,
        weighted_f1: 0.0,
        macro_auc: None,
        kappa_quadratic: None,
        kappa: None,
        hamming_loss: None,
        ci: None,
        calibration: None,
        chose: None,
        temperature: None,
        classes: labels
            .iter()
            .map(|label| ClassMetrics {
                label: label.clone(),
                precision: 0.0,
                recall: 0.0,
                f1: 0.0,
                support: 0,
                auc: None,
            })
            .collect(),
        confusion: single_label.then(|| ConfusionMatrix {
            labels: labels.to_vec(),
            counts: vec![vec![0; labels.len()]; labels.len()],
        }),
    }
}

/// Evaluates a single-label task (binary, multi-class or ordinal).
///
/// `probs[i]` is the probability vector of sample `i` (length `labels.len()`; missing entries
/// count as NaN, extra ones are ignored) and `truth[i]` its true class index. The prediction is
/// the argmax (ties → lowest index, NaN → lowest score). Samples whose true index is out of
/// range are skipped, as are unpaired trailing samples when the slices differ in length.
/// For [`Task::Binary`] with two classes, class index 1 is the positive class and `macro_auc`
/// is its AUC. [`Task::MultiLabel`] is not a single-label task: it is evaluated and recorded
/// as [`Task::MultiClass`]. Without samples (or classes) the result has `n = 0`.
pub fn evaluate_single(
    task: Task,
    labels: &[String],
    truth: &[usize],
    probs: &[Vec<f32>],
) -> Metrics {
    let task = if task == Task::MultiLabel {
        Task::MultiClass
    } else {
        task
    };
    let k = labels.len();
    let samples: Vec<(usize, &[f32])> = truth
        .iter()
        .zip(probs)
        .filter(|(t, _)| **t < k)
        .map(|(&t, p)| (t, p.as_slice()))
        .collect();
    if samples.is_empty() {
        return empty_metrics(task, labels);
    }
    let n = samples.len();
    let preds: Vec<usize> = samples.iter().map(|(_, p)| argmax(p, k)).collect();

    let mut confusion = vec![vec![0u64; k]; k];
    for (&(t, _), &p) in samples.iter().zip(&preds) {
        confusion[t][p] += 1;
    }
    let counts: Vec<ClassCounts> = (0..k)
        .map(|c| ClassCounts {
            true_pos: confusion[c][c],
            predicted: confusion.iter().map(|row| row[c]).sum(),
            actual: confusion[c].iter().sum(),
        })
        .collect();
    let correct: u64 = (0..k).map(|c| confusion[c][c]).sum();

    let aucs: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let scores: Vec<f32> = samples.iter().map(|(_, p)| prob_at(p, c)).collect();
            let positives: Vec<bool> = samples.iter().map(|&(t, _)| t == c).collect();
            roc_auc(&scores, &positives)
        })
        .collect();
    let macro_auc = if task == Task::Binary && k == 2 {
        aucs[1]
    } else {
        mean_defined(aucs.iter().copied())
    };

    let averages = average_classes(labels, &counts, aucs);
    let balanced_accuracy = mean_defined(
        averages
            .classes
            .iter()
            .map(|m| (m.support > 0).then_some(m.recall)),
    )
    .unwrap_or(0.0);
    let truth_idx: Vec<usize> = samples.iter().map(|&(t, _)| t).collect();
    let kappa_quadratic = if task == Task::Ordinal {
        Some(quadratic_kappa(&truth_idx, &preds, k)).filter(|v| v.is_finite())
    } else {
        None
    };
    let kappa = Some(cohen_kappa(&truth_idx, &preds, k)).filter(|v| v.is_finite());

    Metrics {
        task,
        n: n as u64,
        loss: None,
        accuracy: correct as f64 / n as f64,
        balanced_accuracy,
        macro_precision: averages.macro_prf[0],
        macro_recall: averages.macro_prf[1],
        macro_f1: averages.macro_prf[2],
        weighted_precision: averages.weighted_prf[0],
        weighted_recall: averages.weighted_prf[1],
        weighted_f1: averages.weighted_prf[2],
        macro_auc,
        kappa_quadratic,
        kappa,
        hamming_loss: None,
        ci: None,
        calibration: None,
        chose: None,
        temperature: None,
        classes: averages.classes,
        confusion: Some(ConfusionMatrix {
            labels: labels.to_vec(),
            counts: confusion,
        }),
    }
}

/// Evaluates a multi-label task.
///
/// `truth[i][k]` tells whether sample `i` has label `k`, `probs[i][k]` is its sigmoid
/// probability, and label `k` is predicted when `probs[i][k] >= threshold` (usually 0.5; NaN is
/// never predicted). Missing truth entries count as `false`, missing probabilities as NaN;
/// unpaired trailing samples are skipped. Per-label metrics treat each label as a binary
/// problem; `accuracy` is the subset accuracy and `balanced_accuracy` the mean over labels of
/// each label's binary balanced accuracy (mean of sensitivity and specificity, or just the one
/// that is defined). Without samples the result has `n = 0`.
pub fn evaluate_multi_label(
    labels: &[String],
    truth: &[Vec<bool>],
    probs: &[Vec<f32>],
    threshold: f32,
) -> Metrics {
    let k = labels.len();
    let n = truth.len().min(probs.len());
    if n == 0 || k == 0 {
        return empty_metrics(Task::MultiLabel, labels);
    }
    let truth_at = |i: usize, c: usize| truth[i].get(c).copied().unwrap_or(false);
    let pred_at = |i: usize, c: usize| prob_at(&probs[i], c) >= threshold;

    let mut counts = vec![ClassCounts::default(); k];
    let mut true_neg = vec![0u64; k];
    let mut exact_matches = 0u64;
    let mut wrong_decisions = 0u64;
    for i in 0..n {
        let mut all_right = true;
        for c in 0..k {
            let (t, p) = (truth_at(i, c), pred_at(i, c));
            let cc = &mut counts[c];
            cc.true_pos += u64::from(t && p);
            cc.predicted += u64::from(p);
            cc.actual += u64::from(t);
            true_neg[c] += u64::from(!t && !p);
            if t != p {
                all_right = false;
                wrong_decisions += 1;
            }
        }
        exact_matches += u64::from(all_right);
    }

    let aucs: Vec<Option<f64>> = (0..k)
        .map(|c| {
            let scores: Vec<f32> = (0..n).map(|i| prob_at(&probs[i], c)).collect();
            let positives: Vec<bool> = (0..n).map(|i| truth_at(i, c)).collect();
            roc_auc(&scores, &positives)
        })
        .collect();
    let macro_auc = mean_defined(aucs.iter().copied());

    // Per label, sklearn balanced_accuracy_score on the binary column: mean recall over the
    // sides (positive, negative) present in the ground truth.
    let per_label_balanced = (0..k).map(|c| {
        let cc = counts[c];
        let negatives = n as u64 - cc.actual;
        let sensitivity = (cc.actual > 0).then(|| cc.true_pos as f64 / cc.actual as f64);
        let specificity = (negatives > 0).then(|| true_neg[c] as f64 / negatives as f64);
        mean_defined([sensitivity, specificity])
    });
    let balanced_accuracy = mean_defined(per_label_balanced).unwrap_or(0.0);

    let averages = average_classes(labels, &counts, aucs);
    Metrics {
        task: Task::MultiLabel,
        n: n as u64,
        loss: None,
        accuracy: exact_matches as f64 / n as f64,
        balanced_accuracy,
        macro_precision: averages.macro_prf[0],
        macro_recall: averages.macro_prf[1],
        macro_f1: averages.macro_prf[2],
        weighted_precision: averages.weighted_prf[0],
        weighted_recall: averages.weighted_prf[1],
        weighted_f1: averages.weighted_prf[2],
        macro_auc,
        kappa_quadratic: None,
        kappa: None,
        hamming_loss: Some(wrong_decisions as f64 / (n * k) as f64),
        ci: None,
        calibration: None,
        chose: None,
        temperature: None,
        classes: averages.classes,
        confusion: None,
    }
}

/// Groups sample indices by score, highest score first (NaN last); each group holds the
/// indices of one distinct score.
fn groups_by_descending_score(scores: &[f32], n: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| cmp_score(scores[b], scores[a]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        match groups.last_mut() {
            Some(g) if cmp_score(scores[g[0]], scores[i]) == Ordering::Equal => g.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

/// Area under the ROC curve of `scores` for the binary ground truth `positives`: the
/// probability that a random positive scores higher than a random negative, ties counting
/// one half (Mann–Whitney U with average ranks; identical to sklearn `roc_auc_score`).
///
/// NaN scores are the lowest; unpaired trailing entries are ignored. `None` when only one of
/// the two classes is present.
pub fn roc_auc(scores: &[f32], positives: &[bool]) -> Option<f64> {
    let n = scores.len().min(positives.len());
    let n_pos = positives[..n].iter().filter(|&&p| p).count() as u128;
    let n_neg = n as u128 - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    // 2·U = Σ over tie groups, lowest score first, of
    //       2·(negatives below the group)·(positives in it) + (positives in it)·(negatives in it),
    // an exact integer, so the AUC is a single correctly rounded division.
    let mut twice_u: u128 = 0;
    let mut negatives_below: u128 = 0;
    for group in groups_by_descending_score(scores, n).iter().rev() {
        let pos = group.iter().filter(|&&i| positives[i]).count() as u128;
        let neg = group.len() as u128 - pos;
        twice_u += 2 * negatives_below * pos + pos * neg;
        negatives_below += neg;
    }
    Some(twice_u as f64 / (2 * n_pos * n_neg) as f64)
}

/// ROC curve of `scores` for the binary ground truth `positives`: one `(false positive rate,
/// true positive rate)` point per distinct score, thresholds descending, preceded by `(0, 0)`
/// and ending at `(1, 1)` — sklearn `roc_curve(drop_intermediate=False)`.
///
/// NaN scores are the lowest; unpaired trailing entries are ignored. Empty when only one of
/// the two classes is present (one of the rates is then undefined).
pub fn roc_curve(scores: &[f32], positives: &[bool]) -> Vec<(f64, f64)> {
    let n = scores.len().min(positives.len());
    let n_pos = positives[..n].iter().filter(|&&p| p).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Vec::new();
    }
    let mut points = vec![(0.0, 0.0)];
    let (mut true_pos, mut false_pos) = (0usize, 0usize);
    for group in groups_by_descending_score(scores, n) {
        let pos = group.iter().filter(|&&i| positives[i]).count();
        true_pos += pos;
        false_pos += group.len() - pos;
        points.push((
            false_pos as f64 / n_neg as f64,
            true_pos as f64 / n_pos as f64,
        ));
    }
    points
}

/// Quadratic weighted Cohen's kappa between two integer ratings over `n_classes` ordered
/// classes: 1 − Σ w·O / Σ w·E with weights w = (i − j)², O the observed rating matrix and E
/// the matrix expected from its marginals (sklearn
/// `cohen_kappa_score(truth, pred, labels=range(n_classes), weights="quadratic")`).
///
/// 1 is perfect agreement, 0 chance-level. Pairs with a rating `>= n_classes` are ignored
/// (as sklearn does with `labels=`); unpaired trailing entries too. Like sklearn, returns NaN
/// when the kappa is undefined: no pairs, or both ratings always the same single class.
pub fn quadratic_kappa(truth: &[usize], pred: &[usize], n_classes: usize) -> f64 {
    weighted_kappa(truth, pred, n_classes, |i, j| {
        (i.abs_diff(j) * i.abs_diff(j)) as f64
    })
}

/// Cohen's kappa between two integer ratings over `n_classes` classes: 1 − Σ w·O / Σ w·E with
/// weights w = 1 off the diagonal (sklearn
/// `cohen_kappa_score(truth, pred, labels=range(n_classes))`): agreement beyond chance, for
/// classes without an order. NaN when undefined, as [`quadratic_kappa`].
pub fn cohen_kappa(truth: &[usize], pred: &[usize], n_classes: usize) -> f64 {
    weighted_kappa(truth, pred, n_classes, |i, j| f64::from(u8::from(i != j)))
}

fn weighted_kappa(
    truth: &[usize],
    pred: &[usize],
    n_classes: usize,
    weight: impl Fn(usize, usize) -> f64,
) -> f64 {
    let k = n_classes;
    let mut observed = vec![vec![0u64; k]; k];
    let mut n = 0u64;
    for (&t, &p) in truth.iter().zip(pred) {
        if t < k && p < k {
            observed[t][p] += 1;
            n += 1;
        }
    }
    if n == 0 {
        return f64::NAN;
    }
    let truth_marginal: Vec<u64> = observed.iter().map(|row| row.iter().sum()).collect();
    let pred_marginal: Vec<u64> = (0..k)
        .map(|j| observed.iter().map(|row| row[j]).sum())
        .collect();
    let mut weighted_observed = 0.0;
    let mut weighted_expected = 0.0;
    for i in 0..k {
        for j in 0..k {
            weighted_observed += weight(i, j) * observed[i][j] as f64;
            let expected = (truth_marginal[i] * pred_marginal[j]) as f64 / n as f64;
            weighted_expected += weight(i, j) * expected;
        }
    }
    if weighted_expected == 0.0 {
        return f64::NAN;
    }
    1.0 - weighted_observed / weighted_expected
}

/// Patient-level aggregation of cell-level predictions.
///
/// Groups the samples by patient id; each patient's probability vector is the element-wise
/// mean of its cells' vectors (over the longest vector's length; NaN entries propagate and
/// then rank lowest), and its true class is the majority true class of its cells (ties →
/// lowest index). Returns `(patient ids sorted ascending, truth, mean probabilities)`, ready
/// for [`evaluate_single`]. Unpaired trailing entries are ignored.
pub fn aggregate_by_patient(
    patients: &[&str],
    truth: &[usize],
    probs: &[Vec<f32>],
) -> (Vec<String>, Vec<usize>, Vec<Vec<f32>>) {
    /// Running sums of one patient.
    #[derive(Default)]
    struct Acc {
        class_counts: BTreeMap<usize, u64>,
        prob_sums: Vec<f64>,
        prob_counts: Vec<u64>,
    }
    let mut by_patient: BTreeMap<&str, Acc> = BTreeMap::new();
    for ((&patient, &t), p) in patients.iter().zip(truth).zip(probs) {
        let acc = by_patient.entry(patient).or_default();
        *acc.class_counts.entry(t).or_default() += 1;
        if acc.prob_sums.len() < p.len() {
            acc.prob_sums.resize(p.len(), 0.0);
            acc.prob_counts.resize(p.len(), 0);
        }
        for (k, &v) in p.iter().enumerate() {
            acc.prob_sums[k] += f64::from(v);
            acc.prob_counts[k] += 1;
        }
    }
    let mut ids = Vec::with_capacity(by_patient.len());
    let mut majority = Vec::with_capacity(by_patient.len());
    let mut means = Vec::with_capacity(by_patient.len());
    for (patient, acc) in by_patient {
        // BTreeMap iterates in ascending class order and `>` keeps the first maximum.
        let mut best = (0usize, 0u64);
        for (&class, &count) in &acc.class_counts {
            if count > best.1 {
                best = (class, count);
            }
        }
        ids.push(patient.to_string());
        majority.push(best.0);
        means.push(
            acc.prob_sums
                .iter()
                .zip(&acc.prob_counts)
                .map(|(&s, &c)| (s / c as f64) as f32)
                .collect(),
        );
    }
    (ids, majority, means)
}

#[cfg(test)]
mod tests;
