//! The probe's inputs: backbone features of every image through the cache, standardised on
//! the training side (multi-scale parts rescaled to weigh as much as the final pool), and the
//! standardisation folded back into a head that reads raw features.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use web_time::Instant;

use crate::experiment::config::TrainConfig;
use crate::experiment::events::{Phase, TrainEvent};
use crate::model::decision::Standardiser;
use crate::model::efficientnet::FEATURES;
use crate::model::extractor::Extractor;
use crate::runs::RunDir;
use crate::train::data::Prepared;
use crate::train::engine::TrainJob;
use crate::train::features::featurize;
use crate::train::trainer::{emit, warn_skipped};

/// A linear head on standardised features as the same head on raw features:
/// `w'_fc = w_fc / σ_f`, `b'_c = b_c − Σ_f w_fc μ_f / σ_f`.
pub(in crate::train) fn fold_standardiser(
    mut weight: Vec<Vec<f64>>,
    mut bias: Vec<f64>,
    standardiser: &Standardiser,
) -> (Vec<Vec<f64>>, Vec<f64>) {
    for ((row, &mean), &std) in weight
        .iter_mut()
        .zip(&standardiser.mean)
        .zip(&standardiser.std)
    {
        for (w, b) in row.iter_mut().zip(bias.iter_mut()) {
            *w /= f64::from(std);
            *b -= *w * f64::from(mean);
        }
    }
    (weight, bias)
}

/// Probe inputs: backbone features of every image (through the cache), standardised on the
/// training side. Fails when no training image could be read.
#[allow(clippy::too_many_arguments)]
pub(in crate::train) fn probe_features(
    job: &TrainJob,
    config: &TrainConfig,
    data: &Prepared,
    plain: &burn::tensor::Device,
    run: &mut RunDir,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
    warned: &mut std::collections::HashSet<PathBuf>,
) -> anyhow::Result<(Vec<Option<Vec<f32>>>, Standardiser)> {
    let extractor = Extractor::bundled(config.backbone, plain)?;
    let all: Vec<PathBuf> = data.items.iter().map(|i| i.path.clone()).collect();
    let mut last = Instant::now();
    let f = featurize(
        &extractor,
        config.feature_kind(),
        &config.preprocess,
        &all,
        job.cache.as_ref(),
        config.batch_size.clamp(8, 64),
        &mut |done, total| {
            if last.elapsed().as_millis() > 250 || done == total {
                last = Instant::now();
                sink(&TrainEvent::Progress {
                    phase: Phase::Features,
                    done,
                    total,
                });
            }
        },
        cancel,
    );
    let first_failure = f
        .failures
        .first()
        .map(|(p, e)| format!(" (first: {e}: {})", p.display()));
    warn_skipped(run, sink, warned, f.failures);
    let usable = data
        .train
        .iter()
        .filter(|&&i| f.features[i].is_some())
        .count();
    anyhow::ensure!(
        usable > 0 || cancel.load(std::sync::atomic::Ordering::Relaxed),
        "no usable images: none of the {} training images could be read{}",
        data.train.len(),
        first_failure.unwrap_or_default()
    );
    if f.from_cache > 0 {
        let message = format!(
            "{} of {} feature vectors came from the cache",
            f.from_cache,
            all.len()
        );
        emit(run, sink, TrainEvent::Info { message });
    }
    let kind = config.feature_kind();
    let mut standardiser = Standardiser::fit(
        data.train.iter().filter_map(|&i| f.features[i].as_deref()),
        kind.width(),
    );
    // Multi-scale: each earlier stage's pool, standardised, is scaled to the total variance
    // of the final pool, so that its 112 or 192 values weigh as much as the 1280 in the L2
    // penalty instead of in proportion to their number.
    for part in &kind.parts()[1..] {
        let scale = (part.len() as f32 / FEATURES as f32).sqrt();
        standardiser.std[part.clone()]
            .iter_mut()
            .for_each(|s| *s *= scale);
    }
    let rows = f
        .features
        .into_iter()
        .map(|r| {
            r.map(|mut v| {
                standardiser.apply(&mut v);
                v
            })
        })
        .collect();
    Ok((rows, standardiser))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The folded head gives on raw features the logits the probe gives on standardised ones.
    #[test]
    fn folding_the_standardiser_into_the_head_keeps_its_logits() {
        let (d, k) = (5, 3);
        let weight: Vec<Vec<f64>> = (0..d)
            .map(|f| (0..k).map(|c| (f * k + c) as f64 * 0.1 - 0.7).collect())
            .collect();
        let bias = vec![0.3, -0.2, 0.05];
        let standardiser = Standardiser {
            mean: vec![1.0, -2.0, 0.5, 3.0, 0.0],
            std: vec![0.5, 2.0, 1.0, 4.0, 0.25],
        };
        let raw = [0.7f32, -1.0, 2.0, 5.0, 0.1];
        let mut standardised = raw.to_vec();
        standardiser.apply(&mut standardised);
        let logits = |w: &[Vec<f64>], b: &[f64], x: &[f32]| -> Vec<f64> {
            (0..k)
                .map(|c| b[c] + (0..d).map(|f| w[f][c] * f64::from(x[f])).sum::<f64>())
                .collect()
        };
        let want = logits(&weight, &bias, &standardised);
        let (w, b) = fold_standardiser(weight, bias, &standardiser);
        for (g, e) in logits(&w, &b, &raw).iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
    }
}
