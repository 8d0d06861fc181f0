//! The Evaluate cell: metrics, confusion heatmap with its images, ROC curves and mistakes.

use std::path::PathBuf;

use eframe::egui;
use egui_plot::{Line, Plot, PlotPoints};

use crate::runs::view::RunEvaluation;

use crate::ui::cells::{Loading, Notebook, Task as BgTask};
use crate::ui::widgets;

use super::*;

pub struct EvalRuntime {
    pub run: String,
    pub data: Loading<RunEvaluation>,
    pub normalised: bool,
    pub selected: Option<(usize, usize)>,
    /// The prediction row open in the inspector, with its image loading in the background.
    pub inspected: Option<Inspected>,
}

impl EvalRuntime {
    pub fn new(run: String, data: Loading<RunEvaluation>) -> Self {
        Self {
            run,
            data,
            normalised: false,
            selected: None,
            inspected: None,
        }
    }
}

pub(super) fn evaluate_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    run: &mut Option<String>,
) {
    let runs_dir = app.runs_dir();
    let runs = app.rt.run_ids(&runs_dir);
    ui.horizontal(|ui| {
        ui.label("Run");
        runs_combo(ui, ("eval-run", id), &runs, run, "the Train cell above");
    });
    let wanted = run_for(app, id, run);
    let Some(wanted) = wanted else {
        ui.label("No run yet: train one above, then press Run.");
        return;
    };
    if app.rt.eval(id).is_none_or(|e| e.run != wanted) {
        let ctx = ui.ctx().clone();
        app.rt.take_eval(id);
        // Load on demand when the run changes.
        let root = app.runs_dir();
        let r = wanted.clone();
        let task = BgTask::spawn(&ctx, "evaluate", move || {
            crate::runs::view::load_evaluation(&root, &r).map_err(|e| format!("{e:#}"))
        });
        app.rt
            .set_eval(id, EvalRuntime::new(wanted, Loading::Busy(task)));
    }
    // The dataset above, to say when the run was trained on another one.
    let above = app
        .workbook
        .inputs(id)
        .dataset
        .and_then(|d| app.rt.dataset(d))
        .and_then(|d| d.data.ready())
        .map(|d| std::path::absolute(&d.manifest.root).unwrap_or(d.manifest.root.clone()));
    let base = crate::workbook::Workbook::base_dir(&app.workbook_path);
    let Some(ev) = app.rt.eval_mut(id) else {
        return;
    };
    let data = match &ev.data {
        Loading::Ready(d) => d,
        Loading::Failed(e) => {
            error_label(ui, e);
            return;
        }
        _ => {
            ui.spinner();
            return;
        }
    };
    // Name the data the run was trained on, and say so when it is not the dataset above.
    // Named as the Dataset cell names it: relative to the workbook's folder when inside it.
    let trained_on = data
        .dataset_root
        .as_ref()
        .map(|r| crate::workbook::stored_path(r, &base));
    let trained = ui.label(format!(
        "Trained on {}",
        trained_on
            .as_deref()
            .unwrap_or("an unknown dataset (older run)")
    ));
    if let Some(root) = &data.dataset_root {
        trained.on_hover_text(root.display().to_string());
    }
    if let (Some(root), Some(above)) = (&data.dataset_root, &above)
        && root != above
    {
        ui.colored_label(
            STALE_COLOR,
            format!(
                "This run was trained on another dataset than the Dataset cell above ({}).",
                crate::workbook::stored_path(above, &base)
            ),
        );
    }
    let m = &data.metrics;
    ui.label(format!(
        "Run {} · {} side, {} images · {}",
        data.id,
        data.split,
        m.n,
        headline(m)
    ));
    if let Some(t) = &data.test {
        ui.label(
            egui::RichText::new(format!(
                "Test side (scored once, by the model the selection chose), {} images · {}",
                t.n,
                headline(t)
            ))
            .strong(),
        );
    }
    let mut clicked = None;
    ui.horizontal_top(|ui| {
        if let Some(cm) = &m.confusion {
            ui.vertical(|ui| {
                ui.horizontal(|ui| {
                    ui.label(
                        egui::RichText::new(format!("Confusion matrix ({} side)", data.split))
                            .strong(),
                    );
                    ui.checkbox(&mut ev.normalised, "row-normalised")
                        .on_hover_text("Each row divided by its total: recall on the diagonal");
                });
                clicked = widgets::confusion_heatmap(ui, cm, ev.normalised, ev.selected);
            });
        }
        ui.vertical(|ui| {
            ui.label(egui::RichText::new("ROC curves (one vs rest)").strong());
            // The legend is written under the plot, never over the curves (with five classes
            // they run through any corner); hovering an entry picks out its curve.
            let legend_id = egui::Id::unique(("roc-legend", id));
            let picked = widgets::legend_hovered(ui, legend_id);
            Plot::new(("roc", id))
                .width(360.0)
                .height(300.0)
                .x_axis_label("false positive rate")
                .y_axis_label("true positive rate")
                .include_x(0.0)
                .include_x(1.0)
                .include_y(0.0)
                .include_y(1.0)
                .data_aspect(1.0)
                .allow_scroll(false)
                .show(ui, |p| {
                    for (k, c) in data.roc.iter().enumerate() {
                        let pts: Vec<[f64; 2]> = c.points.iter().map(|(x, y)| [*x, *y]).collect();
                        let mut color = widgets::series_color(k);
                        let mut width = 2.0;
                        match picked {
                            Some(j) if j == k => width = 3.5,
                            Some(_) => color = color.gamma_multiply(0.25),
                            None => {}
                        }
                        // ROC steps are vertical: keep them lines, not merged into bands.
                        p.line(
                            Line::new(c.label.clone(), PlotPoints::from(pts))
                                .allow_band(false)
                                .width(width)
                                .color(color),
                        );
                    }
                    p.line(
                        Line::new("chance", PlotPoints::from(vec![[0.0, 0.0], [1.0, 1.0]]))
                            .color(egui::Color32::GRAY),
                    );
                });
            let names: Vec<String> = data
                .roc
                .iter()
                .map(|c| {
                    c.auc
                        .map_or(c.label.clone(), |a| format!("{} AUC {a:.3}", c.label))
                })
                .collect();
            widgets::legend_below(ui, legend_id, &names, 360.0);
        });
        if let Some(c) = &m.calibration {
            ui.vertical(|ui| {
                reliability_ui(ui, id, c);
                if let Some(t) = &m.temperature {
                    ui.label(format!(
                        "Temperature scaling: T = {:.2}, fitted on held-out predictions; calibration error {:.3} before",
                        t.temperature, t.ece_before
                    ))
                    .on_hover_text(&t.fitted_on);
                }
            });
        }
    });
    if let Some(c) = clicked {
        ev.selected = if ev.selected == Some(c) {
            None
        } else {
            Some(c)
        };
    }
    let table = crate::train::report::metrics_tables("validation", m)
        .into_iter()
        .nth(1);
    if let Some(t) = table {
        widgets::table(ui, ("per-class", id), &t);
    }
    let root = data.dataset_root.clone().unwrap_or_default();
    let labels = data.labels.clone();
    let rows = data.rows.clone();
    let selected = ev.selected;
    let inspected = ev.inspected.as_ref().map(|i| i.row);
    let mut inspect: Option<usize> = None;
    if let (Some((ti, pi)), Some(cm)) = (selected, &m.confusion) {
        let (t, p) = (&cm.labels[ti], &cm.labels[pi]);
        let picked: Vec<(usize, &crate::runs::view::PredictionRow)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| &r.truth == t && &r.predicted == p)
            .collect();
        ui.label(
            egui::RichText::new(format!("{} images: true {t}, predicted {p}", picked.len()))
                .strong(),
        );
        let items: Vec<(PathBuf, String, usize)> = picked
            .iter()
            .map(|&(i, r)| {
                (
                    root.join(&r.path),
                    format!("{:.2}", r.confidence(&labels)),
                    i,
                )
            })
            .collect();
        rows_gallery(
            ui,
            ("cm-gallery", id),
            &mut app.rt.thumbs,
            &items,
            inspected,
            &mut inspect,
        );
    }
    let mut mistakes: Vec<(usize, &crate::runs::view::PredictionRow)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.truth != r.predicted)
        .collect();
    mistakes.sort_by(|a, b| b.1.confidence(&labels).total_cmp(&a.1.confidence(&labels)));
    mistakes.truncate(12);
    if !mistakes.is_empty() {
        ui.label(egui::RichText::new("Most confident mistakes").strong())
            .on_hover_text("Wrong predictions with the highest predicted probability: label noise or hard cases. Click one to inspect it.");
        let items: Vec<(PathBuf, String, usize)> = mistakes
            .iter()
            .map(|&(i, r)| {
                (
                    root.join(&r.path),
                    format!(
                        "{} as {} ({:.2})",
                        r.truth,
                        r.predicted,
                        r.confidence(&labels)
                    ),
                    i,
                )
            })
            .collect();
        rows_gallery(
            ui,
            ("mistakes", id),
            &mut app.rt.thumbs,
            &items,
            inspected,
            &mut inspect,
        );
    }
    let ctx = ui.ctx().clone();
    if let Some(i) = inspect
        && let Some(run) = app.rt.eval(id).map(|ev| ev.run.clone())
    {
        let opened = (inspected != Some(i)).then(|| {
            Inspected::open(
                &ctx,
                &app.rt.compute,
                i,
                root.join(&rows[i].path),
                runs_dir.join(&run),
            )
        });
        if let Some(ev) = app.rt.eval_mut(id) {
            ev.inspected = opened;
        }
    }
    let Some(ev) = app.rt.eval_mut(id) else {
        return;
    };
    if let Some(inspected) = &mut ev.inspected {
        let row = inspected.row;
        prediction_inspector_ui(ui, &rows[row], &labels, &root, inspected);
    }
}

