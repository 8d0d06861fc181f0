//! The Embedding cell: a map of the dataset above, one point per image at the first two
//! principal components of its EfficientNet-Lite0 features (through the feature cache),
//! coloured by label, patient or split. Hover shows the image; a click opens it in the Dataset
//! cell's inspector; Shift+drag selects a box of points and filters the gallery to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eframe::egui;

use crate::explore::embedding::EmbeddingMap;
use crate::ui::cells::{Loading, Notebook, Task as BgTask};
use crate::ui::points::{self, Point, PointSet, View};
use crate::ui::thumbs::Thumb;
use crate::ui::widgets;

use super::*;

mod bench;
mod compute;
mod export;
mod lasso;
pub use bench::MapBench;
pub(super) use compute::start_embedding;
use export::export_map;
use lasso::lasso_pick;

/// What the points' colours show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorBy {
    #[default]
    Label,
    Patient,
    Split,
    /// A run's predicted label.
    Prediction,
    /// Whether a run predicted the label right.
    Correct,
    /// A run's probability of its predicted label, binned.
    Confidence,
}

impl ColorBy {
    const ALL: [Self; 6] = [
        Self::Label,
        Self::Patient,
        Self::Split,
        Self::Prediction,
        Self::Correct,
        Self::Confidence,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Label => "label",
            Self::Patient => "patient",
            Self::Split => "split",
            Self::Prediction => "prediction",
            Self::Correct => "correct",
            Self::Confidence => "confidence",
        }
    }

    fn needs_run(self) -> bool {
        matches!(self, Self::Prediction | Self::Correct | Self::Confidence)
    }
}

/// A run's prediction of one mapped image.
#[derive(Clone, Debug)]
pub struct Predicted {
    pub label: String,
    pub correct: bool,
    pub confidence: f32,
}

/// A run's predictions by record index (only the images the run predicted: its validation
/// and test sides).
pub struct RunColors {
    pub run: String,
    pub by_record: Loading<std::collections::HashMap<usize, Predicted>>,
}

/// Reads `run`'s predictions and matches them to `manifest`'s records by absolute path.
fn load_predictions(
    runs_root: &std::path::Path,
    run: &str,
    manifest: &Manifest,
) -> Result<std::collections::HashMap<usize, Predicted>, String> {
    let ev = crate::runs::view::load_evaluation(runs_root, run).map_err(|e| format!("{e:#}"))?;
    let norm = |p: std::path::PathBuf| std::path::absolute(&p).unwrap_or(p);
    let index: std::collections::HashMap<std::path::PathBuf, usize> = manifest
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (norm(manifest.image_path(r)), i))
        .collect();
    let root = ev.dataset_root.clone().unwrap_or_default();
    let mut out = std::collections::HashMap::new();
    for row in &ev.rows {
        if let Some(&i) = index.get(&norm(root.join(&row.path))) {
            out.insert(
                i,
                Predicted {
                    label: row.predicted.clone(),
                    correct: row.predicted == row.truth,
                    confidence: row.confidence(&ev.labels),
                },
            );
        }
    }
    if out.is_empty() {
        return Err(format!(
            "none of {run}'s {} predictions is an image of this dataset",
            ev.rows.len()
        ));
    }
    Ok(out)
}

/// A computed map and the dataset it maps.
pub struct EmbeddingResult {
    pub manifest: Arc<Manifest>,
    pub map: EmbeddingMap,
    /// The batch-effect check on the same features (datasets with patient ids).
    pub batch_effect: Option<Result<crate::explore::batch_effect::BatchEffect, String>>,
}

/// The batch-effect check of the mapped images that have a patient id and one label.
fn batch_effect_of(
    manifest: &Manifest,
    records: &[usize],
    rows: &[Vec<f32>],
) -> Option<Result<crate::explore::batch_effect::BatchEffect, String>> {
    if !manifest.has_patients() {
        return None;
    }
    let (mut x, mut labels, mut patients) = (Vec::new(), Vec::new(), Vec::new());
    for (&i, row) in records.iter().zip(rows) {
        let r = &manifest.records[i];
        if let (Some(p), [label]) = (&r.patient, r.labels.as_slice()) {
            x.push(row.clone());
            labels.push(label.clone());
            patients.push(p.clone());
        }
    }
    Some(crate::explore::batch_effect::check(
        &x, &labels, &patients, 1,
    ))
}

/// The colours of a map for one [`ColorBy`]: the point set and its legend.
#[derive(Clone)]
struct Colored {
    by: ColorBy,
    set: PointSet,
    legend: Vec<(String, egui::Color32, usize)>,
    /// Each point's entry in `legend`, in the map's order (for exports: desktop only).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    category: Arc<Vec<usize>>,
}

