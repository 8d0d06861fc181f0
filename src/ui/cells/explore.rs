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
    ui.horizontal_wrapped(|ui| {
        ui.label(egui::RichText::new("Images per label").strong());
        ui.label("(click a bar to filter the gallery)");
    });
    let names: Vec<String> = report.labels.iter().map(|l| l.label.clone()).collect();
    let images: Vec<f64> = report.labels.iter().map(|l| l.images as f64).collect();
    let highlight = filter_label
        .as_deref()
        .and_then(|f| names.iter().position(|n| n == f));
    let log = {
        let ex = app.rt.explore_ui_or_insert_with(id, Default::default);
        let (lo, hi) = images.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &v| {
            (lo.min(v.max(1.0)), hi.max(v))
        });
        // Offered when the counts span two orders of magnitude (NIH: 60,361 to 227).
        if hi / lo >= 100.0 {
            ui.checkbox(&mut ex.log_counts, "log scale")
                .on_hover_text("Counts that span orders of magnitude: the small ones become readable (the numbers on the bars stay exact)");
        }
        ex.log_counts && hi / lo >= 100.0
    };
    let clicked = category_bars(
        ui,
        ("labels-plot", id),
        220.0,
        &names,
        &images,
        egui::Color32::from_rgb(52, 101, 164),
        highlight,
        "images",
        log,
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
        let patients: Vec<f64> = report
            .labels
            .iter()
            .map(|l| l.patients.unwrap_or(0) as f64)
            .collect();
        category_bars(
            ui,
            ("patients-plot", id),
            160.0,
            &names,
            &patients,
            egui::Color32::from_rgb(46, 139, 87),
            None,
            "patients",
            false,
        );
    }
    if let Some(pp) = &report.images_per_patient {
        ui.label(egui::RichText::new("Images per patient").strong());
        // A few patients with very many images would stretch the axis far past where the
        // rest sit: they share one last bar, "more than N".
        let (bars, tail) = images_per_patient_bars(&pp.histogram);
        if let Some((cutoff, patients, max)) = tail {
            ui.label(
                egui::RichText::new(format!(
                    "{patients} patients with more than {cutoff} images (up to {max}) share the last bar"
                ))
                .weak(),
            );
        }
        let tail_at = tail.map(|(cutoff, ..)| cutoff as f64 + 2.0);
        Plot::new(("ipp-plot", id))
            .height(140.0)
            .allow_scroll(false)
            .allow_zoom(false)
            .allow_drag(false)
            .x_axis_label("images per patient")
            .y_axis_label("patients")
            .x_axis_formatter(move |m, _| {
                if (m.value - m.value.round()).abs() > 1e-6 || m.value < 0.0 {
                    return String::new();
                }
                match (tail, tail_at) {
                    (Some((cutoff, ..)), Some(at)) if (m.value - at).abs() < 1e-6 => {
                        format!(">{cutoff}")
                    }
                    (Some(_), Some(at)) if m.value > at - 1.5 => String::new(),
                    _ => format!("{:.0}", m.value),
                }
            })
            .y_axis_formatter(|m, _| {
                if m.value < 0.0 || (m.value - m.value.round()).abs() > 1e-6 {
                    String::new()
                } else {
                    format!("{:.0}", m.value)
                }
            })
            .show(ui, |p| p.bar_chart(BarChart::new("patients", bars)));
    }
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

