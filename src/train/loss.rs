//! The loss of each task: class weights, the training loss of logits, and the same loss of
//! the probabilities a side reports.

use burn::tensor::activation;
use burn::tensor::{Int, Tensor, TensorData};

use super::batches::class_of;
use super::data::Prepared;
use super::ordinal;
use crate::experiment::config::Imbalance;
use crate::experiment::metrics::{Target, Task};
use crate::model::decision;

/// Loss weights per class (single-label) or positive weights per label (multi-label).
pub(super) fn loss_weights(data: &Prepared, imbalance: Imbalance) -> Vec<f32> {
    let counts = data.train_class_counts();
    let k = counts.len();
    let n = data.train.len() as f32;
    if imbalance != Imbalance::ClassWeights {
        return vec![1.0; k];
    }
    counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else if data.task == Task::MultiLabel {
                ((n - c as f32) / c as f32).clamp(1.0, 50.0)
            } else {
                n / (k as f32 * c as f32)
            }
        })
        .collect()
}

/// `log(1 + e^x)`, stable for large `|x|`.
pub(super) fn softplus(x: Tensor<2>) -> Tensor<2> {
    x.clone().clamp_min(0.0) + (x.abs().neg().exp() + 1.0).log()
}

/// Loss of a batch and the probabilities (detached, for metrics).
pub(super) fn loss_and_probs(
    task: Task,
    logits: Tensor<2>,
    data: &Prepared,
    items: &[usize],
    weights: &[f32],
) -> (Tensor<1>, Vec<Vec<f32>>) {
    let device = logits.device();
    let [b, k] = logits.dims();
    if task == Task::Ordinal {
        // `k` cumulative logits for `k + 1` grades; binary cross-entropy per threshold,
        // each sample weighted by its grade's class weight.
        let grades: Vec<usize> = items.iter().map(|&i| class_of(data, i)).collect();
        let t: Vec<f32> = grades
            .iter()
            .flat_map(|&g| ordinal::targets(g, k + 1))
            .collect();
        let w: Vec<f32> = grades.iter().map(|&g| weights[g]).collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [b, k]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
        let bce =
            t.clone() * softplus(logits.clone().neg()) + (t.neg() + 1.0) * softplus(logits.clone());
        let per_sample: Tensor<1> = bce.mean_dim(1).reshape([b]);
        let loss = (per_sample * w.clone()).sum() / w.sum();
        let probs = decision::probabilities(task, true, logits.detach());
        return (loss, probs);
    }
    if task == Task::MultiLabel {
        let t: Vec<f32> = items
            .iter()
            .flat_map(|&i| match &data.items[i].target {
                Target::Multi(f) => f
                    .iter()
                    .map(|&v| f32::from(u8::from(v)))
                    .collect::<Vec<_>>(),
                Target::Class(c) => (0..k).map(|j| f32::from(u8::from(j == *c))).collect(),
            })
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(t, [b, k]), &device);
        let pw =
            Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [k]), &device).reshape([1, k]);
        // Weighted BCE with logits: pw·t·softplus(−x) + (1−t)·softplus(x).
        let pos = t.clone() * pw * softplus(logits.clone().neg());
        let neg = (t.neg() + 1.0) * softplus(logits.clone());
        let loss = (pos + neg).mean();
        (loss, decision::probabilities(task, false, logits.detach()))
    } else {
        let y: Vec<i64> = items
            .iter()
            .map(|&i| match &data.items[i].target {
                Target::Class(c) => *c as i64,
                Target::Multi(_) => 0,
            })
            .collect();
        let w: Vec<f32> = y.iter().map(|&c| weights[c as usize]).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(y, [b]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(w, [b]), &device);
        let lp = activation::log_softmax(logits.clone(), 1);
        let picked: Tensor<1> = lp.gather(1, y.reshape([b, 1])).reshape([b]);
        let loss = (picked * w.clone()).sum().neg() / w.sum();
        (loss, decision::probabilities(task, false, logits.detach()))
    }
}

