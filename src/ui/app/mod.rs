//! The application object: persisted state, the notebook and its runtime state, and the
//! frame loop. Split the way the frame runs:
//! - [`command_handling`]: intents from the UI ([`Command`]), applied once per frame after
//!   drawing;
//! - [`logic`]: draining every background channel once per frame, whatever is collapsed, and
//!   the Run-all queue;
//! - [`ui`]: the window's chrome (top bar, log, notifications, shortcuts, screenshots);
//! - [`bench`]: the scrolling benchmark driven by `CELLBENCH_BENCH_SCROLL`.
//!
//! Long work runs on background threads (or the compute worker) that report over channels and
//! call `request_repaint`.

mod bench;
pub mod command_handling;
pub mod logic;
mod ui;

pub use crate::ui::cells::{Command, Notebook};

use bench::{ScrollBench, peak_rss_mib};

use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use web_time::Instant;

use eframe::egui;

use crate::workbook::{CellKind, Workbook, stored_path};

use crate::ui::cells;
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

/// The workbench.
pub struct WorkbenchApp {
    pub state: AppState,
    /// The cells and their state (see [`Notebook`]).
    pub notebook: Notebook,
    /// Cells waiting to run after the work above them finishes (Run all).
    run_queue: std::collections::VecDeque<u64>,
    screenshot_to: Option<PathBuf>,
    screenshot_rx: Option<mpsc::Receiver<Arc<egui::ColorImage>>>,
    frames: u64,
    /// Run all was asked for at start and waits for the page to know where it computes
    /// (since when).
    run_all_waiting: Option<web_time::Instant>,
    /// `CELLBENCH_BENCH_SCROLL=<frames>`: scroll the first gallery that many frames, then print
    /// frame-time percentiles and peak memory and quit.
    scroll_bench: Option<ScrollBench>,
    map_bench: Option<cells::MapBench>,
}

/// `CELLBENCH_RUN_ALL` (desktop) or `?run=all` in the page's address (browser): run every
/// cell once the notebook is shown (demos, screenshots, end-to-end tests).
fn run_all_on_start() -> bool {
    #[cfg(not(target_arch = "wasm32"))]
    let asked = std::env::var_os("CELLBENCH_RUN_ALL").is_some();
    #[cfg(target_arch = "wasm32")]
    let asked = crate::ui::web::url_param("run").as_deref() == Some("all");
    asked
}

