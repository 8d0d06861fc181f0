//! The Note cell: markdown text.

use eframe::egui;

pub(super) fn note_ui(ui: &mut egui::Ui, id: u64, text: &mut String) {
    let editing_id = egui::Id::unique(("note-edit", id));
    let mut editing = ui
        .data(|d| d.get_temp::<bool>(editing_id))
        .unwrap_or(text.is_empty());
    if editing {
        ui.add(
            egui::TextEdit::multiline(text)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("Notes (markdown: # heading, - list, **bold**)"),
        );
        if ui.button("Done").clicked() {
            editing = false;
        }
    } else {
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("# ") {
                ui.label(egui::RichText::new(h).heading());
            } else if let Some(h) = line.strip_prefix("## ") {
                ui.label(egui::RichText::new(h).strong().size(16.0));
            } else if let Some(item) = line.strip_prefix("- ") {
                ui.label(format!("  • {item}"));
            } else {
                ui.label(line.replace("**", ""));
            }
        }
        if ui
            .small_button("Edit")
            .on_hover_text("Edit this note")
            .clicked()
        {
            editing = true;
        }
    }
    ui.data_mut(|d| d.insert_temp(editing_id, editing));
}