/// The image behind a prediction with its true label, prediction and every probability.
fn prediction_inspector_ui(
    ui: &mut egui::Ui,
    row: &crate::runs::view::PredictionRow,
    labels: &[String],
    root: &std::path::Path,
    inspected: &mut Inspected,
) {
    ui.separator();
    inspected.show(ui, |ui| {
        ui.label(egui::RichText::new(&row.path).monospace())
            .on_hover_text(root.join(&row.path).display().to_string());
        if !row.patient.is_empty() {
            ui.label(format!("patient {}", row.patient));
        }
        let right = row.truth == row.predicted;
        ui.label(format!("true label: {}", row.truth));
        let verdict = format!("predicted: {}", row.predicted);
        if right {
            ui.colored_label(egui::Color32::from_rgb(46, 160, 67), verdict);
        } else {
            error_label(ui, &verdict);
        }
        widgets::probability_bars(ui, labels, &row.probs, labels.len());
    });
}

/// Thumbnails of prediction rows (`(image, caption, row index)`); a click picks the row for the
/// inspector, the inspected one is outlined.
fn rows_gallery(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    thumbs: &mut crate::ui::thumbs::ThumbCache,
    items: &[(PathBuf, String, usize)],
    inspected: Option<usize>,
    inspect: &mut Option<usize>,
) {
    widgets::gallery(
        ui,
        id,
        thumbs,
        items.len(),
        |k| {
            (
                items[k].0.clone(),
                items[k].1.clone(),
                inspected == Some(items[k].2),
            )
        },
        &mut |k| *inspect = Some(items[k].2),
    );
}

