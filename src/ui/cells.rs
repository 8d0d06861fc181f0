//! One function per notebook cell kind: inputs on top, outputs below. Cells read plain
//! results from the runtime and push [`Command`]s; background work is started by
//! [`run_cell`].

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use eframe::egui;
use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints};

use crate::dataset::preprocess::Preprocess;
use crate::dataset::split::{SplitReport, assign_splits};
use crate::dataset::{DatasetFormat, Manifest, Split};
use crate::explore::{ExploreReport, Table};
use crate::model::backend::BackendChoice;
use crate::runs::view::{RunEvaluation, RunSummary};
use crate::train::config::{Imbalance, Mode, Optimizer, Schedule, Task, TrainConfig};
use crate::train::events::{Phase, TrainEvent};
use crate::workbook::{CellKind, resolve_path};

use super::app::{
    Command, DataUse, GalleryFilter, LoadedDataset, Loading, SplitResult, SplitRuntime, Task as BgTask,
    TrainRuntime, WorkbenchApp,
};
use super::freshness::{Freshness, cell_name, current_data, freshness};
use super::thumbs::THUMB_SIDE;
use super::widgets;

/// Per-Explore-cell UI state.
#[derive(Default)]
pub struct ExploreUi {
    pub sort: std::collections::HashMap<usize, (usize, bool)>,
}

pub struct EvalRuntime {
    pub run: String,
    pub data: Loading<RunEvaluation>,
    pub normalised: bool,
    pub selected: Option<(usize, usize)>,
}

pub struct CompareRuntime {
    pub selected: Vec<String>,
    /// Summaries of `selected`, read from disk in the background.
    pub loaded: Loading<Vec<RunSummary>>,
    pub stale: bool,
}

/// Reads run summaries in the background (runs that cannot be read are left out).
fn load_summaries(
    ctx: &egui::Context,
    root: PathBuf,
    runs: Vec<String>,
) -> Loading<Vec<RunSummary>> {
    Loading::Busy(BgTask::spawn(ctx, "compare", move || {
        Ok(runs
            .iter()
            .filter_map(|r| crate::runs::view::load_summary(&root, r).ok())
            .collect())
    }))
}

fn loaded(app: &WorkbenchApp, dataset: u64) -> Option<&LoadedDataset> {
    app.rt.datasets.get(&dataset)?.data.ready()
}

/// The manifest a Train cell trains on (the Split above when there is one, else the dataset
/// as it is) and what it is, or why it cannot be used now.
fn train_manifest(app: &WorkbenchApp, id: u64) -> Result<(Arc<Manifest>, DataUse), String> {
    let data = current_data(app, id)?;
    let manifest = match data.split {
        Some((s, _)) => app.rt.splits[&s].data.ready().map(|r| r.manifest.clone()),
        None => loaded(app, data.dataset.0).map(|d| d.manifest.clone()),
    }
    .ok_or_else(|| "the data above is not loaded".to_owned())?;
    Ok((manifest, data))
}

/// The run an Evaluate/Predict cell looks at: its own choice, else the Train cell above.
fn run_for(app: &WorkbenchApp, id: u64, own: &Option<String>) -> Option<String> {
    own.clone().or_else(|| {
        let train = app.workbook.inputs(id).train?;
        match &app.workbook.cells[app.workbook.position(train)?].kind {
            CellKind::Train { run, .. } => run.clone(),
            _ => None,
        }
    })
}

/// Starts the work of a cell.
pub fn run_cell(app: &mut WorkbenchApp, ctx: &egui::Context, id: u64) {
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
            let opts = options.clone();
            let generation = app.rt.next_generation();
            let task = BgTask::spawn(ctx, "open-dataset", move || {
                let manifest = crate::dataset::open(&full, &opts).map_err(|e| format!("{e:#}"))?;
                let report = crate::explore::explore(&manifest).map_err(|e| format!("{e:#}"))?;
                Ok(LoadedDataset {
                    facets: super::app::Facets::of(&manifest),
                    manifest: Arc::new(manifest),
                    report: Arc::new(report),
                })
            });
            app.rt.datasets.insert(
                id,
                super::app::DatasetRuntime {
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
            let dataset_generation = app.rt.datasets[&dataset].generation;
            let generation = app.rt.next_generation();
            let cfg = config.clone();
            let task = BgTask::spawn(ctx, "split", move || {
                let sides = assign_splits(&manifest.records, &cfg).map_err(|e| e.to_string())?;
                let mut m = (*manifest).clone();
                for (r, s) in m.records.iter_mut().zip(sides) {
                    r.split = s;
                }
                let report = SplitReport::of(&m.records);
                Ok(SplitResult {
                    manifest: Arc::new(m),
                    report,
                })
            });
            app.rt.splits.insert(
                id,
                SplitRuntime {
                    dataset: (dataset, dataset_generation),
                    config,
                    generation,
                    data: Loading::Busy(task),
                },
            );
        }
        CellKind::Train { config, .. } => start_training(app, ctx, id, config),
        CellKind::Evaluate { run } => {
            if let Some(run) = run_for(app, id, &run) {
                let root = app.runs_dir();
                let r = run.clone();
                let task = BgTask::spawn(ctx, "evaluate", move || {
                    crate::runs::view::load_evaluation(&root, &r).map_err(|e| format!("{e:#}"))
                });
                app.rt.evals.insert(
                    id,
                    EvalRuntime {
                        run,
                        data: Loading::Busy(task),
                        normalised: false,
                        selected: None,
                    },
                );
            }
        }
        CellKind::Compare { runs } => {
            let loaded = load_summaries(ctx, app.runs_dir(), runs.clone());
            app.rt.compares.insert(
                id,
                CompareRuntime {
                    selected: runs,
                    loaded,
                    stale: false,
                },
            );
        }
        CellKind::Predict { run, input, output } => {
            let Some(run) = run_for(app, id, &run) else {
                app.rt.note(
                    true,
                    "predict cell: no run to predict with (train one first)",
                );
                return;
            };
            let run_dir = app.runs_dir().join(run);
            let input = resolve_path(&input, &base);
            let output = resolve_path(&output, &base);
            let backend = BackendChoice::Auto;
            let task = BgTask::on_worker(ctx, &app.rt.compute, move || {
                let compute =
                    crate::model::backend::select(backend).map_err(|e| format!("{e:#}"))?;
                let classifier = crate::infer::Classifier::load(&run_dir, &compute.device)
                    .map_err(|e| format!("{e:#}"))?;
                let paths = crate::infer::collect_inputs(&input).map_err(|e| format!("{e:#}"))?;
                let s =
                    crate::infer::predict_to_csv(&classifier, &paths, &output, 32, &mut |_, _| {})
                        .map_err(|e| format!("{e:#}"))?;
                Ok(format!(
                    "{} of {} images predicted to {} ({} unreadable)",
                    s.predicted,
                    s.images,
                    output.display(),
                    s.failed.len()
                ))
            });
            app.rt.predicts.insert(id, Loading::Busy(task));
        }
        CellKind::Note { .. } | CellKind::Explore {} | CellKind::Cluster { .. } => {}
    }
}

