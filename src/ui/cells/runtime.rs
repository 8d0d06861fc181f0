//! What each cell holds while the notebook is open (never saved), and the background tasks
//! that fill it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use web_time::Instant;

use eframe::egui;

use crate::dataset::split::{SplitConfig, SplitReport};
use crate::dataset::{Manifest, OpenOptions};
use crate::explore::ExploreReport;
use crate::train::TrainEvent;

use crate::ui::cells;
use crate::ui::thumbs::ThumbCache;

/// Runs `job` away from the frame: on a named thread on the desktop, between frames in the
/// browser.
fn in_background(name: &'static str, job: impl FnOnce() + Send + 'static) {
    #[cfg(target_arch = "wasm32")]
    crate::ui::compute::defer(name, job);
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
        worker: &crate::ui::compute::ComputeWorker,
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
    /// [`ComputeWorker::submit_steps`](crate::ui::compute::ComputeWorker::submit_steps)): `init`
    /// once, `step` until it returns false, then `finish`.
    pub fn in_steps_on_worker<S: Send + 'static, V>(
        ctx: &egui::Context,
        worker: &crate::ui::compute::ComputeWorker,
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

/// Something read from disk in the background for the frame to show (a runs listing, a run's
/// state): the last reading is shown at once, and a new one starts when it is older than
/// [`DISK_LISTING_TTL`], is for another key, or was made out of date. Frames never wait on
/// the disk.
pub struct DiskListing<K, T> {
    /// The last reading: when it was made (`None` once out of date), its key and value.
    shown: Option<(Option<Instant>, K, T)>,
    reading: Option<(K, Task<T>)>,
}

impl<K, T> Default for DiskListing<K, T> {
    fn default() -> Self {
        Self {
            shown: None,
            reading: None,
        }
    }
}

impl<K, T> DiskListing<K, T>
where
    K: PartialEq + Clone + Send + 'static,
    T: Clone + Default + Send + 'static,
{
    /// The value for `key` as last read (the default before the first reading), starting a
    /// background `read` when it is due.
    pub fn get(&mut self, ctx: &egui::Context, key: &K, read: fn(&K) -> T) -> T {
        if let Some((k, task)) = &self.reading
            && let Some(v) = task.poll()
        {
            self.shown = Some((Some(Instant::now()), k.clone(), v));
            self.reading = None;
        }
        let current = matches!(
            &self.shown,
            Some((Some(at), k, _)) if k == key && at.elapsed() < DISK_LISTING_TTL
        );
        let reading = matches!(&self.reading, Some((k, _)) if k == key);
        if !current && !reading {
            let k = key.clone();
            self.reading = Some((
                key.clone(),
                Task::spawn(ctx, "disk-listing", move || read(&k)),
            ));
        }
        match &self.shown {
            Some((_, k, v)) if k == key => v.clone(),
            _ => T::default(),
        }
    }

    /// Reads again at the next [`Self::get`] (what it shows stays until then); a reading in
    /// flight, possibly older than the change, is dropped.
    pub fn invalidate(&mut self) {
        if let Some((at, _, _)) = &mut self.shown {
            *at = None;
        }
        self.reading = None;
    }

    /// True while a reading is in flight.
    pub fn busy(&self) -> bool {
        self.reading.is_some()
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
    /// The dataset alone, e.g. "BCCD_cropped (35 images)".
    pub dataset_name: String,
    /// For the header, e.g. "BCCD_cropped (35 images), split by the Split cell: 24 train / 11 validation".
    pub description: String,
}

/// A training job started from a Train cell, followed through its events.
pub struct TrainRuntime {
    pub data: DataUse,
    /// The cell's settings and number of folds the run started with (`None` for a resumed
    /// run, which keeps the settings it recorded).
    pub settings: Option<(crate::experiment::config::TrainConfig, u32)>,
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

/// One cell's state while the notebook is open (never saved): what it loaded, computed or
/// runs. The notebook keeps one per cell id in [`Runtime`]; removing the cell removes it.
/// Each part is `None` until the cell first needs it.
// A notebook holds tens of cells: the enum's size is irrelevant next to one indirection per
// access.
#[allow(clippy::large_enum_variant)]
pub enum CellRuntime {
    Dataset {
        load: Option<DatasetRuntime>,
        /// The header of the cell's CSV, for the column choices.
        csv_columns: Option<cells::CsvColumns>,
    },
    Explore {
        ui: Option<cells::ExploreUi>,
    },
    Split {
        result: Option<SplitRuntime>,
    },
    Train {
        run: Option<TrainRuntime>,
        /// The augmentation preview.
        preview: Option<AugPreview>,
    },
    Evaluate {
        view: Option<cells::EvalRuntime>,
    },
    Compare {
        view: Option<cells::CompareRuntime>,
    },
    Predict {
        view: Option<Loading<cells::PredictView>>,
    },
    Embedding {
        map: Option<cells::EmbeddingRuntime>,
    },
    Cluster {
        job: Option<cells::ClusterRuntime>,
    },
}

/// Typed access to one part of a [`CellRuntime`] kind: get, get mut, set, take, and every
/// cell's (in cell-id order, which is the order cells were added).
macro_rules! part {
    ($variant:ident . $field:ident : $ty:ty, empty $empty:expr,
     $get:ident, $get_mut:ident, $set:ident, $take:ident, $all:ident, $all_mut:ident
     $(, $or_insert_with:ident)?) => {
        pub fn $get(&self, id: u64) -> Option<&$ty> {
            match self.cells.get(&id) {
                Some(CellRuntime::$variant { $field, .. }) => $field.as_ref(),
                _ => None,
            }
        }

        pub fn $get_mut(&mut self, id: u64) -> Option<&mut $ty> {
            match self.cells.get_mut(&id) {
                Some(CellRuntime::$variant { $field, .. }) => $field.as_mut(),
                _ => None,
            }
        }

        pub fn $set(&mut self, id: u64, value: $ty) -> &mut $ty {
            let cell = self.cells.entry(id).or_insert_with(|| $empty);
            if !matches!(cell, CellRuntime::$variant { .. }) {
                *cell = $empty;
            }
            match cell {
                CellRuntime::$variant { $field, .. } => $field.insert(value),
                _ => unreachable!("the entry was made this kind above"),
            }
        }

        $(
            pub fn $or_insert_with(&mut self, id: u64, make: impl FnOnce() -> $ty) -> &mut $ty {
                if self.$get(id).is_none() {
                    self.$set(id, make());
                }
                self.$get_mut(id).expect("set above")
            }
        )?

        pub fn $take(&mut self, id: u64) -> Option<$ty> {
            match self.cells.get_mut(&id) {
                Some(CellRuntime::$variant { $field, .. }) => $field.take(),
                _ => None,
            }
        }

        pub fn $all(&self) -> impl Iterator<Item = (u64, &$ty)> {
            self.cells.iter().filter_map(|(id, c)| match c {
                CellRuntime::$variant { $field: Some(v), .. } => Some((*id, v)),
                _ => None,
            })
        }

        pub fn $all_mut(&mut self) -> impl Iterator<Item = (u64, &mut $ty)> {
            self.cells.iter_mut().filter_map(|(id, c)| match c {
                CellRuntime::$variant { $field: Some(v), .. } => Some((*id, v)),
                _ => None,
            })
        }
    };
}

/// Everything not persisted.
pub struct Runtime {
    /// Each cell's state, by cell id.
    cells: BTreeMap<u64, CellRuntime>,
    pub thumbs: ThumbCache,
    /// The one owner of burn/tensor work.
    pub compute: crate::ui::compute::ComputeWorker,
    pub log: Vec<(Instant, bool, String)>,
    pub toasts: Vec<(Instant, bool, String)>,
    /// Run folder names, run states and cluster profiles, read from disk in the background
    /// at most every few seconds.
    run_ids: DiskListing<PathBuf, Vec<String>>,
    cv_ids: DiskListing<PathBuf, Vec<String>>,
    profiles: DiskListing<(), crate::cluster::Profiles>,
    run_states: HashMap<PathBuf, DiskListing<PathBuf, Option<crate::runs::RunState>>>,
    /// To wake the frame when background readings arrive.
    ctx: egui::Context,
    last_generation: u64,
    /// Messages from background work that has no cell of its own (exports).
    notes_tx: mpsc::Sender<(bool, String)>,
    notes_rx: mpsc::Receiver<(bool, String)>,
}

/// How long a listing read from disk is shown before it is read again.
const DISK_LISTING_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Runtime {
    pub fn new(ctx: &egui::Context) -> Self {
        let (notes_tx, notes_rx) = mpsc::channel();
        Self {
            cells: BTreeMap::new(),
            thumbs: ThumbCache::new(ctx, 2),
            compute: crate::ui::compute::ComputeWorker::start(),
            log: Vec::new(),
            toasts: Vec::new(),
            run_ids: DiskListing::default(),
            cv_ids: DiskListing::default(),
            profiles: DiskListing::default(),
            run_states: HashMap::new(),
            ctx: ctx.clone(),
            last_generation: 0,
            notes_tx,
            notes_rx,
        }
    }

    part!(Dataset.load: DatasetRuntime, empty CellRuntime::Dataset { load: None, csv_columns: None },
        dataset, dataset_mut, set_dataset, take_dataset, datasets, datasets_mut);
    part!(Dataset.csv_columns: cells::CsvColumns, empty CellRuntime::Dataset { load: None, csv_columns: None },
        csv_columns, csv_columns_mut, set_csv_columns, take_csv_columns, all_csv_columns, all_csv_columns_mut);
    part!(Explore.ui: cells::ExploreUi, empty CellRuntime::Explore { ui: None },
        explore_ui, explore_ui_mut, set_explore_ui, take_explore_ui, explore_uis, explore_uis_mut,
        explore_ui_or_insert_with);
    part!(Split.result: SplitRuntime, empty CellRuntime::Split { result: None },
        split, split_mut, set_split, take_split, splits, splits_mut);
    part!(Train.run: TrainRuntime, empty CellRuntime::Train { run: None, preview: None },
        train, train_mut, set_train, take_train, trains, trains_mut);
    part!(Train.preview: AugPreview, empty CellRuntime::Train { run: None, preview: None },
        aug_preview, aug_preview_mut, set_aug_preview, take_aug_preview, aug_previews, aug_previews_mut,
        aug_preview_or_insert_with);
    part!(Evaluate.view: cells::EvalRuntime, empty CellRuntime::Evaluate { view: None },
        eval, eval_mut, set_eval, take_eval, evals, evals_mut);
    part!(Compare.view: cells::CompareRuntime, empty CellRuntime::Compare { view: None },
        compare, compare_mut, set_compare, take_compare, compares, compares_mut,
        compare_or_insert_with);
    part!(Predict.view: Loading<cells::PredictView>, empty CellRuntime::Predict { view: None },
        predict, predict_mut, set_predict, take_predict, predicts, predicts_mut);
    part!(Embedding.map: cells::EmbeddingRuntime, empty CellRuntime::Embedding { map: None },
        embedding, embedding_mut, set_embedding, take_embedding, embeddings, embeddings_mut);
    part!(Cluster.job: cells::ClusterRuntime, empty CellRuntime::Cluster { job: None },
        cluster, cluster_mut, set_cluster, take_cluster, clusters, clusters_mut);

    /// Every Evaluate cell shows its run again (a run finished or was imported).
    pub fn refresh_evaluations(&mut self) {
        for c in self.cells.values_mut() {
            if let CellRuntime::Evaluate { view } = c {
                *view = None;
            }
        }
    }

    /// Every Evaluate and Compare cell reloads what it shows, and the runs listing is read
    /// again (a run finished or was imported).
    pub fn refresh_runs(&mut self) {
        self.run_ids.invalidate();
        self.cv_ids.invalidate();
        self.run_states
            .values_mut()
            .for_each(DiskListing::invalidate);
        self.refresh_evaluations();
        self.compares_mut().for_each(|(_, c)| c.stale = true);
    }

    /// Messages from background work without a cell of its own, since the last call.
    pub fn take_notes(&mut self) -> Vec<(bool, String)> {
        self.notes_rx.try_iter().collect()
    }

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

    /// Drops everything a removed cell held.
    pub fn forget(&mut self, id: u64) {
        self.cells.remove(&id);
    }

    /// A new generation number for a result about to be computed.
    pub fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    /// Run folder names under `dir` (see [`crate::runs::view::list_runs`]), as last read.
    pub fn run_ids(&mut self, dir: &Path) -> Vec<String> {
        self.run_ids.get(&self.ctx, &dir.to_owned(), |d| {
            crate::runs::view::list_runs(d)
        })
    }

    /// Cross-validation summaries under `dir` (see
    /// [`crate::runs::view::list_cross_validations`]), as last read.
    pub fn cross_validation_ids(&mut self, dir: &Path) -> Vec<String> {
        self.cv_ids.get(&self.ctx, &dir.to_owned(), |d| {
            crate::runs::view::list_cross_validations(d)
        })
    }

    /// The state of the run in folder `run` (`None` when it has no readable status, or before
    /// the first reading), as last read.
    pub fn run_state(&mut self, run: &Path) -> Option<crate::runs::RunState> {
        let ctx = self.ctx.clone();
        self.run_states
            .entry(run.to_owned())
            .or_default()
            .get(&ctx, &run.to_owned(), |r| {
                crate::runs::read_status(r).ok().map(|s| s.state)
            })
    }

    /// The cluster profiles of clusters.toml, as last read.
    pub fn profiles(&mut self) -> crate::cluster::Profiles {
        self.profiles.get(&self.ctx, &(), |()| {
            crate::cluster::Profiles::load_default().unwrap_or_default()
        })
    }

    /// True while a listing is being read from disk.
    pub fn reading_disk(&self) -> bool {
        self.run_ids.busy()
            || self.cv_ids.busy()
            || self.profiles.busy()
            || self.run_states.values().any(DiskListing::busy)
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