/// Per-Embedding-cell state.
pub struct EmbeddingRuntime {
    /// The Dataset cell and the generation of its load the map was computed from.
    pub dataset: (u64, u64),
    pub generation: u64,
    pub data: Loading<EmbeddingResult>,
    /// Images whose features are ready, of how many.
    pub progress: Arc<AtomicUsize>,
    pub total: usize,
    pub color_by: ColorBy,
    view: Option<View>,
    colored: Option<Colored>,
    /// Where a Shift+drag box selection started.
    box_from: Option<egui::Pos2>,
    /// The lasso being drawn (Ctrl+drag), in screen coordinates.
    lasso: Vec<egui::Pos2>,
    /// Where the map was drawn last.
    last_rect: Option<egui::Rect>,
    /// The predictions of the run chosen in the cell, for the run-based colourings.
    run_colors: Option<RunColors>,
}

impl EmbeddingRuntime {
    /// A map of `total` images of the Dataset cell load `dataset`, computed as `data`; coloured
    /// by label and fitted to the view until the user says otherwise.
    fn new(
        dataset: (u64, u64),
        generation: u64,
        data: Loading<EmbeddingResult>,
        progress: Arc<AtomicUsize>,
        total: usize,
    ) -> Self {
        Self {
            dataset,
            generation,
            data,
            progress,
            total,
            color_by: ColorBy::default(),
            view: None,
            colored: None,
            box_from: None,
            lasso: Vec::new(),
            last_rect: None,
            run_colors: None,
        }
    }

    /// Where the map was drawn last frame, on the screen.
    pub fn map_rect(&self) -> Option<egui::Rect> {
        self.last_rect
    }

    /// Drains the map's and the chosen run's background results (once per frame, from the
    /// app, whether the cell is drawn or collapsed).
    pub fn poll(&mut self) -> Option<Result<(), String>> {
        if let Some(c) = &mut self.run_colors
            && c.by_record.poll().is_some()
        {
            self.colored = None;
        }
        self.data.poll()
    }
}

/// A distinct colour for category `k` of `n`: a fixed palette for a few, evenly spread hues
/// beyond it.
fn category_color(k: usize, n: usize) -> egui::Color32 {
    use crate::ui::widgets::CATEGORY_PALETTE;
    if n <= CATEGORY_PALETTE.len() {
        return CATEGORY_PALETTE[k];
    }
    // Golden-ratio hue steps keep neighbouring categories apart.
    let hue = (k as f32 * 0.618_034).fract();
    egui::Color32::from(egui::ecolor::Hsva::new(hue, 0.75, 0.85, 1.0))
}

fn color_points(
    result: &EmbeddingResult,
    by: ColorBy,
    key: u64,
    predicted: Option<&std::collections::HashMap<usize, Predicted>>,
) -> Colored {
    let records = &result.manifest.records;
    const NOT_PREDICTED: &str = "(not predicted by the run)";
    let category = |i: usize| -> String {
        let r = &records[i];
        let p = predicted.and_then(|m| m.get(&i));
        match by {
            ColorBy::Label => r.label_string(),
            ColorBy::Patient => r.patient.clone().unwrap_or_else(|| "(none)".into()),
            ColorBy::Split => r
                .split
                .map_or_else(|| "(none)".into(), |s| s.name().to_owned()),
            ColorBy::Prediction => p.map_or_else(|| NOT_PREDICTED.into(), |p| p.label.clone()),
            ColorBy::Correct => p.map_or_else(
                || NOT_PREDICTED.into(),
                |p| if p.correct { "right" } else { "wrong" }.into(),
            ),
            ColorBy::Confidence => p.map_or_else(
                || NOT_PREDICTED.into(),
                |p| {
                    let tenth = ((p.confidence * 10.0).floor() as u32).min(9);
                    format!(
                        "{:.1}–{:.1}",
                        tenth as f32 / 10.0,
                        (tenth + 1) as f32 / 10.0
                    )
                },
            ),
        }
    };
    let names: Vec<String> = result.map.records.iter().map(|&i| category(i)).collect();
    let mut distinct: Vec<&String> = names.iter().collect();
    distinct.sort();
    distinct.dedup();
    let index: std::collections::HashMap<&String, usize> =
        distinct.iter().enumerate().map(|(k, n)| (*n, k)).collect();
    let n = distinct.len();
    let mut counts = vec![0usize; n];
    // Run-based colourings have fixed meanings (wrong in red, confidence on a ramp); images the
    // run did not predict are light grey.
    let color_of = |k: usize, name: &str| -> egui::Color32 {
        if name == NOT_PREDICTED {
            return egui::Color32::from_gray(170);
        }
        match by {
            ColorBy::Correct if name == "wrong" => egui::Color32::from_rgb(214, 39, 40),
            ColorBy::Correct => egui::Color32::from_rgb(44, 160, 44),
            ColorBy::Confidence => {
                let t = name
                    .get(..3)
                    .and_then(|s| s.parse::<f32>().ok())
                    .unwrap_or(0.0);
                egui::Color32::from_rgb(
                    (40.0 + 200.0 * t) as u8,
                    (60.0 + 120.0 * t) as u8,
                    (200.0 - 170.0 * t) as u8,
                )
            }
            _ => category_color(k, n),
        }
    };
    let category: Vec<usize> = names.iter().map(|name| index[name]).collect();
    let points: Vec<Point> = result
        .map
        .coords
        .iter()
        .zip(&names)
        .zip(&category)
        .map(|((c, name), &k)| {
            counts[k] += 1;
            Point::new(*c, color_of(k, name).gamma_multiply(0.85))
        })
        .collect();
    let legend = distinct
        .iter()
        .enumerate()
        .map(|(k, name)| ((*name).clone(), color_of(k, name), counts[k]))
        .collect();
    Colored {
        by,
        set: PointSet {
            key: key.wrapping_mul(8).wrapping_add(by as u64),
            points: Arc::new(points),
        },
        legend,
        category: Arc::new(category),
    }
}

