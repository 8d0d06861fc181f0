//! The notebook's cells: one file per cell kind (inputs on top, outputs below). Cells read
//! plain results from the runtime and push [`Command`]s; background work is started by
//! [`run_cell`]. Widgets never import cells.

mod cluster;
mod compare;
mod dataset;
mod embedding;
mod evaluate;
mod explore;
pub mod freshness;
mod inspector;
mod note;
mod notebook;
mod predict;
pub mod runtime;
mod split;
mod train;

use cluster::*;
pub use cluster::{ClusterMsg, ClusterRuntime};
pub use compare::CompareRuntime;
use compare::*;
use dataset::*;
pub use dataset::{CsvColumns, in_cell_words};
use embedding::*;
pub use embedding::{EmbeddingRuntime, MapBench};
pub use evaluate::EvalRuntime;
use evaluate::*;
pub use explore::ExploreUi;
use explore::*;
pub use inspector::{Inspected, SaliencyView};
pub use note::bold_spans;
use note::*;
pub use predict::PredictView;
use predict::*;
use split::*;
use train::*;
pub use train::{curves_ui, switch_mode};

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use web_time::Instant;

use eframe::egui;

use crate::dataset::Manifest;
use crate::dataset::split::apply_split;
use crate::experiment::config::TrainConfig;
use crate::experiment::events::TrainEvent;
use crate::model::backend::BackendChoice;
use crate::workbook::{CellKind, resolve_path};

pub use notebook::{Command, Notebook, NotebookStatus};
pub use runtime::*;

use freshness::{Freshness, cell_name, current_data, freshness};
use runtime::Task as BgTask;

fn loaded(app: &Notebook, dataset: u64) -> Option<&LoadedDataset> {
    app.rt.dataset(dataset)?.data.ready()
}

/// The manifest a Train cell trains on (the Split above when there is one, else the dataset
/// as it is) and what it is, or why it cannot be used now.
fn train_manifest(app: &Notebook, id: u64) -> Result<(Arc<Manifest>, DataUse), String> {
    let data = current_data(app, id)?;
    let manifest = match data.split {
        Some((s, _)) => {
            let rt = app.rt.split(s);
            let result = rt.and_then(|r| r.data.ready());
            if let (Some(rt), Some(result)) = (rt, result) {
                // The same rule as `cellbench run`: never train on a leaky split in silence.
                result
                    .report
                    .check_trainable(rt.config.by_image)
                    .map_err(|why| format!("{}: {why}", cell_name(app, s)))?;
            }
            result.map(|r| r.manifest.clone())
        }
        None => loaded(app, data.dataset.0).map(|d| d.manifest.clone()),
    }
    .ok_or_else(|| "the data above is not loaded".to_owned())?;
    Ok((manifest, data))
}

/// The run an Evaluate/Predict cell looks at: its own choice, else the Train cell above.
pub(crate) fn run_for(app: &Notebook, id: u64, own: &Option<String>) -> Option<String> {
    own.clone().or_else(|| {
        let train = app.workbook.inputs(id).train?;
        match &app.workbook.cells[app.workbook.position(train)?].kind {
            CellKind::Train { run, .. } => run.clone(),
            _ => None,
        }
    })
}

