//! Once per frame, before drawing: every background channel is drained here, whatever is
//! collapsed, and the Run-all queue advances when nothing runs.

use eframe::egui;

use crate::train::TrainEvent;
use crate::ui::cells::{self, Loading};
use crate::workbook::CellKind;

use super::WorkbenchApp;

impl WorkbenchApp {
    pub(super) fn poll_background(&mut self) {
        self.notebook.rt.thumbs.poll();
        let mut notes = Vec::new();
        for (_, d) in self.notebook.rt.datasets_mut() {
            if let Some(Err(e)) = d.data.poll() {
                notes.push((true, format!("dataset: {}", cells::in_cell_words(&e))));
            }
            if let Some((_, p)) = &mut d.preview {
                p.poll();
            }
        }
        for (_, s) in self.notebook.rt.splits_mut() {
            if let Some(Err(e)) = s.data.poll() {
                notes.push((true, format!("split: {e}")));
            }
        }
        for (_, c) in self.notebook.rt.all_csv_columns_mut() {
            c.columns.poll();
        }
        for (_, m) in self.notebook.rt.embeddings_mut() {
            if let Some(Err(e)) = m.poll() {
                notes.push((true, format!("embedding: {e}")));
            }
        }
        for (_, p) in self.notebook.rt.predicts_mut() {
            match p.poll() {
                Some(Err(e)) => notes.push((true, format!("predict: {e}"))),
                Some(Ok(())) => notes.push((false, "prediction finished".to_owned())),
                None => {}
            }
            if let Loading::Ready(view) = p
                && let Some(inspected) = &mut view.inspected
            {
                inspected.poll();
            }
        }
        let mut finished_runs = Vec::new();
        for (id, t) in self.notebook.rt.trains_mut() {
            if let Some(rx) = &t.rx {
                for e in rx.try_iter() {
                    if let TrainEvent::Warning { message } | TrainEvent::Info { message } = &e {
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
                        finished_runs.push((id, run.clone()));
                    }
                    Err(e) => notes.push((true, format!("training failed: {e}"))),
                }
                t.finished = Some(r);
                t.done_rx = None;
            }
        }
        for (id, run) in finished_runs {
            if let Some(i) = self.notebook.workbook.position(id)
                && let CellKind::Train { run: r, .. } = &mut self.notebook.workbook.cells[i].kind
            {
                *r = Some(run);
            }
            // Evaluate cells that follow this run refresh.
            self.notebook.rt.refresh_runs();
            self.notebook.touch();
        }
        // Cluster jobs report here, every frame, whether their cell is drawn or collapsed.
        let mut submitted = Vec::new();
        for (id, rt) in self.notebook.rt.clusters_mut() {
            for m in rt.rx.try_iter() {
                match m {
                    cells::ClusterMsg::Submitted(j) => {
                        submitted.push((id, j.clone()));
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
            if let Some(i) = self.notebook.workbook.position(id)
                && let CellKind::Cluster { job, .. } = &mut self.notebook.workbook.cells[i].kind
            {
                *job = Some(j);
                self.notebook.touch();
            }
        }
        for (_, c) in self.notebook.rt.compares_mut() {
            if let Some(Err(err)) = c.loaded.poll() {
                notes.push((true, format!("compare: {err}")));
            }
        }
        for (_, e) in self.notebook.rt.evals_mut() {
            if let Some(Err(err)) = e.data.poll() {
                notes.push((true, format!("evaluate: {err}")));
            }
            if let Some(inspected) = &mut e.inspected {
                inspected.poll();
            }
        }
        notes.extend(self.notebook.rt.take_notes());
        // Queued cells (Run all, or the inputs of a cell) stop at the first failure.
        if notes.iter().any(|n| n.0) {
            self.run_queue.clear();
        }
        for (error, text) in notes {
            self.notebook.rt.note(error, text);
        }
    }

    /// Starts the next queued cell once nothing is running.
    pub(super) fn advance_queue(&mut self, ctx: &egui::Context) {
        if self.run_queue.is_empty() || self.busy() {
            return;
        }
        if let Some(id) = self.run_queue.pop_front() {
            cells::run_cell(&mut self.notebook, ctx, id);
        }
        ctx.request_repaint();
    }

    /// True while background work of any cell runs.
    pub fn busy(&self) -> bool {
        self.notebook.rt.reading_disk()
            || self
                .notebook
                .rt
                .datasets()
                .any(|(_, d)| matches!(d.data, Loading::Busy(_)))
            || self
                .notebook
                .rt
                .splits()
                .any(|(_, s)| matches!(s.data, Loading::Busy(_)))
            || self.notebook.rt.trains().any(|(_, t)| t.is_running())
            || self.notebook.rt.evals().any(|(_, e)| {
                matches!(e.data, Loading::Busy(_))
                    || e.inspected.as_ref().is_some_and(cells::Inspected::busy)
            })
            || self.notebook.rt.predicts().any(|(_, p)| match p {
                Loading::Busy(_) => true,
                Loading::Ready(v) => v.inspected.as_ref().is_some_and(cells::Inspected::busy),
                _ => false,
            })
            || self.notebook.rt.clusters().any(|(_, c)| c.active)
            || self
                .notebook
                .rt
                .compares()
                .any(|(_, c)| matches!(c.loaded, Loading::Busy(_)))
    }

    /// True when no background work is running or queued.
    pub fn settled(&self) -> bool {
        self.frames > 10 && self.run_queue.is_empty() && !self.busy()
    }
}
