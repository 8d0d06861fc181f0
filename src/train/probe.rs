//! The default probe: logistic regression on the standardised features, solved to
//! convergence ([`super::logreg`]), its L2 strength and class weighting chosen on the
//! validation side. When a test side will score the kept model, the choice is refitted on
//! training + validation first (as in nested cross-validation, where the test side is the
//! fold); otherwise the kept model is the fit the validation side scored.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::model::decision;

use super::data::Prepared;
use super::logreg::{Design, Fit, Targets, Tolerance};
use crate::experiment::metrics::Target;
use crate::experiment::metrics::Task;
use crate::experiment::selection::{GridPoint, ProbeSelection};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use web_time::Instant;

use crate::model::decision::Standardiser;
use crate::model::extractor::Extractor;
use crate::runs::RunDir;

use super::engine::TrainJob;
use super::features::featurize;
use super::trainer::{emit, warn_skipped};
use crate::experiment::config::TrainConfig;
use crate::experiment::events::{Phase, TrainEvent};
use crate::model::efficientnet::FEATURES;

/// The L2 strengths tried, as scikit-learn's `C` (inverse strength; `λ = 1/(C·n)`), from
/// strong to weak regularisation.
pub const C_GRID: [f64; 8] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0];

/// The chosen probe: the fit the validation side scored, and the kept (refitted) one.
pub(super) struct Solved {
    pub(super) chosen: Fit,
    pub(super) refit: Fit,
    pub(super) selection: ProbeSelection,
}

/// Per-sample weights and per-output positive weights of one weighting.
struct Weights {
    sample: Vec<f64>,
    positive: Vec<f64>,
}

/// Rows, targets and weights of some items.
struct Side {
    x: Vec<f64>,
    items: Vec<usize>,
    classes: Vec<usize>,
    /// Sigmoid targets (`items × outputs`), for multi-label and ordinal heads.
    t: Vec<f64>,
}

fn side(data: &Prepared, rows: &[Option<Vec<f32>>], items: &[usize], outputs: usize) -> Side {
    let items: Vec<usize> = items
        .iter()
        .copied()
        .filter(|&i| rows[i].is_some())
        .collect();
    let mut x = Vec::new();
    let mut classes = Vec::new();
    let mut t = Vec::new();
    for &i in &items {
        x.extend(
            rows[i]
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|&v| f64::from(v)),
        );
        let c = match &data.items[i].target {
            Target::Class(c) => *c,
            Target::Multi(_) => 0,
        };
        classes.push(c);
        match (&data.items[i].target, data.task) {
            (Target::Multi(flags), _) => t.extend(flags.iter().map(|&f| f64::from(u8::from(f)))),
            (Target::Class(c), Task::Ordinal) => {
                t.extend(super::ordinal::targets(*c, outputs + 1).map(f64::from))
            }
            (Target::Class(c), _) => t.extend((0..outputs).map(|j| f64::from(u8::from(j == *c)))),
        }
    }
    Side {
        x,
        items,
        classes,
        t,
    }
}

/// Weights of a weighting on the given training side (as the epoch-based probe's loss
/// weights: `n / (k·n_c)` per class, or `(n − n_l)/n_l` per multi-label label).
fn weights(data: &Prepared, s: &Side, outputs: usize, balanced: bool) -> Weights {
    let n = s.items.len();
    let k = data.labels.len();
    if !balanced {
        return Weights {
            sample: vec![1.0; n],
            positive: vec![1.0; outputs],
        };
    }
    if data.task == Task::MultiLabel {
        let positive = (0..outputs)
            .map(|j| {
                let c = (0..n).filter(|&i| s.t[i * outputs + j] > 0.5).count();
                if c == 0 {
                    1.0
                } else {
                    ((n - c) as f64 / c as f64).clamp(1.0, 50.0)
                }
            })
            .collect();
        return Weights {
            sample: vec![1.0; n],
            positive,
        };
    }
    let mut counts = vec![0usize; k];
    for &c in &s.classes {
        counts[c] += 1;
    }
    let class_weight: Vec<f64> = counts
        .iter()
        .map(|&c| {
            if c == 0 {
                1.0
            } else {
                n as f64 / (k as f64 * c as f64)
            }
        })
        .collect();
    Weights {
        sample: s.classes.iter().map(|&c| class_weight[c]).collect(),
        positive: vec![1.0; outputs],
    }
}

