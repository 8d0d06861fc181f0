//! Tables: striped, sortable, long cells cut; the Compare cell's metrics table.

use eframe::egui;

use crate::explore::Table;
use crate::runs::view::RunSummary;

/// A table drawn as a striped grid under its title.
pub fn table(ui: &mut egui::Ui, id: impl std::hash::Hash + std::fmt::Debug, table: &Table) {
    let mut no_sort = (usize::MAX, false);
    draw_table(ui, id, table, &mut no_sort, false);
}

/// A table whose columns sort when their header is clicked (numbers numerically).
pub fn sortable_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    table: &Table,
    sort: &mut (usize, bool),
) {
    draw_table(ui, id, table, sort, true);
}

fn sort_key(s: &str) -> Result<f64, String> {
    s.trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| s.to_lowercase())
}

fn draw_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    table: &Table,
    sort: &mut (usize, bool),
    sortable: bool,
) {
    ui.label(egui::RichText::new(&table.title).strong());
    let mut rows: Vec<&Vec<String>> = table.rows.iter().collect();
    if sort.0 != usize::MAX {
        let (col, desc) = *sort;
        rows.sort_by(|a, b| {
            let (ka, kb) = (
                sort_key(a.get(col).map_or("", String::as_str)),
                sort_key(b.get(col).map_or("", String::as_str)),
            );
            let o = match (ka, kb) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                (Err(x), Err(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => std::cmp::Ordering::Less,
                (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            };
            if desc { o.reverse() } else { o }
        });
    }
    egui::Grid::new(id)
        .striped(true)
        .spacing([18.0, 3.0])
        .show(ui, |ui| {
            let has_header = table.headers.iter().any(|h| !h.is_empty());
            if has_header {
                for (i, h) in table.headers.iter().enumerate() {
                    let arrow = if sort.0 == i {
                        if sort.1 { " (desc)" } else { " (asc)" }
                    } else {
                        ""
                    };
                    let text = egui::RichText::new(format!("{h}{arrow}")).strong();
                    if sortable {
                        if ui
                            .add(egui::Label::new(text).sense(egui::Sense::click()))
                            .on_hover_text("Sort by this column")
                            .clicked()
                        {
                            *sort = if sort.0 == i { (i, !sort.1) } else { (i, true) };
                        }
                    } else {
                        ui.label(text);
                    }
                }
                ui.end_row();
            }
            for row in rows {
                for cell in row {
                    // A long cell (a path, a message) is cut, whole on hover: the table
                    // never pushes the notebook wider than the window.
                    match shorten(cell, TABLE_CELL_CHARS) {
                        Some(short) => ui.label(short).on_hover_text(cell),
                        None => ui.label(cell),
                    };
                }
                ui.end_row();
            }
        });
    ui.add_space(6.0);
}

/// A config setting shown in Compare: its name and how to read it from a run.
type ConfigRow = (&'static str, fn(&RunSummary) -> String);

/// Characters a table cell shows before it is cut (see [`shorten`]).
const TABLE_CELL_CHARS: usize = 90;

/// `text` cut to `max` characters with an ellipsis, or `None` when it fits.
pub fn shorten(text: &str, max: usize) -> Option<String> {
    (text.chars().count() > max).then(|| {
        text.chars()
            .take(max.saturating_sub(1))
            .chain(['…'])
            .collect()
    })
}

/// Validation metrics of several runs, and their configs. Not ranked: the validation side chose
/// each run's kept epoch and settings, so its best would flatter (the reported numbers are
/// ranked in the Compare cell's table of test sides).
pub fn compare_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug + Copy,
    runs: &[RunSummary],
) {
    type Col = (&'static str, fn(&RunSummary) -> Option<f64>);
    let cols: [Col; 6] = [
        ("accuracy", |r| r.val.as_ref().map(|m| m.accuracy)),
        ("balanced acc.", |r| {
            r.val.as_ref().map(|m| m.balanced_accuracy)
        }),
        ("macro F1", |r| r.val.as_ref().map(|m| m.macro_f1)),
        ("macro AUC", |r| r.val.as_ref().and_then(|m| m.macro_auc)),
        ("val loss", |r| r.val.as_ref().and_then(|m| m.loss)),
        ("best epoch", |r| r.best_epoch.map(f64::from)),
    ];
    // Runs of different datasets or tasks are shown side by side and said to be so.
    if let Some(why) = RunSummary::incomparable(runs) {
        ui.colored_label(
            egui::Color32::from_rgb(230, 126, 34),
            format!("Not comparable: {why}. No best value is marked."),
        );
    }
    ui.label(
        egui::RichText::new(
            "Validation metrics (the side that chose each run's epoch: not ranked)",
        )
        .strong(),
    );
    egui::Grid::new((id, "metrics"))
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("run");
            ui.strong("state");
            for (name, _) in &cols {
                ui.strong(*name);
            }
            ui.end_row();
            for r in runs {
                ui.label(&r.id);
                ui.label(format!("{:?}", r.state).to_lowercase());
                for (name, f) in &cols {
                    match f(r) {
                        Some(v) if *name == "best epoch" => ui.label(format!("{v:.0}")),
                        Some(v) => ui.label(format!("{v:.4}")),
                        None => ui.label("-"),
                    };
                }
                ui.end_row();
            }
        });
    ui.add_space(6.0);
    ui.label(egui::RichText::new("Configurations").strong());
    egui::Grid::new((id, "configs"))
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("setting");
            for r in runs {
                ui.strong(&r.id);
            }
            ui.end_row();
            let rows: [ConfigRow; 13] = [
                ("dataset", |r| {
                    r.dataset_root
                        .as_ref()
                        .and_then(|p| p.file_name())
                        .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned())
                }),
                ("task", |r| {
                    r.task.map_or_else(|| "?".to_owned(), |t| format!("{t:?}"))
                }),
                ("mode", |r| format!("{:?}", r.config.mode)),
                ("backbone", |r| r.config.backbone.short_name().to_owned()),
                ("device", |r| r.device.clone().unwrap_or_default()),
                ("epochs", |r| r.config.epochs.to_string()),
                ("batch size", |r| r.config.batch_size.to_string()),
                ("learning rate", |r| {
                    format!("{:.1e}", r.config.learning_rate)
                }),
                ("weight decay", |r| format!("{:.1e}", r.config.weight_decay)),
                ("optimizer", |r| format!("{:?}", r.config.optimizer)),
                ("schedule", |r| format!("{:?}", r.config.schedule)),
                ("imbalance", |r| format!("{:?}", r.config.imbalance)),
                ("image size", |r| r.config.preprocess.size.to_string()),
            ];
            for (name, f) in rows {
                ui.label(name);
                let values: Vec<String> = runs.iter().map(f).collect();
                let differs = values.iter().any(|v| v != &values[0]);
                for v in values {
                    if differs {
                        ui.label(egui::RichText::new(v).strong())
                    } else {
                        ui.label(v)
                    };
                }
                ui.end_row();
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        assert_eq!(shorten("short", 10), None);
        let cut = shorten(&"x".repeat(200), 90).unwrap();
        assert_eq!(cut.chars().count(), 90);
        assert!(cut.ends_with('…'));
    }
}
