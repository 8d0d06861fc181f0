//! Does the model see the patient instead of the disease? The batch-effect check compares how
//! well a dataset's backbone features tell *patients* apart with how well they tell *labels*
//! apart. When each patient's stain, scanner or session leaves a mark that is easier to read
//! than the disease, a model trained on an image-level split scores well by recognising
//! patients it has already seen, and fails on new ones.
//!
//! Two cross-validated linear probes (L2 logistic regression, scikit-learn's default `C = 1`)
//! on the standardised features, reduced to their [`DIMS`] strongest directions:
//! - the **label probe** predicts the label of patients it never saw (folds by patient);
//! - the **patient probe** predicts which patient an image comes from *within each label*
//!   (folds over each patient's images), so that telling the labels apart does not count.
//!
//! Each is scored as accuracy against chance (the largest class's share) and as skill,
//! `(accuracy − chance) / (1 − chance)`: 0 is chance, 1 is perfect. Silhouettes (Euclidean, in
//! the same reduced space) say how tightly images gather by patient and by label.

use std::collections::BTreeMap;

use crate::dataset::split::SplitMix64;
use crate::train::logreg::{Design, Targets, Tolerance};

/// Directions the features are reduced to before probing.
pub const DIMS: usize = 32;
/// At most this many images enter the check (a seeded sample of larger datasets).
pub const MAX_IMAGES: usize = 3000;
/// Folds of each probe's cross-validation.
const FOLDS: usize = 5;

/// A cross-validated probe's score.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeScore {
    pub accuracy: f64,
    /// The largest class's share: what always guessing it scores.
    pub chance: f64,
    /// `(accuracy − chance) / (1 − chance)`.
    pub skill: f64,
    /// Images scored.
    pub images: usize,
    /// Classes to tell apart (labels, or patients summed over labels).
    pub classes: usize,
}

/// What the check found.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchEffect {
    /// Images checked (a sample of at most [`MAX_IMAGES`]) and in the dataset.
    pub images: usize,
    pub dataset_images: usize,
    pub patients: usize,
    pub labels: usize,
    pub label_probe: ProbeScore,
    pub patient_probe: ProbeScore,
    pub silhouette_label: f64,
    pub silhouette_patient: f64,
    /// Patient identity is much easier to read than the label.
    pub patient_dominates: bool,
    /// The finding in plain words, with the numbers and what to do.
    pub summary: String,
}

/// Runs the check on one feature row per image with its label and patient id. Needs at least
/// two patients and two labels; multi-label images should be given one label each (their
/// rarest), or left out.
pub fn check(
    rows: &[Vec<f32>],
    labels: &[String],
    patients: &[String],
    seed: u64,
) -> Result<BatchEffect, String> {
    assert!(rows.len() == labels.len() && rows.len() == patients.len());
    let mut rng = SplitMix64::new(seed);
    let mut chosen: Vec<usize> = (0..rows.len()).collect();
    if chosen.len() > MAX_IMAGES {
        rng.shuffle(&mut chosen);
        chosen.truncate(MAX_IMAGES);
        chosen.sort_unstable();
    }
    let label_ids = ids(chosen.iter().map(|&i| labels[i].as_str()));
    let patient_ids = ids(chosen.iter().map(|&i| patients[i].as_str()));
    let (n_labels, n_patients) = (count(&label_ids), count(&patient_ids));
    if n_labels < 2 {
        return Err("the check needs at least two labels".into());
    }
    if n_patients < 2 {
        return Err("the check needs patient ids (at least two patients)".into());
    }
    let x = reduce(
        &chosen.iter().map(|&i| &rows[i][..]).collect::<Vec<_>>(),
        seed,
    );
    let label_probe = label_probe(&x, &label_ids, &patient_ids, seed);
    let patient_probe = patient_probe(&x, &label_ids, &patient_ids, seed)?;
    let sample: Vec<usize> = (0..x.len()).collect();
    let silhouette_label = silhouette(&x, &label_ids, &sample);
    let silhouette_patient = silhouette(&x, &patient_ids, &sample);
    let patient_dominates =
        patient_probe.skill >= 0.5 && patient_probe.skill > label_probe.skill + 0.15;
    let numbers = format!(
        "a probe tells the patients apart within each label with accuracy {:.2} (chance {:.2}, skill {:.2}); \
         a probe tells the labels of unseen patients apart with accuracy {:.2} (chance {:.2}, skill {:.2}); \
         silhouette by patient {:.2}, by label {:.2}",
        patient_probe.accuracy,
        patient_probe.chance,
        patient_probe.skill,
        label_probe.accuracy,
        label_probe.chance,
        label_probe.skill,
        silhouette_patient,
        silhouette_label
    );
    let summary = if patient_dominates {
        format!(
            "The features identify the patient much more easily than the label: {numbers}. \
             A model can learn each patient's stain, scanner or session instead of the disease, \
             and an image-level split would then look far better than it is. Split by patient \
             (never by image), keep test patients unseen, and train with stain/colour augmentation."
        )
    } else if patient_probe.skill >= 0.3 {
        format!(
            "Patient identity is readable in the features, though not more than the label: \
             {numbers}. Keep the split by patient."
        )
    } else {
        format!("The features carry little patient identity: {numbers}.")
    };
    Ok(BatchEffect {
        images: chosen.len(),
        dataset_images: rows.len(),
        patients: n_patients,
        labels: n_labels,
        label_probe,
        patient_probe,
        silhouette_label,
        silhouette_patient,
        patient_dominates,
        summary,
    })
}

