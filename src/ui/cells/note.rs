//! The Note cell: markdown text.

use eframe::egui;

pub(super) fn note_ui(ui: &mut egui::Ui, id: u64, text: &mut String) {
    let editing_id = egui::Id::unique(("note-edit", id));
    let mut editing = ui
        .data(|d| d.get_temp::<bool>(editing_id))
        .unwrap_or(text.is_empty());
    if editing {
        let edit = ui.add(
            egui::TextEdit::multiline(text)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("Notes (markdown: # heading, ## subheading, - list, **bold**)"),
        );
        // Typing goes to the note as soon as it opens for editing.
        let focus_id = egui::Id::unique(("note-focus", id));
        if ui.data_mut(|d| d.remove_temp::<bool>(focus_id)).is_some() {
            edit.request_focus();
        }
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
                ui.horizontal_wrapped(|ui| {
                    ui.label("  •");
                    inline_markdown(ui, item);
                });
            } else {
                ui.horizontal_wrapped(|ui| inline_markdown(ui, line));
            }
        }
        if ui
            .small_button("Edit")
            .on_hover_text("Edit this note")
            .clicked()
        {
            editing = true;
            ui.data_mut(|d| d.insert_temp(egui::Id::unique(("note-focus", id)), true));
        }
    }
    ui.data_mut(|d| d.insert_temp(editing_id, editing));
}

/// The spans of a line: `**bold**` parts alternate with plain ones (an unclosed `**` is kept
/// as written).
pub fn bold_spans(line: &str) -> Vec<(bool, &str)> {
    let parts: Vec<&str> = line.split("**").collect();
    if parts.len().is_multiple_of(2) {
        // An odd number of markers: the last one is not closed.
        return vec![(false, line)];
    }
    parts
        .into_iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(i, p)| (i % 2 == 1, p))
        .collect()
}

fn inline_markdown(ui: &mut egui::Ui, line: &str) {
    ui.spacing_mut().item_spacing.x = 0.0;
    for (bold, span) in bold_spans(line) {
        if bold {
            ui.label(egui::RichText::new(span).strong());
        } else {
            ui.label(span);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bold_spans_alternate_and_an_unclosed_marker_stays() {
        assert_eq!(
            super::bold_spans("a **b** c"),
            [(false, "a "), (true, "b"), (false, " c")]
        );
        assert_eq!(super::bold_spans("**all**"), [(true, "all")]);
        assert_eq!(super::bold_spans("2 ** 3"), [(false, "2 ** 3")]);
    }
}
