//! The Explore cell: counts and charts of the dataset above.

use std::sync::Arc;

use eframe::egui;
use egui_plot::{Bar, BarChart, Plot};

use crate::explore::{ExploreReport, Table};

use crate::ui::cells::{Command, Notebook};
use crate::ui::widgets;

use super::*;

/// Per-Explore-cell UI state.
#[derive(Default)]
pub struct ExploreUi {
    pub sort: std::collections::HashMap<usize, (usize, bool)>,
    /// Images per label on a log scale.
    pub log_counts: bool,
    /// Patients per label on a log scale.
    pub log_patients: bool,
    /// The images-per-patient histogram on a log scale.
    pub log_per_patient: bool,
}

pub(super) fn explore_ui(app: &mut Notebook, ui: &mut egui::Ui, id: u64) {
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
    let names: Vec<String> = report.labels.iter().map(|l| l.label.clone()).collect();
    let images: Vec<f64> = report.labels.iter().map(|l| l.images as f64).collect();
    let highlight = filter_label
        .as_deref()
        .and_then(|f| names.iter().position(|n| n == f));
    let ex = app.rt.explore_ui_or_insert_with(id, Default::default);
    let mut log = [ex.log_counts, ex.log_patients, ex.log_per_patient];
    let log_images = ui
        .horizontal_wrapped(|ui| {
            ui.label(egui::RichText::new("Images per label").strong());
            ui.label("(click a bar to filter the gallery)");
            log_toggle(ui, &images, &mut log[0])
        })
        .inner;
    let clicked = CategoryBars {
        names: &names,
        values: &images,
        color: egui::Color32::from_rgb(52, 101, 164),
        highlight,
        counts: "images",
        categories: None,
        log: log_images,
        height: 220.0,
    }
    .show(ui, ("labels-plot", id));
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
        let patients: Vec<f64> = report
            .labels
            .iter()
            .map(|l| l.patients.unwrap_or(0) as f64)
            .collect();
        let log_patients = ui
            .horizontal(|ui| {
                ui.label(egui::RichText::new("Patients per label").strong());
                log_toggle(ui, &patients, &mut log[1])
            })
            .inner;
        CategoryBars {
            names: &names,
            values: &patients,
            color: egui::Color32::from_rgb(46, 139, 87),
            highlight: None,
            counts: "patients",
            categories: None,
            log: log_patients,
            height: 160.0,
        }
        .show(ui, ("patients-plot", id));
    }
    if let Some(pp) = &report.images_per_patient {
        // Consecutive counts, at most a couple of dozen bars: a few patients with very many
        // images share one last bar instead of stretching the axis far past the rest.
        let bins =
            crate::explore::bins::count_bins(&pp.histogram, crate::explore::bins::PATIENT_BINS);
        let patients: Vec<f64> = bins.counts.iter().map(|&c| c as f64).collect();
        let log_patients = ui
            .horizontal_wrapped(|ui| {
                ui.label(egui::RichText::new("Images per patient").strong());
                if let Some(t) = bins.tail {
                    ui.label(
                        egui::RichText::new(format!("(the last bar: {})", t.describe())).weak(),
                    );
                }
                log_toggle(ui, &patients, &mut log[2])
            })
            .inner;
        CategoryBars {
            names: &bins.names,
            values: &patients,
            color: egui::Color32::from_rgb(52, 101, 164),
            highlight: bins.tail.map(|_| bins.names.len() - 1),
            counts: "patients",
            categories: Some("images per patient"),
            log: log_patients,
            height: 180.0,
        }
        .show(ui, ("ipp-plot", id));
    }
    let ex = app.rt.explore_ui_or_insert_with(id, Default::default);
    [ex.log_counts, ex.log_patients, ex.log_per_patient] = log;
    ui.add_space(6.0);
    // In the cell's words: the problems name its fields, not the command line's flags.
    let tables: Vec<Table> = report
        .tables()
        .into_iter()
        .map(|mut t| {
            for cell in t.rows.iter_mut().flatten() {
                *cell = super::in_cell_words(cell);
            }
            t
        })
        .collect();
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

