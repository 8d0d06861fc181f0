//! The application object: persisted state, runtime state, commands applied once per frame,
//! and the frame loop. Long work runs on background threads that report over channels and
//! call `request_repaint`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use web_time::Instant;

use anyhow::Context as _;
use eframe::egui;

use crate::dataset::split::{SplitConfig, SplitReport};
use crate::dataset::{Manifest, OpenOptions};
use crate::explore::ExploreReport;
use crate::train::TrainEvent;
use crate::workbook::{CellKind, Workbook, resolve_path, stored_path};

use super::cells;
use super::thumbs::ThumbCache;

const APP_KEY: &str = "cellbench";

/// What survives a restart (eframe storage). The workbook itself lives in its own file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AppState {
    pub workbook_path: Option<PathBuf>,
    pub dark_mode: bool,
    pub show_log: bool,
}

impl Default for AppState {
    fn default() -> Self {
        Self {
            workbook_path: None,
            dark_mode: true,
            show_log: false,
        }
    }
}

/// Intents from the UI, applied after drawing.
#[derive(Clone, Debug)]
pub enum Command {
    AddCell {
        after: Option<u64>,
        kind: CellKind,
    },
    RemoveCell(u64),
    MoveCell(u64, isize),
    ToggleCollapse(u64),
    RunCell(u64),
    /// Continue the Train cell's last run from its checkpoint, on the data it recorded.
    ResumeTrain(u64),
    RunAll,
    StopTrain(u64),
    OpenDataset(PathBuf),
    SaveWorkbook,
    /// Filter the gallery of a dataset cell to one label (from a chart click).
    FilterLabel {
        dataset: u64,
        label: Option<String>,
    },
}

/// Runs `job` away from the frame: on a named thread on the desktop, between frames in the
/// browser.
fn in_background(name: &'static str, job: impl FnOnce() + Send + 'static) {
    #[cfg(target_arch = "wasm32")]
    super::compute::defer(name, job);
    #[cfg(not(target_arch = "wasm32"))]
    if let Err(e) = std::thread::Builder::new().name(name.to_owned()).spawn(job) {
        log::error!("could not start {name}: {e}");
    }
}

/// A one-shot background result.
pub struct Task<T> {
    rx: mpsc::Receiver<T>,
}

impl<T: Send + 'static> Task<T> {
    pub fn spawn(
        ctx: &egui::Context,
        name: &'static str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        in_background(name, move || {
            let v = f();
            tx.send(v).ok();
            ctx.request_repaint();
        });
        Self { rx }
    }

    /// Runs `f` on the compute worker (burn/tensor work), after the jobs queued before it.
    pub fn on_worker(
        ctx: &egui::Context,
        worker: &super::compute::ComputeWorker,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        if !worker.submit(move || {
            tx.send(f()).ok();
            ctx.request_repaint();
        }) {
            log::error!("the compute worker is gone");
        }
        Self { rx }
    }

    /// Runs a job in steps on the compute worker (see
    /// [`ComputeWorker::submit_steps`](super::compute::ComputeWorker::submit_steps)): `init`
    /// once, `step` until it returns false, then `finish`.
    pub fn in_steps_on_worker<S: Send + 'static, V>(
        ctx: &egui::Context,
        worker: &super::compute::ComputeWorker,
        init: impl FnOnce() -> Result<S, String> + Send + 'static,
        mut step: impl FnMut(&mut S) -> bool + Send + 'static,
        finish: impl FnOnce(S) -> Result<V, String> + Send + 'static,
    ) -> Self
    where
        T: From<Result<V, String>>,
    {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        let mut init = Some(init);
        let mut finish = Some(finish);
        let mut state: Option<S> = None;
        let submitted = worker.submit_steps(move || {
            if let Some(init) = init.take() {
                match init() {
                    Ok(s) => state = Some(s),
                    Err(e) => {
                        tx.send(T::from(Err(e))).ok();
                        ctx.request_repaint();
                        return false;
                    }
                }
            }
            let Some(s) = state.as_mut() else {
                return false;
            };
            if step(s) {
                return true;
            }
            if let (Some(s), Some(finish)) = (state.take(), finish.take()) {
                tx.send(T::from(finish(s))).ok();
                ctx.request_repaint();
            }
            false
        });
        if !submitted {
            log::error!("the compute worker is gone");
        }
        Self { rx }
    }

    /// `Some` once, when the result arrives.
    pub fn poll(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// A dataset cell's loaded data.
pub struct LoadedDataset {
    pub manifest: Arc<Manifest>,
    pub report: Arc<ExploreReport>,
    /// What the gallery filters offer, computed once (not per frame over every record).
    pub facets: Facets,
}

/// Filter choices of a dataset.
pub struct Facets {
    pub labels: Vec<String>,
    pub cell_numbers: Vec<u32>,
    pub has_split: bool,
    pub has_patients: bool,
    /// Records that are missing or unreadable.
    pub unusable: usize,
}

impl Facets {
    pub fn of(manifest: &Manifest) -> Self {
        let cells: std::collections::BTreeSet<u32> =
            manifest.records.iter().filter_map(|r| r.cell_no).collect();
        Self {
            labels: manifest.label_names(),
            cell_numbers: cells.into_iter().collect(),
            has_split: manifest.records.iter().any(|r| r.split.is_some()),
            has_patients: manifest.has_patients(),
            unusable: manifest.records.iter().filter(|r| !r.is_usable()).count(),
        }
    }
}

pub enum Loading<T> {
    Idle,
    Busy(Task<Result<T, String>>),
    Ready(T),
    Failed(String),
}

impl<T: Send + 'static> Loading<T> {
    pub fn poll(&mut self) -> Option<Result<(), String>> {
        if let Self::Busy(task) = self
            && let Some(r) = task.poll()
        {
            *self = match r {
                Ok(v) => Self::Ready(v),
                Err(e) => Self::Failed(e),
            };
            return Some(match self {
                Self::Failed(e) => Err(e.clone()),
                _ => Ok(()),
            });
        }
        None
    }

    pub fn ready(&self) -> Option<&T> {
        match self {
            Self::Ready(v) => Some(v),
            _ => None,
        }
    }
}

