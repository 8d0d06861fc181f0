//! A 2-D map of a dataset's backbone features: principal component analysis, computed by
//! power iteration on the centred features (no dense covariance matrix, so 100k images of
//! 1280 features stay in memory once).

/// The first principal components of a set of feature vectors.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Feature means (subtracted before projecting).
    pub mean: Vec<f32>,
    /// Unit component vectors, strongest first.
    pub components: Vec<Vec<f32>>,
    /// Share of the total variance each component explains.
    pub explained: Vec<f64>,
    /// Each row's coordinates on the components.
    pub coords: Vec<Vec<f32>>,
}

/// The backbone features a map (and the batch-effect check) reads: plain EfficientNet-Lite0
/// features at the default preprocessing, through `cache`, `batch` images at a time.
pub fn map_features(
    extractor: &crate::model::extractor::Extractor,
    paths: &[std::path::PathBuf],
    cache: Option<&crate::train::features::FeatureCache>,
    batch: usize,
    cancel: &std::sync::atomic::AtomicBool,
) -> crate::train::features::Featurized {
    crate::train::features::featurize(
        extractor,
        crate::model::extractor::FeatureKind::plain(crate::model::efficientnet::Backbone::Lite0),
        &crate::dataset::preprocess::Preprocess::default(),
        paths,
        cache,
        batch,
        &mut |_, _| {},
        cancel,
    )
}

/// The features [`map_features`] computes, a piece at a time (the browser's way: see
/// [`crate::train::features::FeatureSteps`]).
pub fn map_feature_steps(
    extractor: crate::model::extractor::Extractor,
    paths: Vec<std::path::PathBuf>,
    cache: crate::train::features::FeatureCache,
) -> crate::train::features::FeatureSteps {
    crate::train::features::FeatureSteps::new(
        extractor,
        crate::model::extractor::FeatureKind::plain(crate::model::efficientnet::Backbone::Lite0),
        &crate::dataset::preprocess::Preprocess::default(),
        paths,
        Some(cache),
    )
}

/// Pairs `ids` with the feature rows of [`map_features`] (same order) and keeps the rows that
/// were read: their ids and the rows.
pub fn read_rows<T>(
    ids: impl IntoIterator<Item = T>,
    features: Vec<Option<Vec<f32>>>,
) -> (Vec<T>, Vec<Vec<f32>>) {
    ids.into_iter()
        .zip(features)
        .filter_map(|(id, row)| row.map(|r| (id, r)))
        .unzip()
}

/// A dataset's map: the first two principal components of its images' backbone features.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbeddingMap {
    /// One entry per mapped image: its index in the dataset's records.
    pub records: Vec<usize>,
    /// Its coordinates, in the same order.
    pub coords: Vec<[f32; 2]>,
    /// Share of the features' variance along each axis.
    pub explained: [f64; 2],
    /// Images that could not be read: `(path, reason)`.
    pub skipped: Vec<(std::path::PathBuf, String)>,
}

impl EmbeddingMap {
    /// Maps the images `records` whose feature rows are `rows` (same order).
    pub fn new(
        records: Vec<usize>,
        rows: &[Vec<f32>],
        skipped: Vec<(std::path::PathBuf, String)>,
    ) -> Self {
        let p = pca(rows, 2);
        let coords = p
            .coords
            .iter()
            .map(|c| {
                [
                    c.first().copied().unwrap_or(0.0),
                    c.get(1).copied().unwrap_or(0.0),
                ]
            })
            .collect();
        let share = |k: usize| p.explained.get(k).copied().unwrap_or(0.0);
        Self {
            records,
            coords,
            explained: [share(0), share(1)],
            skipped,
        }
    }
}