/// Starts the work of a cell.
pub fn run_cell(app: &mut Notebook, ctx: &egui::Context, id: u64) {
    let Some(i) = app.workbook.position(id) else {
        return;
    };
    let kind = app.workbook.cells[i].kind.clone();
    let base = app.base_dir();
    match kind {
        CellKind::Dataset { path, options } => {
            if path.trim().is_empty() {
                app.rt
                    .note(true, "dataset cell: choose a folder or CSV first");
                return;
            }
            let full = resolve_path(&path, &base);
            let opts = crate::workbook::resolve_options(&options, &base);
            let generation = app.rt.next_generation();
            let task = BgTask::spawn(ctx, "open-dataset", move || {
                let manifest = crate::dataset::open(&full, &opts).map_err(|e| format!("{e:#}"))?;
                let report = crate::explore::explore(&manifest).map_err(|e| format!("{e:#}"))?;
                Ok(LoadedDataset {
                    facets: runtime::Facets::of(&manifest),
                    manifest: Arc::new(manifest),
                    report: Arc::new(report),
                })
            });
            app.rt.set_dataset(
                id,
                runtime::DatasetRuntime {
                    source: (path, options),
                    generation,
                    data: Loading::Busy(task),
                    filter: GalleryFilter::default(),
                    visible: Arc::new(Vec::new()),
                    visible_for: None,
                    selected: None,
                    preview: None,
                },
            );
        }
        CellKind::Split { config } => {
            let Some(dataset) = app.workbook.inputs(id).dataset else {
                app.rt.note(true, "split cell: add a Dataset cell above it");
                return;
            };
            if !freshness(app, dataset).is_fresh() {
                let name = cell_name(app, dataset);
                app.rt.note(
                    true,
                    format!("split cell: {name} is not up to date; run it first"),
                );
                return;
            }
            let Some(data) = loaded(app, dataset) else {
                return;
            };
            let manifest = data.manifest.clone();
            let dataset_generation = app.rt.dataset(dataset).expect("loaded above").generation;
            let generation = app.rt.next_generation();
            let cfg = config.clone();
            let task = BgTask::spawn(ctx, "split", move || {
                let (m, report) = apply_split(&manifest, &cfg).map_err(|e| e.to_string())?;
                Ok(SplitResult {
                    manifest: Arc::new(m),
                    report,
                })
            });
            app.rt.set_split(
                id,
                SplitRuntime {
                    dataset: (dataset, dataset_generation),
                    config,
                    generation,
                    data: Loading::Busy(task),
                },
            );
        }
        CellKind::Embedding { .. } => start_embedding(app, ctx, id),
        CellKind::Train { config, folds, .. } => start_training(app, ctx, id, config, folds),
        CellKind::Evaluate { .. } | CellKind::Predict { .. }
            if let Some(problem) = freshness::train_problem(app, id) =>
        {
            // Never a run of an out-of-date (or still training) Train cell: Run queues that
            // Train cell first (see `plan_run`); a direct call is refused with the cell named.
            let what = kind.title().to_lowercase();
            app.rt
                .note(true, format!("{what} cell: not started: {problem}"));
        }
        CellKind::Evaluate { run } => {
            if let Some(run) = run_for(app, id, &run) {
                let root = app.runs_dir();
                let r = run.clone();
                let task = BgTask::spawn(ctx, "evaluate", move || {
                    crate::runs::view::load_evaluation(&root, &r).map_err(|e| format!("{e:#}"))
                });
                app.rt
                    .set_eval(id, EvalRuntime::new(run, Loading::Busy(task)));
            }
        }
        CellKind::Compare { runs } => {
            let loaded = load_summaries(ctx, app.runs_dir(), runs.clone());
            app.rt.set_compare(
                id,
                CompareRuntime {
                    selected: runs,
                    loaded,
                    stale: false,
                },
            );
        }
        CellKind::Predict {
            run,
            input,
            output,
            tta,
        } => {
            let Some(run) = run_for(app, id, &run) else {
                app.rt.note(
                    true,
                    "predict cell: no run to predict with (train one first)",
                );
                return;
            };
            let run_dir = app.runs_dir().join(&run);
            let run_id = run;
            // One input per line (a folder, an image or a manifest CSV).
            let inputs: Vec<PathBuf> = input
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| resolve_path(l, &base))
                .collect();
            let run_dir_shown = run_dir.clone();
            let output = resolve_path(&output, &base);
            // Paths in the workbook's folder are named as the cells name them, relative to it.
            let shown = move |p: &std::path::Path| crate::workbook::stored_path(p, &base);
            let backend = BackendChoice::Auto;
            // Batches of 32 on the desktop; one image per step in the browser (a frame's work).
            let batch = if cfg!(target_arch = "wasm32") { 1 } else { 32 };
            let task = BgTask::in_steps_on_worker(
                ctx,
                &app.rt.compute,
                move || {
                    let compute =
                        crate::model::backend::select(backend).map_err(|e| format!("{e:#}"))?;
                    let classifier = crate::infer::Classifier::load(&run_dir, &compute.device)
                        .map_err(|e| format!("{e:#}"))?
                        .with_orientation_tta(tta);
                    let mut paths = Vec::new();
                    // Files a folder holds that could not be taken (a name that is not UTF-8, a
                    // path the walk could not enter): counted with the unreadable ones.
                    let mut left_out = 0;
                    for input in &inputs {
                        let (found, skipped) = crate::infer::collect_inputs_noting(input)
                            .map_err(|e| format!("{e:#}"))?;
                        for (path, why) in &skipped {
                            log::warn!("predict: skipped ({why}): {path}");
                        }
                        left_out += skipped.len();
                        paths.extend(found);
                    }
                    let prediction = crate::infer::BatchPrediction::new(&classifier, paths, batch);
                    Ok((classifier, prediction, left_out))
                },
                |(classifier, prediction, _)| prediction.total() > 0 && prediction.step(classifier),
                move |(classifier, prediction, left_out)| {
                    let s = prediction.finish(&output).map_err(|e| format!("{e:#}"))?;
                    let not_taken = if left_out > 0 {
                        format!(", {left_out} not taken: see the log")
                    } else {
                        String::new()
                    };
                    // The model's own data: what its labels mean.
                    let trained_on = classifier
                        .info
                        .dataset_root
                        .as_ref()
                        .map_or_else(|| "an unknown dataset (older run)".to_owned(), |r| shown(r));
                    Ok(PredictView {
                        summary: format!(
                            "Run {run_id}, trained on {trained_on} ({} labels): {} of {} images predicted to {} ({} unreadable{not_taken})",
                            classifier.info.labels.len(),
                            s.predicted,
                            s.images,
                            shown(&output),
                            s.failed.len()
                        ),
                        labels: classifier.info.labels.clone(),
                        rows: s.rows,
                        run_dir: run_dir_shown,
                        inspected: None,
                    })
                },
            );
            app.rt.set_predict(id, Loading::Busy(task));
        }
        CellKind::Note { .. } | CellKind::Explore {} | CellKind::Cluster { .. } => {}
    }
}