/// Gallery filters of a dataset cell.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GalleryFilter {
    pub label: Option<String>,
    pub split: Option<crate::dataset::Split>,
    pub patient: String,
    pub cell_no: Option<u32>,
    pub search: String,
    /// Also show images that are missing or unreadable (hidden by default; the Problems
    /// list names them).
    pub show_unusable: bool,
    /// Only these records (sorted indices): a box selected on an Embedding map.
    pub picked: Option<Arc<Vec<usize>>>,
}

pub struct DatasetRuntime {
    /// The path and options this load used (the cell is out of date when they change).
    pub source: (String, OpenOptions),
    /// Generation of this load: results computed from it record it.
    pub generation: u64,
    pub data: Loading<LoadedDataset>,
    pub filter: GalleryFilter,
    /// Record indices passing the filter (recomputed when the filter changes).
    pub visible: Arc<Vec<usize>>,
    pub visible_for: Option<GalleryFilter>,
    pub selected: Option<usize>,
    pub preview: Option<(usize, Loading<egui::TextureHandle>)>,
}

pub struct SplitResult {
    pub manifest: Arc<Manifest>,
    pub report: SplitReport,
}

pub struct SplitRuntime {
    /// The Dataset cell and the generation of its load this split was computed from.
    pub dataset: (u64, u64),
    pub config: SplitConfig,
    pub generation: u64,
    pub data: Loading<SplitResult>,
}

/// The data a training job was started on, as the notebook showed it.
#[derive(Clone, Debug, PartialEq)]
pub struct DataUse {
    /// Dataset cell id and the generation of its load.
    pub dataset: (u64, u64),
    /// Split cell id and the generation of its result, when one was used.
    pub split: Option<(u64, u64)>,
    /// A resumed run: it continues on the data its run folder recorded, not the cells above.
    pub resumed: bool,
    /// For the header, e.g. "BCCD_cropped (35 images), split by the Split cell: 24 train / 11 validation".
    pub description: String,
}

/// A training job started from a Train cell, followed through its events.
pub struct TrainRuntime {
    pub data: DataUse,
    pub events: Vec<TrainEvent>,
    pub rx: Option<mpsc::Receiver<TrainEvent>>,
    pub cancel: Arc<AtomicBool>,
    pub started: Instant,
    pub finished: Option<Result<String, String>>,
    pub done_rx: Option<mpsc::Receiver<Result<String, String>>>,
}

impl TrainRuntime {
    pub fn is_running(&self) -> bool {
        self.finished.is_none()
    }
}

/// A Train cell's augmentation preview: the textures shown, the settings they show, and the
/// rendering of newer settings in progress.
#[derive(Default)]
pub struct AugPreview {
    pub key: String,
    pub textures: Vec<egui::TextureHandle>,
    pub pending: Option<(String, Task<Vec<egui::ColorImage>>)>,
}

/// Everything not persisted.
pub struct Runtime {
    pub datasets: HashMap<u64, DatasetRuntime>,
    pub splits: HashMap<u64, SplitRuntime>,
    pub trains: HashMap<u64, TrainRuntime>,
    pub evals: HashMap<u64, cells::EvalRuntime>,
    pub compares: HashMap<u64, cells::CompareRuntime>,
    pub predicts: HashMap<u64, Loading<cells::PredictView>>,
    pub embeddings: HashMap<u64, cells::EmbeddingRuntime>,
    pub clusters: HashMap<u64, cells::ClusterRuntime>,
    pub explore_ui: HashMap<u64, cells::ExploreUi>,
    /// The header of each Dataset cell's CSV, for the column choices.
    pub csv_columns: HashMap<u64, cells::CsvColumns>,
    pub thumbs: ThumbCache,
    /// The one owner of burn/tensor work.
    pub compute: super::compute::ComputeWorker,
    pub log: Vec<(Instant, bool, String)>,
    pub toasts: Vec<(Instant, bool, String)>,
    /// Run folder names and cluster profiles, re-read from disk at most every few seconds
    /// instead of on every frame.
    run_ids: Option<(Instant, PathBuf, Vec<String>)>,
    profiles: Option<(Instant, crate::cluster::Profiles)>,
    run_states: HashMap<PathBuf, (Instant, Option<crate::runs::RunState>)>,
    /// The Train cells' augmentation previews.
    pub aug_previews: HashMap<u64, AugPreview>,
    last_generation: u64,
    /// Messages from background work that has no cell of its own (exports).
    notes_tx: mpsc::Sender<(bool, String)>,
    notes_rx: mpsc::Receiver<(bool, String)>,
}

