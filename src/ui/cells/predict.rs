//! The Predict cell: batch prediction of a folder, images or a manifest with a run. Images or
//! a folder dropped on the cell are classified at once; every thumbnail opens the inspector
//! with the probabilities and the saliency overlay.

use std::path::PathBuf;

use eframe::egui;

use crate::ui::cells::{Loading, Notebook};

use super::*;
use crate::ui::widgets;

pub(super) fn predict_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    run: &mut Option<String>,
    input: &mut String,
    output: &mut String,
    tta: &mut bool,
) {
    let runs_dir = app.runs_dir();
    let runs = app.rt.run_ids(&runs_dir);
    egui::Grid::new(("predict", id))
        .num_columns(2)
        .show(ui, |ui| {
            ui.label("Run");
            runs_combo(ui, ("predict-run", id), &runs, run, "the Train cell above");
            ui.end_row();
            ui.label("Images");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::multiline(input)
                        .desired_rows(1)
                        .desired_width(360.0)
                        .hint_text("folder, image or manifest CSV (one per line)"),
                )
                .on_hover_text("What to predict: a folder, images or a manifest CSV, one per line. Or drop images or a folder on this cell.");
                if widgets::DESKTOP && ui.button("Browse…").clicked() {
                    match widgets::pick(widgets::folder_dialog) {
                        widgets::Picked::Path(dir) => {
                            *input = crate::workbook::stored_path(&dir, &app.base_dir());
                        }
                        widgets::Picked::Unavailable => app.rt.note(true, widgets::NO_DIALOG),
                        widgets::Picked::Cancelled => {}
                    }
                }
            });
            ui.end_row();
            ui.label("Output CSV");
            ui.add(egui::TextEdit::singleline(output).desired_width(360.0))
                .on_hover_text("Probabilities and predicted label per image");
            ui.end_row();
            ui.label("");
            ui.checkbox(tta, "Average over the 8 orientations (8× slower)").on_hover_text(
                "Test-time augmentation: each image is classified in every flip and quarter turn and the probabilities averaged. Helps models trained with rotation augmentation (fine-tuned), not a probe fitted on upright images.",
            );
            ui.end_row();
        });
    let hovering = ui.ctx().input(|i| !i.raw.hovered_files.is_empty());
    let hint = egui::RichText::new(
        "Drop images or a folder on this cell to classify them with the run at once.",
    );
    ui.label(if hovering { hint.strong() } else { hint.weak() });
    let Some(state) = app.rt.predict_mut(id) else {
        return;
    };
    let view = match state {
        Loading::Busy(_) => {
            ui.spinner();
            return;
        }
        Loading::Failed(e) => {
            error_label(ui, e);
            return;
        }
        Loading::Idle => return,
        Loading::Ready(view) => view,
    };
    ui.label(&view.summary);
    // Every image with its label and its three most likely classes as bars (in the class
    // colours of the legend above); click one for all its probabilities.
    let items: Vec<widgets::Tile> = view
        .rows
        .iter()
        .map(|(path, label, probs)| {
            let top = crate::model::decision::top_k(probs, 3);
            let best = top.first().map_or(f32::NAN, |t| t.1);
            let hover = top
                .iter()
                .map(|&(c, p)| format!("{} {p:.2}", view.labels.get(c).map_or("?", String::as_str)))
                .collect::<Vec<_>>()
                .join("\n");
            widgets::Tile {
                path: path.clone(),
                caption: format!("{label} ({best:.2})"),
                selected: false,
                top,
                hover: Some(hover),
            }
        })
        .collect();
    legend(ui, &view.labels);
    let inspected = view.inspected.as_ref().map(|i| i.row);
    let mut clicked = None;
    widgets::gallery(
        ui,
        ("predict-gallery", id),
        &mut app.rt.thumbs,
        items.len(),
        |k| widgets::Tile {
            selected: inspected == Some(k),
            ..items[k].clone()
        },
        &mut |k| clicked = Some(k),
    );
    let ctx = ui.ctx().clone();
    if let Some(k) = clicked {
        let image = items[k].path.clone();
        let run_dir = match app.rt.predict(id) {
            Some(Loading::Ready(view)) => view.run_dir.clone(),
            _ => return,
        };
        let opened = (inspected != Some(k))
            .then(|| Inspected::open(&ctx, &app.rt.compute, k, image, run_dir));
        if let Some(Loading::Ready(view)) = app.rt.predict_mut(id) {
            view.inspected = opened;
        }
    }
    let Some(Loading::Ready(view)) = app.rt.predict_mut(id) else {
        return;
    };
    let labels = &view.labels;
    if let Some(inspected) = &mut view.inspected
        && let Some((path, label, probs)) = view.rows.get(inspected.row)
    {
        ui.separator();
        inspected.show(ui, |ui| {
            ui.label(egui::RichText::new(path.display().to_string()).monospace());
            ui.label(egui::RichText::new(format!("predicted: {label}")).strong());
            widgets::probability_bars(ui, labels, probs, 5);
        });
    }
}

/// What a Predict cell shows after a batch prediction.
pub struct PredictView {
    pub summary: String,
    pub labels: Vec<String>,
    /// Image, predicted label(s), probabilities.
    pub rows: Vec<(PathBuf, String, Vec<f32>)>,
    /// The run that predicted (its model explains the saliency maps).
    pub run_dir: PathBuf,
    /// The image open in the inspector.
    pub inspected: Option<Inspected>,
}

/// The class colours of the probability bars, in one line.
fn legend(ui: &mut egui::Ui, labels: &[String]) {
    ui.horizontal_wrapped(|ui| {
        ui.label(egui::RichText::new("Bars: the three most likely classes").weak());
        for (c, l) in labels.iter().enumerate() {
            let (r, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().rect_filled(r, 2.0, widgets::series_color(c));
            ui.label(egui::RichText::new(l).small());
        }
    });
}