fn targets<'a>(data: &Prepared, s: &'a Side, w: &'a Weights, outputs: usize) -> Targets<'a> {
    if data.task == Task::MultiLabel || data.task == Task::Ordinal {
        Targets::Sigmoid {
            t: &s.t,
            k: outputs,
            pos_weight: &w.positive,
            // Ordered grades: one weight vector, ordered thresholds (rank-consistent).
            shared: data.task == Task::Ordinal,
        }
    } else {
        Targets::Softmax {
            classes: &s.classes,
            k: outputs,
        }
    }
}

/// An ordinal fit with its thresholds' biases made non-increasing (see
/// [`Fit::order_biases`]); other fits as they are.
fn ordered(data: &Prepared, mut fit: Fit) -> Fit {
    if data.task == Task::Ordinal {
        fit.order_biases();
    }
    fit
}

/// Probabilities of a side under a fit, through the one decision rule.
pub(super) fn probabilities(
    data: &Prepared,
    fit: &Fit,
    x: &[f64],
    n: usize,
    device: &Device,
) -> Vec<Vec<f32>> {
    let k = fit.bias.len();
    if n == 0 {
        return Vec::new();
    }
    let d = x.len() / n;
    let logits: Vec<f32> = (0..n)
        .flat_map(|i| fit.logits(&x[i * d..(i + 1) * d]))
        .map(|v| v as f32)
        .collect();
    let t = Tensor::<2>::from_data(TensorData::new(logits, [n, k]), device);
    decision::probabilities(data.task, data.task == Task::Ordinal, t)
}

/// Criterion (higher is better) and mean log loss of predictions of a side.
fn criterion(data: &Prepared, s: &Side, probs: &[Vec<f32>]) -> (f64, f64) {
    let m = super::batches::evaluate(data, &s.items, probs);
    let score = match data.task {
        Task::Ordinal => m.kappa_quadratic.unwrap_or(m.macro_f1),
        _ => m.macro_f1,
    };
    let eps = 1e-12;
    let log_loss = if data.task == Task::MultiLabel {
        let k = data.labels.len();
        probs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                (0..k)
                    .map(|j| {
                        let (t, q) = (s.t[i * k + j], f64::from(p[j]).clamp(eps, 1.0 - eps));
                        -(t * q.ln() + (1.0 - t) * (1.0 - q).ln())
                    })
                    .sum::<f64>()
            })
            .sum::<f64>()
    } else {
        s.classes
            .iter()
            .zip(probs)
            .map(|(&c, p)| -f64::from(p[c]).max(eps).ln())
            .sum::<f64>()
    } / probs.len().max(1) as f64;
    (score, log_loss)
}

