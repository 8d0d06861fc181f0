//! The Split cell: patient split parameters, counts per side and the leakage check.

use eframe::egui;

use crate::ui::cells::{Loading, Notebook};
use crate::ui::widgets;

use super::*;

pub(super) fn split_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    config: &mut crate::dataset::split::SplitConfig,
) {
    ui.horizontal(|ui| {
        ui.label("Test");
        ui.add(egui::Slider::new(&mut config.test, 0.0..=0.5).fixed_decimals(2))
            .on_hover_text("Share of images for the test side (whole patients)");
        ui.label("Validation");
        ui.add(egui::Slider::new(&mut config.val, 0.0..=0.5).fixed_decimals(2))
            .on_hover_text("Share of images for the validation side (whole patients)");
        ui.label("Seed");
        ui.add(egui::DragValue::new(&mut config.seed))
            .on_hover_text("The same seed always gives the same split");
        ui.checkbox(&mut config.by_image, "by image (leaky)")
            .on_hover_text(
                "Split images one by one even though patients are known: a model then meets the \
             patients of its validation images in training. Train once on this split and once \
             on a patient split, and Compare: the gap is how much an image split flatters it.",
            );
    });
    let Some(rt) = app.rt.split(id) else {
        ui.label("Press Run to split the dataset above by patient.");
        return;
    };
    match &rt.data {
        Loading::Busy(_) => {
            ui.spinner();
        }
        Loading::Failed(e) => error_label(ui, e),
        Loading::Ready(r) => {
            let table = crate::explore::table::split_table(&r.report);
            widgets::table(ui, ("split-table", id), &table);
            // Sides asked for but left empty are said here, not first by the Train cell.
            for warning in r.report.empty_sides(config, !r.manifest.copies.is_empty()) {
                ui.colored_label(ui.visuals().warn_fg_color, format!("Warning: {warning}"));
            }
            if config.by_image && !r.report.leaks.is_empty() {
                ui.colored_label(
                    ui.visuals().warn_fg_color,
                    format!(
                        "Split by image on purpose: {} patients have images on more than one side, \
                         so validation scores will be optimistic. Compare with a patient split.",
                        r.report.leaks.len()
                    ),
                );
            } else if r.report.passed() {
                ui.colored_label(
                    egui::Color32::from_rgb(46, 160, 67),
                    "Leakage check passed: no patient and no copy of an image is on more than one side",
                );
            } else {
                error_label(
                    ui,
                    &format!(
                        "Leakage: {} patients and {} groups of identical images on more than one side",
                        r.report.leaks.len(),
                        r.report.copy_leaks.len()
                    ),
                );
                for l in &r.report.leaks {
                    ui.label(format!("patient {} ({} images)", l.patient, l.images));
                }
                for l in &r.report.copy_leaks {
                    ui.label(format!(
                        "identical images: {}",
                        crate::explore::table::clip_chars(&l.paths.join(", "), 200)
                    ));
                }
            }
            let copies = r.manifest.copies.len();
            if copies > 0 {
                ui.label(format!(
                    "{copies} groups of identical images were each kept on one side."
                ));
            }
            if r.report.group_by == crate::dataset::split::GroupBy::Image {
                ui.label("The dataset has no patient ids: images were split individually.");
            }
        }
        Loading::Idle => {}
    }
}