/// The mean loss of `probs` for `items`, as [`loss_and_probs`] computes it from logits (the
/// reported loss of a side is that of the probabilities it reports): class-weighted
/// cross-entropy; for multi-label, binary cross-entropy per label with the positive weights;
/// for an ordinal task, binary cross-entropy per threshold `P(grade > j)` (sums of the grade
/// probabilities), each image weighted by its grade's weight. Probabilities are floored at
/// 1e-12.
pub(super) fn side_loss(
    data: &Prepared,
    items: &[usize],
    probs: &[Vec<f32>],
    weights: &[f32],
) -> f64 {
    let ln = |p: f64| p.max(1e-12).ln();
    let (mut sum, mut total) = (0.0f64, 0.0f64);
    for (&i, p) in items.iter().zip(probs) {
        match data.task {
            Task::MultiLabel => {
                let truth: Vec<bool> = match &data.items[i].target {
                    Target::Multi(f) => f.clone(),
                    Target::Class(c) => (0..p.len()).map(|j| j == *c).collect(),
                };
                for ((&q, t), w) in p.iter().zip(truth).zip(weights) {
                    let q = f64::from(q);
                    sum -= if t {
                        f64::from(*w) * ln(q)
                    } else {
                        ln(1.0 - q)
                    };
                    total += 1.0;
                }
            }
            Task::Ordinal => {
                let grade = class_of(data, i);
                let w = f64::from(weights.get(grade).copied().unwrap_or(1.0));
                let thresholds = p.len().saturating_sub(1).max(1);
                let mut above: f64 = p.iter().map(|&q| f64::from(q)).sum();
                let mut per_image = 0.0;
                for (j, &q) in p.iter().take(p.len().saturating_sub(1)).enumerate() {
                    above -= f64::from(q);
                    per_image -= if grade > j {
                        ln(above)
                    } else {
                        ln(1.0 - above)
                    };
                }
                sum += w * per_image / thresholds as f64;
                total += w;
            }
            Task::Binary | Task::MultiClass => {
                let c = class_of(data, i);
                let w = f64::from(weights.get(c).copied().unwrap_or(1.0));
                sum -= w * ln(f64::from(p[c]));
                total += w;
            }
        }
    }
    if total > 0.0 { sum / total } else { f64::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use std::path::PathBuf;

    /// The loss a side reports from its probabilities is the training loss of its logits, for
    /// every task (class weights and positive weights included).
    #[test]
    fn side_loss_of_probabilities_is_the_loss_of_the_logits() {
        let device = Device::flex();
        let item = |target: Target| crate::train::data::Item {
            path: PathBuf::from("x"),
            name: "x".into(),
            patient: None,
            target,
        };
        let cases: Vec<(Task, usize, Vec<Target>)> = vec![
            (
                Task::Binary,
                2,
                vec![Target::Class(0), Target::Class(1), Target::Class(1)],
            ),
            (
                Task::MultiClass,
                3,
                vec![Target::Class(2), Target::Class(0), Target::Class(1)],
            ),
            (
                Task::MultiLabel,
                3,
                vec![
                    Target::Multi(vec![true, false, true]),
                    Target::Multi(vec![false, false, false]),
                    Target::Multi(vec![false, true, false]),
                ],
            ),
            // Four grades: three cumulative logits.
            (
                Task::Ordinal,
                3,
                vec![Target::Class(0), Target::Class(3), Target::Class(2)],
            ),
        ];
        for (task, outputs, targets) in cases {
            let labels = if task == Task::Ordinal { 4 } else { outputs };
            let data = Prepared {
                task,
                labels: (0..labels).map(|c| format!("c{c}")).collect(),
                items: targets.into_iter().map(item).collect(),
                train: Vec::new(),
                val: vec![0, 1, 2],
                test: Vec::new(),
                split_given: true,
            };
            let weights: Vec<f32> = (0..labels).map(|c| 0.5 + c as f32 * 0.75).collect();
            let raw: Vec<f32> = (0..3 * outputs)
                .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.6)
                .collect();
            let mut logits = raw.clone();
            if task == Task::Ordinal {
                // Rank-consistent: the cumulative logits fall with the threshold.
                for row in logits.chunks_mut(outputs) {
                    row.sort_by(|a, b| b.total_cmp(a));
                }
            }
            let logits = Tensor::<2>::from_data(TensorData::new(logits, [3, outputs]), &device);
            let (loss, probs) = loss_and_probs(task, logits, &data, &data.val, &weights);
            let from_logits = f64::from(loss.into_scalar::<f32>());
            let from_probs = side_loss(&data, &data.val, &probs, &weights);
            assert!(
                (from_logits - from_probs).abs() < 1e-4 * from_logits.abs().max(1.0),
                "{task:?}: {from_logits} from logits, {from_probs} from probabilities"
            );
        }
    }
}
