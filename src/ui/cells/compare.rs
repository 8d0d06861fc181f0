//! The Compare cell: runs side by side, and cross-validations with their spread over folds.

use std::path::PathBuf;

use eframe::egui;

use crate::runs::view::RunSummary;

use crate::ui::cells::{Loading, Notebook, Task as BgTask};
use crate::ui::widgets;

use super::*;

pub struct CompareRuntime {
    pub selected: Vec<String>,
    /// Summaries of `selected`, read from disk in the background.
    pub loaded: Loading<Compared>,
    pub stale: bool,
}

/// What a Compare cell shows: the runs and cross-validations it selected.
#[derive(Default)]
pub struct Compared {
    pub runs: Vec<RunSummary>,
    /// Each run's test side (scored once), where it has one, in the order of `runs`.
    pub tests: Vec<Option<crate::experiment::metrics::Metrics>>,
    pub cross_validations: Vec<(String, crate::experiment::cv::CvSummary)>,
}

/// Reads run and cross-validation summaries in the background (those that cannot be read
/// are left out).
pub(super) fn load_summaries(
    ctx: &egui::Context,
    root: PathBuf,
    ids: Vec<String>,
) -> Loading<Compared> {
    Loading::Busy(BgTask::spawn(ctx, "compare", move || {
        let mut out = Compared::default();
        for id in &ids {
            if id.starts_with("cv-") {
                if let Ok(s) = crate::runs::view::load_cross_validation(&root, id) {
                    out.cross_validations.push((id.clone(), s));
                }
            } else if let Ok(s) = crate::runs::view::load_summary(&root, id) {
                let test = crate::runs::MetricsFile::read(&root.join(id))
                    .ok()
                    .and_then(|m| m.test);
                out.runs.push(s);
                out.tests.push(test);
            }
        }
        Ok(out)
    }))
}

/// A checkbox per id (newest first, at most 20) that adds it to or removes it from `chosen`.
fn choices(ui: &mut egui::Ui, ids: &[String], chosen: &mut Vec<String>) {
    ui.horizontal_wrapped(|ui| {
        for r in ids.iter().rev().take(20) {
            let mut on = chosen.contains(r);
            if ui.checkbox(&mut on, r).changed() {
                if on {
                    chosen.push(r.clone());
                } else {
                    chosen.retain(|x| x != r);
                }
            }
        }
    });
}

/// The colour of a best value.
const BEST: egui::Color32 = egui::Color32::from_rgb(46, 160, 67);

/// `0.812 [0.769, 0.852]`, or the value alone without an interval.
fn interval(v: Option<f64>, ci: Option<crate::experiment::uncertainty::Interval>) -> String {
    match (v, ci) {
        (Some(v), Some(i)) => format!("{v:.3} [{:.3}, {:.3}]", i.low, i.high),
        (Some(v), None) => format!("{v:.3}"),
        (None, _) => "-".into(),
    }
}

type Metrics = crate::experiment::metrics::Metrics;

/// A column of the reported numbers: name, higher is better, value, interval.
type Col = (
    &'static str,
    bool,
    fn(&Metrics) -> Option<f64>,
    fn(
        &crate::experiment::uncertainty::Intervals,
    ) -> Option<crate::experiment::uncertainty::Interval>,
);

fn columns() -> [Col; 6] {
    [
        ("accuracy", true, |m| Some(m.accuracy), |c| c.accuracy),
        (
            "balanced acc.",
            true,
            |m| Some(m.balanced_accuracy),
            |c| c.balanced_accuracy,
        ),
        ("macro F1", true, |m| Some(m.macro_f1), |c| c.macro_f1),
        ("macro AUC", true, |m| m.macro_auc, |c| c.macro_auc),
        (
            "kappa",
            true,
            |m| m.kappa_quadratic.or(m.kappa),
            |c| c.kappa_quadratic.or(c.kappa),
        ),
        (
            "calibration error",
            false,
            |m| m.calibration.as_ref().map(|c| c.ece),
            |_| None,
        ),
    ]
}