/// How long a listing read from disk is shown before it is read again.
const DISK_LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Runtime {
    /// Runs file work (an export) on a background thread; its message reaches the log (and,
    /// for an error, a notification) when it is done.
    pub fn in_background(
        &self,
        ctx: &egui::Context,
        name: &'static str,
        work: impl FnOnce() -> Result<String, String> + Send + 'static,
    ) {
        let tx = self.notes_tx.clone();
        let ctx = ctx.clone();
        in_background(name, move || {
            let note = match work() {
                Ok(text) => (false, text),
                Err(text) => (true, text),
            };
            tx.send(note).ok();
            ctx.request_repaint();
        });
    }

    /// Drops every runtime entry of a removed cell.
    pub fn forget(&mut self, id: u64) {
        self.datasets.remove(&id);
        self.splits.remove(&id);
        self.trains.remove(&id);
        self.evals.remove(&id);
        self.compares.remove(&id);
        self.predicts.remove(&id);
        self.embeddings.remove(&id);
        self.clusters.remove(&id);
        self.explore_ui.remove(&id);
        self.csv_columns.remove(&id);
        self.aug_previews.remove(&id);
    }

    /// A new generation number for a result about to be computed.
    pub fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    /// Run folder names under `dir` (see [`crate::runs::view::list_runs`]), cached briefly.
    pub fn run_ids(&mut self, dir: &Path) -> Vec<String> {
        match &self.run_ids {
            Some((at, d, ids)) if d == dir && at.elapsed() < DISK_LISTING_TTL => ids.clone(),
            _ => {
                let ids = crate::runs::view::list_runs(dir);
                self.run_ids = Some((Instant::now(), dir.to_owned(), ids.clone()));
                ids
            }
        }
    }

    /// The state of the run in folder `run` (`None` when it has no readable status), cached
    /// briefly.
    pub fn run_state(&mut self, run: &Path) -> Option<crate::runs::RunState> {
        match self.run_states.get(run) {
            Some((at, s)) if at.elapsed() < DISK_LISTING_TTL => *s,
            _ => {
                let s = crate::runs::read_status(run).ok().map(|s| s.state);
                self.run_states.insert(run.to_owned(), (Instant::now(), s));
                s
            }
        }
    }

    /// The cluster profiles of clusters.toml, cached briefly.
    pub fn profiles(&mut self) -> crate::cluster::Profiles {
        match &self.profiles {
            Some((at, p)) if at.elapsed() < DISK_LISTING_TTL => p.clone(),
            _ => {
                let p = crate::cluster::Profiles::load_default().unwrap_or_default();
                self.profiles = Some((Instant::now(), p.clone()));
                p
            }
        }
    }

    /// Notes something for the log panel; errors also pop up as a notification.
    pub fn note(&mut self, error: bool, text: impl Into<String>) {
        let text = text.into();
        if error {
            log::error!("{text}");
        } else {
            log::info!("{text}");
        }
        if error {
            self.toasts.push((Instant::now(), true, text.clone()));
        }
        self.log.push((Instant::now(), error, text));
    }
}

/// The workbench.
pub struct WorkbenchApp {
    pub state: AppState,
    pub workbook: Workbook,
    pub workbook_path: PathBuf,
    pub rt: Runtime,
    commands: Vec<Command>,
    /// Cells waiting to run after the work above them finishes (Run all).
    run_queue: std::collections::VecDeque<u64>,
    dirty_since: Option<Instant>,
    screenshot_to: Option<PathBuf>,
    screenshot_rx: Option<mpsc::Receiver<Arc<egui::ColorImage>>>,
    frames: u64,
    /// `CELLBENCH_BENCH_SCROLL=<frames>`: scroll the first gallery that many frames, then print
    /// frame-time percentiles and peak memory and quit.
    scroll_bench: Option<ScrollBench>,
    map_bench: Option<cells::MapBench>,
}

/// Frame times of the scrolling benchmark.
struct ScrollBench {
    frames: usize,
    times_ms: Vec<f64>,
}

/// Peak resident memory of this process (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = crate::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn is_zip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// `CELLBENCH_RUN_ALL` (desktop) or `?run=all` in the page's address (browser): run every
/// cell once the notebook is shown (demos, screenshots, end-to-end tests).
fn run_all_on_start() -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    let asked = std::env::var_os("CELLBENCH_RUN_ALL").is_some();
    #[cfg(target_arch = "wasm32")]
    let asked = crate::web::url_param("run").as_deref() == Some("all");
    asked
}

/// What the notebook shows, in numbers: for scripts driving the page or the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct NotebookStatus {
    /// Opened datasets: (images, labels).
    pub datasets: Vec<(usize, usize)>,
    /// Training runs: `running`, `finished` or `failed: …`.
    pub trainings: Vec<String>,
    /// Evaluations shown: the confusion matrix's side (0 without one).
    pub confusion_sides: Vec<usize>,
    /// Embedding maps drawn: their points.
    pub maps: Vec<usize>,
    /// Errors reported so far.
    pub errors: Vec<String>,
}

/// Where the workbook lives when none was chosen.
pub fn default_workbook_path() -> PathBuf {
    #[cfg(target_arch = "wasm32")]
    let path = PathBuf::from(crate::web::WORKBOOK);
    #[cfg(not(target_arch = "wasm32"))]
    let path = std::env::var_os("CELLBENCH_WORKBOOK").map_or_else(
        || {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join("cellbench/workbook.cellbook.toml")
        },
        PathBuf::from,
    );
    path
}