fn start_training(app: &mut WorkbenchApp, ctx: &egui::Context, id: u64, config: TrainConfig) {
    if app.rt.trains.get(&id).is_some_and(TrainRuntime::is_running) {
        return;
    }
    // Never train on out-of-date data: the Run command brings the cells above up to date
    // first; anything still stale here (a direct call) is refused with the cell named.
    let (manifest, data) = match train_manifest(app, id) {
        Ok(m) => m,
        Err(problem) => {
            app.rt.note(true, format!("train cell: not started: {problem}"));
            return;
        }
    };
    let options = app
        .rt
        .datasets
        .get(&data.dataset.0)
        .map(|d| d.source.1.clone())
        .unwrap_or_default();
    let runs_root = app.runs_dir();
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
    spawn_training(app, ctx, id, data, make_job);
}

/// Continues the Train cell's last run from its last complete checkpoint, on the data and
/// split the run recorded (its `dataset.json`), whoever started it.
pub fn resume_training(app: &mut WorkbenchApp, ctx: &egui::Context, id: u64) {
    if app.rt.trains.get(&id).is_some_and(TrainRuntime::is_running) {
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
    spawn_training(app, ctx, id, data, make_job);
}

/// Queues a training job on the compute worker and follows it through its events.
fn spawn_training(
    app: &mut WorkbenchApp,
    ctx: &egui::Context,
    id: u64,
    data: DataUse,
    make_job: impl FnOnce() -> anyhow::Result<crate::train::engine::TrainJob> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
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
        let r = make_job().and_then(|job| {
            crate::train::engine::train(
                job,
                &mut |e: &TrainEvent| {
                    tx.send(e.clone()).ok();
                    repaint.request_repaint();
                },
                &c,
            )
        });
        done_tx
            .send(r.map(|o| o.run_id).map_err(|e| format!("{e:#}")))
            .ok();
        repaint.request_repaint();
    });
    if !submitted {
        app.rt.note(true, "could not start training: the compute worker is gone");
        return;
    }
    app.rt.trains.insert(
        id,
        TrainRuntime {
            data,
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
pub fn cell_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64) {
    let Some(i) = app.workbook.position(id) else {
        return;
    };
    let cell = app.workbook.cells[i].clone();
    let frame = egui::Frame::group(ui.style())
        .inner_margin(egui::Margin::same(10))
        .corner_radius(6.0);
    frame.show(ui, |ui| {
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
        if let Freshness::Stale(why) = freshness(app, id) {
            ui.colored_label(
                STALE_COLOR,
                format!("Out of date: {why}. Run updates it and the cells it needs."),
            );
        }
        if cell.collapsed {
            return;
        }
        ui.separator();
        let mut kind = cell.kind.clone();
        match &mut kind {
            CellKind::Note { text } => note_ui(ui, id, text),
            CellKind::Dataset { path, options } => {
                dataset_ui(app, ui, id, path, &mut options.format)
            }
            CellKind::Explore {} => explore_ui(app, ui, id),
            CellKind::Split { config } => split_ui(app, ui, id, config),
            CellKind::Train { config, run } => train_ui(app, ui, id, config, run),
            CellKind::Evaluate { run } => evaluate_ui(app, ui, id, run),
            CellKind::Compare { runs } => compare_ui(app, ui, id, runs),
            CellKind::Predict { run, input, output } => predict_ui(app, ui, id, run, input, output),
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
}

/// Headers of out-of-date cells.
const STALE_COLOR: egui::Color32 = egui::Color32::from_rgb(230, 126, 34);

fn error_label(ui: &mut egui::Ui, text: &str) {
    ui.colored_label(ui.visuals().error_fg_color, text);
}

fn note_ui(ui: &mut egui::Ui, id: u64, text: &mut String) {
    let editing_id = egui::Id::unique(("note-edit", id));
    let mut editing = ui
        .data(|d| d.get_temp::<bool>(editing_id))
        .unwrap_or(text.is_empty());
    if editing {
        ui.add(
            egui::TextEdit::multiline(text)
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .hint_text("Notes (markdown: # heading, - list, **bold**)"),
        );
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
                ui.label(format!("  • {item}"));
            } else {
                ui.label(line.replace("**", ""));
            }
        }
        if ui
            .small_button("Edit")
            .on_hover_text("Edit this note")
            .clicked()
        {
            editing = true;
        }
    }
    ui.data_mut(|d| d.insert_temp(editing_id, editing));
}

fn dataset_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    path: &mut String,
    format: &mut Option<DatasetFormat>,
) {
    ui.horizontal(|ui| {
        ui.label("Folder or CSV");
        let edit = ui
            .add(
                egui::TextEdit::singleline(path)
                    .desired_width(420.0)
                    .hint_text("path to a dataset"),
            )
            .on_hover_text(
                "A folder (C-NMC names or class folders) or a CSV manifest; relative to the workbook. Enter opens it.",
            );
        if edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            app.push(Command::RunCell(id));
        }
        if ui
            .button("Browse…")
            .on_hover_text("Pick a dataset folder")
            .clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            *path = crate::workbook::stored_path(&dir, &app.base_dir());
        }
        egui::ComboBox::from_id_salt(("format", id))
            .selected_text(format.map_or("auto-detect".to_owned(), |f| f.name().to_owned()))
            .show_ui(ui, |ui| {
                ui.selectable_value(format, None, "auto-detect");
                for f in DatasetFormat::ALL {
                    ui.selectable_value(format, Some(f), f.description());
                }
            })
            .response
            .on_hover_text("How names and labels are read; auto-detect looks at the files");
    });
    let Some(rt) = app.rt.datasets.get_mut(&id) else {
        ui.label("Not opened yet: press Run.");
        return;
    };
    match &rt.data {
        Loading::Idle => {}
        Loading::Busy(_) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Scanning…");
            });
            return;
        }
        Loading::Failed(e) => {
            error_label(ui, &format!("Could not open the dataset: {e}"));
            return;
        }
        Loading::Ready(_) => {}
    }
    let Some(data) = rt.data.ready() else { return };
    let manifest = data.manifest.clone();
    let s = &data.report.summary;
    let problems: usize = data.report.problems.iter().map(|p| p.count).sum();
    ui.label(format!(
        "{} images · {} labels · {} · {} · {} problems",
        s.images,
        s.labels,
        s.patients
            .map_or("no patient ids".to_owned(), |p| format!("{p} patients")),
        s.format.description(),
        problems
    ));
    // Filters.
    let labels = data.facets.labels.clone();
    let has_split = data.facets.has_split;
    let has_patients = data.facets.has_patients;
    let cells = data.facets.cell_numbers.clone();
    let filter = &mut rt.filter;
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_id_salt(("label-filter", id))
            .selected_text(filter.label.clone().unwrap_or_else(|| "all labels".into()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut filter.label, None, "all labels");
                for l in &labels {
                    ui.selectable_value(&mut filter.label, Some(l.clone()), l);
                }
            })
            .response
            .on_hover_text("Show one label only (or click a bar in Explore)");
        if has_split {
            egui::ComboBox::from_id_salt(("split-filter", id))
                .selected_text(filter.split.map_or("all splits".into(), |s| s.to_string()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut filter.split, None, "all splits");
                    for s in Split::ALL {
                        ui.selectable_value(&mut filter.split, Some(s), s.name());
                    }
                });
        }
        if !cells.is_empty() {
            egui::ComboBox::from_id_salt(("cell-filter", id))
                .selected_text(
                    filter
                        .cell_no
                        .map_or("any cell number".into(), |c| format!("cell {c}")),
                )
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut filter.cell_no, None, "any cell number");
                    for c in &cells {
                        ui.selectable_value(&mut filter.cell_no, Some(*c), format!("cell {c}"));
                    }
                })
                .response
                .on_hover_text("C-NMC cell index within the microscope image");
        }
        if has_patients {
            ui.add(
                egui::TextEdit::singleline(&mut filter.patient)
                    .desired_width(90.0)
                    .hint_text("patient"),
            )
            .on_hover_text("Show one patient's images");
        }
        ui.add(
            egui::TextEdit::singleline(&mut filter.search)
                .desired_width(160.0)
                .hint_text("search path"),
        )
        .on_hover_text("Show images whose path contains this text");
    });
    if rt.visible_for.as_ref() != Some(&rt.filter) {
        let f = rt.filter.clone();
        let patient = f.patient.trim().to_ascii_uppercase();
        let search = f.search.trim().to_lowercase();
        let visible: Vec<usize> = manifest
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| f.label.as_ref().is_none_or(|l| r.labels.contains(l)))
            .filter(|(_, r)| f.split.is_none_or(|s| r.split == Some(s)))
            .filter(|(_, r)| f.cell_no.is_none_or(|c| r.cell_no == Some(c)))
            .filter(|(_, r)| {
                patient.is_empty()
                    || r.patient
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case(&patient))
            })
            .filter(|(_, r)| search.is_empty() || r.path.to_lowercase().contains(&search))
            .map(|(i, _)| i)
            .collect();
        rt.visible = Arc::new(visible);
        rt.visible_for = Some(f);
    }
    let visible = rt.visible.clone();
    ui.label(format!(
        "{} of {} images shown",
        visible.len(),
        manifest.records.len()
    ));
    let mut selected = rt.selected;
    let current = selected;
    widgets::gallery(
        ui,
        ("gallery", id),
        &mut app.rt.thumbs,
        visible.len(),
        |k| {
            let r = &manifest.records[visible[k]];
            (
                manifest.image_path(r),
                r.label_string(),
                Some(visible[k]) == current,
            )
        },
        &mut |k| selected = Some(visible[k]),
    );
    inspector_ui(app, ui, id, &manifest, selected);
    if let Some(rt) = app.rt.datasets.get_mut(&id) {
        rt.selected = selected;
    }
    if let Some(data) = app.rt.datasets.get(&id).and_then(|d| d.data.ready())
        && !data.report.problems.is_empty()
    {
        egui::CollapsingHeader::new(format!("Problems ({problems})"))
            .id_salt(("problems", id))
            .show(ui, |ui| {
                for p in &data.report.problems {
                    ui.label(
                        egui::RichText::new(format!("{} × {}", p.count, p.description)).strong(),
                    );
                    for e in &p.examples {
                        ui.label(egui::RichText::new(format!("   {e}")).monospace().small());
                    }
                }
            });
    }
}

