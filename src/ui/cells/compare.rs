//! The Compare cell: runs side by side.

use std::path::PathBuf;

use eframe::egui;
use egui_plot::{Legend, Line, PlotPoints};

use crate::runs::view::RunSummary;

use crate::ui::app::{Loading, Task as BgTask, WorkbenchApp};
use crate::ui::widgets;

use super::*;

pub struct CompareRuntime {
    pub selected: Vec<String>,
    /// Summaries of `selected`, read from disk in the background.
    pub loaded: Loading<Vec<RunSummary>>,
    pub stale: bool,
}

/// Reads run summaries in the background (runs that cannot be read are left out).
pub(super) fn load_summaries(
    ctx: &egui::Context,
    root: PathBuf,
    runs: Vec<String>,
) -> Loading<Vec<RunSummary>> {
    Loading::Busy(BgTask::spawn(ctx, "compare", move || {
        Ok(runs
            .iter()
            .filter_map(|r| crate::runs::view::load_summary(&root, r).ok())
            .collect())
    }))
}

pub(super) fn compare_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    runs: &mut Vec<String>,
) {
    let root = app.runs_dir();
    let all = app.rt.run_ids(&root);
    if all.is_empty() {
        ui.label("No runs yet.");
        return;
    }
    ui.label("Runs to compare:");
    ui.horizontal_wrapped(|ui| {
        for r in all.iter().rev().take(20) {
            let mut on = runs.contains(r);
            if ui.checkbox(&mut on, r).changed() {
                if on {
                    runs.push(r.clone());
                } else {
                    runs.retain(|x| x != r);
                }
            }
        }
    });
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
                for (name, pts) in &losses {
                    p.line(Line::new(name.clone(), PlotPoints::from(pts.clone())));
                }
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
            for (name, pts) in &accuracies {
                p.line(Line::new(name.clone(), PlotPoints::from(pts.clone())));
            }
        });
    });
    widgets::compare_table(ui, ("cmp-table", id), loaded);
}