impl WorkbenchApp {
    /// The notebook's state in numbers (see [`NotebookStatus`]).
    pub fn status(&self) -> NotebookStatus {
        /// A runtime map's entries by cell id (ids grow down the notebook).
        fn by_id<T>(map: &HashMap<u64, T>) -> Vec<&T> {
            let mut entries: Vec<(&u64, &T)> = map.iter().collect();
            entries.sort_by_key(|(id, _)| **id);
            entries.into_iter().map(|(_, v)| v).collect()
        }
        let datasets = by_id(&self.rt.datasets)
            .into_iter()
            .filter_map(|d| match &d.data {
                Loading::Ready(d) => Some((d.manifest.records.len(), d.report.labels.len())),
                _ => None,
            })
            .collect();
        let trainings = by_id(&self.rt.trains)
            .into_iter()
            .map(|t| match &t.finished {
                None => "running".to_owned(),
                Some(Ok(_)) => "finished".to_owned(),
                Some(Err(e)) => format!("failed: {e}"),
            })
            .collect();
        let confusion_sides = by_id(&self.rt.evals)
            .into_iter()
            .filter_map(|e| match &e.data {
                Loading::Ready(e) => {
                    Some(e.metrics.confusion.as_ref().map_or(0, |c| c.labels.len()))
                }
                _ => None,
            })
            .collect();
        let errors = self
            .rt
            .log
            .iter()
            .filter(|(_, error, _)| *error)
            .map(|(_, _, text)| text.clone())
            .collect();
        let maps = by_id(&self.rt.embeddings)
            .into_iter()
            .filter_map(|m| m.data.ready().map(|r| r.map.coords.len()))
            .collect();
        NotebookStatus {
            datasets,
            trainings,
            confusion_sides,
            maps,
            errors,
        }
    }

    /// Imports run folders into the notebook's runs folder (`import` gets its path) and
    /// refreshes the cells that list runs.
    fn import_runs(&mut self, import: impl FnOnce(&Path) -> anyhow::Result<Vec<String>>) {
        match import(&self.runs_dir()) {
            Ok(ids) => {
                self.rt.run_ids = None;
                self.rt.evals.clear();
                self.rt.compares.values_mut().for_each(|c| c.stale = true);
                self.rt.note(
                    false,
                    format!(
                        "opened {} run(s): {}; Evaluate and Compare cells show them",
                        ids.len(),
                        ids.join(", ")
                    ),
                );
            }
            Err(e) => self.rt.note(true, format!("runs not imported: {e:#}")),
        }
    }

    /// Takes in what the page asks (dropped files, run zips, a notebook file).
    #[cfg(target_arch = "wasm32")]
    fn page_request(&mut self, r: crate::web::PageRequest) {
        use crate::web::PageRequest;
        match r {
            PageRequest::OpenDataset(path) => self.push(Command::OpenDataset(path)),
            PageRequest::Note(error, text) => self.rt.note(error, text),
            PageRequest::ImportRuns(from) => {
                self.import_runs(|runs| crate::runs::archive::import_folders(&from, runs))
            }
            PageRequest::OpenWorkbook(path) => match Workbook::load(&path) {
                Ok(w) => {
                    for id in self.workbook.cells.iter().map(|c| c.id).collect::<Vec<_>>() {
                        self.rt.forget(id);
                    }
                    self.workbook = w;
                    self.touch();
                    self.rt
                        .note(false, format!("opened the notebook {}", path.display()));
                }
                Err(e) => self.rt.note(true, format!("{e:#}")),
            },
        }
    }

    /// `workbook`: a `.cellbook.toml` to open; `dataset`: a dataset to add to it.
    pub fn new(
        cc: &eframe::CreationContext<'_>,
        workbook: Option<PathBuf>,
        dataset: Option<PathBuf>,
    ) -> Self {
        let state: AppState = cc
            .storage
            .and_then(|s| eframe::get_value(s, APP_KEY))
            .unwrap_or_default();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(render_state) = &cc.wgpu_render_state {
            super::points::install(render_state);
        }
        Self::with_state(&cc.egui_ctx, state, workbook, dataset)
    }

    /// Builds the app without eframe's creation context (tests).
    pub fn with_state(
        ctx: &egui::Context,
        mut state: AppState,
        workbook: Option<PathBuf>,
        dataset: Option<PathBuf>,
    ) -> Self {
        let path = workbook
            .or_else(|| std::env::var_os("CELLBENCH_WORKBOOK").map(PathBuf::from))
            .or_else(|| state.workbook_path.clone())
            .unwrap_or_else(default_workbook_path);
        let notes = mpsc::channel();
        let mut rt = Runtime {
            datasets: HashMap::new(),
            splits: HashMap::new(),
            trains: HashMap::new(),
            evals: HashMap::new(),
            compares: HashMap::new(),
            predicts: HashMap::new(),
            embeddings: HashMap::new(),
            clusters: HashMap::new(),
            explore_ui: HashMap::new(),
            csv_columns: HashMap::new(),
            thumbs: ThumbCache::new(ctx, 2),
            compute: super::compute::ComputeWorker::start(),
            log: Vec::new(),
            toasts: Vec::new(),
            run_ids: None,
            profiles: None,
            run_states: HashMap::new(),
            aug_previews: HashMap::new(),
            last_generation: 0,
            notes_tx: notes.0,
            notes_rx: notes.1,
        };
        let workbook = if crate::fs::exists(&path) {
            match Workbook::load(&path) {
                Ok(w) => w,
                Err(e) => {
                    rt.note(true, format!("{e:#}; starting a new workbook"));
                    Workbook::default()
                }
            }
        } else {
            let base = Workbook::base_dir(&path);
            Workbook::demo(&stored_path(&crate::demo_dataset(), &base))
        };
        state.workbook_path = Some(path.clone());
        if !crate::fs::exists(&path)
            && let Err(e) = workbook.save(&path)
        {
            rt.note(true, format!("{e:#}"));
        }
        ctx.set_visuals(if state.dark_mode {
            egui::Visuals::dark()
        } else {
            egui::Visuals::light()
        });
        let mut app = Self {
            state,
            workbook,
            workbook_path: path,
            rt,
            commands: Vec::new(),
            run_queue: Default::default(),
            dirty_since: None,
            screenshot_to: std::env::var_os("CELLBENCH_SCREENSHOT").map(Into::into),
            screenshot_rx: None,
            frames: 0,
            scroll_bench: std::env::var("CELLBENCH_BENCH_SCROLL")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(|frames| ScrollBench {
                    frames,
                    times_ms: Vec::new(),
                }),
            map_bench: cells::MapBench::from_env(),
        };
        if let Some(d) = dataset {
            app.commands.push(Command::OpenDataset(d));
        } else {
            // Datasets open at once (a scan, no training), so the gallery and counts show
            // without pressing Run.
            app.run_queue = app
                .workbook
                .cells
                .iter()
                .filter(|c| matches!(c.kind, CellKind::Dataset { .. }))
                .map(|c| c.id)
                .collect();
        }
        app
    }

