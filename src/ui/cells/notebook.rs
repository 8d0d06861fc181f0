//! The notebook as its cells see it: the workbook and where it lives, every cell's state while
//! it is open ([`Runtime`]), and the intents ([`Command`]) the cells queue for the window
//! around them to apply after drawing. Cells draw and start work through it alone: they never
//! see the window (the layers go widgets → cells → app, never back).

use std::path::PathBuf;

use eframe::egui;
use web_time::Instant;

use crate::train::TrainEvent;
use crate::workbook::{CellKind, Workbook, resolve_path};

use super::runtime::{Loading, Runtime};

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
    /// Predict these files or folders with a Predict cell (dropped on it).
    Predict {
        cell: u64,
        paths: Vec<PathBuf>,
    },
    /// Filter the gallery of a dataset cell to one label (from a chart click).
    FilterLabel {
        dataset: u64,
        label: Option<String>,
    },
}

/// The notebook: its cells (the workbook), their state, and the intents they queued.
pub struct Notebook {
    pub workbook: Workbook,
    pub workbook_path: PathBuf,
    pub rt: Runtime,
    pub(crate) commands: Vec<Command>,
    /// Since when the workbook has changes not yet saved.
    pub(crate) dirty_since: Option<Instant>,
    /// The cells files can be dropped on this frame (Predict cells), with where they are.
    pub drop_targets: Vec<(u64, egui::Rect)>,
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
    /// Backbone features are being computed (a probe's, or a map's).
    pub extracting: bool,
    /// Errors reported so far.
    pub errors: Vec<String>,
    /// Where backbone features are computed (in the browser: WebGPU or the CPU, and why).
    pub compute: String,
}

impl Notebook {
    pub fn new(workbook: Workbook, workbook_path: PathBuf, rt: Runtime) -> Self {
        Self {
            workbook,
            workbook_path,
            rt,
            commands: Vec::new(),
            dirty_since: None,
            drop_targets: Vec::new(),
        }
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

    /// The notebook's state in numbers (see [`NotebookStatus`]).
    pub fn status(&self) -> NotebookStatus {
        let datasets = self
            .rt
            .datasets()
            .filter_map(|(_, d)| match &d.data {
                Loading::Ready(d) => Some((d.manifest.records.len(), d.report.labels.len())),
                _ => None,
            })
            .collect();
        let trainings = self
            .rt
            .trains()
            .map(|(_, t)| match &t.finished {
                None => "running".to_owned(),
                Some(Ok(_)) => "finished".to_owned(),
                Some(Err(e)) => format!("failed: {e}"),
            })
            .collect();
        let confusion_sides = self
            .rt
            .evals()
            .filter_map(|(_, e)| match &e.data {
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
        let maps = self
            .rt
            .embeddings()
            .filter_map(|(_, m)| m.data.ready().map(|r| r.map.coords.len()))
            .collect();
        let extracting = self
            .rt
            .embeddings()
            .any(|(_, m)| matches!(m.data, Loading::Busy(_)))
            || self.rt.trains().any(|(_, t)| {
                t.is_running()
                    && matches!(
                        t.events
                            .iter()
                            .rev()
                            .find(|e| matches!(e, TrainEvent::Progress { .. })),
                        Some(TrainEvent::Progress {
                            phase: crate::experiment::events::Phase::Features,
                            ..
                        })
                    )
            });
        NotebookStatus {
            datasets,
            trainings,
            confusion_sides,
            maps,
            extracting,
            errors,
            #[cfg(target_arch = "wasm32")]
            compute: crate::model::gpu::browser::describe(),
            #[cfg(not(target_arch = "wasm32"))]
            compute: String::new(),
        }
    }
}