fn start_training(
    app: &mut Notebook,
    ctx: &egui::Context,
    id: u64,
    config: TrainConfig,
    folds: u32,
) {
    if app.rt.train(id).is_some_and(TrainRuntime::is_running) {
        return;
    }
    // Never train on out-of-date data: the Run command brings the cells above up to date
    // first; anything still stale here (a direct call) is refused with the cell named.
    let (manifest, mut data) = match train_manifest(app, id) {
        Ok(m) => m,
        Err(problem) => {
            app.rt
                .note(true, format!("train cell: not started: {problem}"));
            return;
        }
    };
    let settings = Some((config.clone(), folds));
    let folds = (folds >= 2).then_some(folds as usize);
    if let Some(k) = folds {
        data.description = format!(
            "{}; cross-validated over {k} patient-grouped folds (a split given above is not used)",
            data.dataset_name
        );
    }
    let options = app
        .rt
        .dataset(data.dataset.0)
        .map(|d| crate::workbook::resolve_options(&d.source.1, &app.base_dir()))
        .unwrap_or_default();
    let runs_root = app.runs_dir();
    // Only the browser computes features ahead of the run (see `FeaturePrefetch`).
    let prefetch =
        (cfg!(target_arch = "wasm32") && config.mode == crate::model::Mode::Probe).then(|| {
            FeaturePrefetch {
                kind: config.feature_kind(),
                preprocess: config.preprocess.clone(),
                paths: manifest
                    .records
                    .iter()
                    .map(|r| manifest.image_path(r))
                    .collect(),
            }
        });
    let make_job = move || {
        Ok(crate::train::engine::TrainJob {
            config,
            manifest: (*manifest).clone(),
            options,
            runs_root,
            resume: None,
            cache: Some(crate::train::features::FeatureCache::default_location()),
        })
    };
    spawn_training(app, ctx, id, data, settings, prefetch, make_job);
}

/// The backbone features a probe will need: in the browser they are computed ahead of the
/// run, a few images per frame, into the feature cache the run then reads (the page stays
/// responsive and Stop works between slices). The desktop computes them inside the run.
pub struct FeaturePrefetch {
    pub kind: crate::model::extractor::FeatureKind,
    pub preprocess: crate::dataset::preprocess::Preprocess,
    pub paths: Vec<PathBuf>,
}

/// Queues `prefetch` on the compute queue as one job in steps of a few milliseconds each (a
/// piece of an image's network pass at a time: see
/// [`crate::train::features::FeatureSteps`]), reporting progress after each step.
#[cfg(target_arch = "wasm32")]
fn queue_prefetch(
    app: &Notebook,
    ctx: &egui::Context,
    prefetch: FeaturePrefetch,
    tx: &mpsc::Sender<TrainEvent>,
    cancel: &Arc<AtomicBool>,
) {
    /// Work per step: the frame around it stays well under 100 ms.
    const STEP: std::time::Duration = std::time::Duration::from_millis(30);
    let (tx, cancel, repaint) = (tx.clone(), cancel.clone(), ctx.clone());
    let mut prefetch = Some(prefetch);
    let mut steps: Option<crate::train::features::FeatureSteps> = None;
    app.rt.compute.submit_steps(move || {
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        if steps.is_none() {
            // The folded network is built once and shared; without weights the run itself
            // reports the error.
            let device = burn::tensor::Device::flex();
            let Some(p) = prefetch.take() else {
                return false;
            };
            let Ok(extractor) =
                crate::model::extractor::Extractor::bundled(p.kind.backbone, &device)
            else {
                return false;
            };
            steps = Some(crate::train::features::FeatureSteps::new(
                extractor,
                p.kind,
                &p.preprocess,
                p.paths,
                Some(crate::train::features::FeatureCache::default_location()),
            ));
            // The first step: weights folded and the cache ready; images next frame.
            return true;
        }
        let Some(s) = steps.as_mut() else {
            return false;
        };
        let more = s.step(STEP);
        tx.send(TrainEvent::Progress {
            phase: crate::experiment::events::Phase::Features,
            done: s.done(),
            total: s.total(),
        })
        .ok();
        repaint.request_repaint();
        more
    });
}