    pub fn base_dir(&self) -> PathBuf {
        Workbook::base_dir(&self.workbook_path)
    }

    pub fn runs_dir(&self) -> PathBuf {
        resolve_path(&self.workbook.runs, &self.base_dir())
    }

    pub fn push(&mut self, command: Command) {
        self.commands.push(command);
    }

    /// Marks the workbook changed; it is saved shortly after.
    pub fn touch(&mut self) {
        self.dirty_since.get_or_insert_with(Instant::now);
    }

    fn save(&mut self) {
        match self.workbook.save(&self.workbook_path) {
            Ok(()) => self.dirty_since = None,
            Err(e) => {
                self.rt.note(true, format!("{e:#}"));
                self.dirty_since = None;
            }
        }
    }

    /// Opens what a file dialog picks; says so (as an error notification) when no dialog
    /// can be shown instead of doing nothing.
    fn pick_dataset(&mut self, dialog: impl FnOnce() -> Option<PathBuf>) {
        match super::widgets::pick(dialog) {
            super::widgets::Picked::Path(p) => self.push(Command::OpenDataset(p)),
            super::widgets::Picked::Cancelled => {}
            super::widgets::Picked::Unavailable => self.rt.note(true, super::widgets::NO_DIALOG),
        }
    }

    /// Applies queued commands (once per frame).
    pub fn apply_commands(&mut self, ctx: &egui::Context) {
        let commands = std::mem::take(&mut self.commands);
        for c in commands {
            match c {
                Command::AddCell { after, kind } => {
                    self.workbook.insert_after(after, kind);
                    self.touch();
                }
                Command::RemoveCell(id) => {
                    if let Some(t) = self.rt.trains.get(&id) {
                        t.cancel.store(true, Ordering::Relaxed);
                    }
                    self.rt.forget(id);
                    self.run_queue.retain(|&q| q != id);
                    self.workbook.remove(id);
                    self.touch();
                }
                Command::MoveCell(id, d) => {
                    self.workbook.move_cell(id, d);
                    self.touch();
                }
                Command::ToggleCollapse(id) => {
                    if let Some(i) = self.workbook.position(id) {
                        self.workbook.cells[i].collapsed ^= true;
                        self.touch();
                    }
                }
                Command::RunCell(id) => {
                    // Inputs that are out of date run first (queued), then the cell.
                    let plan = super::freshness::plan_run(self, id);
                    if plan.len() == 1 {
                        cells::run_cell(self, ctx, id);
                    } else {
                        let names: Vec<String> = plan[..plan.len() - 1]
                            .iter()
                            .map(|&c| super::freshness::cell_name(self, c))
                            .collect();
                        self.rt.note(
                            false,
                            format!("running {} first: out of date", names.join(" and ")),
                        );
                        for c in plan.into_iter().rev() {
                            self.run_queue.retain(|&q| q != c);
                            self.run_queue.push_front(c);
                        }
                    }
                }
                Command::ResumeTrain(id) => cells::resume_training(self, ctx, id),
                Command::RunAll => {
                    self.run_queue = self.workbook.cells.iter().map(|c| c.id).collect();
                }
                Command::StopTrain(id) => {
                    if let Some(t) = self.rt.trains.get(&id) {
                        t.cancel.store(true, Ordering::Relaxed);
                        self.rt
                            .note(false, "stopping the training run after the current batch");
                    }
                }
                Command::OpenDataset(path) => {
                    let base = self.base_dir();
                    let stored = stored_path(&path, &base);
                    let existing = self
                        .workbook
                        .cells
                        .iter()
                        .find(|c| matches!(c.kind, CellKind::Dataset { .. }))
                        .map(|c| c.id);
                    let id = match existing {
                        Some(id) => {
                            let i = self.workbook.position(id).expect("found above");
                            self.workbook.cells[i].kind = CellKind::Dataset {
                                path: stored,
                                options: OpenOptions::default(),
                            };
                            id
                        }
                        None => {
                            let id = self.workbook.insert_after(
                                None,
                                CellKind::Dataset {
                                    path: stored,
                                    options: OpenOptions::default(),
                                },
                            );
                            self.workbook.insert_after(Some(id), CellKind::Explore {});
                            id
                        }
                    };
                    self.rt.datasets.remove(&id);
                    cells::run_cell(self, ctx, id);
                    self.touch();
                }
                Command::SaveWorkbook => {
                    self.save();
                    let text = format!("saved {}", self.workbook_path.display());
                    self.rt.toasts.push((Instant::now(), false, text.clone()));
                    self.rt.note(false, text);
                }
                Command::FilterLabel { dataset, label } => {
                    if let Some(d) = self.rt.datasets.get_mut(&dataset) {
                        d.filter.label = label;
                    }
                }
            }
        }
    }

