//! The Predict cell: batch prediction of a folder with a run.

use eframe::egui;

use crate::ui::app::{Loading, WorkbenchApp};

use super::*;
use crate::ui::widgets;

pub(super) fn predict_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    run: &mut Option<String>,
    input: &mut String,
    output: &mut String,
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
                    egui::TextEdit::singleline(input)
                        .desired_width(360.0)
                        .hint_text("folder, image or manifest CSV"),
                )
                .on_hover_text("What to predict");
                if ui.button("Browse…").clicked() {
                    match widgets::pick(|| rfd::FileDialog::new().pick_folder()) {
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
        });
    match app.rt.predicts.get(&id) {
        Some(Loading::Busy(_)) => {
            ui.spinner();
        }
        Some(Loading::Ready(s)) => {
            ui.label(s);
        }
        Some(Loading::Failed(e)) => error_label(ui, e),
        _ => {}
    }
}
