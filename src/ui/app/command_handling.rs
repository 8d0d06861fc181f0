//! Intents from the UI, applied once per frame after drawing: draw code never changes the
//! notebook while it iterates over it.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use web_time::Instant;

use eframe::egui;

use crate::dataset::OpenOptions;
use crate::ui::cells;
use crate::workbook::{CellKind, stored_path};

use super::{Command, WorkbenchApp};

impl WorkbenchApp {
    /// The demo workbook's title and first note describe the demo data: when another dataset
    /// is opened in it while they are still as the demo wrote them, they are named after that
    /// dataset, so the header and the notebook's first words never describe data that is no
    /// longer loaded. A title or note the user wrote is kept.
    fn rename_untouched_demo(&mut self, opened: &Path) {
        let demo = crate::workbook::Workbook::demo("");
        let same = |a: &Path, b: &Path| std::path::absolute(a).ok() == std::path::absolute(b).ok();
        if same(opened, &crate::demo_dataset()) || self.notebook.workbook.title != demo.title {
            return;
        }
        let name = opened.file_name().map_or_else(
            || opened.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let demo_note = demo.cells.iter().find_map(|c| match &c.kind {
            CellKind::Note { text } => Some(text.clone()),
            _ => None,
        });
        for cell in &mut self.notebook.workbook.cells {
            if let CellKind::Note { text } = &mut cell.kind
                && Some(&*text) == demo_note.as_ref()
            {
                *text = format!("# {name}");
            }
        }
        self.notebook.workbook.title = name;
    }

    /// Imports run folders into the notebook's runs folder (`import` gets its path) and
    /// refreshes the cells that list runs.
    pub(super) fn import_runs(
        &mut self,
        import: impl FnOnce(&Path) -> anyhow::Result<Vec<String>>,
    ) {
        match import(&self.notebook.runs_dir()) {
            Ok(ids) => {
                self.notebook.rt.refresh_runs();
                self.notebook.rt.note(
                    false,
                    format!(
                        "opened {} run(s): {}; Evaluate and Compare cells show them",
                        ids.len(),
                        ids.join(", ")
                    ),
                );
            }
            Err(e) => self
                .notebook
                .rt
                .note(true, format!("runs not imported: {e:#}")),
        }
    }

    /// Takes in what the page asks (dropped files, run zips, a notebook file).
    #[cfg(target_arch = "wasm32")]
    pub(super) fn page_request(&mut self, r: crate::ui::web::PageRequest) {
        use crate::ui::web::PageRequest;
        match r {
            PageRequest::OpenDataset(path) => self.notebook.push(Command::OpenDataset(path)),
            PageRequest::Note(error, text) => self.notebook.rt.note(error, text),
            PageRequest::ImportRuns(from) => {
                self.import_runs(|runs| crate::runs::archive::import_folders(&from, runs))
            }
            PageRequest::OpenWorkbook(path) => match crate::workbook::Workbook::load(&path) {
                Ok(w) => {
                    for id in self
                        .notebook
                        .workbook
                        .cells
                        .iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                    {
                        self.notebook.rt.forget(id);
                    }
                    self.notebook.workbook = w;
                    self.notebook.touch();
                    self.notebook
                        .rt
                        .note(false, format!("opened the notebook {}", path.display()));
                }
                Err(e) => self.notebook.rt.note(true, format!("{e:#}")),
            },
        }
    }

    /// Opens what a file dialog picks; says so (as an error notification) when no dialog
    /// can be shown instead of doing nothing.
    pub(super) fn pick_dataset(&mut self, dialog: impl FnOnce() -> Option<PathBuf>) {
        match crate::ui::widgets::pick(dialog) {
            crate::ui::widgets::Picked::Path(p) => self.notebook.push(Command::OpenDataset(p)),
            crate::ui::widgets::Picked::Cancelled => {}
            crate::ui::widgets::Picked::Unavailable => {
                self.notebook.rt.note(true, crate::ui::widgets::NO_DIALOG)
            }
        }
    }

    /// Applies queued commands (once per frame).
    pub fn apply_commands(&mut self, ctx: &egui::Context) {
        let commands = std::mem::take(&mut self.notebook.commands);
        for c in commands {
            match c {
                Command::AddCell { after, kind } => {
                    self.notebook.workbook.insert_after(after, kind);
                    self.notebook.touch();
                }
                Command::RemoveCell(id) => {
                    if let Some(t) = self.notebook.rt.train(id) {
                        t.cancel.store(true, Ordering::Relaxed);
                    }
                    self.notebook.rt.forget(id);
                    self.run_queue.retain(|&q| q != id);
                    self.notebook.workbook.remove(id);
                    self.notebook.touch();
                }
                Command::MoveCell(id, d) => {
                    self.notebook.workbook.move_cell(id, d);
                    self.notebook.touch();
                }
                Command::ToggleCollapse(id) => {
                    if let Some(i) = self.notebook.workbook.position(id) {
                        self.notebook.workbook.cells[i].collapsed ^= true;
                        self.notebook.touch();
                    }
                }
                Command::RunCell(id) => {
                    // Inputs that are out of date run first (queued), then the cell.
                    let plan = cells::freshness::plan_run(&self.notebook, id);
                    if plan.len() == 1 {
                        cells::run_cell(&mut self.notebook, ctx, id);
                    } else {
                        let names: Vec<String> = plan[..plan.len() - 1]
                            .iter()
                            .map(|&c| cells::freshness::cell_name(&self.notebook, c))
                            .collect();
                        self.notebook.rt.note(
                            false,
                            format!("running {} first: out of date", names.join(" and ")),
                        );
                        for c in plan.into_iter().rev() {
                            self.run_queue.retain(|&q| q != c);
                            self.run_queue.push_front(c);
                        }
                    }
                }
                Command::ResumeTrain(id) => cells::resume_training(&mut self.notebook, ctx, id),
                Command::RunAll => {
                    self.run_queue = self.notebook.workbook.cells.iter().map(|c| c.id).collect();
                }
                Command::StopTrain(id) => {
                    if let Some(t) = self.notebook.rt.train(id) {
                        t.cancel.store(true, Ordering::Relaxed);
                        self.notebook
                            .rt
                            .note(false, "stopping the training run after the current batch");
                    }
                }
                Command::OpenDataset(path) => {
                    let base = self.notebook.base_dir();
                    let stored = stored_path(&path, &base);
                    let existing = self
                        .notebook
                        .workbook
                        .cells
                        .iter()
                        .find(|c| matches!(c.kind, CellKind::Dataset { .. }))
                        .map(|c| c.id);
                    let id = match existing {
                        Some(id) => {
                            let i = self.notebook.workbook.position(id).expect("found above");
                            self.notebook.workbook.cells[i].kind = CellKind::Dataset {
                                path: stored,
                                options: OpenOptions::default(),
                            };
                            id
                        }
                        None => {
                            let id = self.notebook.workbook.insert_after(
                                None,
                                CellKind::Dataset {
                                    path: stored,
                                    options: OpenOptions::default(),
                                },
                            );
                            self.notebook
                                .workbook
                                .insert_after(Some(id), CellKind::Explore {});
                            id
                        }
                    };
                    self.rename_untouched_demo(&path);
                    self.notebook.rt.take_dataset(id);
                    cells::run_cell(&mut self.notebook, ctx, id);
                    self.notebook.touch();
                }
                Command::SaveWorkbook => {
                    self.save();
                    let text = format!("saved {}", self.notebook.workbook_path.display());
                    self.notebook
                        .rt
                        .toasts
                        .push((Instant::now(), false, text.clone()));
                    self.notebook.rt.note(false, text);
                }
                Command::Predict { cell, paths } => {
                    let base = self.notebook.base_dir();
                    let Some(i) = self.notebook.workbook.position(cell) else {
                        continue;
                    };
                    if let CellKind::Predict { input, .. } =
                        &mut self.notebook.workbook.cells[i].kind
                    {
                        let stored: Vec<String> =
                            paths.iter().map(|p| stored_path(p, &base)).collect();
                        *input = stored.join("\n");
                        self.notebook.touch();
                        self.notebook.rt.note(
                            false,
                            format!("predicting {} dropped file(s) or folder(s)", paths.len()),
                        );
                        cells::run_cell(&mut self.notebook, ctx, cell);
                    }
                }
                Command::FilterLabel { dataset, label } => {
                    if let Some(d) = self.notebook.rt.dataset_mut(dataset) {
                        d.filter.label = label;
                    }
                }
            }
        }
    }
}