    fn poll_background(&mut self) {
        self.rt.thumbs.poll();
        let mut notes = Vec::new();
        for d in self.rt.datasets.values_mut() {
            if let Some(Err(e)) = d.data.poll() {
                notes.push((true, format!("dataset: {}", cells::in_cell_words(&e))));
            }
            if let Some((_, p)) = &mut d.preview {
                p.poll();
            }
        }
        for s in self.rt.splits.values_mut() {
            if let Some(Err(e)) = s.data.poll() {
                notes.push((true, format!("split: {e}")));
            }
        }
        for c in self.rt.csv_columns.values_mut() {
            c.columns.poll();
        }
        for m in self.rt.embeddings.values_mut() {
            if let Some(Err(e)) = m.poll() {
                notes.push((true, format!("embedding: {e}")));
            }
        }
        for p in self.rt.predicts.values_mut() {
            match p.poll() {
                Some(Err(e)) => notes.push((true, format!("predict: {e}"))),
                Some(Ok(())) => notes.push((false, "prediction finished".to_owned())),
                None => {}
            }
        }
        let mut finished_runs = Vec::new();
        for (id, t) in &mut self.rt.trains {
            if let Some(rx) = &t.rx {
                for e in rx.try_iter() {
                    if let TrainEvent::Warning { message } = &e {
                        notes.push((false, message.clone()));
                    }
                    t.events.push(e);
                }
            }
            if let Some(rx) = &t.done_rx
                && let Ok(r) = rx.try_recv()
            {
                match &r {
                    Ok(run) => {
                        notes.push((false, format!("training run {run} ended")));
                        finished_runs.push((*id, run.clone()));
                    }
                    Err(e) => notes.push((true, format!("training failed: {e}"))),
                }
                t.finished = Some(r);
                t.done_rx = None;
            }
        }
        for (id, run) in finished_runs {
            if let Some(i) = self.workbook.position(id)
                && let CellKind::Train { run: r, .. } = &mut self.workbook.cells[i].kind
            {
                *r = Some(run);
            }
            // Evaluate cells that follow this run refresh.
            self.rt.evals.clear();
            self.rt.compares.values_mut().for_each(|c| c.stale = true);
            self.touch();
        }
        // Cluster jobs report here, every frame, whether their cell is drawn or collapsed.
        let mut submitted = Vec::new();
        for (id, rt) in &mut self.rt.clusters {
            for m in rt.rx.try_iter() {
                match m {
                    cells::ClusterMsg::Submitted(j) => {
                        submitted.push((*id, j.clone()));
                        rt.job = Some(j);
                    }
                    cells::ClusterMsg::Status(s) => rt.status = s,
                    cells::ClusterMsg::Event(e) => rt.events.push(e),
                    cells::ClusterMsg::Imported(r) => {
                        notes.push((false, format!("cluster job imported as run {r}")));
                        rt.imported = Some(r);
                        rt.active = false;
                    }
                    cells::ClusterMsg::Failed(e) => {
                        notes.push((true, format!("cluster job: {e}")));
                        rt.error = Some(e);
                        rt.active = false;
                    }
                }
            }
        }
        for (id, j) in submitted {
            if let Some(i) = self.workbook.position(id)
                && let CellKind::Cluster { job, .. } = &mut self.workbook.cells[i].kind
            {
                *job = Some(j);
                self.touch();
            }
        }
        for c in self.rt.compares.values_mut() {
            if let Some(Err(err)) = c.loaded.poll() {
                notes.push((true, format!("compare: {err}")));
            }
        }
        for e in &mut self.rt.evals.values_mut() {
            if let Some(Err(err)) = e.data.poll() {
                notes.push((true, format!("evaluate: {err}")));
            }
        }
        notes.extend(self.rt.notes_rx.try_iter());
        // Queued cells (Run all, or the inputs of a cell) stop at the first failure.
        if notes.iter().any(|n| n.0) {
            self.run_queue.clear();
        }
        for (error, text) in notes {
            self.rt.note(error, text);
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("cellbench");
            ui.separator();
            ui.label(egui::RichText::new(&self.workbook.title).strong())
                .on_hover_text(format!("Workbook file: {}", self.workbook_path.display()));
            // What is loaded now, whatever the workbook is called.
            let datasets: Vec<String> = self
                .workbook
                .cells
                .iter()
                .filter_map(|c| match &c.kind {
                    CellKind::Dataset { path, .. } if !path.trim().is_empty() => Some(
                        std::path::Path::new(path.trim())
                            .file_name()
                            .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned()),
                    ),
                    _ => None,
                })
                .collect();
            if !datasets.is_empty() {
                ui.label(format!("· {}", datasets.join(", ")))
                    .on_hover_text("The dataset(s) of this workbook");
            }
            let file = self
                .workbook_path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            ui.label(egui::RichText::new(format!("· {file}")).weak())
                .on_hover_text(format!(
                    "Saved automatically after every change (Ctrl+S saves now): {}",
                    self.workbook_path.display()
                ));
            ui.separator();
            if super::widgets::DESKTOP && ui
                .button("Open dataset…")
                .on_hover_text("Open a dataset folder (C-NMC names or class folders). Ctrl+O. You can also drop a folder or CSV on the window.")
                .clicked()
            {
                self.pick_dataset(super::widgets::folder_dialog);
            }
            if super::widgets::DESKTOP && ui
                .button("Open CSV…")
                .on_hover_text("Open a CSV manifest: NIH ChestX-ray14, Kaggle retinopathy trainLabels.csv, or any CSV with path and label columns")
                .clicked()
            {
                self.pick_dataset(super::widgets::csv_dialog);
            }
            ui.menu_button("Add cell", |ui| {
                for kind in CellKind::templates() {
                    if ui.button(kind.title()).clicked() {
                        self.push(Command::AddCell { after: None, kind });
                        ui.close();
                    }
                }
            })
            .response
            .on_hover_text("Append a cell to the notebook");
            if ui.button("Run all").on_hover_text("Run every cell from top to bottom (F5)").clicked() {
                self.push(Command::RunAll);
            }
            if ui.button("Save").on_hover_text("Save the workbook now (Ctrl+S); it also saves itself after every change").clicked() {
                self.push(Command::SaveWorkbook);
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let label = if self.state.dark_mode { "Light theme" } else { "Dark theme" };
                if ui.button(label).on_hover_text("Switch between dark and light themes").clicked() {
                    self.state.dark_mode ^= true;
                    ui.ctx().set_visuals(if self.state.dark_mode { egui::Visuals::dark() } else { egui::Visuals::light() });
                }
                let errors = self.rt.log.iter().filter(|l| l.1).count();
                let text = if errors > 0 { format!("Log ({errors} errors)") } else { "Log".to_owned() };
                ui.toggle_value(&mut self.state.show_log, text).on_hover_text("Show messages and errors of background work");
            });
        });
    }

    fn log_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("log")
            .resizable(true)
            .default_size(140.0)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.strong("Log");
                    if ui.small_button("Clear").clicked() {
                        self.rt.log.clear();
                    }
                });
                egui::ScrollArea::vertical()
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for (_, error, text) in &self.rt.log {
                            if *error {
                                ui.colored_label(ui.visuals().error_fg_color, text);
                            } else {
                                ui.label(text);
                            }
                        }
                    });
            });
    }

    fn toasts(&mut self, ctx: &egui::Context) {
        self.rt.toasts.retain(|t| t.0.elapsed().as_secs_f32() < 6.0);
        if self.rt.toasts.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -12.0])
            .show(ctx, |ui| {
                for (_, error, text) in &self.rt.toasts {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.set_max_width(380.0);
                        if *error {
                            ui.colored_label(ui.visuals().error_fg_color, text);
                        } else {
                            ui.label(text);
                        }
                    });
                }
            });
        ctx.request_repaint_after(std::time::Duration::from_millis(500));
    }

    fn shortcuts(&mut self, ctx: &egui::Context) {
        let (save, open, run_all) = ctx.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::S),
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::O),
                i.consume_key(egui::Modifiers::NONE, egui::Key::F5),
            )
        });
        if save {
            self.push(Command::SaveWorkbook);
        }
        if run_all {
            self.push(Command::RunAll);
        }
        if open {
            self.pick_dataset(super::widgets::folder_dialog);
        }
        let dropped = ctx.input(|i| i.raw.dropped_files.first().map(|f| f.path().to_owned()));
        if let Some(path) = dropped.as_ref().filter(|p| is_zip(p)) {
            // A zip of run folders (from the browser or a cluster job) joins the notebook's runs.
            let path = path.clone();
            self.import_runs(|runs| {
                let bytes = crate::fs::read(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                crate::runs::archive::import_zip(&bytes, runs)
                    .with_context(|| format!("{}", path.display()))
            });
        } else if let Some(path) = dropped {
            self.push(Command::OpenDataset(path));
        }
    }

    fn screenshot(&mut self, ctx: &egui::Context) {
        let Some(path) = self.screenshot_to.clone() else {
            return;
        };
        if let Some(rx) = &self.screenshot_rx {
            if let Ok(image) = rx.try_recv() {
                save_color_image(&image, &path);
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        } else if self.settled() {
            let (tx, rx) = mpsc::channel();
            let repaint = ctx.clone();
            self.screenshot_rx = Some(rx);
            ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(
                egui::ScreenshotCallback::new(move |image| {
                    tx.send(image).ok();
                    repaint.request_repaint();
                }),
            ));
        }
        ctx.request_repaint();
    }

    /// Starts the next queued cell once nothing is running.
    fn advance_queue(&mut self, ctx: &egui::Context) {
        if self.run_queue.is_empty() || self.busy() {
            return;
        }
        if let Some(id) = self.run_queue.pop_front() {
            cells::run_cell(self, ctx, id);
        }
        ctx.request_repaint();
    }

    /// True while background work of any cell runs.
    pub fn busy(&self) -> bool {
        self.rt
            .datasets
            .values()
            .any(|d| matches!(d.data, Loading::Busy(_)))
            || self
                .rt
                .splits
                .values()
                .any(|d| matches!(d.data, Loading::Busy(_)))
            || self.rt.trains.values().any(TrainRuntime::is_running)
            || self.rt.evals.values().any(|e| {
                matches!(e.data, Loading::Busy(_))
                    || e.inspected.as_ref().is_some_and(|i| {
                        matches!(i.image, Loading::Busy(_))
                            || matches!(i.saliency, Loading::Busy(_))
                    })
            })
            || self
                .rt
                .predicts
                .values()
                .any(|p| matches!(p, Loading::Busy(_)))
            || self.rt.clusters.values().any(|c| c.active)
            || self
                .rt
                .compares
                .values()
                .any(|c| matches!(c.loaded, Loading::Busy(_)))
    }

    /// True when no background work is running or queued.
    pub fn settled(&self) -> bool {
        self.frames > 10 && self.run_queue.is_empty() && !self.busy()
    }

    /// Draws one frame (also used by tests through [`eframe::App::ui`]).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        if self.frames == 1 && run_all_on_start() {
            self.push(Command::RunAll);
        }
        self.poll_background();
        self.shortcuts(&ctx);
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        if self.state.show_log {
            self.log_panel(ui);
        }
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .auto_shrink(false)
                .show(ui, |ui| {
                    ui.add_space(4.0);
                    let ids: Vec<u64> = self.workbook.cells.iter().map(|c| c.id).collect();
                    for id in ids {
                        cells::cell_ui(self, ui, id);
                        ui.add_space(10.0);
                    }
                    ui.horizontal(|ui| {
                        ui.menu_button("Add cell", |ui| {
                            for kind in CellKind::templates() {
                                if ui.button(kind.title()).clicked() {
                                    self.push(Command::AddCell { after: None, kind });
                                    ui.close();
                                }
                            }
                        });
                    });
                    ui.add_space(40.0);
                });
        });
        self.toasts(&ctx);
        self.apply_commands(&ctx);
        self.advance_queue(&ctx);
        if self
            .dirty_since
            .is_some_and(|t| t.elapsed().as_secs_f32() > 1.0)
        {
            self.save();
        } else if self.dirty_since.is_some() {
            ctx.request_repaint_after(std::time::Duration::from_millis(1100));
        }
        if self.rt.trains.values().any(TrainRuntime::is_running) {
            ctx.request_repaint_after(std::time::Duration::from_millis(200));
        }
        self.screenshot(&ctx);
    }
}

