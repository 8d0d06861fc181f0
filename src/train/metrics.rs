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
    pub chose: Option<super::probe::ProbeSelection>,
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
        hamming_loss: None,
        ci: None,
        calibration: None,
        chose: None,
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
    let kappa_quadratic = if task == Task::Ordinal {
        let truth_idx: Vec<usize> = samples.iter().map(|&(t, _)| t).collect();
        Some(quadratic_kappa(&truth_idx, &preds, k)).filter(|v| v.is_finite())
    } else {
        None
    };

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
        hamming_loss: None,
        ci: None,
        calibration: None,
        chose: None,
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
        hamming_loss: Some(wrong_decisions as f64 / (n * k) as f64),
        ci: None,
        calibration: None,
        chose: None,
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
    let weight = |i: usize, j: usize| (i.abs_diff(j) * i.abs_diff(j)) as f64;
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
mod tests {
    use super::*;
    use serde_json::Value;

    const FIXTURE: &str = include_str!("../../tests/fixtures/metrics/sklearn.json");
    const TOL: f64 = 1e-9;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= TOL,
            "{what}: got {actual}, expected {expected} (diff {})",
            (actual - expected).abs()
        );
    }

    fn close_opt(actual: Option<f64>, expected: Option<f64>, what: &str) {
        match (actual, expected) {
            (Some(a), Some(e)) => close(a, e, what),
            (None, None) => {}
            _ => panic!("{what}: got {actual:?}, expected {expected:?}"),
        }
    }

    /// One-hot-ish probability rows that predict `pred[i]`.
    fn probs_predicting(pred: &[usize], k: usize) -> Vec<Vec<f32>> {
        pred.iter()
            .map(|&p| {
                (0..k)
                    .map(|c| if c == p { 0.8 } else { 0.2 / (k - 1) as f32 })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn binary_two_by_two_by_hand() {
        // truth: 1 1 1 0 0 0 0 0 ; pred: 1 1 0 1 0 0 0 0
        // counts[true][pred] = [[4, 1], [1, 2]]
        // class 1: TP 2, FP 1, FN 1 -> P = 2/3, R = 2/3, F1 = 4/6 = 2/3, support 3
        // class 0: TP 4, FP 1, FN 1 -> P = 4/5, R = 4/5, F1 = 8/10 = 0.8, support 5
        // accuracy = 6/8; balanced = (0.8 + 2/3) / 2 = 11/15
        // macro P = (0.8 + 2/3) / 2 = 11/15; weighted P = (5·0.8 + 3·2/3) / 8 = 6/8
        let truth = [1, 1, 1, 0, 0, 0, 0, 0];
        let scores = [0.9f32, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05];
        let probs: Vec<Vec<f32>> = scores.iter().map(|&s| vec![1.0 - s, s]).collect();
        let m = evaluate_single(Task::Binary, &names(&["neg", "pos"]), &truth, &probs);
        assert_eq!(m.n, 8);
        assert_eq!(
            m.confusion.as_ref().unwrap().counts,
            vec![vec![4, 1], vec![1, 2]]
        );
        close(m.accuracy, 0.75, "accuracy");
        close(m.balanced_accuracy, 11.0 / 15.0, "balanced");
        close(m.classes[1].precision, 2.0 / 3.0, "P1");
        close(m.classes[1].recall, 2.0 / 3.0, "R1");
        close(m.classes[1].f1, 2.0 / 3.0, "F1_1");
        close(m.classes[0].f1, 0.8, "F1_0");
        assert_eq!((m.classes[0].support, m.classes[1].support), (5, 3));
        close(m.macro_precision, 11.0 / 15.0, "macro P");
        close(m.weighted_precision, 0.75, "weighted P");
        // AUC of class 1: positives score 0.9, 0.8, 0.3; negatives 0.7, 0.2, 0.1, 0.4, 0.05.
        // pairs won: 0.9 -> 5, 0.8 -> 5, 0.3 -> 3 (0.2, 0.1, 0.05) = 13 of 15.
        close_opt(m.macro_auc, Some(13.0 / 15.0), "auc");
        close_opt(m.classes[0].auc, Some(13.0 / 15.0), "auc class 0");
        assert_eq!(m.kappa_quadratic, None);
        assert_eq!(m.hamming_loss, None);
        let norm = m.confusion.unwrap().row_normalised();
        assert_eq!(norm, vec![vec![0.8, 0.2], vec![1.0 / 3.0, 2.0 / 3.0]]);
    }

    #[test]
    fn tiny_three_class_by_hand() {
        // Same data as the fixture's "tiny" case.
        // truth 0 0 1 1 2 2, pred 0 1 1 1 2 0 -> counts [[1,1,0],[0,2,0],[1,0,1]]
        // a: TP1 FP1 FN1 -> P .5 R .5 F1 .5 ; b: TP2 FP1 FN0 -> P 2/3 R 1 F1 .8
        // c: TP1 FP0 FN1 -> P 1 R .5 F1 2/3
        // macro P = (.5 + 2/3 + 1)/3 = 13/18 ; macro F1 = (.5 + .8 + 2/3)/3 = 59/90
        // AUC a: pos {.7,.3} vs neg {.2,.1,.1,.5}: .7 wins 4, .3 wins 3 -> 7/8
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.3, 0.6, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.1, 0.2, 0.7],
            vec![0.5, 0.1, 0.4],
        ];
        let m = evaluate_single(
            Task::MultiClass,
            &names(&["a", "b", "c"]),
            &[0, 0, 1, 1, 2, 2],
            &probs,
        );
        assert_eq!(
            m.confusion.as_ref().unwrap().counts,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 1]]
        );
        close(m.accuracy, 4.0 / 6.0, "accuracy");
        close(m.macro_precision, 13.0 / 18.0, "macro P");
        close(m.macro_f1, 59.0 / 90.0, "macro F1");
        close_opt(m.classes[0].auc, Some(7.0 / 8.0), "auc a");
        close_opt(
            m.macro_auc,
            Some((7.0 / 8.0 + 1.0 + 1.0) / 3.0),
            "macro auc",
        );
    }

    #[test]
    fn zero_support_class_counts_in_macro_but_not_in_balanced_accuracy() {
        // 3 classes, class 2 never true but predicted once.
        // truth 0 0 1 1, pred 0 2 1 1 -> class 0: P 1 R .5 ; class 1: P 1 R 1 ; class 2: P 0 R 0
        // macro R = (.5 + 1 + 0)/3 = .5 ; balanced = (.5 + 1)/2 = .75
        // weighted R = (2·.5 + 2·1 + 0)/4 = .75
        let probs = probs_predicting(&[0, 2, 1, 1], 3);
        let m = evaluate_single(
            Task::MultiClass,
            &names(&["a", "b", "c"]),
            &[0, 0, 1, 1],
            &probs,
        );
        close(m.macro_recall, 0.5, "macro R");
        close(m.balanced_accuracy, 0.75, "balanced");
        close(m.weighted_recall, 0.75, "weighted R");
        assert_eq!(m.classes[2].auc, None);
        assert_eq!(m.classes[2].support, 0);
        close(m.classes[2].precision, 0.0, "P of zero-support class");
    }

    #[test]
    fn never_predicted_class_has_zero_precision_and_f1() {
        // truth 0 1 1, pred 0 0 0 -> class 1: TP 0, never predicted -> P 0 (zero_division), F1 0.
        let probs = probs_predicting(&[0, 0, 0], 2);
        let m = evaluate_single(Task::Binary, &names(&["n", "p"]), &[0, 1, 1], &probs);
        assert_eq!(m.classes[1].precision, 0.0);
        assert_eq!(m.classes[1].f1, 0.0);
        // class 0: P 1/3, R 1, F1 = 2·1/(1+3) = 0.5
        close(m.classes[0].f1, 0.5, "F1 class 0");
    }

    #[test]
    fn auc_extremes() {
        let pos = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &pos), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &pos), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 4], &pos), Some(0.5));
        // one tie between a positive and a negative: 3 wins + 0.5 of 4 pairs
        assert_eq!(roc_auc(&[0.1, 0.5, 0.5, 0.9], &pos), Some(0.875));
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[], &[]), None);
    }

    #[test]
    fn nan_scores_rank_lowest_and_never_panic() {
        let pos = [false, true, true];
        // NaN negative is below both positives -> AUC 1.
        assert_eq!(roc_auc(&[f32::NAN, 0.1, 0.2], &pos), Some(1.0));
        // NaN positive is below the negative, other positive above it -> 1/2.
        assert_eq!(roc_auc(&[0.5, f32::NAN, 0.9], &pos), Some(0.5));
        // All NaN -> all tied.
        assert_eq!(roc_auc(&[f32::NAN; 3], &pos), Some(0.5));
        // argmax skips NaN.
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.3], 3), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN], 2), 0);
        let m = evaluate_single(
            Task::MultiClass,
            &names(&["a", "b", "c"]),
            &[0, 1, 2],
            &[
                vec![f32::NAN, 0.2, 0.1],
                vec![0.1, f32::NAN, 0.9],
                vec![0.3],
            ],
        );
        // preds: 1, 2, 0 (short row: missing entries are NaN)
        assert_eq!(
            m.confusion.as_ref().unwrap().counts,
            vec![vec![0, 1, 0], vec![0, 0, 1], vec![1, 0, 0]]
        );
        assert_eq!(m.accuracy, 0.0);
        let back: Metrics = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn argmax_ties_go_to_lowest_index() {
        assert_eq!(argmax(&[0.4, 0.4, 0.2], 3), 0);
        assert_eq!(argmax(&[0.2, 0.4, 0.4], 3), 1);
        assert_eq!(
            argmax(&[0.1, 0.2, 0.9], 2),
            1,
            "entries past n_classes are ignored"
        );
    }

    #[test]
    fn roc_curve_by_hand() {
        // scores .9(+) .5(+) .5(-) .1(-): thresholds .9, .5, .1
        // -> (0,0), (0,.5), (.5,1), (1,1)
        let pts = roc_curve(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]);
        assert_eq!(pts, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
        assert!(roc_curve(&[0.1, 0.2], &[false, false]).is_empty());
    }

    #[test]
    fn kappa_by_hand() {
        // Identical ratings with several classes -> 1.
        assert_eq!(quadratic_kappa(&[0, 1, 2, 3], &[0, 1, 2, 3], 4), 1.0);
        // truth 0 1, pred 1 0, K = 2: O = [[0,1],[1,0]], marginals (1,1) -> E = .5 everywhere.
        // Σ w·O = 2, Σ w·E = 1 -> kappa = 1 - 2 = -1.
        assert_eq!(quadratic_kappa(&[0, 1], &[1, 0], 2), -1.0);
        // truth 0 0 2 2, pred 0 1 2 2, K = 3: Σ w·O = 1 (0->1).
        // truth marginal (2,0,2), pred marginal (1,1,2), n 4:
        // Σ w·E = [2·1·1 (0->1) + 2·2·4 (0->2) + 2·1·4 (2->0) + 2·1·1 (2->1)] / 4 = 28/4 = 7
        // kappa = 1 - 1/7 = 6/7
        close(
            quadratic_kappa(&[0, 0, 2, 2], &[0, 1, 2, 2], 3),
            6.0 / 7.0,
            "kappa",
        );
        // Undefined like sklearn: empty, or one class only.
        assert!(quadratic_kappa(&[], &[], 5).is_nan());
        assert!(quadratic_kappa(&[2, 2], &[2, 2], 5).is_nan());
        // Out-of-range pairs are ignored.
        assert_eq!(quadratic_kappa(&[0, 1, 9], &[0, 1, 0], 2), 1.0);
    }

    #[test]
    fn ordinal_reports_kappa_and_none_when_undefined() {
        let probs = probs_predicting(&[0, 1, 2, 2], 3);
        let m = evaluate_single(
            Task::Ordinal,
            &names(&["0", "1", "2"]),
            &[0, 1, 2, 1],
            &probs,
        );
        let expected = quadratic_kappa(&[0, 1, 2, 1], &[0, 1, 2, 2], 3);
        assert_eq!(m.kappa_quadratic, Some(expected));
        let single = evaluate_single(
            Task::Ordinal,
            &names(&["0", "1"]),
            &[1, 1],
            &probs_predicting(&[1, 1], 2),
        );
        assert_eq!(single.kappa_quadratic, None);
    }

    #[test]
    fn multi_label_by_hand() {
        // 2 labels, threshold .5 (>=):
        // truth [1,0] [1,1] [0,0] ; probs [.9,.5] [.4,.7] [.1,.2] -> pred [1,1] [0,1] [0,0]
        // exact matches: sample 3 only -> subset accuracy 1/3
        // wrong decisions: (1,b) (2,a) -> hamming 2/6
        // label a: TP1 FP0 FN1 TN1 -> P 1 R .5 F1 2/3; balanced (.5 + 1)/2 = .75
        // label b: TP1 FP1 FN0 TN1 -> P .5 R 1 F1 2/3; balanced (1 + .5)/2 = .75
        let truth = vec![vec![true, false], vec![true, true], vec![false, false]];
        let probs = vec![vec![0.9, 0.5], vec![0.4, 0.7], vec![0.1, 0.2]];
        let m = evaluate_multi_label(&names(&["a", "b"]), &truth, &probs, 0.5);
        assert_eq!(m.task, Task::MultiLabel);
        close(m.accuracy, 1.0 / 3.0, "subset accuracy");
        close_opt(m.hamming_loss, Some(2.0 / 6.0), "hamming");
        close(m.classes[0].recall, 0.5, "R a");
        close(m.classes[1].precision, 0.5, "P b");
        close(m.macro_f1, 2.0 / 3.0, "macro F1");
        close(m.balanced_accuracy, 0.75, "balanced");
        // AUC a: pos {.9,.4} vs neg {.1} -> 1 ; AUC b: pos {.7} vs neg {.5,.2} -> 1
        close_opt(m.macro_auc, Some(1.0), "macro auc");
        assert!(m.confusion.is_none());
    }

    #[test]
    fn empty_inputs_give_zero_metrics() {
        let labels = names(&["a", "b"]);
        let m = evaluate_single(Task::Ordinal, &labels, &[], &[]);
        assert_eq!(
            (m.n, m.accuracy, m.macro_auc, m.kappa_quadratic),
            (0, 0.0, None, None)
        );
        assert_eq!(m.classes.len(), 2);
        assert_eq!(
            m.confusion.as_ref().unwrap().row_normalised(),
            vec![vec![0.0; 2]; 2]
        );
        let m = evaluate_multi_label(&labels, &[], &[], 0.5);
        assert_eq!(
            (m.n, m.hamming_loss, m.confusion.is_none()),
            (0, None, true)
        );
        let m = evaluate_single(Task::MultiClass, &[], &[0, 1], &[vec![0.5], vec![0.5]]);
        assert_eq!(m.n, 0);
        assert_eq!(
            aggregate_by_patient(&[], &[], &[]),
            (vec![], vec![], vec![])
        );
    }

    #[test]
    fn aggregate_by_patient_by_hand() {
        // p2: cells truth 1, 0 (tie -> 0), probs mean ([.2,.8] + [.6,.4]) / 2 = [.4,.6]
        // p1: cells truth 1, 1, 0 -> 1, probs mean of [1,0],[0,1],[.5,.5] = [.5,.5]
        let patients = ["p2", "p1", "p1", "p2", "p1"];
        let truth = [1, 1, 1, 0, 0];
        let probs = vec![
            vec![0.2, 0.8],
            vec![1.0, 0.0],
            vec![0.0, 1.0],
            vec![0.6, 0.4],
            vec![0.5, 0.5],
        ];
        let (ids, t, p) = aggregate_by_patient(&patients, &truth, &probs);
        assert_eq!(ids, vec!["p1".to_string(), "p2".to_string()]);
        assert_eq!(t, vec![1, 0]);
        assert_eq!(p, vec![vec![0.5, 0.5], vec![0.4, 0.6]]);
    }

    #[test]
    fn metrics_json_round_trip() {
        let probs = probs_predicting(&[0, 1, 1], 2);
        let m = evaluate_single(Task::Binary, &names(&["n", "p"]), &[0, 1, 0], &probs);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"task\":\"binary\""));
        assert_eq!(serde_json::from_str::<Metrics>(&json).unwrap(), m);
        assert_eq!(
            serde_json::to_string(&Task::MultiLabel).unwrap(),
            "\"multi-label\""
        );
    }

    // ---- scikit-learn fixture ----

    fn f(v: &Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    fn opt_f(v: &Value) -> Option<f64> {
        if v.is_null() { None } else { Some(f(v)) }
    }

    fn f32_rows(v: &Value) -> Vec<Vec<f32>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| f(x) as f32).collect())
            .collect()
    }

    fn check_against(m: &Metrics, exp: &Value, case: &str) {
        let at = |key: &str| format!("{case}: {key}");
        let e = |key: &str| {
            exp.get(key)
                .unwrap_or_else(|| panic!("fixture lacks {}", at(key)))
        };
        close(m.accuracy, f(e("accuracy")), &at("accuracy"));
        close(
            m.balanced_accuracy,
            f(e("balanced_accuracy")),
            &at("balanced_accuracy"),
        );
        for (key, value) in [
            ("macro_precision", m.macro_precision),
            ("macro_recall", m.macro_recall),
            ("macro_f1", m.macro_f1),
            ("weighted_precision", m.weighted_precision),
            ("weighted_recall", m.weighted_recall),
            ("weighted_f1", m.weighted_f1),
        ] {
            close(value, f(e(key)), &at(key));
        }
        let k = m.classes.len();
        for key in ["precision", "recall", "f1", "support", "auc"] {
            assert_eq!(e(key).as_array().unwrap().len(), k, "{}", at(key));
        }
        for (c, cm) in m.classes.iter().enumerate() {
            close(
                cm.precision,
                f(&e("precision")[c]),
                &at(&format!("precision[{c}]")),
            );
            close(cm.recall, f(&e("recall")[c]), &at(&format!("recall[{c}]")));
            close(cm.f1, f(&e("f1")[c]), &at(&format!("f1[{c}]")));
            assert_eq!(
                Some(cm.support),
                e("support")[c].as_u64(),
                "{}",
                at(&format!("support[{c}]"))
            );
            close_opt(cm.auc, opt_f(&e("auc")[c]), &at(&format!("auc[{c}]")));
        }
        close_opt(m.macro_auc, opt_f(e("macro_auc")), &at("macro_auc"));
        close_opt(
            m.kappa_quadratic,
            opt_f(e("kappa_quadratic")),
            &at("kappa_quadratic"),
        );
        close_opt(
            m.hamming_loss,
            opt_f(e("hamming_loss")),
            &at("hamming_loss"),
        );
        let expected_confusion: Option<Vec<Vec<u64>>> =
            serde_json::from_value(e("confusion").clone()).unwrap();
        assert_eq!(
            m.confusion.as_ref().map(|c| c.counts.clone()),
            expected_confusion,
            "{}",
            at("confusion")
        );
    }

    #[test]
    fn matches_sklearn_fixture() {
        let doc: Value = serde_json::from_str(FIXTURE).unwrap();
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 6, "fixture has {} cases", cases.len());
        let mut roc_checked = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let task: Task = serde_json::from_value(case["task"].clone()).unwrap();
            let labels: Vec<String> = serde_json::from_value(case["labels"].clone()).unwrap();
            let probs = f32_rows(&case["probs"]);
            let exp = &case["expected"];
            let m = if task == Task::MultiLabel {
                let truth: Vec<Vec<bool>> = serde_json::from_value(case["truth"].clone()).unwrap();
                let threshold = f(&case["threshold"]) as f32;
                evaluate_multi_label(&labels, &truth, &probs, threshold)
            } else {
                let truth: Vec<usize> = serde_json::from_value(case["truth"].clone()).unwrap();
                if let Some(points) = exp.get("roc_curve") {
                    let scores: Vec<f32> = probs.iter().map(|p| p[1]).collect();
                    let positives: Vec<bool> = truth.iter().map(|&t| t == 1).collect();
                    let ours = roc_curve(&scores, &positives);
                    let theirs = points.as_array().unwrap();
                    assert_eq!(ours.len(), theirs.len(), "{name}: roc_curve length");
                    for (i, (&(fpr, tpr), pt)) in ours.iter().zip(theirs).enumerate() {
                        close(fpr, f(&pt[0]), &format!("{name}: fpr[{i}]"));
                        close(tpr, f(&pt[1]), &format!("{name}: tpr[{i}]"));
                    }
                    roc_checked += 1;
                }
                evaluate_single(task, &labels, &truth, &probs)
            };
            assert_eq!(m.task, task, "{name}");
            assert_eq!(m.n as usize, probs.len(), "{name}");
            check_against(&m, exp, name);
        }
        assert_eq!(roc_checked, 1);

        let kappas = doc["kappa_cases"].as_array().unwrap();
        assert!(!kappas.is_empty());
        for (i, kc) in kappas.iter().enumerate() {
            let truth: Vec<usize> = serde_json::from_value(kc["truth"].clone()).unwrap();
            let pred: Vec<usize> = serde_json::from_value(kc["pred"].clone()).unwrap();
            let k = kc["n_classes"].as_u64().unwrap() as usize;
            close(
                quadratic_kappa(&truth, &pred, k),
                f(&kc["kappa_quadratic"]),
                &format!("kappa_cases[{i}]"),
            );
        }
    }
}
