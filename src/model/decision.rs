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

/// The `k` largest entries with their indices, largest first, by the rule of [`argmax`]: ties
/// go to the lower index and NaN is never ranked (so the first is `argmax` of a row with a
/// number in it).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut order: Vec<(usize, f32)> = row
        .iter()
        .copied()
        .enumerate()
        .filter(|p| !p.1.is_nan())
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    order.truncate(k);
    order
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

/// Probabilities at temperature `t`: `softmax(ln p / t)`, which is `softmax(z / t)` for the
/// logits `z` the probabilities came from. `t > 1` softens overconfident probabilities; the
/// most probable class never changes.
pub fn with_temperature(probs: &[f32], t: f32) -> Vec<f32> {
    let logits: Vec<f32> = probs.iter().map(|p| p.max(1e-12).ln() / t).collect();
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|z| (z - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The temperature (between 0.05 and 20) that minimises the mean negative log-likelihood of
/// the true classes `truth` under [`with_temperature`]: temperature scaling (Guo et al.,
/// 2017), fitted by golden-section search on `ln t` (the likelihood is unimodal in it).
pub fn fit_temperature(probs: &[Vec<f32>], truth: &[usize]) -> f32 {
    let nll = |log_t: f64| -> f64 {
        let t = log_t.exp() as f32;
        probs
            .iter()
            .zip(truth)
            .map(|(p, &y)| -f64::from(with_temperature(p, t)[y].max(1e-12)).ln())
            .sum::<f64>()
            / probs.len().max(1) as f64
    };
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (nll(c), nll(d));
    for _ in 0..60 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = nll(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = nll(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
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

    /// The inverse of [`Self::apply`]: standardised rows back to the features' own scale.
    pub fn restore(&self, features: &mut [f32]) {
        let w = self.mean.len();
        if w == 0 || self.std.len() != w {
            return;
        }
        for row in features.chunks_exact_mut(w) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = *v * s + m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranking follows `argmax`: largest first, ties to the lower index, NaN never ranked.
    #[test]
    fn top_k_ranks_as_argmax_decides() {
        assert_eq!(
            top_k(&[0.1, 0.6, f32::NAN, 0.3], 3),
            vec![(1, 0.6), (3, 0.3), (0, 0.1)]
        );
        assert_eq!(top_k(&[0.5, 0.5], 1), vec![(0, 0.5)]);
        let row = [f32::NAN, 0.2, 0.7, 0.7];
        assert_eq!(top_k(&row, 1)[0].0, argmax(&row));
    }

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

    /// Probabilities made overconfident by a temperature of 1/3 are calibrated back: the fit
    /// finds 3; at temperature 1 nothing changes, and the most probable class never does.
    #[test]
    fn temperature_scaling_undoes_overconfidence() {
        let mut state = 0x2545_f491_u32;
        let mut unit = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as f32 / u32::MAX as f32
        };
        let (mut probs, mut truth) = (Vec::new(), Vec::new());
        for _ in 0..4000 {
            let z: Vec<f32> = (0..4).map(|_| 2.0 * unit()).collect();
            let calibrated = with_temperature(&z.iter().map(|v| v.exp()).collect::<Vec<_>>(), 1.0);
            // The truth drawn from the calibrated distribution.
            let (mut r, mut y) = (unit(), 0);
            while y < 3 && r > calibrated[y] {
                r -= calibrated[y];
                y += 1;
            }
            probs.push(with_temperature(&calibrated, 1.0 / 3.0));
            truth.push(y);
        }
        let t = fit_temperature(&probs, &truth);
        assert!((t - 3.0).abs() < 0.3, "fitted temperature {t}");
        let p = [0.7, 0.2, 0.1];
        let same = with_temperature(&p, 1.0);
        assert!(same.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-6));
        let soft = with_temperature(&p, 2.5);
        assert_eq!(argmax(&soft), 0);
        assert!(soft[0] < 0.7 && (soft.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
