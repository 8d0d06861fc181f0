//! The application object: state, background loading, drawing.

use std::path::PathBuf;
use std::sync::mpsc;

use eframe::egui;

use crate::explore::{ExploreReport, Table};

/// Result of opening a dataset on a background thread.
type Loaded = Result<ExploreReport, String>;

/// What the dataset area shows.
enum DatasetState {
    Loading(mpsc::Receiver<Loaded>),
    Ready(Box<ExploreReport>, Vec<Table>),
    Failed(String),
}

/// The workbench.
pub struct WorkbenchApp {
    dataset: PathBuf,
    state: DatasetState,
    /// `CELLBENCH_SCREENSHOT=<png>`: save a screenshot once the dataset is shown, then quit.
    screenshot_to: Option<PathBuf>,
    screenshot_rx: Option<mpsc::Receiver<std::sync::Arc<egui::ColorImage>>>,
    frames_ready: u32,
}

impl WorkbenchApp {
    pub fn new(cc: &eframe::CreationContext<'_>, dataset: PathBuf) -> Self {
        let state = Self::load(&cc.egui_ctx, dataset.clone());
        Self {
            dataset,
            state,
            screenshot_to: std::env::var_os("CELLBENCH_SCREENSHOT").map(Into::into),
            screenshot_rx: None,
            frames_ready: 0,
        }
    }

    fn load(ctx: &egui::Context, dataset: PathBuf) -> DatasetState {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("open-dataset".into())
            .spawn(move || {
                let result = crate::dataset::open(&dataset, &Default::default())
                    .map_err(|e| format!("{e:#}"))
                    .and_then(|m| crate::explore::explore(&m).map_err(|e| format!("{e:#}")));
                tx.send(result).ok();
                ctx.request_repaint();
            })
            .map_or_else(
                |e| DatasetState::Failed(e.to_string()),
                |_| DatasetState::Loading(rx),
            )
    }

    fn open(&mut self, ctx: &egui::Context, dataset: PathBuf) {
        self.state = Self::load(ctx, dataset.clone());
        self.dataset = dataset;
    }

    fn poll(&mut self) {
        if let DatasetState::Loading(rx) = &self.state {
            match rx.try_recv() {
                Ok(Ok(report)) => {
                    let tables = report.tables();
                    self.state = DatasetState::Ready(Box::new(report), tables);
                }
                Ok(Err(err)) => self.state = DatasetState::Failed(err),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.state = DatasetState::Failed("the loader stopped unexpectedly".into());
                }
            }
        }
    }

    fn screenshot(&mut self, ctx: &egui::Context) {
        let Some(path) = self.screenshot_to.clone() else {
            return;
        };
        if let Some(rx) = &self.screenshot_rx {
            if let Ok(image) = rx.try_recv() {
                let [w, h] = image.size;
                let rgba: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
                if let Some(img) = image::RgbaImage::from_raw(w as u32, h as u32, rgba) {
                    if let Err(err) = img.save(&path) {
                        log::error!("saving screenshot {}: {err}", path.display());
                    }
                }
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
            }
        } else if matches!(
            self.state,
            DatasetState::Ready(..) | DatasetState::Failed(_)
        ) {
            self.frames_ready += 1;
            if self.frames_ready == 3 {
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
        }
        ctx.request_repaint();
    }
}

impl eframe::App for WorkbenchApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll();
        let dropped = ctx.input(|i| i.raw.dropped_files.first().map(|f| f.path().to_owned()));
        if let Some(path) = dropped {
            self.open(&ctx, path);
        }

        egui::Panel::top("top").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("cellbench");
                ui.separator();
                ui.label(egui::RichText::new(self.dataset.display().to_string()).monospace())
                    .on_hover_text(
                        "The open dataset. Drop a folder or CSV on the window to open another.",
                    );
                if ui
                    .button("Open folder…")
                    .on_hover_text("Open a dataset folder (C-NMC names or class folders)")
                    .clicked()
                {
                    if let Some(dir) = rfd::FileDialog::new().pick_folder() {
                        self.open(&ctx, dir);
                    }
                }
                if ui
                    .button("Open CSV…")
                    .on_hover_text(
                        "Open a CSV manifest (NIH ChestX-ray14, Kaggle retinopathy, generic)",
                    )
                    .clicked()
                {
                    if let Some(file) = rfd::FileDialog::new()
                        .add_filter("CSV", &["csv"])
                        .pick_file()
                    {
                        self.open(&ctx, file);
                    }
                }
            });
        });

        egui::CentralPanel::default().show(ui, |ui| match &self.state {
            DatasetState::Loading(_) => {
                ui.horizontal(|ui| {
                    ui.spinner();
                    ui.label("Scanning the dataset…");
                });
            }
            DatasetState::Failed(err) => {
                ui.colored_label(
                    ui.visuals().error_fg_color,
                    format!("Could not open the dataset: {err}"),
                );
            }
            DatasetState::Ready(_report, tables) => {
                egui::ScrollArea::vertical().show(ui, |ui| {
                    for (i, table) in tables.iter().enumerate() {
                        table_ui(ui, i, table);
                        ui.add_space(12.0);
                    }
                });
            }
        });
        self.screenshot(&ctx);
    }
}

/// Draws a [`Table`] as a striped grid under its title.
fn table_ui(ui: &mut egui::Ui, id: usize, table: &Table) {
    ui.label(egui::RichText::new(&table.title).strong().size(16.0));
    egui::Grid::new(("table", id))
        .striped(true)
        .spacing([18.0, 4.0])
        .show(ui, |ui| {
            for h in &table.headers {
                ui.label(egui::RichText::new(h).strong());
            }
            ui.end_row();
            for row in &table.rows {
                for cell in row {
                    ui.label(cell);
                }
                ui.end_row();
            }
        });
}