/// Continues the Train cell's last run from its last complete checkpoint, on the data and
/// split the run recorded (its `dataset.json`), whoever started it.
pub fn resume_training(app: &mut Notebook, ctx: &egui::Context, id: u64) {
    if app.rt.train(id).is_some_and(TrainRuntime::is_running) {
        return;
    }
    let run = app
        .workbook
        .position(id)
        .and_then(|i| match &app.workbook.cells[i].kind {
            CellKind::Train { run, .. } => run.clone(),
            _ => None,
        });
    let Some(run) = run else {
        app.rt.note(true, "train cell: no run to resume");
        return;
    };
    let dir = app.runs_dir().join(&run);
    let runs_root = app.runs_dir();
    let data = DataUse {
        dataset: (0, 0),
        split: None,
        resumed: true,
        dataset_name: format!("the data run {run} recorded"),
        description: format!("the data run {run} recorded (resumed)"),
    };
    let make_job = move || -> anyhow::Result<crate::train::engine::TrainJob> {
        let recorded = crate::runs::DatasetFile::read(&dir)?;
        Ok(crate::train::engine::TrainJob {
            config: crate::runs::read_config(&dir)?,
            manifest: recorded.open()?,
            options: recorded.options,
            runs_root,
            resume: Some(dir),
            cache: Some(crate::train::features::FeatureCache::default_location()),
        })
    };
    spawn_training(app, ctx, id, data, None, None, make_job);
}