/// A "log scale" checkbox, offered only when `values` span two orders of magnitude (NIH
/// ChestX-ray14: 60,361 images of No Finding, 227 of Hernia); returns whether the chart is
/// drawn on a log scale.
fn log_toggle(ui: &mut egui::Ui, values: &[f64], on: &mut bool) -> bool {
    let (lo, hi) = values
        .iter()
        .filter(|v| **v > 0.0)
        .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let wide = hi / lo >= 100.0;
    if wide {
        ui.checkbox(on, "log scale").on_hover_text(
            "Counts that span orders of magnitude: the small ones become readable (the numbers on the bars stay exact)",
        );
    }
    *on && wide
}

/// Whether bars lie horizontally, one row per category: when the names, side by side under
/// upright bars, would not fit the plot's width (every name is always written out).
pub fn bars_lie_horizontally(widest_name_px: f32, categories: usize, plot_width_px: f32) -> bool {
    (widest_name_px + 12.0) * categories as f32 > plot_width_px
}

/// Bars per category, readable at any size: every bar's count written on it, a bar too small
/// to see drawn at a minimum height (its count still true), every category named (bars lie
/// horizontally, one row each, when the names do not fit side by side), integer count ticks,
/// and an optional log scale for counts that span orders of magnitude.
pub(super) struct CategoryBars<'a> {
    pub names: &'a [String],
    pub values: &'a [f64],
    pub color: egui::Color32,
    /// A bar drawn in the accent colour (the gallery's filter, a histogram's shared tail).
    pub highlight: Option<usize>,
    /// What the bars count ("images").
    pub counts: &'a str,
    /// What the categories are, when they need a name ("images per patient").
    pub categories: Option<&'a str>,
    pub log: bool,
    /// The plot's height with upright bars (horizontal ones take a row per category).
    pub height: f32,
}

impl CategoryBars<'_> {
    /// Draws the chart; returns the category clicked, if any.
    pub fn show(
        self,
        ui: &mut egui::Ui,
        id: impl std::hash::Hash + std::fmt::Debug,
    ) -> Option<usize> {
        let Self {
            names,
            values,
            color,
            highlight,
            counts,
            categories,
            log,
            height,
        } = self;
        let font = egui::TextStyle::Body.resolve(ui.style());
        let widest = names
            .iter()
            .map(|n| {
                ui.painter()
                    .layout_no_wrap(n.clone(), font.clone(), egui::Color32::WHITE)
                    .size()
                    .x
            })
            .fold(0.0f32, f32::max);
        // The count axis takes about 60 points of the width.
        let horizontal = bars_lie_horizontally(widest, names.len(), ui.available_width() - 60.0);
        let scale = |v: f64| if log { (1.0 + v).log10() } else { v };
        let top = values
            .iter()
            .copied()
            .map(scale)
            .fold(0.0, f64::max)
            .max(1e-9);
        // A non-zero count never disappears next to a large one.
        let shown = |v: f64| {
            if v > 0.0 {
                scale(v).max(top * 0.015)
            } else {
                0.0
            }
        };
        let bars: Vec<Bar> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let b = Bar::new(i as f64, shown(v))
                    .name(format!("{}: {v}", names[i]))
                    .width(0.7)
                    .fill(color);
                if highlight == Some(i) {
                    b.fill(egui::Color32::from_rgb(230, 126, 34))
                } else {
                    b
                }
            })
            .collect();
        let mut chart = BarChart::new(counts, bars).color(color);
        if horizontal {
            chart = chart.horizontal();
        }
        let count_tick = move |m: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| {
            // On a log scale the marks are the counts 1, 10, 100, … (see `log_marks`).
            let v = if log {
                (10f64.powf(m.value) - 1.0).round()
            } else {
                m.value
            };
            if v < 0.0 || (v - v.round()).abs() > 1e-6 {
                String::new()
            } else {
                format!("{v:.0}")
            }
        };
        // One category per grid step, whatever the size, each named: names are never faded
        // or skipped for being close (their width was checked above).
        let one_per_category = egui_plot::uniform_grid_spacer(|_| [1.0, 1.0, 1.0]);
        let mut category_axis = egui_plot::AxisHints::new_x()
            .formatter(category_tick(names))
            .label_spacing(0.0..=1.0);
        if let Some(c) = categories {
            category_axis = category_axis.label(c);
        }
        let count_label = if log {
            format!("{counts} (log scale)")
        } else {
            counts.to_owned()
        };
        let height = if horizontal {
            height.max(28.0 * names.len() as f32 + 40.0)
        } else {
            height
        };
        let mut plot = Plot::new(id)
            .height(height)
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .include_x(0.0)
            .include_y(0.0)
            // Grid lines along the counts only: a line through each category would read as a
            // stem on top of its bar.
            .show_grid(egui::Vec2b::new(horizontal, !horizontal));
        if log {
            plot = if horizontal {
                plot.x_grid_spacer(log_marks)
            } else {
                plot.y_grid_spacer(log_marks)
            };
        }
        plot = if horizontal {
            plot.y_axis_formatter(category_tick(names))
                .y_grid_spacer(one_per_category)
                .x_axis_formatter(count_tick)
                .x_axis_label(count_label)
                .include_x(top * 1.12)
                .y_axis_min_width(110.0)
        } else {
            plot.custom_x_axes(vec![category_axis])
                .x_grid_spacer(one_per_category)
                .include_x(-0.5)
                .include_x(names.len() as f64 - 0.5)
                .y_axis_formatter(count_tick)
                .y_axis_label(count_label)
                .include_y(top * 1.15)
        };
        let text_color = ui.visuals().text_color();
        let clicked = plot
            .show(ui, |p| {
                p.bar_chart(chart);
                for (i, &v) in values.iter().enumerate() {
                    let (at, anchor) = if horizontal {
                        (
                            egui_plot::PlotPoint::new(shown(v) + top * 0.01, i as f64),
                            egui::Align2::LEFT_CENTER,
                        )
                    } else {
                        (
                            egui_plot::PlotPoint::new(i as f64, shown(v) + top * 0.01),
                            egui::Align2::CENTER_BOTTOM,
                        )
                    };
                    p.text(
                        egui_plot::Text::new(
                            format!("count {i}"),
                            at,
                            egui::RichText::new(format!("{v:.0}")).size(13.0),
                        )
                        .anchor(anchor)
                        .color(text_color),
                    );
                }
                p.response()
                    .clicked()
                    .then(|| p.pointer_coordinate())
                    .flatten()
            })
            .inner?;
        let c = if horizontal { clicked.y } else { clicked.x };
        let i = c.round();
        (i >= 0.0 && (i as usize) < names.len() && (c - i).abs() < 0.4).then_some(i as usize)
    }
}

