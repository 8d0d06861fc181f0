//! The Evaluate cell: metrics, confusion heatmap with its images, ROC curves and mistakes.

use std::path::PathBuf;

use eframe::egui;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::runs::view::RunEvaluation;

use crate::ui::app::{Loading, Task as BgTask, WorkbenchApp};
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

/// The image open in the Evaluate cell's inspector, and its saliency map.
pub struct Inspected {
    pub row: usize,
    pub image: Loading<egui::TextureHandle>,
    /// The class activation map of the predicted class, computed on the compute worker.
    pub saliency: Loading<SaliencyView>,
    pub show_saliency: bool,
    pub opacity: f32,
    /// The overlay texture and the opacity it was drawn with.
    overlay: Option<(f32, egui::TextureHandle)>,
}

/// A saliency map with the (downscaled) image it is laid over.
pub struct SaliencyView {
    pub map: crate::model::saliency::Saliency,
    pub base: image::RgbImage,
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
    app: &mut WorkbenchApp,
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
    let trained_on = data.dataset_root.as_ref().map(|r| r.display().to_string());
    ui.label(format!(
        "Trained on {}",
        trained_on
            .as_deref()
            .unwrap_or("an unknown dataset (older run)")
    ));
    if let (Some(root), Some(above)) = (&data.dataset_root, &above)
        && root != above
    {
        ui.colored_label(
            STALE_COLOR,
            format!(
                "This run was trained on another dataset than the Dataset cell above ({}).",
                above.display()
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
                "Test side (scored once, with the weights the validation side chose), {} images · {}",
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
            Plot::new(("roc", id))
                .width(360.0)
                .height(300.0)
                .legend(Legend::default())
                .x_axis_label("false positive rate")
                .y_axis_label("true positive rate")
                .include_x(0.0)
                .include_x(1.0)
                .include_y(0.0)
                .include_y(1.0)
                .data_aspect(1.0)
                .show(ui, |p| {
                    for c in &data.roc {
                        let pts: Vec<[f64; 2]> = c.points.iter().map(|(x, y)| [*x, *y]).collect();
                        let name = c
                            .auc
                            .map_or(c.label.clone(), |a| format!("{} (AUC {a:.3})", c.label));
                        // ROC steps are vertical: keep them lines, not merged into bands.
                        p.line(
                            Line::new(name, PlotPoints::from(pts))
                                .allow_band(false)
                                .width(2.0),
                        );
                    }
                    p.line(
                        Line::new("chance", PlotPoints::from(vec![[0.0, 0.0], [1.0, 1.0]]))
                            .color(egui::Color32::GRAY),
                    );
                });
        });
        if let Some(c) = &m.calibration {
            ui.vertical(|ui| reliability_ui(ui, id, c));
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
        let opened = if inspected == Some(i) {
            None
        } else {
            let path = root.join(&rows[i].path);
            let c = ctx.clone();
            let preview = path.clone();
            let task = BgTask::spawn(&ctx, "preview", move || {
                crate::ui::thumbs::decode_preview(&preview).map(|img| {
                    c.load_texture(
                        preview.display().to_string(),
                        img,
                        egui::TextureOptions::LINEAR,
                    )
                })
            });
            let run_dir = runs_dir.join(&run);
            let saliency = BgTask::on_worker(&ctx, &app.rt.compute, move || {
                // Saliency maps are computed on the CPU network.
                let cpu = crate::model::backend::select(crate::model::backend::BackendChoice::Cpu)
                    .map_err(|e| format!("{e:#}"))?;
                let classifier = crate::model::Classifier::load(&run_dir, &cpu.device)
                    .map_err(|e| format!("{e:#}"))?;
                let img = crate::dataset::image_io::decode_file_complete(&path)
                    .map_err(|e| e.to_string())?;
                let map = classifier
                    .saliency(&img, None)
                    .map_err(|e| format!("{e:#}"))?;
                Ok(SaliencyView {
                    map,
                    base: img.thumbnail(320, 320).to_rgb8(),
                })
            });
            Some(Inspected {
                row: i,
                image: Loading::Busy(task),
                saliency: Loading::Busy(saliency),
                show_saliency: false,
                opacity: 0.6,
                overlay: None,
            })
        };
        if let Some(ev) = app.rt.eval_mut(id) {
            ev.inspected = opened;
        }
    }
    let Some(ev) = app.rt.eval_mut(id) else {
        return;
    };
    if let Some(inspected) = &mut ev.inspected {
        inspected.image.poll();
        inspected.saliency.poll();
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
    // The overlay texture follows the opacity slider (drawn here: a few hundred pixels).
    if let Loading::Ready(view) = &inspected.saliency
        && inspected.show_saliency
        && inspected
            .overlay
            .as_ref()
            .is_none_or(|(o, _)| *o != inspected.opacity)
    {
        let img = view.map.overlay(&view.base, inspected.opacity);
        let color =
            egui::ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
        let tex = ui
            .ctx()
            .load_texture("saliency-overlay", color, egui::TextureOptions::LINEAR);
        inspected.overlay = Some((inspected.opacity, tex));
    }
    let shown = match (
        &inspected.overlay,
        inspected.show_saliency,
        &inspected.image,
    ) {
        (Some((_, tex)), true, _) => Loading::Ready(tex.clone()),
        (_, _, Loading::Ready(tex)) => Loading::Ready(tex.clone()),
        (_, _, Loading::Failed(e)) => Loading::Failed(e.clone()),
        _ => Loading::Idle,
    };
    ui.horizontal_top(|ui| {
        match &shown {
            Loading::Ready(tex) => {
                let size = tex.size_vec2();
                let scale = (260.0 / size.x.max(size.y)).min(2.0);
                ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale));
            }
            Loading::Failed(e) => error_label(ui, &format!("Cannot show this image: {e}")),
            _ => {
                ui.spinner();
            }
        }
        ui.vertical(|ui| {
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
            match &inspected.saliency {
                Loading::Ready(view) => {
                    ui.checkbox(&mut inspected.show_saliency, "Saliency")
                        .on_hover_text(format!(
                            "Where {} comes from: the class activation map of the last feature map ({}×{} grid), exact for a probe or a fine-tuned network",
                            view.map.explains, view.map.width, view.map.height
                        ));
                    if inspected.show_saliency {
                        ui.add(
                            egui::Slider::new(&mut inspected.opacity, 0.0..=1.0)
                                .text("opacity")
                                .step_by(0.05),
                        );
                    }
                }
                Loading::Failed(e) => {
                    ui.label(egui::RichText::new(format!("no saliency map: {e}")).weak());
                }
                _ => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("saliency map…");
                    });
                }
            }
        });
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
fn headline(m: &crate::train::metrics::Metrics) -> String {
    use crate::train::uncertainty::Interval;
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
fn reliability_ui(ui: &mut egui::Ui, id: u64, c: &crate::train::uncertainty::Calibration) {
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