fn inspector_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    manifest: &Manifest,
    selected: Option<usize>,
) {
    let Some(index) = selected else {
        ui.label(egui::RichText::new("Click an image to inspect it.").weak());
        return;
    };
    let Some(record) = manifest.records.get(index) else {
        return;
    };
    let path = manifest.image_path(record);
    let ctx = ui.ctx().clone();
    let Some(rt) = app.rt.datasets.get_mut(&id) else {
        return;
    };
    if rt.preview.as_ref().is_none_or(|(i, _)| *i != index) {
        let p = path.clone();
        let c = ctx.clone();
        let task = BgTask::spawn(&ctx, "preview", move || {
            super::thumbs::decode_preview(&p).map(|img| {
                c.load_texture(p.display().to_string(), img, egui::TextureOptions::LINEAR)
            })
        });
        rt.preview = Some((index, Loading::Busy(task)));
    }
    ui.separator();
    ui.horizontal_top(|ui| {
        match rt.preview.as_ref().map(|p| &p.1) {
            Some(Loading::Ready(tex)) => {
                let size = tex.size_vec2();
                let scale = (260.0 / size.x.max(size.y)).min(2.0);
                ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale));
            }
            Some(Loading::Failed(e)) => error_label(ui, &format!("Cannot show this image: {e}")),
            _ => {
                ui.spinner();
            }
        }
        ui.vertical(|ui| {
            egui::Grid::new(("inspector", id))
                .num_columns(2)
                .spacing([12.0, 2.0])
                .show(ui, |ui| {
                    let mut row = |k: &str, v: String| {
                        ui.label(egui::RichText::new(k).weak());
                        ui.label(v);
                        ui.end_row();
                    };
                    row("file", record.path.clone());
                    row("label", record.label_string());
                    if let Some(p) = &record.patient {
                        row("patient", p.clone());
                    }
                    if let Some(n) = record.image_no {
                        row("image no.", n.to_string());
                    }
                    if let Some(n) = record.cell_no {
                        row("cell no.", n.to_string());
                    }
                    if let Some(s) = record.split {
                        row("split", s.to_string());
                    }
                    if let Some(b) = record.bytes {
                        row("size", format!("{:.1} kB", b as f64 / 1e3));
                    }
                    if let (Some(w), Some(h)) = (record.width, record.height) {
                        row("pixels", format!("{w} × {h}"));
                    }
                });
            if let Some(p) = &record.problem {
                error_label(ui, &format!("Problem: {p}"));
            }
        });
    });
}

fn explore_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64) {
    let Some(dataset) = app.workbook.inputs(id).dataset else {
        ui.label("Add a Dataset cell above this one.");
        return;
    };
    let Some(data) = loaded(app, dataset) else {
        ui.label("Waiting for the dataset above…");
        return;
    };
    let report: Arc<ExploreReport> = data.report.clone();
    let filter_label = app
        .rt
        .datasets
        .get(&dataset)
        .and_then(|d| d.filter.label.clone());
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
    let ex = app.rt.explore_ui.entry(id).or_default();
    for (t, table) in tables.iter().enumerate().skip(1) {
        let sort = ex.sort.entry(t).or_insert((usize::MAX, false));
        widgets::sortable_table(ui, ("explore-table", id, t), table, sort);
    }
    ui.horizontal(|ui| {
        if ui
            .button("Export charts…")
            .on_hover_text("Write every chart as PNG and SVG into a folder")
            .clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            match crate::explore::charts::write_report_charts(&report, &dir) {
                Ok(files) => app.rt.note(
                    false,
                    format!("wrote {} chart files to {}", files.len(), dir.display()),
                ),
                Err(e) => app.rt.note(true, format!("{e:#}")),
            }
        }
        if ui
            .button("Export tables…")
            .on_hover_text("Write every table as CSV into a folder")
            .clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            let mut n = 0;
            for (i, t) in tables.iter().enumerate() {
                let name = format!(
                    "{:02}_{}.csv",
                    i,
                    t.title
                        .to_lowercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                );
                if crate::fsio::write_atomic_bytes(&dir.join(name), t.to_csv().as_bytes()).is_ok() {
                    n += 1;
                }
            }
            app.rt
                .note(false, format!("wrote {n} tables to {}", dir.display()));
        }
    });
}