/// The marks of a log-scaled count axis (bars are drawn at log10(1 + count)): the counts 1,
/// 10, 100, … that the plot's range reaches (0, at the axis' origin, would crowd the 1).
fn log_marks(input: egui_plot::GridInput) -> Vec<egui_plot::GridMark> {
    (0..12)
        .map(|k| (1.0 + 10f64.powi(k)).log10())
        .take_while(|at| *at <= input.bounds.1)
        .map(|value| egui_plot::GridMark {
            value,
            step_size: 1.0,
        })
        .collect()
}

/// Category `i`'s name at the axis mark `i` (nothing between categories).
fn category_tick(
    names: &[String],
) -> impl Fn(egui_plot::GridMark, &std::ops::RangeInclusive<f64>) -> String + use<> {
    let names = names.to_vec();
    move |m, _| {
        let i = m.value.round();
        if (m.value - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    /// Five cell types fit side by side; NIH's fifteen findings (`Pleural_Thickening` the
    /// widest) lie as rows; twenty short histogram bins stand upright.
    #[test]
    fn bars_lie_down_only_when_their_names_do_not_fit() {
        use super::bars_lie_horizontally as lie;
        assert!(!lie(75.0, 5, 1180.0));
        assert!(lie(130.0, 15, 1180.0));
        assert!(!lie(25.0, 20, 1180.0));
        assert!(lie(75.0, 5, 300.0), "a narrow window");
    }

    /// A log-scaled axis is marked at the counts 1, 10, 100 and 1000 for counts up to 1500.
    #[test]
    fn a_log_axis_is_marked_at_powers_of_ten() {
        let marks = super::log_marks(egui_plot::GridInput {
            bounds: (0.0, (1.0f64 + 1500.0).log10()),
            base_step_size: 0.01,
        });
        let counts: Vec<f64> = marks
            .iter()
            .map(|m| (10f64.powf(m.value) - 1.0).round())
            .collect();
        assert_eq!(counts, [1.0, 10.0, 100.0, 1000.0]);
    }
}