/// The first `k` principal components of `rows` (all of the same width). Deterministic: the
/// power iteration starts from a fixed vector and runs to convergence (or 500 rounds).
pub fn pca(rows: &[Vec<f32>], k: usize) -> Pca {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    let mut mean = vec![0.0f64; d];
    for r in rows {
        for (m, v) in mean.iter_mut().zip(r) {
            *m += *v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let centred: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(v, m)| *v as f64 - m).collect())
        .collect();
    let total: f64 = centred.iter().flatten().map(|v| v * v).sum();
    let mut components: Vec<Vec<f64>> = Vec::new();
    let mut explained = Vec::new();
    for c in 0..k.min(d) {
        // v ← Xᵀ X v, orthogonal to the components found so far.
        let mut v: Vec<f64> = (0..d)
            .map(|j| 1.0 + ((j * 7 + c * 13) % 17) as f64 / 17.0)
            .collect();
        let mut eigen = 0.0;
        for _ in 0..500 {
            if !orthonormalise(&mut v, &components) {
                break;
            }
            let mut next = vec![0.0f64; d];
            for x in &centred {
                let p: f64 = x.iter().zip(&v).map(|(a, b)| a * b).sum();
                next.iter_mut().zip(x).for_each(|(o, a)| *o += p * a);
            }
            let value: f64 = next.iter().zip(&v).map(|(a, b)| a * b).sum();
            let converged = (value - eigen).abs() <= 1e-10 * value.abs().max(1e-300);
            eigen = value;
            v = next;
            if converged {
                break;
            }
        }
        if !orthonormalise(&mut v, &components) {
            break;
        }
        // The variance along the final direction, measured (not the iteration's estimate,
        // which is noise when no variance is left): a direction without any ends the list.
        let eigen: f64 = centred
            .iter()
            .map(|x| {
                let p: f64 = x.iter().zip(&v).map(|(a, b)| a * b).sum();
                p * p
            })
            .sum();
        if eigen <= 1e-12 * total {
            break;
        }
        // A fixed sign: the largest entry is positive.
        if v.iter()
            .copied()
            .fold(0.0f64, |m, a| if a.abs() > m.abs() { a } else { m })
            < 0.0
        {
            v.iter_mut().for_each(|a| *a = -*a);
        }
        explained.push(if total > 0.0 { eigen / total } else { 0.0 });
        components.push(v);
    }
    let coords = centred
        .iter()
        .map(|x| {
            components
                .iter()
                .map(|u| x.iter().zip(u).map(|(a, b)| a * b).sum::<f64>() as f32)
                .collect()
        })
        .collect();
    Pca {
        mean: mean.into_iter().map(|m| m as f32).collect(),
        components: components
            .into_iter()
            .map(|u| u.into_iter().map(|a| a as f32).collect())
            .collect(),
        explained,
        coords,
    }
}

/// Removes from `v` its parts along the (unit, orthogonal) `basis` and scales it to unit
/// length; false when nothing is left.
fn orthonormalise(v: &mut [f64], basis: &[Vec<f64>]) -> bool {
    let before = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    // Twice: one pass leaves rounding along the basis, which dominates a small remainder.
    for _ in 0..2 {
        for u in basis {
            let dot: f64 = v.iter().zip(u).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
        }
    }
    let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
    // A remainder at rounding level is not a direction.
    if norm == 0.0 || norm <= 1e-9 * before {
        return false;
    }
    v.iter_mut().for_each(|a| *a /= norm);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points spread along two known orthogonal directions (variances 9 and 1) plus a little
    /// noise: the components are those directions, in that order, with those shares.
    /// Data with one direction of variance has one component: no second axis made of noise
    /// (its share would be nonsense), and identical rows have none.
    #[test]
    fn rank_one_and_constant_data_have_no_spurious_components() {
        let rows = vec![
            vec![1.0f32, 2.0, 3.0],
            vec![-1.0, -2.0, -3.0],
            vec![2.0, 4.0, 6.0],
        ];
        let p = pca(&rows, 2);
        assert_eq!(p.components.len(), 1, "{:?}", p.explained);
        assert!((p.explained[0] - 1.0).abs() < 1e-9);
        let same = vec![vec![0.5f32, 0.5]; 4];
        assert!(pca(&same, 2).components.is_empty());
        let map = EmbeddingMap::new(vec![0, 1, 2], &rows, Vec::new());
        assert!(map.coords.iter().all(|c| c[1] == 0.0));
        assert_eq!(map.explained[1], 0.0);
    }

    #[test]
    fn finds_known_directions_and_their_variance_shares() {
        let d = 6;
        let s = 0.5f32.sqrt();
        let u = [s, s, 0.0, 0.0, 0.0, 0.0];
        let v = [0.0, 0.0, s, -s, 0.0, 0.0];
        let mut rows = Vec::new();
        let mut state = 12345u32;
        let mut noise = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state as f32 / u32::MAX as f32 - 0.5) * 0.02
        };
        for i in 0..400 {
            let a = ((i % 20) as f32 - 9.5) * (3.0 / 5.77);
            let b = ((i / 20) as f32 - 9.5) * (1.0 / 5.77);
            rows.push(
                (0..d)
                    .map(|j| 5.0 + a * u[j] + b * v[j] + noise())
                    .collect(),
            );
        }
        let p = pca(&rows, 2);
        let dot = |x: &[f32], y: &[f32; 6]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f32>();
        assert!(
            dot(&p.components[0], &u).abs() > 0.999,
            "{:?}",
            p.components[0]
        );
        assert!(
            dot(&p.components[1], &v).abs() > 0.999,
            "{:?}",
            p.components[1]
        );
        assert!((p.explained[0] - 0.9).abs() < 0.01, "{:?}", p.explained);
        assert!((p.explained[1] - 0.1).abs() < 0.01, "{:?}", p.explained);
        assert!((p.mean[0] - 5.0).abs() < 0.01);
        // Coordinates are the projections: the first spreads three times the second.
        let spread = |c: usize| (p.coords.iter().map(|r| r[c] * r[c]).sum::<f32>() / 400.0).sqrt();
        assert!((spread(0) / spread(1) - 3.0).abs() < 0.05);
    }
}
