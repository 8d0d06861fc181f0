//! Ordinal grades (retinopathy 0–4, tumour grades) as cumulative binary problems.
//!
//! For `k` ordered grades the network has `k - 1` outputs; output `j` is the logit of
//! `P(grade > j)`, trained with binary cross-entropy against `grade > j` (Frank & Hall 2001;
//! Niu et al. 2016). A mistake by one grade then costs less than a mistake by three, which a
//! softmax over unordered classes does not know. Class probabilities follow from differences
//! of the exceedance probabilities, made non-increasing first, so they are non-negative and
//! sum to one.
//!
//! The default probe (`train::probe`) fits these outputs rank-consistently (CORAL, Cao et al.
//! 2020): one weight vector shared by every threshold and non-increasing biases, so
//! `P(grade > j)` never rises with `j` and the running minimum below has nothing to repair.
//! The head keeps the same `k - 1` outputs (the shared column repeated), so everything that
//! reads a model is unchanged. Heads trained in epochs keep independent thresholds.

/// Network outputs for `k` ordered grades.
pub fn outputs(k: usize) -> usize {
    k.saturating_sub(1).max(1)
}

/// Binary targets `grade > j` for `j` in `0..k-1`.
pub fn targets(grade: usize, k: usize) -> impl Iterator<Item = f32> {
    (0..outputs(k)).map(move |j| f32::from(u8::from(grade > j)))
}

/// Class probabilities (`k` of them) from the exceedance probabilities `P(grade > j)`.
pub fn class_probs(exceed: &[f32]) -> Vec<f32> {
    let k = exceed.len() + 1;
    let mut probs = Vec::with_capacity(k);
    let mut above = 1.0_f32;
    for &p in exceed {
        // P(grade > j) can only shrink as j grows.
        let p = p.clamp(0.0, 1.0).min(above);
        probs.push(above - p);
        above = p;
    }
    probs.push(above);
    probs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_probabilities_are_differences_of_exceedances() {
        // P(>0) = 0.9, P(>1) = 0.6, P(>2) = 0.2 → 0.1, 0.3, 0.4, 0.2.
        let p = class_probs(&[0.9, 0.6, 0.2]);
        let want = [0.1, 0.3, 0.4, 0.2];
        assert_eq!(p.len(), 4);
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn inconsistent_outputs_still_give_a_distribution() {
        // The independent logits may say P(>1) > P(>0); the running minimum repairs it.
        let p = class_probs(&[0.3, 0.8, 0.5]);
        assert!(p.iter().all(|&v| v >= 0.0), "{p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{p:?}");
        assert_eq!(p, vec![0.7, 0.0, 0.0, 0.3]);
    }

    #[test]
    fn targets_count_the_grades_exceeded() {
        assert_eq!(targets(0, 5).collect::<Vec<_>>(), [0.0, 0.0, 0.0, 0.0]);
        assert_eq!(targets(2, 5).collect::<Vec<_>>(), [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(targets(4, 5).collect::<Vec<_>>(), [1.0, 1.0, 1.0, 1.0]);
        assert_eq!(outputs(2), 1);
    }
}
