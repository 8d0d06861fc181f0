//! The default probe: logistic regression on the standardised features, solved to
//! convergence ([`super::logreg`]), its L2 strength and class weighting chosen by the pooled
//! log loss of patient-grouped inner folds ([`select_and_fit`]). When a test side will score
//! the kept model, the folds cover training + validation and the choice is refitted on both
//! (as in nested cross-validation, where the test side is the fold); otherwise they cover the
//! training side, the kept model is fitted on it, and the validation side scores it once.

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

use crate::runs::RunDir;

use super::engine::TrainJob;
use crate::experiment::config::TrainConfig;
use crate::experiment::events::TrainEvent;

mod features;

use features::fold_standardiser;
pub(super) use features::probe_features;

/// The L2 strengths tried, as scikit-learn's `C` (inverse strength; `λ = 1/(C·n)`), from
/// strong to weak regularisation.
pub const C_GRID: [f64; 8] = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0];

/// The chosen probe: the fit the validation side scored, and the kept (refitted) one.
pub(super) struct Solved {
    pub(super) chosen: Fit,
    pub(super) refit: Fit,
    pub(super) selection: ProbeSelection,
    /// Held-out predictions of fits with the chosen settings.
    pub(super) held_out: HeldOut,
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

/// A side's score as reported (macro F1; quadratic kappa for grades) and its mean log loss,
/// the selection criterion.
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

/// Inner folds the settings are chosen on (fewer when the pool has too few patients or images
/// for them; with fewer than two, the validation side chooses).
pub const INNER_FOLDS: usize = 3;

/// Predictions of images by fits with the chosen settings that never saw them: the pooled
/// inner folds (or the validation side when there are none). What a temperature is fitted on.
#[derive(Clone, Debug, Default)]
pub(super) struct HeldOut {
    pub(super) items: Vec<usize>,
    pub(super) probs: Vec<Vec<f32>>,
}

/// Where the settings are chosen: pairs of (rows fitted, rows predicted), and their names.
struct Plan {
    folds: Vec<(Vec<usize>, Vec<usize>)>,
    chosen_on: String,
    /// Images predicted (each once).
    images: usize,
}

/// Patient-grouped, stratified inner folds of `items` (the usable pool): the fold of each item,
/// with `INNER_FOLDS` folds or as many as the pool's groups allow (at least 2).
fn inner_folds(data: &Prepared, items: &[usize], seed: u64) -> Option<(usize, Vec<usize>)> {
    let records: Vec<crate::dataset::Record> = items
        .iter()
        .map(|&i| {
            let item = &data.items[i];
            crate::dataset::Record {
                path: item.name.clone(),
                labels: data
                    .label_string(item)
                    .split('|')
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
                patient: item.patient.clone(),
                ..Default::default()
            }
        })
        .collect();
    (2..=INNER_FOLDS).rev().find_map(|k| {
        let folds = crate::dataset::split::assign_folds(&records, &[], k, seed).ok()?;
        let folds: Vec<usize> = folds.into_iter().collect::<Option<_>>()?;
        // Each fold's training part needs at least two classes to be fitted.
        let fits = (0..k).all(|f| {
            let classes: std::collections::BTreeSet<String> = items
                .iter()
                .zip(&folds)
                .filter(|(_, g)| **g != f)
                .map(|(&i, _)| data.label_string(&data.items[i]))
                .collect();
            classes.len() >= 2
        });
        fits.then_some((k, folds))
    })
}

/// The settings' search plan: `INNER_FOLDS` patient-grouped inner folds of the pool (training +
/// validation when a test side scores the kept model, else the training side alone, so that
/// the validation side scores the kept model once); the validation side when the pool has
/// too few groups for two folds.
fn plan(data: &Prepared, train: &Side, val: &Side, refit: bool, seed: u64) -> (Plan, Vec<usize>) {
    let mut pool = train.items.clone();
    if refit {
        pool.extend(&val.items);
    }
    let pool_name = if refit {
        "the training and validation sides"
    } else {
        "the training side"
    };
    match inner_folds(data, &pool, seed) {
        Some((k, fold_of)) => {
            let folds = (0..k)
                .map(|f| {
                    let of = |held: bool| -> Vec<usize> {
                        pool.iter()
                            .zip(&fold_of)
                            .filter(|(_, g)| (**g == f) == held)
                            .map(|(&i, _)| i)
                            .collect()
                    };
                    (of(false), of(true))
                })
                .collect();
            let chosen_on = format!(
                "the pooled held-out predictions of {k} inner folds of {pool_name} ({} images, \
                 grouped by patient, stratified by label)",
                pool.len()
            );
            let images = pool.len();
            (
                Plan {
                    folds,
                    chosen_on,
                    images,
                },
                pool,
            )
        }
        None => (
            Plan {
                folds: vec![(train.items.clone(), val.items.clone())],
                chosen_on: format!("the validation side ({} images)", val.items.len()),
                images: val.items.len(),
            },
            pool,
        ),
    }
}

/// One path of fits over [`C_GRID`] on `s`, warm-started from strong to weak regularisation.
fn path(
    data: &Prepared,
    design: &Design,
    s: &Side,
    outputs: usize,
    balanced: bool,
    tol: Tolerance,
) -> Vec<Fit> {
    let w = weights(data, s, outputs, balanced);
    let n = s.items.len() as f64;
    let mut warm: Option<Fit> = None;
    let mut out = Vec::new();
    for &c in &C_GRID {
        let fit = design.fit(
            targets(data, s, &w, outputs),
            &w.sample,
            1.0 / (c * n),
            warm.as_ref(),
            tol,
        );
        out.push(ordered(data, fit.clone()));
        warm = Some(fit);
    }
    out
}

/// The fit of one setting on some items.
fn fit_on(
    data: &Prepared,
    rows: &[Option<Vec<f32>>],
    items: &[usize],
    outputs: usize,
    point: &GridPoint,
    tol: Tolerance,
) -> (Fit, f64, usize) {
    let s = side(data, rows, items, outputs);
    let n = s.items.len();
    let d = s.x.len() / n.max(1);
    let w = weights(data, &s, outputs, point.class_weighting == "balanced");
    let l2 = 1.0 / (point.c * n as f64);
    let fit = Design::new(s.x.clone(), n, d).fit(
        targets(data, &s, &w, outputs),
        &w.sample,
        l2,
        None,
        tol,
    );
    (ordered(data, fit), l2, n)
}

/// Chooses the probe's settings (C and class weighting) on the pooled held-out predictions of
/// patient-grouped inner folds (see [`plan`]), then fits the choice on the pool: training +
/// validation with `refit` (a test side scores it), else the training side. `outputs` is the
/// head's output count; `seed` seeds the inner folds.
pub(super) fn select_and_fit(
    data: &Prepared,
    rows: &[Option<Vec<f32>>],
    outputs: usize,
    refit: bool,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Solved> {
    rows.iter()
        .flatten()
        .map(Vec::len)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no usable feature rows"))?;
    let train = side(data, rows, &data.train, outputs);
    let val = side(data, rows, &data.val, outputs);
    anyhow::ensure!(!train.items.is_empty(), "no usable training images");
    anyhow::ensure!(!val.items.is_empty(), "no usable validation images");
    let tol = Tolerance::default();
    // The search's fits stop a little earlier than the kept one: the log loss they are
    // compared by is settled to far better than the differences between grid points.
    let search_tol = Tolerance {
        grad_max: 1e-5,
        ..tol
    };
    let (plan, pool) = plan(data, &train, &val, refit, seed);
    // One design per fold, one path per fold and weighting, in parallel (plain f64 work, no
    // tensors).
    let fitted: Vec<Side> = plan
        .folds
        .iter()
        .map(|(fit, _)| side(data, rows, fit, outputs))
        .collect();
    let designs: Vec<Design> = fitted
        .par_iter()
        .map(|s| Design::new(s.x.clone(), s.items.len(), s.x.len() / s.items.len().max(1)))
        .collect();
    let jobs: Vec<(usize, bool)> = (0..plan.folds.len())
        .flat_map(|f| [(f, false), (f, true)])
        .collect();
    let paths: Vec<Vec<Fit>> = jobs
        .par_iter()
        .map(|&(f, balanced)| path(data, &designs[f], &fitted[f], outputs, balanced, search_tol))
        .collect();
    // Each grid point's predictions of every held-out image, pooled over the folds (scored on
    // the run's thread, through the one decision rule).
    let held: Vec<Side> = plan
        .folds
        .iter()
        .map(|(_, h)| side(data, rows, h, outputs))
        .collect();
    let order: Vec<usize> = held.iter().flat_map(|h| h.items.clone()).collect();
    let pooled = side(data, rows, &order, outputs);
    let mut points: Vec<(GridPoint, Vec<Vec<f32>>)> = Vec::new();
    for balanced in [false, true] {
        for (ci, &c) in C_GRID.iter().enumerate() {
            let mut probs = Vec::with_capacity(order.len());
            let mut iterations = 0;
            for (f, h) in held.iter().enumerate() {
                let fit = &paths[2 * f + usize::from(balanced)][ci];
                iterations += fit.iterations;
                probs.extend(probabilities(data, fit, &h.x, h.items.len(), device));
            }
            let (score, log_loss) = criterion(data, &pooled, &probs);
            points.push((
                GridPoint {
                    c,
                    class_weighting: if balanced { "balanced" } else { "none" }.into(),
                    score,
                    log_loss,
                    iterations,
                },
                probs,
            ));
        }
    }
    // The lowest pooled log loss; ties to the stronger regularisation, then no weighting.
    // Log loss rather than macro F1: on a few hundred images F1 moves in steps of single
    // images between neighbouring grid points, so the choice followed the folds' noise.
    // Grades are chosen by their headline metric, the pooled quadratic kappa, first: by log
    // loss alone they took the strongest penalties and lost kappa.
    let kappa_first = data.task == Task::Ordinal;
    let best = (0..points.len())
        .min_by(|&a, &b| {
            let (pa, pb) = (&points[a].0, &points[b].0);
            let kappa = if kappa_first {
                pb.score.total_cmp(&pa.score)
            } else {
                std::cmp::Ordering::Equal
            };
            kappa
                .then(pa.log_loss.total_cmp(&pb.log_loss))
                .then(a.cmp(&b))
        })
        .expect("a non-empty grid");
    let point = points[best].0.clone();
    let held_out = HeldOut {
        items: order,
        probs: points[best].1.clone(),
    };
    // The kept model: the choice fitted on the pool. The validation side is scored by the
    // choice fitted on the training side (the kept model itself when the pool is the
    // training side).
    let (kept, l2, n_kept) = fit_on(data, rows, &pool, outputs, &point, tol);
    let chosen = if refit {
        fit_on(data, rows, &train.items, outputs, &point, tol).0
    } else {
        kept.clone()
    };
    let refit_on = if refit {
        format!("the training and validation sides ({n_kept} images)")
    } else {
        format!("the training side ({n_kept} images)")
    };
    let selection = ProbeSelection {
        solver: "lbfgs".into(),
        c: point.c,
        l2,
        class_weighting: point.class_weighting.clone(),
        chosen_on: plan.chosen_on,
        chosen_images: plan.images as u64,
        head: match data.task {
            Task::Ordinal => "ordered thresholds sharing one weight vector (rank-consistent)",
            Task::MultiLabel => "one sigmoid per label",
            _ => "softmax over the classes",
        }
        .into(),
        criterion: if kappa_first {
            "quadratic kappa, then log loss"
        } else {
            "log loss (mean cross-entropy)"
        }
        .into(),
        refit_on,
        grid: points.into_iter().map(|(p, _)| p).collect(),
    };
    Ok(Solved {
        chosen,
        refit: kept,
        selection,
        held_out,
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
    let solved = select_and_fit(data, &rows, outputs, false, config.seed, plain)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 30 patients of 4 images, three classes told apart by three of eight features.
    fn cohort(test: bool) -> (Prepared, Vec<Option<Vec<f32>>>) {
        let mut rng = crate::dataset::split::SplitMix64::new(3);
        let (mut items, mut rows) = (Vec::new(), Vec::new());
        for p in 0..30 {
            for i in 0..4 {
                let c = p % 3;
                items.push(super::super::data::Item {
                    path: format!("p{p}/{i}.png").into(),
                    name: format!("p{p}/{i}.png"),
                    patient: Some(format!("P{p}")),
                    target: Target::Class(c),
                });
                rows.push(Some(
                    (0..8)
                        .map(|f| (rng.unit() * 2.0 - 1.0) as f32 + if f == c { 1.0 } else { 0.0 })
                        .collect(),
                ));
            }
        }
        let side = |r: std::ops::Range<usize>| (r.start * 4..r.end * 4).collect::<Vec<_>>();
        let data = Prepared {
            task: Task::MultiClass,
            labels: vec!["a".into(), "b".into(), "c".into()],
            items,
            train: side(0..18),
            val: side(18..24),
            test: if test { side(24..30) } else { Vec::new() },
            split_given: true,
        };
        (data, rows)
    }

    /// The settings are chosen on pooled inner folds: every pooled image is predicted once, by
    /// a fit that did not see its patient, and the choice is the grid point with the lowest
    /// pooled log loss. With a test side the pool is training + validation; without one it is
    /// the training side, so the validation side stays unseen until it scores the kept model.
    #[test]
    fn settings_are_chosen_on_held_out_predictions_of_inner_folds() {
        let device = burn::tensor::Device::flex();
        for test in [true, false] {
            let (data, rows) = cohort(test);
            let solved = select_and_fit(&data, &rows, 3, test, 7, &device).unwrap();
            let mut pool: Vec<usize> = data.train.clone();
            if test {
                pool.extend(&data.val);
            }
            let mut held = solved.held_out.items.clone();
            held.sort_unstable();
            assert_eq!(held, pool, "each pooled image once (test side: {test})");
            assert_eq!(solved.held_out.probs.len(), pool.len());
            assert_eq!(solved.selection.chosen_images, pool.len() as u64);
            let s = &solved.selection;
            assert!(s.chosen_on.contains("3 inner folds"), "{}", s.chosen_on);
            let lowest = s
                .grid
                .iter()
                .map(|g| g.log_loss)
                .fold(f64::INFINITY, f64::min);
            let picked = s
                .grid
                .iter()
                .find(|g| g.c == s.c && g.class_weighting == s.class_weighting)
                .unwrap();
            assert_eq!(picked.log_loss, lowest);
            // The held-out predictions are the chosen point's: their log loss is its log loss.
            let truth: Vec<usize> = solved
                .held_out
                .items
                .iter()
                .map(|&i| match data.items[i].target {
                    Target::Class(c) => c,
                    Target::Multi(_) => unreachable!(),
                })
                .collect();
            let loss = truth
                .iter()
                .zip(&solved.held_out.probs)
                .map(|(&c, p)| -f64::from(p[c]).max(1e-12).ln())
                .sum::<f64>()
                / truth.len() as f64;
            assert!((loss - lowest).abs() < 1e-6, "{loss} vs {lowest}");
            // Each patient's images are held out together, by a fit without them: the pooled
            // predictions differ from the kept model's, which saw every pooled image.
            let kept = probabilities(
                &data,
                &solved.refit,
                &side(&data, &rows, &solved.held_out.items, 3).x,
                pool.len(),
                &device,
            );
            assert!(
                kept.iter()
                    .zip(&solved.held_out.probs)
                    .any(|(a, b)| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3))
            );
        }
    }
}