/// A bar chart over named categories (bar `i` at x = i); returns the bar clicked, if any.
/// Bars per category, readable at any size: every bar's count written on it, a bar too small
/// to see drawn at a minimum height (its count still true), every category named (bars lie
/// horizontally, one row each, when there are more than eight), integer count ticks, and an
/// optional log scale for counts that span orders of magnitude. Returns the category clicked.
#[allow(clippy::too_many_arguments)]
pub(super) fn category_bars(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    height: f32,
    names: &[String],
    values: &[f64],
    color: egui::Color32,
    highlight: Option<usize>,
    y_label: &str,
    log: bool,
) -> Option<usize> {
    let horizontal = names.len() > 8;
    let scale = |v: f64| if log { (1.0 + v).log10() } else { v };
    let top = values
        .iter()
        .copied()
        .map(scale)
        .fold(0.0, f64::max)
        .max(1e-9);
    let bars: Vec<Bar> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            // A non-zero count never disappears next to a large one.
            let shown = if v > 0.0 {
                scale(v).max(top * 0.015)
            } else {
                0.0
            };
            let mut b = Bar::new(i as f64, shown)
                .name(format!("{}: {v}", names[i]))
                .width(0.7)
                .fill(color);
            if highlight == Some(i) {
                b = b.fill(egui::Color32::from_rgb(230, 126, 34));
            }
            b
        })
        .collect();
    let mut chart = BarChart::new(y_label, bars).color(color);
    if horizontal {
        chart = chart.horizontal();
    }
    let axis_names = names.to_vec();
    let category_tick = move |m: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| {
        let i = m.value.round();
        if (m.value - i).abs() < 1e-6 && i >= 0.0 {
            axis_names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let count_tick = move |m: egui_plot::GridMark, _: &std::ops::RangeInclusive<f64>| {
        let v = if log {
            10f64.powf(m.value) - 1.0
        } else {
            m.value
        };
        if log && (m.value.fract().abs() > 1e-6 || m.value < 0.0) {
            return String::new();
        }
        if v < 0.0 || (v - v.round()).abs() > 1e-6 {
            String::new()
        } else {
            format!("{v:.0}")
        }
    };
    // One category per grid step, whatever the size: no name is skipped.
    let one_per_category = egui_plot::uniform_grid_spacer(|_| [1.0, 1.0, 1.0]);
    let count_label = if log {
        format!("{y_label} (log scale)")
    } else {
        y_label.to_owned()
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
    plot = if horizontal {
        plot.y_axis_formatter(category_tick)
            .y_grid_spacer(one_per_category)
            .x_axis_formatter(count_tick)
            .x_axis_label(count_label)
            .include_x(top * 1.12)
            .y_axis_min_width(110.0)
    } else {
        plot.x_axis_formatter(category_tick)
            .x_grid_spacer(one_per_category)
            .y_axis_formatter(count_tick)
            .y_axis_label(count_label)
            .include_y(top * 1.15)
    };
    let text_color = ui.visuals().text_color();
    let clicked = plot
        .show(ui, |p| {
            p.bar_chart(chart);
            for (i, &v) in values.iter().enumerate() {
                let shown = if v > 0.0 {
                    scale(v).max(top * 0.015)
                } else {
                    0.0
                };
                let (at, anchor) = if horizontal {
                    (
                        egui_plot::PlotPoint::new(shown + top * 0.01, i as f64),
                        egui::Align2::LEFT_CENTER,
                    )
                } else {
                    (
                        egui_plot::PlotPoint::new(i as f64, shown + top * 0.01),
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

/// Bars of an images-per-patient histogram (`(images, patients)`). When a few patients have
/// far more images than the rest (beyond 97% of patients and more than twice as many), they
/// share one last bar; returns it as `(cutoff, patients in it, the largest count)`.
fn images_per_patient_bars(histogram: &[(u64, u64)]) -> (Vec<Bar>, Option<(u64, u64, u64)>) {
    let total: u64 = histogram.iter().map(|(_, c)| c).sum();
    let max = histogram.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut sorted = histogram.to_vec();
    sorted.sort_unstable();
    let mut seen = 0;
    let mut cutoff = max;
    for (n, c) in &sorted {
        seen += c;
        if seen as f64 >= 0.97 * total as f64 {
            cutoff = *n;
            break;
        }
    }
    let bar = |x: f64, c: u64| Bar::new(x, c as f64).width(0.9);
    if max <= 2 * cutoff + 5 {
        return (
            sorted.iter().map(|&(n, c)| bar(n as f64, c)).collect(),
            None,
        );
    }
    let mut bars: Vec<Bar> = sorted
        .iter()
        .filter(|(n, _)| *n <= cutoff)
        .map(|&(n, c)| bar(n as f64, c))
        .collect();
    let beyond: u64 = sorted
        .iter()
        .filter(|(n, _)| *n > cutoff)
        .map(|(_, c)| c)
        .sum();
    bars.push(bar(cutoff as f64 + 2.0, beyond).fill(egui::Color32::from_rgb(230, 126, 34)));
    (bars, Some((cutoff, beyond, max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One patient with 190 images among patients with 1–15 shares a last bar instead of
    /// stretching the axis to 190; an ordinary histogram is drawn as it is.
    #[test]
    fn a_long_tail_of_images_per_patient_shares_one_bar() {
        let mut h: Vec<(u64, u64)> = (1..=15).map(|n| (n, 10)).collect();
        h.push((190, 1));
        let (bars, tail) = images_per_patient_bars(&h);
        assert_eq!(tail, Some((15, 1, 190)));
        assert_eq!(bars.len(), 16);
        assert!(bars.iter().all(|b| b.argument <= 17.0));
        let (bars, tail) = images_per_patient_bars(&[(1, 4), (2, 7), (3, 2)]);
        assert_eq!((bars.len(), tail), (3, None));
    }
}