/// A file beside `path` that does not exist yet: `name.new.cellbook.toml`, then
/// `name.new-2.cellbook.toml`, …
fn unused_sibling(path: &std::path::Path) -> PathBuf {
    let name = path.file_name().map_or_else(
        || "workbook".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let stem = name
        .strip_suffix(".cellbook.toml")
        .unwrap_or(&name)
        .to_owned();
    (1..)
        .map(|k| {
            let tag = if k == 1 {
                "new".to_owned()
            } else {
                format!("new-{k}")
            };
            path.with_file_name(format!("{stem}.{tag}.cellbook.toml"))
        })
        .find(|p| !crate::fs::exists(p))
        .expect("an unused name")
}

/// Where the workbook lives when none was chosen.
pub fn default_workbook_path() -> PathBuf {
    #[cfg(target_arch = "wasm32")]
    let path = PathBuf::from(crate::ui::web::WORKBOOK);
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
            crate::ui::points::install(render_state);
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
        let mut path = workbook
            .or_else(|| std::env::var_os("CELLBENCH_WORKBOOK").map(PathBuf::from))
            .or_else(|| state.workbook_path.clone())
            .unwrap_or_else(default_workbook_path);
        // The next launch opens the same file (fixed, it opens as it was).
        state.workbook_path = Some(path.clone());
        let mut rt = cells::Runtime::new(ctx);
        let workbook = if crate::fs::exists(&path) {
            match Workbook::load(&path) {
                Ok(w) => w,
                Err(e) => {
                    // The file is left exactly as it is: this session saves beside it.
                    let aside = unused_sibling(&path);
                    rt.note(
                        true,
                        format!(
                            "{e:#}; the file is left as it is, and this session starts a new workbook saved to {}",
                            aside.display()
                        ),
                    );
                    path = aside;
                    Workbook::default()
                }
            }
        } else {
            let base = Workbook::base_dir(&path);
            Workbook::demo(&stored_path(&crate::demo_dataset(), &base))
        };
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
            notebook: Notebook::new(workbook, path, rt),
            run_queue: Default::default(),
            screenshot_to: std::env::var_os("CELLBENCH_SCREENSHOT").map(Into::into),
            screenshot_rx: None,
            frames: 0,
            run_all_waiting: None,
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
            app.notebook.commands.push(Command::OpenDataset(d));
        } else {
            // Datasets open at once (a scan, no training), so the gallery and counts show
            // without pressing Run.
            app.run_queue = app
                .notebook
                .workbook
                .cells
                .iter()
                .filter(|c| matches!(c.kind, CellKind::Dataset { .. }))
                .map(|c| c.id)
                .collect();
        }
        app
    }

    fn save(&mut self) {
        match self.notebook.workbook.save(&self.notebook.workbook_path) {
            Ok(()) => self.notebook.dirty_since = None,
            Err(e) => {
                self.notebook.rt.note(true, format!("{e:#}"));
                self.notebook.dirty_since = None;
            }
        }
    }

    /// Draws one frame (also used by tests through [`eframe::App::ui`]).
    pub fn frame(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        if self.frames == 1 && run_all_on_start() {
            self.run_all_waiting = Some(web_time::Instant::now());
        }
        if let Some(since) = self.run_all_waiting {
            // The browser answers whether it has WebGPU a few frames in; features started
            // before that would run on the CPU. A browser that never answers is not waited
            // for long.
            #[cfg(target_arch = "wasm32")]
            let known = crate::model::gpu::browser::answered();
            #[cfg(not(target_arch = "wasm32"))]
            let known = true;
            if known || since.elapsed() > std::time::Duration::from_secs(3) {
                self.run_all_waiting = None;
                self.notebook.push(Command::RunAll);
            } else {
                ctx.request_repaint();
            }
        }
        self.poll_background();
        self.shortcuts(&ctx);
        self.notebook.drop_targets.clear();
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        if self.state.show_log {
            self.log_panel(ui);
        }
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical()
                .auto_shrink(false)
                .show(ui, |ui| {
                    ui.add_space(4.0);
                    let ids: Vec<u64> = self.notebook.workbook.cells.iter().map(|c| c.id).collect();
                    for id in ids {
                        cells::cell_ui(&mut self.notebook, ui, id);
                        ui.add_space(10.0);
                    }
                    ui.horizontal(|ui| {
                        ui.menu_button("Add cell", |ui| {
                            for kind in CellKind::templates() {
                                if ui.button(kind.title()).clicked() {
                                    self.notebook.push(Command::AddCell { after: None, kind });
                                    ui.close();
                                }
                            }
                        });
                    });
                    ui.add_space(40.0);
                });
        });
        self.take_drops(&ctx);
        self.toasts(&ctx);
        self.apply_commands(&ctx);
        self.advance_queue(&ctx);
        if self
            .notebook
            .dirty_since
            .is_some_and(|t| t.elapsed().as_secs_f32() > 1.0)
        {
            self.save();
        } else if self.notebook.dirty_since.is_some() {
            ctx.request_repaint_after(std::time::Duration::from_millis(1100));
        }
        if self.notebook.rt.trains().any(|(_, t)| t.is_running()) {
            ctx.request_repaint_after(std::time::Duration::from_millis(200));
        }
        self.screenshot(&ctx);
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let start = Instant::now();
        let mut map_bench = self.map_bench.take();
        let benching = map_bench
            .as_mut()
            .is_some_and(|b| b.before_frame(&mut self.notebook));
        #[cfg(target_arch = "wasm32")]
        {
            if crate::ui::compute::run_deferred(std::time::Duration::from_millis(40)) {
                ui.ctx().request_repaint();
            }
            for r in crate::ui::web::take_requests() {
                self.page_request(r);
            }
        }
        #[cfg(target_arch = "wasm32")]
        let jobs_ms = start.elapsed().as_millis();
        self.frame(ui);
        // A page has one thread: say which part of a long frame was background work.
        #[cfg(target_arch = "wasm32")]
        if start.elapsed().as_millis() > 100 {
            log::warn!(
                "a frame held the page for {} ms ({jobs_ms} ms of background jobs)",
                start.elapsed().as_millis()
            );
        }
        #[cfg(target_arch = "wasm32")]
        {
            crate::ui::web::publish_status(&self.notebook.status());
            crate::ui::web::persist_workbook();
            crate::ui::web::set_runs_dir(self.notebook.runs_dir());
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
        if let Some(pos) = self
            .map_bench
            .as_ref()
            .and_then(|b| b.pointer(&self.notebook))
        {
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
        if self.notebook.dirty_since.is_some() {
            WorkbenchApp::save(self);
        }
    }
}