/// A bar chart over named categories (bar `i` at x = i); returns the bar clicked, if any.
fn category_bars(
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

fn split_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    config: &mut crate::dataset::split::SplitConfig,
) {
    ui.horizontal(|ui| {
        ui.label("Test");
        ui.add(egui::Slider::new(&mut config.test, 0.0..=0.5).fixed_decimals(2))
            .on_hover_text("Share of images for the test side (whole patients)");
        ui.label("Validation");
        ui.add(egui::Slider::new(&mut config.val, 0.0..=0.5).fixed_decimals(2))
            .on_hover_text("Share of images for the validation side (whole patients)");
        ui.label("Seed");
        ui.add(egui::DragValue::new(&mut config.seed))
            .on_hover_text("The same seed always gives the same split");
    });
    let Some(rt) = app.rt.splits.get(&id) else {
        ui.label("Press Run to split the dataset above by patient.");
        return;
    };
    match &rt.data {
        Loading::Busy(_) => {
            ui.spinner();
        }
        Loading::Failed(e) => error_label(ui, e),
        Loading::Ready(r) => {
            let table = crate::explore::table::split_table(&r.report);
            widgets::table(ui, ("split-table", id), &table);
            if r.report.leaks.is_empty() {
                ui.colored_label(
                    egui::Color32::from_rgb(46, 160, 67),
                    "Leakage check passed: no patient is on more than one side",
                );
            } else {
                error_label(
                    ui,
                    &format!(
                        "Leakage: {} patients on more than one side",
                        r.report.leaks.len()
                    ),
                );
                for l in &r.report.leaks {
                    ui.label(format!("patient {} ({} images)", l.patient, l.images));
                }
            }
            if r.report.group_by == crate::dataset::split::GroupBy::Image {
                ui.label("The dataset has no patient ids: images were split individually.");
            }
        }
        Loading::Idle => {}
    }
}