/// The headline metrics of one side, each with its bootstrap 95% interval when the run
/// computed one, and the expected calibration error.
fn headline(m: &crate::experiment::metrics::Metrics) -> String {
    use crate::experiment::uncertainty::Interval;
    let ci = m.ci.as_ref();
    let with = |name: &str, v: f64, i: Option<&Interval>| match i {
        Some(i) => format!("{name} {v:.3} [{:.3}, {:.3}]", i.low, i.high),
        None => format!("{name} {v:.3}"),
    };
    let mut parts = vec![
        with("accuracy", m.accuracy, ci.and_then(|c| c.accuracy.as_ref())),
        with(
            "balanced",
            m.balanced_accuracy,
            ci.and_then(|c| c.balanced_accuracy.as_ref()),
        ),
        with("macro F1", m.macro_f1, ci.and_then(|c| c.macro_f1.as_ref())),
    ];
    if let Some(a) = m.macro_auc {
        parts.push(with("macro AUC", a, ci.and_then(|c| c.macro_auc.as_ref())));
    }
    if let Some(k) = m.kappa {
        parts.push(with("kappa", k, ci.and_then(|c| c.kappa.as_ref())));
    }
    if let Some(k) = m.kappa_quadratic {
        parts.push(with(
            "quadratic kappa",
            k,
            ci.and_then(|c| c.kappa_quadratic.as_ref()),
        ));
    }
    if let Some(c) = &m.calibration {
        parts.push(format!("calibration error {:.3}", c.ece));
    }
    let mut text = parts.join(" · ");
    if let Some(c) = ci {
        text.push_str(&format!(
            " ({:.0}% bootstrap intervals over {} {})",
            c.level * 100.0,
            c.units,
            c.unit
        ));
    }
    text
}

/// Reliability diagram: per confidence bin, the share of right predictions against the mean
/// confidence (the diagonal is perfect calibration), with the expected calibration error.
fn reliability_ui(ui: &mut egui::Ui, id: u64, c: &crate::experiment::uncertainty::Calibration) {
    use egui_plot::{Bar, BarChart};
    ui.label(egui::RichText::new(format!("Reliability (calibration error {:.3})", c.ece)).strong())
        .on_hover_text(
            "Predictions grouped by confidence (the top probability): bars are how often each group was right, the line is perfect calibration. Expected calibration error: the bins' gaps weighted by their share of predictions.",
        );
    let bars: Vec<Bar> = c
        .bins
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| {
            Bar::new((b.low + b.high) / 2.0, b.accuracy)
                .width((b.high - b.low) * 0.9)
                .name(format!(
                    "{:.1}–{:.1}: {} predictions, {:.0}% right, mean confidence {:.2}",
                    b.low,
                    b.high,
                    b.count,
                    b.accuracy * 100.0,
                    b.confidence
                ))
        })
        .collect();
    Plot::new(("reliability", id))
        .width(260.0)
        .height(300.0)
        .x_axis_label("confidence")
        .y_axis_label("share right")
        .include_x(0.0)
        .include_x(1.0)
        .include_y(0.0)
        .include_y(1.0)
        .allow_scroll(false)
        .show(ui, |p| {
            p.bar_chart(
                BarChart::new("share right", bars).color(egui::Color32::from_rgb(52, 101, 164)),
            );
            p.line(
                Line::new("perfect", PlotPoints::from(vec![[0.0, 0.0], [1.0, 1.0]]))
                    .color(egui::Color32::GRAY),
            );
        });
}
