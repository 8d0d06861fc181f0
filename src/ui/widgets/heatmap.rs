//! The confusion matrix as a clickable heatmap.

use eframe::egui;

use crate::experiment::metrics::ConfusionMatrix;

/// The confusion matrix's column labels for cells `fit` characters wide: the names when they
/// fit, else abbreviations when those stay distinct, else numbers (`true` then: the row labels
/// carry the same numbers). Labels sharing a prefix ("digit 1", "digit 2") never all read
/// "dig.".
pub fn column_labels(labels: &[String], fit: usize) -> (Vec<String>, bool) {
    if labels.iter().all(|l| l.chars().count() <= fit) {
        return (labels.to_vec(), false);
    }
    let short: Vec<String> = labels
        .iter()
        .map(|l| {
            if l.chars().count() > fit {
                l.chars().take(fit.saturating_sub(1)).chain(['.']).collect()
            } else {
                l.clone()
            }
        })
        .collect();
    let distinct = short.iter().collect::<std::collections::HashSet<_>>().len() == short.len();
    if distinct {
        (short, false)
    } else {
        ((1..=labels.len()).map(|k| k.to_string()).collect(), true)
    }
}

/// Confusion matrix as a heatmap: rows are true labels, columns predicted ones. Returns the
/// clicked cell.
pub fn confusion_heatmap(
    ui: &mut egui::Ui,
    cm: &ConfusionMatrix,
    normalised: bool,
    selected: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let n = cm.labels.len().max(1);
    let cell = (300.0 / n as f32).clamp(28.0, 64.0);
    // Column labels get the cell's width; the full names are in the row labels (numbered
    // when the columns are).
    let (columns, numbered) = column_labels(&cm.labels, ((cell / 7.0) as usize).max(3));
    let row_labels: Vec<String> = if numbered {
        cm.labels
            .iter()
            .enumerate()
            .map(|(k, l)| format!("{} {l}", k + 1))
            .collect()
    } else {
        cm.labels.clone()
    };
    let label_w = row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4) as f32
        * 7.0
        + 16.0;
    // The "predicted" header above the cells, one line of column labels below them.
    let size = egui::vec2(
        label_w + cell * n as f32 + 10.0,
        24.0 + cell * n as f32 + 24.0,
    );
    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::click());
    let painter = ui.painter_at(rect);
    let origin = rect.min + egui::vec2(label_w, 24.0);
    let values = if normalised {
        cm.row_normalised()
    } else {
        cm.counts
            .iter()
            .map(|r| r.iter().map(|&c| c as f64).collect())
            .collect()
    };
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let text_color = ui.visuals().text_color();
    let font = egui::FontId::proportional(12.0);
    painter.text(
        origin + egui::vec2(cell * n as f32 / 2.0, -14.0),
        egui::Align2::CENTER_CENTER,
        "predicted",
        egui::FontId::proportional(13.0),
        text_color,
    );
    painter.text(
        rect.min + egui::vec2(4.0, 10.0),
        egui::Align2::LEFT_CENTER,
        "true",
        egui::FontId::proportional(13.0),
        text_color,
    );
    for (i, row) in values.iter().enumerate() {
        painter.text(
            origin + egui::vec2(-6.0, cell * (i as f32 + 0.5)),
            egui::Align2::RIGHT_CENTER,
            &row_labels[i],
            font.clone(),
            text_color,
        );
        for (j, v) in row.iter().enumerate() {
            let t = (v / max) as f32;
            let color = egui::Color32::from_rgb(
                (235.0 - t * 190.0) as u8,
                (240.0 - t * 150.0) as u8,
                (250.0 - t * 90.0) as u8,
            );
            let r = egui::Rect::from_min_size(
                origin + egui::vec2(cell * j as f32, cell * i as f32),
                egui::vec2(cell - 2.0, cell - 2.0),
            );
            painter.rect_filled(r, 2.0, color);
            if selected == Some((i, j)) {
                painter.rect_stroke(
                    r,
                    2.0,
                    egui::Stroke::new(2.5, egui::Color32::from_rgb(230, 126, 34)),
                    egui::StrokeKind::Inside,
                );
            }
            let label = if normalised {
                format!("{v:.2}")
            } else {
                format!("{}", cm.counts[i][j])
            };
            let fg = if t > 0.55 {
                egui::Color32::WHITE
            } else {
                egui::Color32::BLACK
            };
            painter.text(
                r.center(),
                egui::Align2::CENTER_CENTER,
                label,
                font.clone(),
                fg,
            );
        }
    }
    for (j, short) in columns.into_iter().enumerate() {
        let pos = origin + egui::vec2(cell * (j as f32 + 0.5), cell * n as f32 + 4.0);
        painter.text(
            pos,
            egui::Align2::CENTER_TOP,
            short,
            font.clone(),
            text_color,
        );
    }
    let clicked = response
        .clicked()
        .then(|| response.interact_pointer_pos())
        .flatten()
        .and_then(|p| {
            let d = p - origin;
            let (i, j) = ((d.y / cell).floor(), (d.x / cell).floor());
            (i >= 0.0 && j >= 0.0 && (i as usize) < n && (j as usize) < n)
                .then_some((i as usize, j as usize))
        });
    response.on_hover_text("Click a cell to see its images");
    clicked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_labels_stay_distinct() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // Names that fit are kept.
        assert_eq!(
            column_labels(&names(&["all", "hem"]), 5),
            (names(&["all", "hem"]), false)
        );
        // Distinct abbreviations are used.
        assert_eq!(
            column_labels(&names(&["Basophil", "Eosinophil", "Monocyte"]), 4),
            (names(&["Bas.", "Eos.", "Mon."]), false)
        );
        // A shared prefix gives numbers instead of "dig." three times.
        assert_eq!(
            column_labels(&names(&["digit 1", "digit 2", "digit 3"]), 4),
            (names(&["1", "2", "3"]), true)
        );
    }
}
