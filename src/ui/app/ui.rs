//! The window's chrome: the top bar, the log panel, notifications, keyboard shortcuts and
//! dropped files, and screenshots on request.

use std::path::Path;
use std::sync::mpsc;

use anyhow::Context as _;
use eframe::egui;

use crate::workbook::CellKind;

use super::{Command, WorkbenchApp};

impl WorkbenchApp {
    pub(super) fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("cellbench");
            ui.separator();
            // What is loaded now first, whatever the workbook is called.
            let datasets: Vec<String> = self
                .notebook.workbook
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
            if datasets.is_empty() {
                ui.label(egui::RichText::new("no dataset").strong());
            } else {
                ui.label(egui::RichText::new(datasets.join(", ")).strong())
                    .on_hover_text("The dataset(s) of this workbook");
            }
            // A title that only repeats the dataset's name is not written twice.
            let title = self.notebook.workbook.title.trim();
            if !title.is_empty() && !datasets.iter().any(|d| d == title) {
                ui.label(format!("· {title}"))
                    .on_hover_text("The workbook's title");
            }
            let file = self
                .notebook.workbook_path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            ui.label(egui::RichText::new(format!("· {file}")).weak())
                .on_hover_text(format!(
                    "Saved automatically after every change (Ctrl+S saves now): {}",
                    self.notebook.workbook_path.display()
                ));
            ui.separator();
            if crate::ui::widgets::DESKTOP && ui
                .button("Open dataset…")
                .on_hover_text("Open a dataset folder (C-NMC names or class folders). Ctrl+O. You can also drop a folder or CSV on the window.")
                .clicked()
            {
                self.pick_dataset(crate::ui::widgets::folder_dialog);
            }
            if crate::ui::widgets::DESKTOP && ui
                .button("Open CSV…")
                .on_hover_text("Open a CSV manifest: NIH ChestX-ray14, Kaggle retinopathy trainLabels.csv, or any CSV with path and label columns")
                .clicked()
            {
                self.pick_dataset(crate::ui::widgets::csv_dialog);
            }
            ui.menu_button("Add cell", |ui| {
                for kind in CellKind::templates() {
                    if ui.button(kind.title()).clicked() {
                        self.notebook.push(Command::AddCell { after: None, kind });
                        ui.close();
                    }
                }
            })
            .response
            .on_hover_text("Append a cell to the notebook");
            if ui.button("Run all").on_hover_text("Run every cell from top to bottom (F5)").clicked() {
                self.notebook.push(Command::RunAll);
            }
            if ui.button("Save").on_hover_text("Save the workbook now (Ctrl+S); it also saves itself after every change").clicked() {
                self.notebook.push(Command::SaveWorkbook);
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let label = if self.state.dark_mode { "Light theme" } else { "Dark theme" };
                if ui.button(label).on_hover_text("Switch between dark and light themes").clicked() {
                    self.state.dark_mode ^= true;
                    ui.ctx().set_visuals(if self.state.dark_mode { egui::Visuals::dark() } else { egui::Visuals::light() });
                }
                let errors = self.notebook.rt.log.iter().filter(|l| l.1).count();
                let text = if errors > 0 { format!("Log ({errors} errors)") } else { "Log".to_owned() };
                ui.toggle_value(&mut self.state.show_log, text).on_hover_text("Show messages and errors of background work");
            });
        });
    }

    pub(super) fn log_panel(&mut self, ui: &mut egui::Ui) {
        egui::Panel::bottom("log")
            .resizable(true)
            .default_size(140.0)
            .show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.strong("Log");
                    if ui.small_button("Clear").clicked() {
                        self.notebook.rt.log.clear();
                    }
                });
                egui::ScrollArea::vertical()
                    .stick_to_bottom(true)
                    .show(ui, |ui| {
                        for (_, error, text) in &self.notebook.rt.log {
                            if *error {
                                ui.colored_label(ui.visuals().error_fg_color, text);
                            } else {
                                ui.label(text);
                            }
                        }
                    });
            });
    }

    pub(super) fn toasts(&mut self, ctx: &egui::Context) {
        self.notebook
            .rt
            .toasts
            .retain(|t| t.0.elapsed().as_secs_f32() < 6.0);
        if self.notebook.rt.toasts.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::RIGHT_BOTTOM, [-12.0, -12.0])
            .show(ctx, |ui| {
                for (_, error, text) in &self.notebook.rt.toasts {
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

    pub(super) fn shortcuts(&mut self, ctx: &egui::Context) {
        let (save, open, run_all) = ctx.input_mut(|i| {
            (
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::S),
                i.consume_key(egui::Modifiers::COMMAND, egui::Key::O),
                i.consume_key(egui::Modifiers::NONE, egui::Key::F5),
            )
        });
        if save {
            self.notebook.push(Command::SaveWorkbook);
        }
        if run_all {
            self.notebook.push(Command::RunAll);
        }
        if open {
            self.pick_dataset(crate::ui::widgets::folder_dialog);
        }
    }

    /// Files dropped on the window, after the cells are drawn: a zip of run folders joins the
    /// runs; images or a folder dropped on a Predict cell (or images dropped anywhere, when
    /// the notebook has a Predict cell) are predicted by it; anything else opens as the
    /// dataset.
    pub(super) fn take_drops(&mut self, ctx: &egui::Context) {
        let (paths, pointer): (Vec<std::path::PathBuf>, _) = ctx.input(|i| {
            (
                i.raw
                    .dropped_files
                    .iter()
                    .map(|f| f.path().to_owned())
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect(),
                i.pointer.latest_pos(),
            )
        });
        let Some(first) = paths.first().cloned() else {
            return;
        };
        let all_images = paths.iter().all(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(crate::dataset::naming::is_image_extension)
        });
        let under_pointer = pointer.and_then(|pos| {
            self.notebook
                .drop_targets
                .iter()
                .find(|(_, rect)| rect.contains(pos))
                .map(|(id, _)| *id)
        });
        // In the browser the page takes dropped files in (they have no path on disk).
        let predict_cell = under_pointer
            .or_else(|| {
                all_images
                    .then(|| self.notebook.drop_targets.first().map(|(id, _)| *id))
                    .flatten()
            })
            .filter(|_| !cfg!(target_arch = "wasm32"));
        if let Some(cell) = predict_cell.filter(|_| !paths.iter().any(|p| is_zip(p))) {
            self.notebook.push(Command::Predict { cell, paths });
        } else if is_zip(&first) {
            // A zip of run folders (from the browser or a cluster job) joins the notebook's runs.
            self.import_runs(|runs| {
                let bytes = crate::fs::read(&first)
                    .with_context(|| format!("reading {}", first.display()))?;
                crate::runs::archive::import_zip(&bytes, runs)
                    .with_context(|| format!("{}", first.display()))
            });
        } else {
            self.notebook.push(Command::OpenDataset(first));
        }
    }

    pub(super) fn screenshot(&mut self, ctx: &egui::Context) {
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
}

fn is_zip(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
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
