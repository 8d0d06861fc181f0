//! The Compare cell: runs side by side, and cross-validations with their spread over folds.

use std::path::PathBuf;

use eframe::egui;
use egui_plot::Legend;

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
                out.runs.push(s);
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

/// Cross-validations side by side: mean ± sd per metric, and the folds around each mean.
fn cross_validations_ui(
    ui: &mut egui::Ui,
    id: u64,
    cvs: &[(String, crate::experiment::cv::CvSummary)],
) {
    ui.strong("Cross-validations: mean ± sd over folds (each image scored once)");
    let keys = ["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"];
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
            ui.end_row();
            for (name, s) in cvs {
                ui.label(name);
                ui.label(s.folds.to_string());
                ui.label(s.images.iter().sum::<u64>().to_string());
                for k in keys {
                    ui.label(
                        s.metrics
                            .get(k)
                            .map_or("-".into(), |m| format!("{:.3} ± {:.3}", m.mean, m.sd)),
                    );
                }
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
    ui.horizontal(|ui| {
        widgets::refitting_plot(ui, egui::Id::unique(("cmp-loss", id)), signature(&losses))
            .width(width)
            .height(200.0)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .y_axis_label("validation loss")
            .show(ui, |p| {
                widgets::marked_series(
                    p,
                    losses.iter().map(|(n, pts)| (n.as_str(), pts.as_slice())),
                );
            });
        widgets::refitting_plot(
            ui,
            egui::Id::unique(("cmp-acc", id)),
            signature(&accuracies),
        )
        .width(width)
        .height(200.0)
        .legend(Legend::default())
        .x_axis_label("epoch")
        .y_axis_label("validation accuracy")
        .include_y(0.0)
        .include_y(1.0)
        .show(ui, |p| {
            widgets::marked_series(
                p,
                accuracies
                    .iter()
                    .map(|(n, pts)| (n.as_str(), pts.as_slice())),
            );
        });
    });
    widgets::compare_table(ui, ("cmp-table", id), loaded);
}