pub(super) fn embedding_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    run: &mut Option<String>,
) {
    let Some(dataset) = app.workbook.inputs(id).dataset else {
        ui.label("Add a Dataset cell above this one.");
        return;
    };
    let runs_dir = app.runs_dir();
    let runs = app.rt.run_ids(&runs_dir);
    ui.horizontal(|ui| {
        ui.label("Run");
        runs_combo(ui, ("embedding-run", id), &runs, run, "none");
        ui.label(
            egui::RichText::new(
                "colours points by its predictions (its validation and test images)",
            )
            .weak(),
        );
    });
    let Some(rt) = app.rt.embedding_mut(id) else {
        ui.label(
            "A map of the dataset above: each image at the first two principal components of its \
             EfficientNet-Lite0 features. Press Run.",
        );
        return;
    };
    let result = match &rt.data {
        Loading::Busy(_) => {
            let done = rt.progress.load(Ordering::Relaxed);
            ui.add(
                egui::ProgressBar::new(done as f32 / rt.total.max(1) as f32)
                    .text(format!("features of {done} / {} images", rt.total)),
            );
            return;
        }
        Loading::Failed(e) => {
            error_label(ui, e);
            return;
        }
        Loading::Idle => return,
        Loading::Ready(r) => r,
    };
    let has_patients = result.manifest.has_patients();
    let has_split = result.manifest.records.iter().any(|r| r.split.is_some());
    // The chosen run's predictions, loaded in the background when the choice changes.
    if rt.run_colors.as_ref().map(|c| &c.run) != run.as_ref() {
        rt.run_colors = run.as_ref().map(|r| {
            let (root, r2, manifest) = (runs_dir.clone(), r.clone(), result.manifest.clone());
            RunColors {
                run: r.clone(),
                by_record: Loading::Busy(BgTask::spawn(ui.ctx(), "embedding-run", move || {
                    load_predictions(&root, &r2, &manifest)
                })),
            }
        });
        rt.colored = None;
    }
    let predicted = rt.run_colors.as_ref().and_then(|c| c.by_record.ready());
    if predicted.is_none() && rt.color_by.needs_run() {
        rt.color_by = ColorBy::Label;
    }
    if let Some(RunColors {
        by_record: Loading::Failed(e),
        ..
    }) = &rt.run_colors
    {
        error_label(ui, e);
    }
    ui.horizontal_wrapped(|ui| {
        ui.label(format!(
            "{} images; PC 1 explains {:.1}% of the features' variance, PC 2 {:.1}%.",
            result.map.coords.len(),
            result.map.explained[0] * 100.0,
            result.map.explained[1] * 100.0
        ));
        if !result.map.skipped.is_empty() {
            ui.colored_label(
                ui.visuals().warn_fg_color,
                format!("{} unreadable images left out", result.map.skipped.len()),
            )
            .on_hover_text(
                result
                    .map
                    .skipped
                    .iter()
                    .take(10)
                    .map(|(p, e)| format!("{}: {e}", p.display()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
    });
    ui.horizontal(|ui| {
        ui.label("Colour by");
        for by in ColorBy::ALL {
            let enabled = match by {
                ColorBy::Label => true,
                ColorBy::Patient => has_patients,
                ColorBy::Split => has_split,
                _ => predicted.is_some(),
            };
            ui.add_enabled_ui(enabled, |ui| {
                ui.selectable_value(&mut rt.color_by, by, by.name());
            });
        }
        if ui
            .button("Fit")
            .on_hover_text("Show every point (or double-click the map)")
            .clicked()
        {
            rt.view = None;
        }
        ui.label(
            egui::RichText::new(
                "drag to pan · Ctrl+scroll to zoom · Shift+drag: box · Ctrl+drag: lasso",
            )
            .weak(),
        );
    });
    if rt.colored.as_ref().is_none_or(|c| c.by != rt.color_by) {
        // Each colouring, of each run, is its own point set on the GPU.
        let run_key = rt.run_colors.as_ref().map_or(0, |c| {
            c.run
                .bytes()
                .fold(7u64, |h, b| h.wrapping_mul(31) ^ u64::from(b))
        });
        let key = rt.generation.wrapping_mul(131).wrapping_add(run_key);
        rt.colored = Some(color_points(result, rt.color_by, key, predicted));
    }
    let Some(colored) = rt.colored.as_ref() else {
        return;
    };
    let width = ui.available_width().clamp(200.0, 900.0);
    let (rect, resp) =
        ui.allocate_exact_size(egui::vec2(width, 420.0), egui::Sense::click_and_drag());
    rt.last_rect = Some(rect);
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 4.0, ui.visuals().extreme_bg_color);
    let view = rt
        .view
        .get_or_insert_with(|| View::fit(&colored.set.points));
    // Ctrl (⌘ on a Mac) for the lasso: Alt+drag moves windows on many Linux desktops.
    let (shift, lasso_key) = ui.input(|i| (i.modifiers.shift, i.modifiers.command));
    if resp.drag_started() && shift {
        rt.box_from = resp.interact_pointer_pos();
    }
    if resp.drag_started()
        && lasso_key
        && !shift
        && let Some(at) = resp.interact_pointer_pos()
    {
        rt.lasso = vec![at];
    }
    if resp.dragged()
        && !rt.lasso.is_empty()
        && let Some(at) = resp.interact_pointer_pos()
        && rt.lasso.last().is_none_or(|l| l.distance(at) > 2.0)
    {
        rt.lasso.push(at);
    }
    if resp.dragged() && rt.box_from.is_none() && rt.lasso.is_empty() {
        view.pan(rect, resp.drag_delta());
    }
    if resp.hovered() {
        let zoom = ui.input(|i| i.zoom_delta());
        if zoom != 1.0
            && let Some(at) = resp.hover_pos()
        {
            view.zoom(rect, at, zoom);
        }
    }
    if resp.double_clicked() {
        *view = View::fit(&colored.set.points);
    }
    let view = *view;
    // Larger points for small maps, smaller for crowded ones.
    let n = colored.set.points.len().max(1) as f32;
    let radius = (5.0 - 0.6 * n.log10()).clamp(2.0, 4.5);
    points::paint(&painter, rect, &colored.set, view, radius);
    // Axes.
    let text = ui.visuals().weak_text_color();
    painter.text(
        rect.center_bottom() - egui::vec2(0.0, 4.0),
        egui::Align2::CENTER_BOTTOM,
        format!("PC 1 ({:.1}%)", result.map.explained[0] * 100.0),
        egui::FontId::proportional(12.0),
        text,
    );
    painter.text(
        rect.left_top() + egui::vec2(6.0, 4.0),
        egui::Align2::LEFT_TOP,
        format!("PC 2 ({:.1}%)", result.map.explained[1] * 100.0),
        egui::FontId::proportional(12.0),
        text,
    );
    // Box selection.
    let mut picked: Option<Vec<usize>> = None;
    if let (Some(from), Some(to)) = (rt.box_from, resp.interact_pointer_pos()) {
        let b = egui::Rect::from_two_pos(from, to);
        painter.rect_stroke(
            b,
            0.0,
            egui::Stroke::new(1.0, ui.visuals().selection.stroke.color),
            egui::StrokeKind::Inside,
        );
        if resp.drag_stopped() {
            let mut chosen: Vec<usize> = colored
                .set
                .points
                .iter()
                .zip(&result.map.records)
                .filter(|(p, _)| b.contains(view.to_screen(rect, p.pos)))
                .map(|(_, &r)| r)
                .collect();
            chosen.sort_unstable();
            picked = Some(chosen);
        }
    }
    // Lasso selection.
    if rt.lasso.len() > 1 {
        let mut outline = rt.lasso.clone();
        outline.push(rt.lasso[0]);
        painter.add(egui::Shape::line(
            outline,
            egui::Stroke::new(1.5, ui.visuals().selection.stroke.color),
        ));
        if resp.drag_stopped() {
            let screen: Vec<egui::Pos2> = colored
                .set
                .points
                .iter()
                .map(|p| view.to_screen(rect, p.pos))
                .collect();
            let mut chosen: Vec<usize> = lasso_pick(&rt.lasso, &screen)
                .into_iter()
                .map(|k| result.map.records[k])
                .collect();
            chosen.sort_unstable();
            picked = Some(chosen);
        }
    }
    if resp.drag_stopped() {
        rt.box_from = None;
        rt.lasso.clear();
    }
    // Hover and click.
    let hovered = resp
        .hover_pos()
        .and_then(|at| points::nearest(&colored.set.points, &view, rect, at, 8.0));
    if let Some(k) = hovered {
        let c = view.to_screen(rect, colored.set.points[k].pos);
        painter.circle_stroke(
            c,
            6.0,
            egui::Stroke::new(2.0, ui.visuals().strong_text_color()),
        );
    }
    // Legend.
    let mut export = None;
    ui.horizontal_wrapped(|ui| {
        for (name, color, count) in colored.legend.iter().take(24) {
            let (dot, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().circle_filled(dot.center(), 5.0, *color);
            ui.label(format!("{name} ({count})"));
        }
        if colored.legend.len() > 24 {
            ui.label(format!("+{} more", colored.legend.len() - 24));
        }
        if widgets::DESKTOP
            && ui
                .button("Export map…")
                .on_hover_text("Save the map as shown (PNG and SVG, with its legend) and every point with its coordinates, colour, image, label, patient and split (CSV), into a folder")
                .clicked()
        {
            export = Some(widgets::pick(widgets::folder_dialog));
        }
    });
    let export = export.map(|picked| {
        let shown = EmbeddingResult {
            manifest: result.manifest.clone(),
            map: result.map.clone(),
            batch_effect: None,
        };
        (picked, shown, colored.clone())
    });
    match &result.batch_effect {
        Some(Ok(b)) => {
            let color = if b.patient_dominates {
                ui.visuals().warn_fg_color
            } else {
                ui.visuals().text_color()
            };
            ui.label(egui::RichText::new("Does the model see the patient?").strong());
            ui.colored_label(color, &b.summary);
        }
        Some(Err(why)) => {
            ui.label(egui::RichText::new(format!("Batch-effect check: {why}")).weak());
        }
        None => {}
    }
    let clicked = resp.clicked() && !shift;
    let hovered_record = hovered.map(|k| result.map.records[k]);
    let manifest = result.manifest.clone();
    match export {
        Some((widgets::Picked::Path(dir), shown, colored)) => {
            app.rt.in_background(ui.ctx(), "export-map", move || {
                export_map(&dir, &shown, &colored)
                    .map(|files| {
                        format!(
                            "exported the map to {} ({} files)",
                            dir.display(),
                            files.len()
                        )
                    })
                    .map_err(|e| format!("exporting the map: {e:#}"))
            });
        }
        Some((widgets::Picked::Unavailable, ..)) => app.rt.note(true, widgets::NO_DIALOG),
        _ => {}
    }
    if let Some(record) = hovered_record {
        let r = &manifest.records[record];
        let path = manifest.image_path(r);
        let thumb = app.rt.thumbs.get(&path);
        resp.on_hover_ui_at_pointer(|ui| {
            if let Thumb::Ready(tex) = thumb {
                ui.add(egui::Image::new(&tex).max_size(egui::vec2(128.0, 128.0)));
            }
            ui.label(egui::RichText::new(r.label_string()).strong());
            if let Some(p) = &r.patient {
                ui.label(format!("patient {p}"));
            }
            ui.label(egui::RichText::new(&r.path).weak());
            ui.label(egui::RichText::new("click to inspect").weak());
        });
        if clicked && let Some(d) = app.rt.dataset_mut(dataset) {
            d.selected = Some(record);
            app.rt.note(
                false,
                format!("{} opened in the Dataset cell's inspector", r.path),
            );
        }
    }
    if let Some(chosen) = picked {
        let n = chosen.len();
        if let Some(d) = app.rt.dataset_mut(dataset) {
            d.filter.picked = (n > 0).then(|| Arc::new(chosen));
        }
        app.rt.note(
            false,
            if n > 0 {
                format!("the Dataset cell's gallery shows the {n} images selected on the map")
            } else {
                "no image in the box: the gallery shows every image again".to_owned()
            },
        );
    }
}