/// Queues a training job (a cross-validation of it when `settings` asks for folds) on the
/// compute worker and follows it through its events.
fn spawn_training(
    app: &mut Notebook,
    ctx: &egui::Context,
    id: u64,
    data: DataUse,
    settings: Option<(TrainConfig, u32)>,
    prefetch: Option<FeaturePrefetch>,
    make_job: impl FnOnce() -> anyhow::Result<crate::train::engine::TrainJob> + Send + 'static,
) {
    let folds = settings
        .as_ref()
        .and_then(|&(_, k)| (k >= 2).then_some(k as usize));
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    #[cfg(target_arch = "wasm32")]
    if let Some(prefetch) = prefetch {
        queue_prefetch(app, ctx, prefetch, &tx, &cancel);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = prefetch;
    let c = cancel.clone();
    let repaint = ctx.clone();
    // All burn work of the run on the compute worker's one thread, after any job before it.
    let submitted = app.rt.compute.submit(move || {
        if c.load(std::sync::atomic::Ordering::Relaxed) {
            done_tx
                .send(Err("stopped before it started".to_owned()))
                .ok();
            repaint.request_repaint();
            return;
        }
        let mut sink = |e: &TrainEvent| {
            tx.send(e.clone()).ok();
            repaint.request_repaint();
        };
        let r = make_job().and_then(|job| match folds {
            None => crate::train::engine::train(job, &mut sink, &c).map(|o| o.run_id),
            Some(k) => {
                let cv = crate::train::cv::cross_validate(job, k, &mut sink, &c)?;
                let done = cv.outcomes.len();
                let last = cv.outcomes.into_iter().last();
                match (cv.summary, last) {
                    (Some(_), Some(last)) => Ok(last.run_id),
                    (None, Some(last)) if last.state == crate::runs::RunState::Cancelled => {
                        Ok(last.run_id)
                    }
                    _ => Err(anyhow::anyhow!(
                        "cross-validation stopped after {done} of {k} folds"
                    )),
                }
            }
        });
        done_tx.send(r.map_err(|e| format!("{e:#}"))).ok();
        repaint.request_repaint();
    });
    if !submitted {
        app.rt
            .note(true, "could not start training: the compute worker is gone");
        return;
    }
    app.rt.set_train(
        id,
        TrainRuntime {
            data,
            settings,
            events: Vec::new(),
            rx: Some(rx),
            cancel,
            started: Instant::now(),
            finished: None,
            done_rx: Some(done_rx),
        },
    );
}

/// Draws one cell: a header with its controls, then its body unless collapsed.
pub fn cell_ui(app: &mut Notebook, ui: &mut egui::Ui, id: u64) {
    let Some(i) = app.workbook.position(id) else {
        return;
    };
    let cell = app.workbook.cells[i].clone();
    let frame = egui::Frame::group(ui.style())
        .inner_margin(egui::Margin::same(10))
        .corner_radius(6.0);
    let shown = frame.show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.horizontal(|ui| {
            let arrow = if cell.collapsed { "Show" } else { "Hide" };
            if ui
                .small_button(arrow)
                .on_hover_text("Collapse or expand this cell")
                .clicked()
            {
                app.push(Command::ToggleCollapse(id));
            }
            ui.label(egui::RichText::new(cell.kind.title()).strong().size(16.0));
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                if ui
                    .small_button("Remove")
                    .on_hover_text("Remove this cell")
                    .clicked()
                {
                    app.push(Command::RemoveCell(id));
                }
                if ui
                    .small_button("Down")
                    .on_hover_text("Move this cell down")
                    .clicked()
                {
                    app.push(Command::MoveCell(id, 1));
                }
                if ui
                    .small_button("Up")
                    .on_hover_text("Move this cell up")
                    .clicked()
                {
                    app.push(Command::MoveCell(id, -1));
                }
                ui.menu_button("Add below", |ui| {
                    for kind in CellKind::templates() {
                        if ui.button(kind.title()).clicked() {
                            app.push(Command::AddCell {
                                after: Some(id),
                                kind,
                            });
                            ui.close();
                        }
                    }
                })
                .response
                .on_hover_text("Insert a cell below this one");
                if !matches!(
                    cell.kind,
                    CellKind::Note { .. } | CellKind::Explore {} | CellKind::Cluster { .. }
                ) && ui.button("Run").on_hover_text("Run this cell").clicked()
                {
                    app.push(Command::RunCell(id));
                }
            });
        });
        // In a scope of its own: the line coming and going never shifts the ids of the fields
        // below it, so typing in a field that makes the cell out of date keeps the focus.
        ui.scope(|ui| {
            if let Freshness::Stale(why) = freshness(app, id) {
                ui.colored_label(
                    STALE_COLOR,
                    format!("Out of date: {why}. Run updates it and the cells it needs."),
                );
            }
        });
        if cell.collapsed {
            return;
        }
        ui.separator();
        let mut kind = cell.kind.clone();
        match &mut kind {
            CellKind::Note { text } => note_ui(ui, id, text),
            CellKind::Dataset { path, options } => dataset_ui(app, ui, id, path, options),
            CellKind::Explore {} => explore_ui(app, ui, id),
            CellKind::Embedding { run } => embedding_ui(app, ui, id, run),
            CellKind::Split { config } => split_ui(app, ui, id, config),
            CellKind::Train { config, run, folds } => train_ui(app, ui, id, config, run, folds),
            CellKind::Evaluate { run } => evaluate_ui(app, ui, id, run),
            CellKind::Compare { runs } => compare_ui(app, ui, id, runs),
            CellKind::Predict {
                run,
                input,
                output,
                tta,
            } => predict_ui(app, ui, id, run, input, output, tta),
            CellKind::Cluster {
                profile,
                dataset,
                runs,
                gpus,
                job,
            } => cluster_ui(app, ui, id, profile, dataset, runs, gpus, job),
        }
        if kind != cell.kind
            && let Some(i) = app.workbook.position(id)
        {
            app.workbook.cells[i].kind = kind;
            app.touch();
        }
    });
    // Files dropped on a Predict cell are predicted by it (see `Notebook::take_drops`).
    if matches!(cell.kind, CellKind::Predict { .. }) {
        app.drop_targets.push((id, shown.response.rect));
    }
}

/// Headers of out-of-date cells.
const STALE_COLOR: egui::Color32 = egui::Color32::from_rgb(230, 126, 34);

fn error_label(ui: &mut egui::Ui, text: &str) {
    ui.colored_label(ui.visuals().error_fg_color, text);
}

fn runs_combo(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    runs: &[String],
    value: &mut Option<String>,
    default_text: &str,
) {
    egui::ComboBox::from_id_salt(id)
        .selected_text(value.clone().unwrap_or_else(|| default_text.to_owned()))
        .width(300.0)
        .show_ui(ui, |ui| {
            ui.selectable_value(value, None, default_text);
            for r in runs.iter().rev() {
                ui.selectable_value(value, Some(r.clone()), r);
            }
        })
        .response
        .on_hover_text("Which run to use");
}