fn save_color_image(image: &egui::ColorImage, path: &Path) {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
    if let Some(img) = image::RgbaImage::from_raw(w as u32, h as u32, rgba)
        && let Err(err) = img.save(path)
    {
        log::error!("saving screenshot {}: {err}", path.display());
    }
}

impl WorkbenchApp {
    fn scrolling(&self) -> bool {
        self.scroll_bench.is_some() && self.rt.datasets.values().any(|d| d.data.ready().is_some())
    }

    fn finish_scroll_bench(&mut self, ctx: &egui::Context) {
        let Some(b) = &self.scroll_bench else { return };
        if b.times_ms.len() < b.frames {
            return;
        }
        let mut t = b.times_ms.clone();
        t.sort_by(f64::total_cmp);
        let pct = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
        let images: usize = self
            .rt
            .datasets
            .values()
            .filter_map(|d| d.data.ready())
            .map(|d| d.manifest.records.len())
            .sum();
        println!(
            "scroll bench: {images} images, {} frames; frame time (UI work) p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms; {} thumbnails cached; peak memory {:.0} MiB",
            t.len(),
            pct(0.5),
            pct(0.95),
            t[t.len() - 1],
            self.rt.thumbs.len(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        self.scroll_bench = None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let start = Instant::now();
        let mut map_bench = self.map_bench.take();
        let benching = map_bench.as_mut().is_some_and(|b| b.before_frame(self));
        #[cfg(target_arch = "wasm32")]
        {
            if super::compute::run_deferred(std::time::Duration::from_millis(40)) {
                ui.ctx().request_repaint();
            }
            for r in crate::web::take_requests() {
                self.page_request(r);
            }
        }
        self.frame(ui);
        #[cfg(target_arch = "wasm32")]
        {
            crate::web::publish_status(&self.status());
            crate::web::persist_workbook();
            crate::web::set_runs_dir(self.runs_dir());
        }
        if let Some(mut b) = map_bench {
            let report = benching
                .then(|| b.after_frame(start.elapsed().as_secs_f64() * 1e3, peak_rss_mib()))
                .flatten();
            match report {
                Some(report) => {
                    println!("{report}");
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
                None => {
                    ui.ctx().request_repaint();
                    self.map_bench = Some(b);
                }
            }
        }
        if self.scrolling() {
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if let Some(b) = &mut self.scroll_bench {
                b.times_ms.push(ms);
            }
            ui.ctx().request_repaint();
            let ctx = ui.ctx().clone();
            self.finish_scroll_bench(&ctx);
        }
    }

    fn raw_input_hook(&mut self, _ctx: &egui::Context, raw_input: &mut egui::RawInput) {
        if let Some(pos) = self.map_bench.as_ref().and_then(|b| b.pointer(self)) {
            raw_input.events.push(egui::Event::PointerMoved(pos));
        }
        if self.scrolling() {
            // Wheel over the first gallery (the Dataset cell of the default layout).
            let pos = egui::pos2(400.0, 420.0);
            raw_input.events.push(egui::Event::PointerMoved(pos));
            raw_input.events.push(egui::Event::MouseWheel {
                unit: egui::MouseWheelUnit::Point,
                delta: egui::vec2(0.0, -240.0),
                phase: egui::TouchPhase::Move,
                source: egui::MouseWheelSource::Unknown,
                modifiers: egui::Modifiers::default(),
            });
        }
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, APP_KEY, &self.state);
        if self.dirty_since.is_some() {
            WorkbenchApp::save(self);
        }
    }
}