/// Dense ids in order of first sorted name.
fn ids<'a>(names: impl Iterator<Item = &'a str>) -> Vec<usize> {
    let names: Vec<&str> = names.collect();
    let index: BTreeMap<&str, usize> = {
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        sorted
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, i))
            .collect()
    };
    names.iter().map(|s| index[s]).collect()
}

fn count(ids: &[usize]) -> usize {
    ids.iter().max().map_or(0, |m| m + 1)
}

/// Standardises the rows and projects them on [`DIMS`] strong directions, found by a few
/// rounds of randomised subspace iteration (Halko, Martinsson and Tropp 2011): for a probe
/// and a silhouette a good basis of the high-variance directions is what matters, not exact
/// principal components.
fn reduce(rows: &[&[f32]], seed: u64) -> Vec<Vec<f64>> {
    let n = rows.len();
    let d = rows.first().map_or(0, |r| r.len());
    let mut mean = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for r in rows {
        for j in 0..d {
            let v = f64::from(r[j]);
            mean[j] += v;
            sq[j] += v * v;
        }
    }
    let nf = n.max(1) as f64;
    let std: Vec<f64> = (0..d)
        .map(|j| {
            mean[j] /= nf;
            (sq[j] / nf - mean[j] * mean[j]).max(0.0).sqrt()
        })
        .collect();
    let z: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            (0..d)
                .map(|j| {
                    if std[j] > 1e-8 {
                        (f64::from(r[j]) - mean[j]) / std[j]
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let k = DIMS.min(d).min(n.saturating_sub(1)).max(1);
    let mut rng = SplitMix64::new(seed ^ 0x5EED);
    // Q: d × k, random start, then Q ← orth(Zᵀ Z Q) a few times.
    let mut q: Vec<Vec<f64>> = (0..k)
        .map(|_| (0..d).map(|_| rng.unit() - 0.5).collect())
        .collect();
    orthonormalise_all(&mut q);
    for _ in 0..4 {
        let zq: Vec<Vec<f64>> = z
            .iter()
            .map(|row| q.iter().map(|c| dot(row, c)).collect())
            .collect();
        let mut next = vec![vec![0.0; d]; k];
        for (row, p) in z.iter().zip(&zq) {
            for (c, &w) in next.iter_mut().zip(p) {
                c.iter_mut().zip(row).for_each(|(o, a)| *o += w * a);
            }
        }
        q = next;
        orthonormalise_all(&mut q);
    }
    z.iter()
        .map(|row| q.iter().map(|c| dot(row, c)).collect())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Gram–Schmidt in place; a vector with nothing left becomes zero.
fn orthonormalise_all(q: &mut [Vec<f64>]) {
    for i in 0..q.len() {
        let (done, rest) = q.split_at_mut(i);
        let v = &mut rest[0];
        for u in done.iter() {
            let p = dot(v, u);
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= p * b);
        }
        let norm = dot(v, v).sqrt();
        if norm > 1e-12 {
            v.iter_mut().for_each(|a| *a /= norm);
        } else {
            v.iter_mut().for_each(|a| *a = 0.0);
        }
    }
}

/// Fits an L2 logistic regression (`C = 1`) on the `train` rows and returns the predicted
/// class of each `test` row.
fn fit_predict(
    x: &[Vec<f64>],
    y: &[usize],
    k: usize,
    train: &[usize],
    test: &[usize],
) -> Vec<usize> {
    let d = x[0].len();
    let flat: Vec<f64> = train.iter().flat_map(|&i| x[i].iter().copied()).collect();
    let classes: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let design = Design::new(flat, train.len(), d);
    let fit = design.fit(
        Targets::Softmax {
            classes: &classes,
            k,
        },
        &vec![1.0; train.len()],
        1.0 / train.len() as f64,
        None,
        Tolerance {
            grad_max: 1e-5,
            max_iterations: 300,
        },
    );
    test.iter()
        .map(|&i| {
            let logits = fit.logits(&x[i]);
            (0..k)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
                .unwrap_or(0)
        })
        .collect()
}

fn score(correct: usize, total: usize, majority: usize, classes: usize) -> ProbeScore {
    let accuracy = correct as f64 / total.max(1) as f64;
    let chance = majority as f64 / total.max(1) as f64;
    ProbeScore {
        accuracy,
        chance,
        skill: if chance < 1.0 {
            (accuracy - chance) / (1.0 - chance)
        } else {
            0.0
        },
        images: total,
        classes,
    }
}

/// The label of images from patients the probe never saw: folds of whole patients.
fn label_probe(x: &[Vec<f64>], labels: &[usize], patients: &[usize], seed: u64) -> ProbeScore {
    let n_patients = count(patients);
    let folds = FOLDS.min(n_patients);
    let mut order: Vec<usize> = (0..n_patients).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut fold_of_patient = vec![0; n_patients];
    for (pos, &p) in order.iter().enumerate() {
        fold_of_patient[p] = pos % folds;
    }
    let k = count(labels);
    let mut correct = 0;
    for f in 0..folds {
        let (test, train): (Vec<usize>, Vec<usize>) =
            (0..x.len()).partition(|&i| fold_of_patient[patients[i]] == f);
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let pred = fit_predict(x, labels, k, &train, &test);
        correct += test
            .iter()
            .zip(pred)
            .filter(|(i, p)| labels[**i] == *p)
            .count();
    }
    let mut per = vec![0; k];
    labels.iter().for_each(|&l| per[l] += 1);
    score(correct, x.len(), per.into_iter().max().unwrap_or(0), k)
}

/// Which patient an image comes from, within each label: each patient's images are dealt over
/// the folds, so every patient with two or more images is seen in training and scored.
fn patient_probe(
    x: &[Vec<f64>],
    labels: &[usize],
    patients: &[usize],
    seed: u64,
) -> Result<ProbeScore, String> {
    let mut rng = SplitMix64::new(seed ^ 0xFACE);
    let (mut correct, mut total, mut majority, mut classes) = (0, 0, 0, 0);
    for label in 0..count(labels) {
        let mut by_patient: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in (0..x.len()).filter(|&i| labels[i] == label) {
            by_patient.entry(patients[i]).or_default().push(i);
        }
        by_patient.retain(|_, v| v.len() >= 2);
        if by_patient.len() < 2 {
            continue;
        }
        let local: BTreeMap<usize, usize> = by_patient
            .keys()
            .enumerate()
            .map(|(j, &p)| (p, j))
            .collect();
        let y: Vec<usize> = patients
            .iter()
            .map(|p| local.get(p).copied().unwrap_or(0))
            .collect();
        let mut fold = vec![usize::MAX; x.len()];
        for members in by_patient.values_mut() {
            rng.shuffle(members);
            for (j, &i) in members.iter().enumerate() {
                fold[i] = j % FOLDS;
            }
        }
        for f in 0..FOLDS {
            let test: Vec<usize> = (0..x.len()).filter(|&i| fold[i] == f).collect();
            let train: Vec<usize> = (0..x.len())
                .filter(|&i| fold[i] != f && fold[i] != usize::MAX)
                .collect();
            if test.is_empty() || train.is_empty() {
                continue;
            }
            let pred = fit_predict(x, &y, local.len(), &train, &test);
            correct += test.iter().zip(pred).filter(|(i, p)| y[**i] == *p).count();
            total += test.len();
        }
        majority += by_patient.values().map(Vec::len).max().unwrap_or(0);
        classes += local.len();
    }
    if total == 0 {
        return Err(
            "no label has two patients with two images each: patient identity cannot be probed"
                .into(),
        );
    }
    // A verdict on a handful of images would be noise presented as a finding.
    const ENOUGH: usize = 20;
    if total < ENOUGH {
        return Err(format!(
            "only {total} images come from patients with two or more images in one label: too few to judge (at least {ENOUGH})"
        ));
    }
    Ok(score(correct, total, majority, classes))
}

/// Mean silhouette of the points `sample` under the grouping `groups` (Euclidean). A point
/// alone in its group scores 0, as in scikit-learn.
fn silhouette(x: &[Vec<f64>], groups: &[usize], sample: &[usize]) -> f64 {
    let k = count(groups);
    if k < 2 || sample.len() < 2 {
        return 0.0;
    }
    let dist = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt()
    };
    let mut size = vec![0usize; k];
    sample.iter().for_each(|&i| size[groups[i]] += 1);
    let mut total = 0.0;
    for &i in sample {
        let mut sums = vec![0.0; k];
        for &j in sample {
            if i != j {
                sums[groups[j]] += dist(&x[i], &x[j]);
            }
        }
        let own = groups[i];
        if size[own] < 2 {
            continue;
        }
        let a = sums[own] / (size[own] - 1) as f64;
        let b = (0..k)
            .filter(|&g| g != own && size[g] > 0)
            .map(|g| sums[g] / size[g] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() && a.max(b) > 0.0 {
            total += (b - a) / a.max(b);
        }
    }
    total / sample.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 12 patients in 2 labels, 20 images each, 64 features: a label direction of strength
    /// `label`, a per-patient offset of strength `patient`, unit noise.
    fn cohort(label: f64, patient: f64) -> (Vec<Vec<f32>>, Vec<String>, Vec<String>) {
        let mut rng = SplitMix64::new(7);
        let mut gauss = move || {
            let (u, v) = (rng.unit().max(1e-12), rng.unit());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let d = 64;
        let label_dir: Vec<f64> = (0..d).map(|_| gauss()).collect();
        let (mut rows, mut labels, mut patients) = (Vec::new(), Vec::new(), Vec::new());
        for p in 0..12 {
            let l = p % 2;
            let offset: Vec<f64> = (0..d).map(|_| gauss()).collect();
            for _ in 0..20 {
                rows.push(
                    (0..d)
                        .map(|j| {
                            let sign = if l == 0 { -1.0 } else { 1.0 };
                            (sign * label * label_dir[j] / 8.0 + patient * offset[j] + gauss())
                                as f32
                        })
                        .collect(),
                );
                labels.push(["all", "hem"][l].to_owned());
                patients.push(format!("P{p:02}"));
            }
        }
        (rows, labels, patients)
    }

    #[test]
    fn strong_patient_marks_are_called_out() {
        let (rows, labels, patients) = cohort(0.5, 1.5);
        let r = check(&rows, &labels, &patients, 1).unwrap();
        assert!(r.patient_probe.accuracy > 0.9, "{r:?}");
        assert!(r.patient_dominates, "{}", r.summary);
        assert!(r.silhouette_patient > r.silhouette_label, "{r:?}");
        assert!(r.summary.contains("Split by patient"), "{}", r.summary);
        assert_eq!((r.patients, r.labels, r.images), (12, 2, 240));
    }

    #[test]
    fn a_clean_label_signal_is_not_called_a_batch_effect() {
        let (rows, labels, patients) = cohort(6.0, 0.0);
        let r = check(&rows, &labels, &patients, 1).unwrap();
        assert!(r.label_probe.accuracy > 0.95, "{r:?}");
        // Within a label, patients are indistinguishable: chance is 1/6.
        assert!(r.patient_probe.skill < 0.2, "{r:?}");
        assert!(!r.patient_dominates, "{}", r.summary);
        assert!(
            r.summary.starts_with("The features carry little"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn needs_two_patients_and_two_labels() {
        let (rows, labels, _) = cohort(1.0, 1.0);
        let one = vec!["P".to_owned(); rows.len()];
        assert!(
            check(&rows, &labels, &one, 1)
                .unwrap_err()
                .contains("patient")
        );
        let same = vec!["all".to_owned(); rows.len()];
        let (_, _, patients) = cohort(1.0, 1.0);
        assert!(
            check(&rows, &same, &patients, 1)
                .unwrap_err()
                .contains("two labels")
        );
    }

    #[test]
    fn silhouette_of_two_tight_far_groups_is_near_one() {
        let x: Vec<Vec<f64>> = (0..10)
            .map(|i| vec![if i < 5 { 0.0 } else { 100.0 }, i as f64 * 0.01])
            .collect();
        let g: Vec<usize> = (0..10).map(|i| usize::from(i >= 5)).collect();
        let s = silhouette(&x, &g, &(0..10).collect::<Vec<_>>());
        assert!(s > 0.99, "{s}");
    }
}