fn train_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    config: &mut TrainConfig,
    run: &mut Option<String>,
) {
    let running = app.rt.trains.get(&id).is_some_and(TrainRuntime::is_running);
    match current_data(app, id) {
        Ok(data) => {
            ui.label(format!("Trains on {}", data.description));
        }
        Err(problem) => {
            ui.colored_label(
                STALE_COLOR,
                format!("Not ready to train: {problem}. Start runs it first."),
            );
        }
    }
    if let Some(t) = app.rt.trains.get(&id) {
        ui.label(
            egui::RichText::new(format!(
                "{} run used: {}",
                if running { "This" } else { "The last" },
                t.data.description
            ))
            .weak(),
        );
    }
    ui.add_enabled_ui(!running, |ui| {
        egui::Grid::new(("train-form", id)).num_columns(4).spacing([14.0, 6.0]).show(ui, |ui| {
            ui.label("Mode");
            egui::ComboBox::from_id_salt(("mode", id))
                .selected_text(format!("{:?}", config.mode))
                .show_ui(ui, |ui| {
                    for (m, d) in [
                        (Mode::Probe, "Probe: linear head on cached features (fast)"),
                        (Mode::Finetune, "Fine-tune: head + last backbone blocks"),
                        (Mode::Scratch, "Scratch: small CNN from random weights"),
                    ] {
                        if ui.selectable_label(config.mode == m, d).clicked() && config.mode != m {
                            let keep = (config.task, config.backend, config.seed);
                            *config = TrainConfig::for_mode(m);
                            (config.task, config.backend, config.seed) = keep;
                        }
                    }
                })
                .response
                .on_hover_text("How the network is trained");
            ui.label("Task");
            egui::ComboBox::from_id_salt(("task", id))
                .selected_text(config.task.map_or("from the data".into(), |t| format!("{t:?}")))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.task, None, "from the data");
                    for t in [Task::Binary, Task::MultiClass, Task::MultiLabel, Task::Ordinal] {
                        ui.selectable_value(&mut config.task, Some(t), format!("{t:?}"));
                    }
                })
                .response
                .on_hover_text("Binary/multi-class: softmax; multi-label: sigmoid per label; ordinal: cumulative thresholds P(grade > j), reported with quadratic kappa");
            ui.end_row();
            ui.label("Epochs");
            ui.add(egui::DragValue::new(&mut config.epochs).range(1..=500)).on_hover_text("Passes over the training images");
            ui.label("Batch size");
            ui.add(egui::DragValue::new(&mut config.batch_size).range(1..=512)).on_hover_text("Images per optimisation step");
            ui.end_row();
            ui.label("Learning rate");
            ui.add(egui::DragValue::new(&mut config.learning_rate).speed(1e-5).range(1e-6..=1.0).max_decimals(6))
                .on_hover_text("Step size; warm-up then the schedule");
            ui.label("Weight decay");
            ui.add(egui::DragValue::new(&mut config.weight_decay).speed(1e-5).range(0.0..=10.0).max_decimals(5))
                .on_hover_text("L2 regularisation (decoupled for AdamW)");
            ui.end_row();
            ui.label("Optimizer");
            egui::ComboBox::from_id_salt(("optim", id))
                .selected_text(match config.optimizer {
                    Optimizer::Sgd { .. } => "SGD (momentum 0.9)",
                    Optimizer::Adam => "Adam",
                    Optimizer::AdamW => "AdamW",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.optimizer, Optimizer::Sgd { momentum: 0.9 }, "SGD (momentum 0.9)");
                    ui.selectable_value(&mut config.optimizer, Optimizer::Adam, "Adam");
                    ui.selectable_value(&mut config.optimizer, Optimizer::AdamW, "AdamW");
                })
                .response
                .on_hover_text("Optimisation algorithm");
            ui.label("Schedule");
            egui::ComboBox::from_id_salt(("sched", id))
                .selected_text(match config.schedule {
                    Schedule::Constant => "constant",
                    Schedule::Cosine => "cosine",
                    Schedule::Plateau { .. } => "reduce on plateau",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.schedule, Schedule::Constant, "constant");
                    ui.selectable_value(&mut config.schedule, Schedule::Cosine, "cosine");
                    ui.selectable_value(&mut config.schedule, Schedule::Plateau { patience: 2, factor: 0.3 }, "reduce on plateau");
                })
                .response
                .on_hover_text("Learning rate after the warm-up epoch");
            ui.end_row();
            ui.label("Imbalance");
            egui::ComboBox::from_id_salt(("imb", id))
                .selected_text(format!("{:?}", config.imbalance))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.imbalance, Imbalance::None, "none");
                    ui.selectable_value(&mut config.imbalance, Imbalance::ClassWeights, "class weights");
                    ui.selectable_value(&mut config.imbalance, Imbalance::Oversample, "oversample");
                })
                .response
                .on_hover_text("Weight rare classes in the loss, or sample them more often");
            ui.label("Image size");
            ui.add(egui::DragValue::new(&mut config.preprocess.size).range(32..=512).suffix(" px"))
                .on_hover_text("Side of the square network input");
            ui.end_row();
            ui.label("Device");
            egui::ComboBox::from_id_salt(("backend", id))
                .selected_text(format!("{:?}", config.backend))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.backend, BackendChoice::Auto, "Auto (GPU if present)");
                    ui.selectable_value(&mut config.backend, BackendChoice::Wgpu, "wgpu (GPU)");
                    ui.selectable_value(&mut config.backend, BackendChoice::Cpu, "CPU");
                })
                .response
                .on_hover_text("Where the network runs");
            if config.mode == Mode::Finetune {
                ui.label("Unfrozen blocks");
                ui.add(egui::DragValue::new(&mut config.unfreeze_blocks).range(0..=16))
                    .on_hover_text("How many of the last backbone blocks are trained");
            }
            ui.end_row();
        });
        ui.horizontal(|ui| {
            ui.label("Augmentation:");
            ui.checkbox(&mut config.augment.dihedral, "flips + 90° rotations")
                .on_hover_text("The 8 symmetries of the square; cells have no orientation");
            ui.label("brightness");
            ui.add(egui::Slider::new(&mut config.augment.brightness, 0.0..=0.5)).on_hover_text("Random brightness shift");
            ui.label("contrast");
            ui.add(egui::Slider::new(&mut config.augment.contrast, 0.0..=0.5)).on_hover_text("Random contrast change");
            ui.checkbox(&mut config.preprocess.border_crop, "crop black border")
                .on_hover_text("Crop to the cell before resizing (cells imaged on black)");
        });
        if config.mode == Mode::Probe {
            ui.horizontal(|ui| {
                ui.checkbox(&mut config.orientation_mean, "average features over the 8 orientations")
                    .on_hover_text("Each image's features are the mean over its flips and 90° turns, so a cell gives the same features however it lies. 8× the feature extraction; cached like the others.");
                ui.label(egui::RichText::new("Probe runs use features of unaugmented images (cached).").weak());
            });
        }
    });
    augment_preview_ui(app, ui, id, config);
    ui.horizontal(|ui| {
        if running {
            if ui
                .button("Stop")
                .on_hover_text("Stop after the current batch; the run folder stays consistent")
                .clicked()
            {
                app.push(Command::StopTrain(id));
            }
        } else if ui
            .button("Start training")
            .on_hover_text("Train on the dataset (and split) above")
            .clicked()
        {
            app.push(Command::RunCell(id));
        }
        if let Some(r) = run.as_ref() {
            ui.label(format!("last run: {r}"));
            let state = app.rt.run_state(&app.runs_dir().join(r));
            if !running
                && matches!(
                    state,
                    Some(crate::runs::RunState::Interrupted | crate::runs::RunState::Cancelled)
                )
                && ui
                    .button("Resume")
                    .on_hover_text("Continue this run from its last complete checkpoint, on the data it recorded; it ends where an uninterrupted run would")
                    .clicked()
            {
                app.push(Command::ResumeTrain(id));
            }
        }
    });
    let Some(t) = app.rt.trains.get(&id) else {
        return;
    };
    progress_ui(ui, t);
    curves_ui(ui, ("train-curves", id), &t.events);
    let warnings: Vec<&String> = t
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    if !warnings.is_empty() {
        egui::CollapsingHeader::new(format!("Warnings ({})", warnings.len()))
            .id_salt(("warn", id))
            .show(ui, |ui| {
                for w in warnings {
                    ui.label(w);
                }
            });
    }
    if let Some(Err(e)) = &t.finished {
        error_label(ui, &format!("Training failed: {e}"));
    }
}

fn augment_preview_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64, config: &TrainConfig) {
    let Ok((manifest, data)) = train_manifest(app, id) else {
        return;
    };
    let key = egui::Id::unique(("aug-preview", id));
    // Keyed by the data too: a new dataset shows its own images.
    let wanted = (
        config.augment.clone(),
        config.preprocess.border_crop,
        data.dataset,
        data.split,
    );
    type Key = (
        crate::dataset::preprocess::Augment,
        bool,
        (u64, u64),
        Option<(u64, u64)>,
    );
    let current: Option<(Key, Vec<egui::TextureHandle>)> = ui.data(|d| d.get_temp(key));
    let textures = match current {
        Some((k, t)) if k == wanted => t,
        _ => {
            let sample: Vec<PathBuf> = manifest
                .records
                .iter()
                .filter(|r| r.is_usable())
                .take(4)
                .map(|r| manifest.image_path(r))
                .collect();
            let pre = Preprocess {
                size: 96,
                border_crop: config.preprocess.border_crop,
                center_crop: false,
            };
            let mut t = Vec::new();
            for (i, p) in sample.iter().enumerate() {
                for v in 0..2u64 {
                    if let Ok(mut chw) = pre.load(p) {
                        if v > 0 {
                            config.augment.apply(
                                &mut chw,
                                96,
                                &mut crate::dataset::split::SplitMix64::new(i as u64 * 31 + v),
                            );
                        }
                        t.push(ui.ctx().load_texture(
                            format!("aug-{id}-{i}-{v}"),
                            chw_to_image(&chw, 96),
                            egui::TextureOptions::LINEAR,
                        ));
                    }
                }
            }
            ui.data_mut(|d| d.insert_temp(key, (wanted, t.clone())));
            t
        }
    };
    if textures.is_empty() {
        return;
    }
    ui.horizontal(|ui| {
        ui.label("Preview (original, augmented):").on_hover_text(
            "Real images from the dataset through the current preprocessing and augmentation",
        );
        for t in &textures {
            ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(56.0, 56.0)));
        }
    });
}