/// Searches the grid on the validation side; with `refit`, refits the choice on training +
/// validation. `outputs` is the head's output count.
pub(super) fn select_and_fit(
    data: &Prepared,
    rows: &[Option<Vec<f32>>],
    outputs: usize,
    refit: bool,
    device: &Device,
) -> anyhow::Result<Solved> {
    let d = rows
        .iter()
        .flatten()
        .map(Vec::len)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no usable feature rows"))?;
    let train = side(data, rows, &data.train, outputs);
    let val = side(data, rows, &data.val, outputs);
    anyhow::ensure!(!train.items.is_empty(), "no usable training images");
    anyhow::ensure!(!val.items.is_empty(), "no usable validation images");
    let design = Design::new(train.x.clone(), train.items.len(), d);
    let tol = Tolerance::default();
    let n = train.items.len() as f64;
    // One path per weighting, warm-started from strong to weak regularisation; the two
    // paths run in parallel (plain f64 work, no tensors).
    let paths: Vec<Vec<(bool, f64, Fit)>> = [false, true]
        .par_iter()
        .map(|&balanced| {
            let w = weights(data, &train, outputs, balanced);
            let mut warm: Option<Fit> = None;
            let mut out = Vec::new();
            for &c in &C_GRID {
                let fit = design.fit(
                    targets(data, &train, &w, outputs),
                    &w.sample,
                    1.0 / (c * n),
                    warm.as_ref(),
                    tol,
                );
                out.push((balanced, c, ordered(data, fit.clone())));
                warm = Some(fit);
            }
            out
        })
        .collect();
    // Scored on the validation side here, on the run's thread.
    let all: Vec<(GridPoint, Fit)> = paths
        .into_iter()
        .flatten()
        .map(|(balanced, c, fit)| {
            let probs = probabilities(data, &fit, &val.x, val.items.len(), device);
            let (score, log_loss) = criterion(data, &val, &probs);
            (
                GridPoint {
                    c,
                    class_weighting: if balanced { "balanced" } else { "none" }.into(),
                    score,
                    log_loss,
                    iterations: fit.iterations,
                },
                fit,
            )
        })
        .collect();
    // Best criterion; ties to the lower log loss, then the stronger regularisation.
    let best = all
        .iter()
        .enumerate()
        .max_by(|(ia, (a, _)), (ib, (b, _))| {
            a.score
                .total_cmp(&b.score)
                .then(b.log_loss.total_cmp(&a.log_loss))
                .then(ib.cmp(ia))
        })
        .map(|(i, _)| i)
        .expect("a non-empty grid");
    let (point, chosen) = all[best].clone();
    // With a test side to score it, the kept model is refitted on both sides with the
    // chosen settings; without one, the kept model is the fit the validation side scored,
    // so the run's validation numbers and predictions describe the model it keeps.
    let (refit, l2, refit_on) = if refit {
        let mut both_items = data.train.clone();
        both_items.extend(&data.val);
        let both = side(data, rows, &both_items, outputs);
        let nb = both.items.len();
        let w = weights(data, &both, outputs, point.class_weighting == "balanced");
        let l2 = 1.0 / (point.c * nb as f64);
        let fit = Design::new(both.x.clone(), nb, d).fit(
            targets(data, &both, &w, outputs),
            &w.sample,
            l2,
            None,
            tol,
        );
        (
            ordered(data, fit),
            l2,
            format!("the training and validation sides ({nb} images)"),
        )
    } else {
        (
            chosen.clone(),
            1.0 / (point.c * n),
            format!("the training side ({} images)", train.items.len()),
        )
    };
    let selection = ProbeSelection {
        solver: "lbfgs".into(),
        c: point.c,
        l2,
        class_weighting: point.class_weighting.clone(),
        chosen_on: format!("the validation side ({} images)", val.items.len()),
        head: match data.task {
            Task::Ordinal => "ordered thresholds sharing one weight vector (rank-consistent)",
            Task::MultiLabel => "one sigmoid per label",
            _ => "softmax over the classes",
        }
        .into(),
        criterion: match data.task {
            Task::Ordinal => "quadratic kappa, then log loss",
            _ => "macro F1, then log loss",
        }
        .into(),
        refit_on,
        grid: all.into_iter().map(|(p, _)| p).collect(),
    };
    Ok(Solved {
        chosen,
        refit,
        selection,
    })
}

/// A head for raw pooled features, and the probe choice it came from.
pub(super) struct ProbeStart {
    /// `[feature][output]`.
    pub(super) weight: Vec<Vec<f64>>,
    pub(super) bias: Vec<f64>,
    pub(super) selection: ProbeSelection,
}

/// The head a fine-tune starts from: the probe of the same backbone solved on the training
/// side, its L2 strength and class weighting chosen on the validation side, with its feature
/// standardisation folded into the weights so that it reads raw pooled features
/// (see [`fold_standardiser`]). `None` when the run was stopped while features were computed.
#[allow(clippy::too_many_arguments)]
pub(super) fn probe_start(
    job: &TrainJob,
    config: &TrainConfig,
    data: &Prepared,
    outputs: usize,
    plain: &burn::tensor::Device,
    run: &mut RunDir,
    sink: &mut dyn FnMut(&TrainEvent),
    cancel: &AtomicBool,
    warned: &mut std::collections::HashSet<PathBuf>,
) -> anyhow::Result<Option<ProbeStart>> {
    // A fine-tune's feature kind is the final pool of one view, as its head reads.
    let (rows, standardiser) = probe_features(job, config, data, plain, run, sink, cancel, warned)?;
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(None);
    }
    let solved = select_and_fit(data, &rows, outputs, false, plain)?;
    let (weight, bias) = fold_standardiser(
        solved.chosen.weight_rows(),
        solved.chosen.bias.clone(),
        &standardiser,
    );
    Ok(Some(ProbeStart {
        weight,
        bias,
        selection: solved.selection,
    }))
}

/// A linear head on standardised features as the same head on raw features:
/// `w'_fc = w_fc / σ_f`, `b'_c = b_c − Σ_f w_fc μ_f / σ_f`.
fn fold_standardiser(
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
pub(super) fn probe_features(
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