/// What each run reports: its test side when it has one, else its validation side.
fn reported_sides<'a>(
    runs: &'a [RunSummary],
    tests: &'a [Option<Metrics>],
) -> Vec<(&'static str, Option<&'a Metrics>)> {
    runs.iter()
        .zip(tests)
        .map(|(r, t)| match t {
            Some(t) => ("test (scored once)", Some(t)),
            None => ("validation (chose the model)", r.val.as_ref()),
        })
        .collect()
}

/// The best value of each column over the reported sides (`None` everywhere unless `rank`).
fn best_values(
    cols: &[Col],
    sides: &[(&'static str, Option<&Metrics>)],
    rank: bool,
) -> Vec<Option<f64>> {
    cols.iter()
        .map(|(_, higher, f, _)| {
            let vals = sides.iter().filter_map(|(_, m)| m.and_then(f));
            rank.then(|| {
                if *higher {
                    vals.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    vals.fold(f64::INFINITY, f64::min)
                }
            })
        })
        .collect()
}

/// The runs' reported numbers: each run's test side (scored once by the model its selection
/// chose), with 95% bootstrap intervals and calibration error, the best per column marked
/// when every run has one and the runs are comparable. A run without a test side shows its
/// validation numbers, which chose its model: then nothing is ranked.
fn reported_ui(
    ui: &mut egui::Ui,
    id: u64,
    runs: &[RunSummary],
    tests: &[Option<crate::experiment::metrics::Metrics>],
) {
    let sides = reported_sides(runs, tests);
    let all_tested = tests.iter().all(Option::is_some);
    let rank = all_tested && runs.len() > 1 && RunSummary::incomparable(runs).is_none();
    ui.label(
        egui::RichText::new(if rank {
            "Reported numbers: each run's test side with 95% bootstrap intervals (best per column in green)"
        } else if all_tested {
            "Reported numbers: each run's test side with 95% bootstrap intervals"
        } else {
            "Reported numbers: test sides where runs have one, else validation (which chose the model, so optimistic); not ranked"
        })
        .strong(),
    );
    let cols = columns();
    let best = best_values(&cols, &sides, rank);
    egui::Grid::new(("cmp-reported", id))
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("run");
            ui.strong("scored on");
            ui.strong("images");
            for (name, ..) in &cols {
                ui.strong(*name);
            }
            ui.end_row();
            for (r, (side, m)) in runs.iter().zip(&sides) {
                ui.label(&r.id);
                ui.label(*side);
                ui.label(m.map_or("-".into(), |m| m.n.to_string()));
                for ((_, _, f, c), b) in cols.iter().zip(&best) {
                    let v = m.and_then(f);
                    let text =
                        egui::RichText::new(interval(v, m.and_then(|m| m.ci.as_ref()).and_then(c)));
                    if v.is_some_and(|v| b.is_some_and(|b| (b - v).abs() < 1e-12)) {
                        ui.label(text.color(BEST).strong());
                    } else {
                        ui.label(text);
                    }
                }
                ui.end_row();
            }
        });
    ui.add_space(6.0);
}