fn chw_to_image(chw: &[f32], side: usize) -> egui::ColorImage {
    let plane = side * side;
    let px = |c: usize, i: usize| ((chw[c * plane + i] + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
    let pixels = (0..plane)
        .map(|i| egui::Color32::from_rgb(px(0, i), px(1, i), px(2, i)))
        .collect();
    egui::ColorImage::new([side, side], pixels)
}

fn progress_ui(ui: &mut egui::Ui, t: &TrainRuntime) {
    let started = t.events.iter().find_map(|e| match e {
        TrainEvent::Started {
            device,
            epochs,
            train_images,
            val_images,
            ..
        } => Some((device.clone(), *epochs, *train_images, *val_images)),
        _ => None,
    });
    let Some((device, epochs, n_train, n_val)) = started else {
        if t.is_running() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Queued or preparing: compute jobs run one at a time, in order (Stop cancels it)");
            });
        }
        return;
    };
    let epochs_done = t
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Epoch { .. }))
        .count() as u32;
    let last_progress = t.events.iter().rev().find_map(|e| match e {
        TrainEvent::Progress { phase, done, total } => Some((*phase, *done, *total)),
        _ => None,
    });
    ui.label(format!(
        "Device: {device} · {n_train} training / {n_val} validation images"
    ));
    if t.is_running() {
        let (text, frac) = match last_progress {
            Some((Phase::Features, d, n)) if epochs_done == 0 => (
                format!("extracting features {d}/{n}"),
                d as f32 / n.max(1) as f32,
            ),
            Some((_, d, n)) => {
                let f = (epochs_done as f32 + d as f32 / n.max(1) as f32) / epochs.max(1) as f32;
                (format!("epoch {}/{epochs}", epochs_done + 1), f)
            }
            None => ("starting".into(), 0.0),
        };
        let elapsed = t.started.elapsed().as_secs_f32();
        let eta = if frac > 0.02 {
            format!(" · about {:.0} s left", elapsed / frac - elapsed)
        } else {
            String::new()
        };
        ui.add(
            egui::ProgressBar::new(frac.clamp(0.0, 1.0))
                .text(format!("{text}{eta}"))
                .animate(true),
        );
    } else {
        for e in &t.events {
            match e {
                TrainEvent::Finished {
                    best_epoch,
                    metrics,
                    elapsed_secs,
                    ..
                } => {
                    ui.label(format!(
                        "Finished in {elapsed_secs:.1} s · best epoch {best_epoch} · validation accuracy {:.3}, balanced {:.3}, macro F1 {:.3}{}",
                        metrics.accuracy,
                        metrics.balanced_accuracy,
                        metrics.macro_f1,
                        metrics.macro_auc.map_or(String::new(), |a| format!(", AUC {a:.3}"))
                    ));
                }
                TrainEvent::Cancelled { epoch } => {
                    ui.label(format!(
                        "Stopped after epoch {epoch}; the run folder holds its last checkpoint."
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Live loss and accuracy/AUC curves from a run's events.
pub fn curves_ui(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug + Copy,
    events: &[TrainEvent],
) {
    let points = crate::runs::view::curves(events);
    if points.is_empty() {
        return;
    }
    let series = |f: &dyn Fn(&crate::runs::view::EpochPoint) -> Option<f64>| -> Vec<[f64; 2]> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| [f64::from(p.epoch), v]))
            .collect()
    };
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    ui.horizontal(|ui| {
        Plot::new(("loss", id))
            .width(width)
            .height(200.0)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .y_axis_label("loss")
            .include_y(0.0)
            .show(ui, |p| {
                p.line(Line::new(
                    "train loss",
                    PlotPoints::from(series(&|e| Some(e.train_loss))),
                ));
                p.line(Line::new(
                    "validation loss",
                    PlotPoints::from(series(&|e| e.val_loss)),
                ));
            });
        Plot::new(("acc", id))
            .width(width)
            .height(200.0)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                p.line(Line::new(
                    "train accuracy",
                    PlotPoints::from(series(&|e| Some(e.train_accuracy))),
                ));
                p.line(Line::new(
                    "validation accuracy",
                    PlotPoints::from(series(&|e| e.val_accuracy)),
                ));
                p.line(Line::new(
                    "validation macro AUC",
                    PlotPoints::from(series(&|e| e.val_auc)),
                ));
            });
    });
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

fn evaluate_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64, run: &mut Option<String>) {
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
    if app.rt.evals.get(&id).is_none_or(|e| e.run != wanted) {
        let ctx = ui.ctx().clone();
        app.rt.evals.remove(&id);
        // Load on demand when the run changes.
        let root = app.runs_dir();
        let r = wanted.clone();
        let task = BgTask::spawn(&ctx, "evaluate", move || {
            crate::runs::view::load_evaluation(&root, &r).map_err(|e| format!("{e:#}"))
        });
        app.rt.evals.insert(
            id,
            EvalRuntime {
                run: wanted,
                data: Loading::Busy(task),
                normalised: false,
                selected: None,
            },
        );
    }
    let Some(ev) = app.rt.evals.get_mut(&id) else {
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
        trained_on.as_deref().unwrap_or("an unknown dataset (older run)")
    ));
    let above = app
        .workbook
        .inputs(id)
        .dataset
        .and_then(|d| app.rt.datasets.get(&d))
        .and_then(|d| d.data.ready())
        .map(|d| std::path::absolute(&d.manifest.root).unwrap_or(d.manifest.root.clone()));
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
        "Run {} · {} side, {} images · accuracy {:.3} · balanced {:.3} · macro F1 {:.3}{}{}",
        data.id,
        data.split,
        m.n,
        m.accuracy,
        m.balanced_accuracy,
        m.macro_f1,
        m.macro_auc
            .map_or(String::new(), |a| format!(" · macro AUC {a:.3}")),
        m.kappa_quadratic
            .map_or(String::new(), |k| format!(" · quadratic kappa {k:.3}"))
    ));
    if let Some(t) = &data.test {
        ui.label(
            egui::RichText::new(format!(
                "Test side (scored once, with the weights the validation side chose), {} images · accuracy {:.3} · balanced {:.3} · macro F1 {:.3}{}",
                t.n,
                t.accuracy,
                t.balanced_accuracy,
                t.macro_f1,
                t.macro_auc.map_or(String::new(), |a| format!(" · macro AUC {a:.3}"))
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
    if let (Some((ti, pi)), Some(cm)) = (selected, &m.confusion) {
        let (t, p) = (&cm.labels[ti], &cm.labels[pi]);
        let picked: Vec<&crate::runs::view::PredictionRow> = rows
            .iter()
            .filter(|r| &r.truth == t && &r.predicted == p)
            .collect();
        ui.label(
            egui::RichText::new(format!("{} images: true {t}, predicted {p}", picked.len()))
                .strong(),
        );
        let items: Vec<(PathBuf, String)> = picked
            .iter()
            .map(|r| (root.join(&r.path), format!("{:.2}", r.confidence(&labels))))
            .collect();
        widgets::gallery(
            ui,
            ("cm-gallery", id),
            &mut app.rt.thumbs,
            items.len(),
            |k| (items[k].0.clone(), items[k].1.clone(), false),
            &mut |_| {},
        );
    }
    let mut mistakes: Vec<&crate::runs::view::PredictionRow> =
        rows.iter().filter(|r| r.truth != r.predicted).collect();
    mistakes.sort_by(|a, b| b.confidence(&labels).total_cmp(&a.confidence(&labels)));
    mistakes.truncate(12);
    if !mistakes.is_empty() {
        ui.label(egui::RichText::new("Most confident mistakes").strong())
            .on_hover_text("Wrong predictions with the highest predicted probability: label noise or hard cases");
        let items: Vec<(PathBuf, String)> = mistakes
            .iter()
            .map(|r| {
                (
                    root.join(&r.path),
                    format!(
                        "{} as {} ({:.2})",
                        r.truth,
                        r.predicted,
                        r.confidence(&labels)
                    ),
                )
            })
            .collect();
        ui.allocate_ui(egui::vec2(ui.available_width(), 150.0), |ui| {
            widgets::gallery(
                ui,
                ("mistakes", id),
                &mut app.rt.thumbs,
                items.len(),
                |k| (items[k].0.clone(), items[k].1.clone(), false),
                &mut |_| {},
            );
        });
    }
}

fn compare_ui(app: &mut WorkbenchApp, ui: &mut egui::Ui, id: u64, runs: &mut Vec<String>) {
    let root = app.runs_dir();
    let all = app.rt.run_ids(&root);
    if all.is_empty() {
        ui.label("No runs yet.");
        return;
    }
    ui.label("Runs to compare:");
    ui.horizontal_wrapped(|ui| {
        for r in all.iter().rev().take(20) {
            let mut on = runs.contains(r);
            if ui.checkbox(&mut on, r).changed() {
                if on {
                    runs.push(r.clone());
                } else {
                    runs.retain(|x| x != r);
                }
            }
        }
    });
    let rt = app.rt.compares.entry(id).or_insert_with(|| CompareRuntime {
        selected: Vec::new(),
        loaded: Loading::Idle,
        stale: true,
    });
    if rt.stale || rt.selected != *runs {
        rt.loaded = load_summaries(ui.ctx(), root.clone(), runs.clone());
        rt.selected = runs.clone();
        rt.stale = false;
    }
    let loaded = match &rt.loaded {
        Loading::Ready(l) => l,
        Loading::Busy(_) => {
            ui.spinner();
            return;
        }
        Loading::Failed(e) => {
            error_label(ui, e);
            return;
        }
        Loading::Idle => return,
    };
    if loaded.is_empty() {
        return;
    }
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    ui.horizontal(|ui| {
        Plot::new(("cmp-loss", id))
            .width(width)
            .height(200.0)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .y_axis_label("validation loss")
            .show(ui, |p| {
                for s in loaded {
                    let pts: Vec<[f64; 2]> = s
                        .curves
                        .iter()
                        .filter_map(|c| c.val_loss.map(|v| [f64::from(c.epoch), v]))
                        .collect();
                    p.line(Line::new(s.id.clone(), PlotPoints::from(pts)));
                }
            });
        Plot::new(("cmp-acc", id))
            .width(width)
            .height(200.0)
            .legend(Legend::default())
            .x_axis_label("epoch")
            .y_axis_label("validation accuracy")
            .include_y(0.0)
            .include_y(1.0)
            .show(ui, |p| {
                for s in loaded {
                    let pts: Vec<[f64; 2]> = s
                        .curves
                        .iter()
                        .filter_map(|c| c.val_accuracy.map(|v| [f64::from(c.epoch), v]))
                        .collect();
                    p.line(Line::new(s.id.clone(), PlotPoints::from(pts)));
                }
            });
    });
    widgets::compare_table(ui, ("cmp-table", id), loaded);
}

fn predict_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    run: &mut Option<String>,
    input: &mut String,
    output: &mut String,
) {
    let runs_dir = app.runs_dir();
    let runs = app.rt.run_ids(&runs_dir);
    egui::Grid::new(("predict", id))
        .num_columns(2)
        .show(ui, |ui| {
            ui.label("Run");
            runs_combo(ui, ("predict-run", id), &runs, run, "the Train cell above");
            ui.end_row();
            ui.label("Images");
            ui.horizontal(|ui| {
                ui.add(
                    egui::TextEdit::singleline(input)
                        .desired_width(360.0)
                        .hint_text("folder, image or manifest CSV"),
                )
                .on_hover_text("What to predict");
                if ui.button("Browse…").clicked()
                    && let Some(dir) = rfd::FileDialog::new().pick_folder()
                {
                    *input = crate::workbook::stored_path(&dir, &app.base_dir());
                }
            });
            ui.end_row();
            ui.label("Output CSV");
            ui.add(egui::TextEdit::singleline(output).desired_width(360.0))
                .on_hover_text("Probabilities and predicted label per image");
            ui.end_row();
        });
    match app.rt.predicts.get(&id) {
        Some(Loading::Busy(_)) => {
            ui.spinner();
        }
        Some(Loading::Ready(s)) => {
            ui.label(s);
        }
        Some(Loading::Failed(e)) => error_label(ui, e),
        _ => {}
    }
}

/// How many thumbnails fit a row of `width`.
pub fn columns_for(width: f32) -> usize {
    ((width / (THUMB_SIDE as f32 + 12.0)) as usize).max(1)
}

/// What a cluster worker thread reports.
pub enum ClusterMsg {
    Submitted(String),
    Status(String),
    Event(TrainEvent),
    Imported(String),
    Failed(String),
}

/// A job on a cluster, followed from a Cluster job cell.
pub struct ClusterRuntime {
    pub job: Option<String>,
    pub status: String,
    pub events: Vec<TrainEvent>,
    pub rx: mpsc::Receiver<ClusterMsg>,
    pub error: Option<String>,
    pub imported: Option<String>,
    pub active: bool,
}

/// Submits (when `spec` is given) and then follows a job until it ends, importing its
/// results as a run folder. Also used to re-attach to a job after a restart.
fn spawn_cluster_worker(
    ctx: &egui::Context,
    profile: crate::cluster::ClusterProfile,
    spec: Option<crate::cluster::job::JobSpec>,
    job: Option<String>,
    runs_root: PathBuf,
) -> ClusterRuntime {
    let (tx, rx) = mpsc::channel();
    let repaint = ctx.clone();
    let send = move |m: ClusterMsg| {
        tx.send(m).ok();
        repaint.request_repaint();
    };
    let spawned = std::thread::Builder::new()
        .name("cluster-job".into())
        .spawn(move || {
            use crate::cluster::ClusterBackend as _;
            let run = || -> anyhow::Result<()> {
                let client = crate::cluster::RayClient::new(&profile)?;
                let id = match (spec, job) {
                    (Some(spec), _) => {
                        send(ClusterMsg::Status("UPLOADING".into()));
                        let id = crate::cluster::job::submit(&client, &spec, &Default::default())?;
                        send(ClusterMsg::Submitted(id.clone()));
                        id
                    }
                    (None, Some(id)) => id,
                    (None, None) => anyhow::bail!("no job to follow"),
                };
                let info = client.status(&id)?;
                send(ClusterMsg::Status(info.status.to_string()));
                crate::cluster::job::follow(&client, &id, &mut |e| {
                    send(ClusterMsg::Event(e.clone()))
                })?;
                let info = client.status(&id)?;
                send(ClusterMsg::Status(info.status.to_string()));
                let dir = crate::cluster::job::import_results(&client, &id, &runs_root)?;
                send(ClusterMsg::Imported(
                    dir.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ));
                Ok(())
            };
            if let Err(e) = run() {
                send(ClusterMsg::Failed(format!("{e:#}")));
            }
        });
    let active = spawned.is_ok();
    ClusterRuntime {
        job: None,
        status: "CONNECTING".into(),
        events: Vec::new(),
        rx,
        error: spawned.err().map(|e| e.to_string()),
        imported: None,
        active,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn cluster_ui(
    app: &mut WorkbenchApp,
    ui: &mut egui::Ui,
    id: u64,
    profile: &mut String,
    dataset: &mut String,
    runs: &mut String,
    gpus: &mut f64,
    job: &mut Option<String>,
) {
    let profiles = app.rt.profiles();
    ui.horizontal(|ui| {
        ui.label("Cluster");
        egui::ComboBox::from_id_salt(("cluster-profile", id))
            .selected_text(if profile.is_empty() { "choose a profile" } else { profile.as_str() })
            .show_ui(ui, |ui| {
                for p in &profiles.profiles {
                    ui.selectable_value(profile, p.name.clone(), format!("{} ({})", p.name, p.address));
                }
            })
            .response
            .on_hover_text("Cluster profiles from clusters.toml (`cellbench cluster add-profile`); tokens stay in the environment or a file");
        ui.label("GPUs");
        ui.add(egui::DragValue::new(gpus).range(0.0..=8.0)).on_hover_text("GPUs the job asks the cluster for");
    });
    ui.horizontal(|ui| {
        ui.label("Dataset on the cluster");
        ui.add(egui::TextEdit::singleline(dataset).desired_width(320.0).hint_text("default: the Dataset cell's path"))
            .on_hover_text("A path the cluster can read (shared filesystem)");
        ui.label("Runs folder");
        ui.add(egui::TextEdit::singleline(runs).desired_width(200.0).hint_text("shared folder (optional)"))
            .on_hover_text("Where the run folder (with the model) goes on the cluster; metrics come back either way");
    });
    let base = app.base_dir();
    let runs_root = app.runs_dir();
    // Re-attach to a remembered job.
    if let (Some(j), false) = (job.clone(), app.rt.clusters.contains_key(&id))
        && let Ok(p) = profiles.get(profile)
    {
        let rt = spawn_cluster_worker(
            ui.ctx(),
            p.clone(),
            None,
            Some(j.clone()),
            runs_root.clone(),
        );
        app.rt
            .clusters
            .insert(id, ClusterRuntime { job: Some(j), ..rt });
    }
    let active = app.rt.clusters.get(&id).is_some_and(|r| r.active);
    ui.horizontal(|ui| {
        let can_submit = !active && !profile.is_empty();
        if ui
            .add_enabled(can_submit, egui::Button::new("Submit"))
            .on_hover_text("Package cellbench with the Train cell above and submit it")
            .clicked()
        {
            let train = app
                .workbook
                .above(id, |k| matches!(k, CellKind::Train { .. }))
                .map(|c| c.kind.clone());
            let data_cell = app
                .workbook
                .above(id, |k| matches!(k, CellKind::Dataset { .. }))
                .map(|c| c.kind.clone());
            match (train, data_cell, profiles.get(profile)) {
                (
                    Some(CellKind::Train { config, .. }),
                    Some(CellKind::Dataset { path, options }),
                    Ok(p),
                ) => {
                    let ds = if dataset.trim().is_empty() {
                        resolve_path(&path, &base)
                    } else {
                        PathBuf::from(dataset.trim())
                    };
                    let spec = crate::cluster::job::JobSpec::Train {
                        dataset: std::path::absolute(&ds).unwrap_or(ds).display().to_string(),
                        options,
                        config,
                        runs: if runs.trim().is_empty() {
                            "runs".into()
                        } else {
                            runs.trim().to_owned()
                        },
                    };
                    let rt = spawn_cluster_worker(
                        ui.ctx(),
                        p.clone(),
                        Some(spec),
                        None,
                        runs_root.clone(),
                    );
                    app.rt.clusters.insert(id, rt);
                }
                (None, _, _) => app.rt.note(true, "cluster job: add a Train cell above it"),
                (_, None, _) => app
                    .rt
                    .note(true, "cluster job: add a Dataset cell above it"),
                (_, _, Err(e)) => app.rt.note(true, format!("cluster job: {e}")),
                _ => app.rt.note(
                    true,
                    "cluster job: needs a Train and a Dataset cell above it",
                ),
            }
        }
        if let Some(j) = job.clone() {
            ui.label(egui::RichText::new(&j).monospace());
            if ui
                .add_enabled(active, egui::Button::new("Stop"))
                .on_hover_text("Ask the cluster to stop the job")
                .clicked()
                && let Ok(p) = profiles.get(profile).cloned()
            {
                let j2 = j.clone();
                let _ = BgTask::spawn(ui.ctx(), "cluster-stop", move || {
                    use crate::cluster::ClusterBackend as _;
                    crate::cluster::RayClient::new(&p)
                        .and_then(|c| c.stop(&j2))
                        .map_err(|e| e.to_string())
                });
            }
            if !active
                && ui
                    .button("Forget")
                    .on_hover_text("Detach this cell from the job")
                    .clicked()
            {
                *job = None;
                app.rt.clusters.remove(&id);
            }
        }
    });
    let Some(rt) = app.rt.clusters.get(&id) else {
        if profiles.profiles.is_empty() {
            ui.label("No cluster profiles yet: `cellbench cluster add-profile NAME --url http://head:8265 --token-env-var RAY_TOKEN`.");
        }
        return;
    };
    let color = match rt.status.as_str() {
        "SUCCEEDED" => egui::Color32::from_rgb(46, 160, 67),
        "FAILED" => ui.visuals().error_fg_color,
        "STOPPED" => egui::Color32::from_rgb(200, 140, 40),
        _ => egui::Color32::from_rgb(52, 130, 200),
    };
    ui.horizontal(|ui| {
        ui.label("State:");
        ui.label(egui::RichText::new(&rt.status).strong().color(color));
        if rt.active {
            ui.spinner();
        }
        if let Some(r) = &rt.imported {
            ui.label(format!("results in run {r} (use it in Compare)"));
        }
    });
    if let Some(e) = &rt.error {
        error_label(ui, e);
    }
    if let Some(TrainEvent::Epoch {
        epoch, train, val, ..
    }) = rt
        .events
        .iter()
        .rev()
        .find(|e| matches!(e, TrainEvent::Epoch { .. }))
    {
        ui.label(format!(
            "epoch {epoch}: train loss {:.4}{}",
            train.loss,
            val.as_ref().map_or(String::new(), |v| format!(
                ", validation loss {:.4}, accuracy {:.3}",
                v.loss, v.accuracy
            ))
        ));
    }
    curves_ui(ui, ("cluster-curves", id), &rt.events);
}
