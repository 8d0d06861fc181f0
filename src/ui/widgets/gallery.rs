//! The virtualised thumbnail gallery: only the rows on screen are laid out and decoded.

use std::path::PathBuf;

use eframe::egui;

use super::*;
use crate::ui::thumbs::{THUMB_SIDE, Thumb, ThumbCache};

/// One tile of a [`gallery`]: an image, its caption, whether it is selected, and the
/// probabilities to draw over its lower edge (class index and probability, largest first: the
/// first is the prediction), with what its caption shows on hover.
#[derive(Clone)]
pub struct Tile {
    pub path: PathBuf,
    pub caption: String,
    pub selected: bool,
    pub top: Vec<(usize, f32)>,
    pub hover: Option<String>,
}

impl From<(PathBuf, String, bool)> for Tile {
    fn from((path, caption, selected): (PathBuf, String, bool)) -> Self {
        Self {
            path,
            caption,
            selected,
            top: Vec::new(),
            hover: None,
        }
    }
}

/// A grid of thumbnails that only lays out (and decodes) the rows on screen.
/// `item(k)` gives tile `k` (a path, caption and selection, or a whole [`Tile`]).
pub fn gallery<T: Into<Tile>>(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    thumbs: &mut ThumbCache,
    count: usize,
    item: impl Fn(usize) -> T,
    on_click: &mut dyn FnMut(usize),
) {
    let tile = THUMB_SIDE as f32;
    let cols = columns_for(ui.available_width());
    let rows = count.div_ceil(cols);
    // A tile, two lines of caption and the spacing between them: rows are never cut.
    let caption_height = ui.text_style_height(&egui::TextStyle::Small);
    let row_height = tile + 2.0 * caption_height + 3.0 * ui.spacing().item_spacing.y + 4.0;
    egui::ScrollArea::vertical()
        .id_salt(id)
        .max_height(ui.available_height().clamp(140.0, 380.0))
        .auto_shrink([false, true])
        .show_rows(ui, row_height, rows, |ui, range| {
            for row in range {
                ui.horizontal(|ui| {
                    for col in 0..cols {
                        let k = row * cols + col;
                        if k >= count {
                            break;
                        }
                        let Tile {
                            path,
                            caption,
                            selected,
                            top,
                            hover,
                        } = item(k).into();
                        let caption_full = hover.unwrap_or_else(|| caption.clone());
                        ui.vertical(|ui| {
                            ui.set_width(tile + 4.0);
                            let (rect, response) = ui
                                .allocate_exact_size(egui::vec2(tile, tile), egui::Sense::click());
                            match thumbs.get(&path) {
                                Thumb::Ready(tex) => {
                                    let size = tex.size_vec2();
                                    let scale = tile / size.x.max(size.y);
                                    let r =
                                        egui::Rect::from_center_size(rect.center(), size * scale);
                                    ui.painter().image(
                                        tex.id(),
                                        r,
                                        egui::Rect::from_min_max(
                                            egui::pos2(0.0, 0.0),
                                            egui::pos2(1.0, 1.0),
                                        ),
                                        egui::Color32::WHITE,
                                    );
                                }
                                Thumb::Pending => {
                                    ui.painter().rect_filled(
                                        rect,
                                        4.0,
                                        ui.visuals().faint_bg_color,
                                    );
                                }
                                Thumb::Unreadable => {
                                    ui.painter().rect_filled(
                                        rect,
                                        4.0,
                                        ui.visuals().faint_bg_color,
                                    );
                                    ui.painter().text(
                                        rect.center(),
                                        egui::Align2::CENTER_CENTER,
                                        "unreadable",
                                        egui::FontId::proportional(11.0),
                                        ui.visuals().error_fg_color,
                                    );
                                }
                            }
                            probability_strip(ui, rect, &top);
                            if selected {
                                ui.painter().rect_stroke(
                                    rect,
                                    4.0,
                                    egui::Stroke::new(2.5, ui.visuals().selection.stroke.color),
                                    egui::StrokeKind::Outside,
                                );
                            }
                            if response.clicked() {
                                on_click(k);
                            }
                            // Named by its file for screen readers (and tests).
                            let name = path
                                .file_name()
                                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                            response.widget_info(|| {
                                egui::WidgetInfo::labeled(egui::Role::Button, true, &name)
                            });
                            response.on_hover_text(path.display().to_string());
                            ui.allocate_ui(egui::vec2(tile + 4.0, 2.0 * caption_height), |ui| {
                                ui.add(
                                    egui::Label::new(egui::RichText::new(caption).small()).wrap(),
                                )
                                .on_hover_text(caption_full);
                            });
                        });
                    }
                });
            }
        });
}

/// Bars of the top probabilities across the lower edge of a tile, one per class in the class's
/// palette colour, as long as the probability.
fn probability_strip(ui: &egui::Ui, tile: egui::Rect, top: &[(usize, f32)]) {
    if top.is_empty() {
        return;
    }
    const BAR: f32 = 5.0;
    let strip = egui::Rect::from_min_max(
        egui::pos2(
            tile.left(),
            tile.bottom() - top.len() as f32 * (BAR + 2.0) - 2.0,
        ),
        tile.max,
    );
    let painter = ui.painter();
    painter.rect_filled(strip, 0.0, egui::Color32::from_black_alpha(170));
    for (i, &(class, p)) in top.iter().enumerate() {
        let y = strip.top() + 2.0 + i as f32 * (BAR + 2.0);
        let width = (tile.width() - 4.0) * p.clamp(0.0, 1.0);
        painter.rect_filled(
            egui::Rect::from_min_size(egui::pos2(tile.left() + 2.0, y), egui::vec2(width, BAR)),
            1.0,
            series_color(class),
        );
    }
}

/// How many thumbnails fit a row of `width`.
pub fn columns_for(width: f32) -> usize {
    ((width / (THUMB_SIDE as f32 + 12.0)) as usize).max(1)
}