/// Cross-validations side by side: mean ± sd per metric, and the folds around each mean.
fn cross_validations_ui(
    ui: &mut egui::Ui,
    id: u64,
    cvs: &[(String, crate::experiment::cv::CvSummary)],
) {
    // Cross-validations of the same images are ranked by their held-out means.
    let rank = cvs.len() > 1
        && cvs
            .iter()
            .all(|(_, s)| s.images.iter().sum::<u64>() == cvs[0].1.images.iter().sum::<u64>());
    ui.strong(if rank {
        "Cross-validations: mean ± sd over folds (each image scored once), best mean in green; pooled held-out predictions with 95% bootstrap intervals"
    } else {
        "Cross-validations: mean ± sd over folds (each image scored once); pooled held-out predictions with 95% bootstrap intervals"
    });
    let keys = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"];
    let best: Vec<Option<f64>> = keys
        .iter()
        .map(|k| {
            rank.then(|| {
                cvs.iter()
                    .filter_map(|(_, s)| s.metrics.get(*k).map(|m| m.mean))
                    .fold(f64::NEG_INFINITY, f64::max)
            })
        })
        .collect();
    egui::Grid::new(("cmp-cv", id))
        .striped(true)
        .num_columns(3 + keys.len())
        .show(ui, |ui| {
            ui.strong("cross-validation");
            ui.strong("folds");
            ui.strong("images");
            for k in keys {
                ui.strong(widgets::metric_title(k));
            }
            ui.strong("pooled accuracy");
            ui.strong("pooled macro F1");
            ui.strong("pooled kappa");
            ui.end_row();
            for (name, s) in cvs {
                ui.label(name);
                ui.label(s.folds.to_string());
                ui.label(s.images.iter().sum::<u64>().to_string());
                for (k, b) in keys.iter().zip(&best) {
                    match s.metrics.get(*k) {
                        Some(m) => {
                            let text = egui::RichText::new(format!("{:.3} ± {:.3}", m.mean, m.sd));
                            if b.is_some_and(|b| (b - m.mean).abs() < 1e-12) {
                                ui.label(text.color(BEST).strong());
                            } else {
                                ui.label(text);
                            }
                        }
                        None => {
                            ui.label("-");
                        }
                    }
                }
                let pooled = s.pooled.as_ref();
                let ci = pooled.and_then(|m| m.ci.as_ref());
                ui.label(pooled.map_or("-".into(), |m| {
                    interval(Some(m.accuracy), ci.and_then(|c| c.accuracy))
                }));
                ui.label(pooled.map_or("-".into(), |m| {
                    interval(Some(m.macro_f1), ci.and_then(|c| c.macro_f1))
                }));
                ui.label(pooled.map_or("-".into(), |m| {
                    interval(
                        m.kappa_quadratic.or(m.kappa),
                        ci.and_then(|c| c.kappa_quadratic.or(c.kappa)),
                    )
                }));
                ui.end_row();
            }
        });
    let shown: Vec<(String, &crate::experiment::cv::CvSummary)> =
        cvs.iter().map(|(n, s)| (n.clone(), s)).collect();
    widgets::fold_spread_plot(ui, ("cmp-cv-spread", id), &shown);
}

