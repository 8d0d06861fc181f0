//! The decision rules, written once: logits to probabilities, probabilities to a label.
//! Training's predictions, `predict`, `serve`, `evaluate`, the metrics and the GUI all use
//! these, so they can never disagree about the same probabilities.

use burn::tensor::{Tensor, activation};

use crate::model::task::Task;

/// A label of a multi-label model is predicted when its probability is at least this.
pub const MULTI_LABEL_THRESHOLD: f32 = 0.5;

/// Index of the largest entry. Ties go to the lowest index; NaN never wins over a number,
/// and an all-NaN (or empty) row gives 0.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (k, &v) in row.iter().enumerate().skip(1) {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = k;
        }
    }
    best
}

/// Whether label `k` is on in a multi-label probability row (NaN is off).
pub fn label_on(p: f32) -> bool {
    p >= MULTI_LABEL_THRESHOLD
}

/// The predicted label(s) of one probability row: the most probable label, or for a
/// multi-label task every label at or above [`MULTI_LABEL_THRESHOLD`] joined with `|`
/// (empty when none is).
pub fn predicted_label(task: Task, labels: &[String], probs: &[f32]) -> String {
    if task == Task::MultiLabel {
        probs
            .iter()
            .zip(labels)
            .filter(|(p, _)| label_on(**p))
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("|")
    } else {
        labels.get(argmax(probs)).cloned().unwrap_or_default()
    }
}

/// Probabilities from logits `[n, outputs]`: softmax over classes; a sigmoid per label for a
/// multi-label task; for a cumulative ordinal head, `P(grade > j)` turned into one probability
/// per grade (see [`crate::model::ordinal::class_probs`]).
pub fn probabilities(task: Task, cumulative: bool, logits: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, k] = logits.dims();
    let p = if task == Task::MultiLabel || cumulative {
        activation::sigmoid(logits)
    } else {
        activation::softmax(logits, 1)
    };
    let v: Vec<f32> = p
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    v.chunks(k.max(1))
        .map(|row| {
            if cumulative {
                crate::model::ordinal::class_probs(row)
            } else {
                row.to_vec()
            }
        })
        .collect()
}

/// Per-feature standardisation of a probe: `(x - mean) / std`, fitted on the training side.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Standardiser {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardiser {
    /// Mean and standard deviation (floored at 1e-3) of each feature over `rows`.
    pub fn fit<'a>(rows: impl Iterator<Item = &'a [f32]> + Clone, width: usize) -> Self {
        let n = rows.clone().count().max(1) as f64;
        let mut mean = vec![0.0f64; width];
        for r in rows.clone() {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += f64::from(*v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; width];
        for r in rows {
            for ((s, v), m) in var.iter_mut().zip(r).zip(&mean) {
                *s += (f64::from(*v) - m).powi(2);
            }
        }
        Self {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            std: var
                .iter()
                .map(|s| ((s / n).sqrt().max(1e-3)) as f32)
                .collect(),
        }
    }

    /// Standardises rows of `self.mean.len()` features in place; does nothing when the
    /// standardiser is empty (fine-tuned heads see raw features).
    pub fn apply(&self, features: &mut [f32]) {
        let w = self.mean.len();
        if w == 0 || self.std.len() != w {
            return;
        }
        for row in features.chunks_exact_mut(w) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_go_to_the_lowest_index_and_nan_never_wins() {
        assert_eq!(argmax(&[0.2, 0.4, 0.4]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.1, 0.05]), 1);
        assert_eq!(argmax(&[0.3, f32::NAN, 0.2]), 0);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax(&[0.1, f32::INFINITY, 0.2]), 1);
    }

    #[test]
    fn multi_label_uses_the_one_threshold() {
        let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(
            predicted_label(Task::MultiLabel, &labels, &[0.5, 0.49, f32::NAN]),
            "a"
        );
        assert_eq!(
            predicted_label(Task::MultiLabel, &labels, &[0.9, 0.7, 0.0]),
            "a|b"
        );
        assert_eq!(
            predicted_label(Task::MultiClass, &labels, &[0.2, 0.5, 0.3]),
            "b"
        );
    }

    #[test]
    fn standardiser_round_trip() {
        let rows = [vec![1.0f32, 10.0], vec![3.0, 10.0]];
        let s = Standardiser::fit(rows.iter().map(Vec::as_slice), 2);
        assert_eq!(s.mean, [2.0, 10.0]);
        assert_eq!(s.std, [1.0, 1e-3]);
        let mut x = vec![3.0, 10.0];
        s.apply(&mut x);
        assert_eq!(x, [1.0, 0.0]);
        let mut y = vec![5.0];
        Standardiser::default().apply(&mut y);
        assert_eq!(y, [5.0]);
    }
}
