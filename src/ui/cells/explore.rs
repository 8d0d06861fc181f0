//! The Explore cell: counts and charts of the dataset above.

use std::sync::Arc;

use eframe::egui;
use egui_plot::{Bar, BarChart, Plot};

use crate::explore::{ExploreReport, Table};

use crate::ui::app::{Command, WorkbenchApp};
use crate::ui::widgets;

use super::*;

/// Per-Explore-cell UI state.
#[derive(Default)]
pub struct ExploreUi {
    pub sort: std::collections::HashMap<usize, (usize, bool)>,
}

pub(super) fn explore_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64) {
    let Some(dataset) = app.workbook.inputs(id).dataset else {
        ui.label("Add a Dataset cell above this one.");
        return;
    };
    let Some(data) = loaded(app, dataset) else {
        ui.label("Waiting for the dataset above…");
        return;
    };
    let report: Arc<ExploreReport> = data.report.clone();
    let filter_label = app.rt.dataset(dataset).and_then(|d| d.filter.label.clone());
    ui.horizontal_wrapped(|ui| {
        ui.label(egui::RichText::new("Images per label").strong());
        ui.label("(click a bar to filter the gallery)");
    });
    let bars: Vec<Bar> = report
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut b = Bar::new(i as f64, l.images as f64)
                .name(&l.label)
                .width(0.7);
            if filter_label.as_deref() == Some(l.label.as_str()) {
                b = b.fill(egui::Color32::from_rgb(230, 126, 34));
            }
            b
        })
        .collect();
    let names: Vec<String> = report.labels.iter().map(|l| l.label.clone()).collect();
    let clicked = category_bars(
        ui,
        ("labels-plot", id),
        220.0,
        &names,
        BarChart::new("images", bars).color(egui::Color32::from_rgb(52, 101, 164)),
        "images",
    );
    if let Some(i) = clicked {
        // A click on the filtered bar clears the filter.
        let label = names[i].clone();
        let new = (filter_label.as_deref() != Some(label.as_str())).then_some(label);
        app.push(Command::FilterLabel {
            dataset,
            label: new,
        });
    }
    if report.summary.patients.is_some() {
        ui.label(egui::RichText::new("Patients per label").strong());
        let bars: Vec<Bar> = report
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Bar::new(i as f64, l.patients.unwrap_or(0) as f64)
                    .name(&l.label)
                    .width(0.7)
            })
            .collect();
        category_bars(
            ui,
            ("patients-plot", id),
            160.0,
            &names,
            BarChart::new("patients", bars).color(egui::Color32::from_rgb(46, 139, 87)),
            "patients",
        );
    }
    if let Some(pp) = &report.images_per_patient {
        ui.label(egui::RichText::new("Images per patient").strong());
        let bars: Vec<Bar> = pp
            .histogram
            .iter()
            .map(|(n, c)| Bar::new(*n as f64, *c as f64).width(0.9))
            .collect();
        Plot::new(("ipp-plot", id))
            .height(140.0)
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .x_axis_label("images per patient")
            .y_axis_label("patients")
            .show(ui, |p| p.bar_chart(BarChart::new("patients", bars)));
    }
    ui.add_space(6.0);
    let tables: Vec<Table> = report.tables();
    let ex = app.rt.explore_ui_or_insert_with(id, Default::default);
    for (t, table) in tables.iter().enumerate().skip(1) {
        let sort = ex.sort.entry(t).or_insert((usize::MAX, false));
        widgets::sortable_table(ui, ("explore-table", id, t), table, sort);
    }
    ui.horizontal(|ui| {
        #[cfg(not(target_arch = "wasm32"))]
        if ui
            .button("Export charts…")
            .on_hover_text("Write every chart as PNG and SVG into a folder")
            .clicked()
        {
            match widgets::pick(widgets::folder_dialog) {
                widgets::Picked::Path(dir) => {
                    let report = report.clone();
                    app.rt.in_background(ui.ctx(), "export-charts", move || {
                        crate::explore::charts::write_report_charts(&report, &dir)
                            .map(|files| {
                                format!("wrote {} chart files to {}", files.len(), dir.display())
                            })
                            .map_err(|e| format!("{e:#}"))
                    });
                }
                widgets::Picked::Unavailable => app.rt.note(true, widgets::NO_DIALOG),
                widgets::Picked::Cancelled => {}
            }
        }
        if widgets::DESKTOP
            && ui
                .button("Export tables…")
                .on_hover_text("Write every table as CSV into a folder")
                .clicked()
        {
            match widgets::pick(widgets::folder_dialog) {
                widgets::Picked::Path(dir) => {
                    let tables = tables.clone();
                    app.rt.in_background(ui.ctx(), "export-tables", move || {
                        for (i, t) in tables.iter().enumerate() {
                            let name = format!(
                                "{:02}_{}.csv",
                                i,
                                t.title
                                    .to_lowercase()
                                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                            );
                            let path = dir.join(name);
                            crate::fsio::write_atomic_bytes(&path, t.to_csv().as_bytes())
                                .map_err(|e| format!("writing {}: {e}", path.display()))?;
                        }
                        Ok(format!(
                            "wrote {} tables to {}",
                            tables.len(),
                            dir.display()
                        ))
                    });
                }
                widgets::Picked::Unavailable => app.rt.note(true, widgets::NO_DIALOG),
                widgets::Picked::Cancelled => {}
            }
        }
    });
}

/// A bar chart over named categories (bar `i` at x = i); returns the bar clicked, if any.
pub(super) fn category_bars(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    height: f32,
    names: &[String],
    chart: BarChart,
    y_label: &str,
) -> Option<usize> {
    let axis_names = names.to_vec();
    let clicked = Plot::new(id)
        .height(height)
        .allow_scroll(false)
        .allow_zoom(false)
        .allow_drag(false)
        .x_axis_formatter(move |m, _| {
            let i = m.value.round();
            if (m.value - i).abs() < 1e-6 && i >= 0.0 {
                axis_names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_axis_label(y_label)
        .show(ui, |p| {
            p.bar_chart(chart);
            p.response()
                .clicked()
                .then(|| p.pointer_coordinate())
                .flatten()
        })
        .inner?;
    let i = clicked.x.round();
    (i >= 0.0 && (i as usize) < names.len() && (clicked.x - i).abs() < 0.4).then_some(i as usize)
}