pub(super) fn compare_ui(app: &mut Notebook, ui: &mut egui::Ui, id: u64, runs: &mut Vec<String>) {
    let root = app.runs_dir();
    let all = app.rt.run_ids(&root);
    if all.is_empty() {
        ui.label("No runs yet.");
        return;
    }
    ui.label("Runs to compare:");
    choices(ui, &all, runs);
    let cvs = app.rt.cross_validation_ids(&root);
    if !cvs.is_empty() {
        ui.label("Cross-validations to compare (the spread over folds shows how big a difference really is):");
        choices(ui, &cvs, runs);
    }
    let rt = app.rt.compare_or_insert_with(id, || CompareRuntime {
        selected: Vec::new(),
        loaded: Loading::Idle,
        stale: true,
    });
    if rt.stale || rt.selected != *runs {
        rt.loaded = load_summaries(ui.ctx(), root.clone(), runs.clone());
        rt.selected = runs.clone();
        rt.stale = false;
    }
    let loaded = match &rt.loaded {
        Loading::Ready(l) => l,
        Loading::Busy(_) => {
            ui.spinner();
            return;
        }
        Loading::Failed(e) => {
            error_label(ui, e);
            return;
        }
        Loading::Idle => return,
    };
    if !loaded.cross_validations.is_empty() {
        cross_validations_ui(ui, id, &loaded.cross_validations);
    }
    let tests = &loaded.tests;
    let loaded = &loaded.runs;
    if loaded.is_empty() {
        return;
    }
    let curve =
        |f: fn(&crate::runs::view::EpochPoint) -> Option<f64>| -> Vec<(String, Vec<[f64; 2]>)> {
            loaded
                .iter()
                .map(|s| {
                    let pts = s
                        .curves
                        .iter()
                        .filter_map(|c| f(c).map(|v| [f64::from(c.epoch), v]))
                        .collect();
                    (s.id.clone(), pts)
                })
                .collect()
        };
    let losses = curve(|c| c.val_loss);
    let accuracies = curve(|c| c.val_accuracy);
    let signature = |s: &[(String, Vec<[f64; 2]>)]| {
        widgets::series_signature(s.iter().map(|(n, p)| (n.as_str(), p.as_slice())))
    };
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    // One legend for both charts, under them (run names are long: inside, they would cover
    // the curves); hovering a run picks it out in both.
    let legend_id = egui::Id::unique(("cmp-legend", id));
    let picked = widgets::legend_hovered(ui, legend_id);
    ui.horizontal(|ui| {
        widgets::refitting_plot(ui, egui::Id::unique(("cmp-loss", id)), signature(&losses))
            .width(width)
            .height(200.0)
            .x_axis_label("epoch")
            .y_axis_label("validation loss")
            .show(ui, |p| {
                widgets::marked_series_picking(
                    p,
                    losses.iter().map(|(n, pts)| (n.as_str(), pts.as_slice())),
                    picked,
                );
            });
        widgets::refitting_plot(
            ui,
            egui::Id::unique(("cmp-acc", id)),
            signature(&accuracies),
        )
        .width(width)
        .height(200.0)
        .x_axis_label("epoch")
        .y_axis_label("validation accuracy")
        .include_y(0.0)
        .include_y(1.0)
        .show(ui, |p| {
            widgets::marked_series_picking(
                p,
                accuracies
                    .iter()
                    .map(|(n, pts)| (n.as_str(), pts.as_slice())),
                picked,
            );
        });
    });
    let names: Vec<String> = loaded.iter().map(|s| s.id.clone()).collect();
    widgets::legend_below(ui, legend_id, &names, 2.0 * width);
    reported_ui(ui, id, loaded, tests);
    widgets::compare_table(ui, ("cmp-table", id), loaded);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(right: usize) -> Metrics {
        let labels = vec!["a".to_owned(), "b".to_owned()];
        let targets: Vec<crate::experiment::metrics::Target> = (0..20)
            .map(|i| crate::experiment::metrics::Target::Class(i % 2))
            .collect();
        let probs: Vec<Vec<f32>> = (0..20)
            .map(|i| {
                let correct = i < right;
                let p = if (i % 2 == 1) == correct { 0.8 } else { 0.2 };
                vec![1.0 - p, p]
            })
            .collect();
        crate::experiment::uncertainty::score(
            crate::experiment::metrics::Task::Binary,
            &labels,
            &targets,
            &[],
            &probs,
            7,
        )
    }

    fn run(id: &str, val: Metrics) -> RunSummary {
        RunSummary {
            id: id.into(),
            config: Default::default(),
            state: crate::runs::RunState::Finished,
            state_message: None,
            device: None,
            curves: Vec::new(),
            val: Some(val),
            best_epoch: Some(1),
            dataset_root: None,
            task: None,
            labels: Vec::new(),
        }
    }

    /// The best run is the one with the best test side, not the best validation side (which
    /// chose each model), and nothing is ranked when a run has no test side.
    #[test]
    fn best_is_marked_on_the_test_sides() {
        let runs = [run("a", scored(19)), run("b", scored(12))];
        let tests = [Some(scored(11)), Some(scored(17))];
        let sides = reported_sides(&runs, &tests);
        assert!(sides.iter().all(|(s, _)| s.starts_with("test")));
        let cols = columns();
        let best = best_values(&cols, &sides, true);
        assert_eq!(best[0], Some(tests[1].as_ref().unwrap().accuracy));
        assert!(tests[1].as_ref().unwrap().ci.is_some(), "with intervals");
        let partial = [Some(scored(11)), None];
        let sides = reported_sides(&runs, &partial);
        assert_eq!(sides[1].0, "validation (chose the model)");
    }
}
