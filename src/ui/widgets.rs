//! Reusable widgets: the virtualised thumbnail gallery, tables, the confusion heatmap.

use std::path::PathBuf;

use eframe::egui;

use crate::experiment::metrics::ConfusionMatrix;
use crate::explore::Table;
use crate::runs::view::RunSummary;

use super::thumbs::{THUMB_SIDE, Thumb, ThumbCache};

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

/// A table drawn as a striped grid under its title.
pub fn table(ui: &mut egui::Ui, id: impl std::hash::Hash + std::fmt::Debug, table: &Table) {
    let mut no_sort = (usize::MAX, false);
    draw_table(ui, id, table, &mut no_sort, false);
}

/// A table whose columns sort when their header is clicked (numbers numerically).
pub fn sortable_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    table: &Table,
    sort: &mut (usize, bool),
) {
    draw_table(ui, id, table, sort, true);
}

fn sort_key(s: &str) -> Result<f64, String> {
    s.trim_end_matches('%')
        .parse::<f64>()
        .map_err(|_| s.to_lowercase())
}

fn draw_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    table: &Table,
    sort: &mut (usize, bool),
    sortable: bool,
) {
    ui.label(egui::RichText::new(&table.title).strong());
    let mut rows: Vec<&Vec<String>> = table.rows.iter().collect();
    if sort.0 != usize::MAX {
        let (col, desc) = *sort;
        rows.sort_by(|a, b| {
            let (ka, kb) = (
                sort_key(a.get(col).map_or("", String::as_str)),
                sort_key(b.get(col).map_or("", String::as_str)),
            );
            let o = match (ka, kb) {
                (Ok(x), Ok(y)) => x.total_cmp(&y),
                (Err(x), Err(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => std::cmp::Ordering::Less,
                (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            };
            if desc { o.reverse() } else { o }
        });
    }
    egui::Grid::new(id)
        .striped(true)
        .spacing([18.0, 3.0])
        .show(ui, |ui| {
            let has_header = table.headers.iter().any(|h| !h.is_empty());
            if has_header {
                for (i, h) in table.headers.iter().enumerate() {
                    let arrow = if sort.0 == i {
                        if sort.1 { " (desc)" } else { " (asc)" }
                    } else {
                        ""
                    };
                    let text = egui::RichText::new(format!("{h}{arrow}")).strong();
                    if sortable {
                        if ui
                            .add(egui::Label::new(text).sense(egui::Sense::click()))
                            .on_hover_text("Sort by this column")
                            .clicked()
                        {
                            *sort = if sort.0 == i { (i, !sort.1) } else { (i, true) };
                        }
                    } else {
                        ui.label(text);
                    }
                }
                ui.end_row();
            }
            for row in rows {
                for cell in row {
                    // A long cell (a path, a message) is cut, whole on hover: the table
                    // never pushes the notebook wider than the window.
                    match shorten(cell, TABLE_CELL_CHARS) {
                        Some(short) => ui.label(short).on_hover_text(cell),
                        None => ui.label(cell),
                    };
                }
                ui.end_row();
            }
        });
    ui.add_space(6.0);
}

/// Characters a table cell shows before it is cut (see [`shorten`]).
const TABLE_CELL_CHARS: usize = 90;

/// `text` cut to `max` characters with an ellipsis, or `None` when it fits.
pub fn shorten(text: &str, max: usize) -> Option<String> {
    (text.chars().count() > max).then(|| {
        text.chars()
            .take(max.saturating_sub(1))
            .chain(['…'])
            .collect()
    })
}

/// The confusion matrix's column labels for cells `fit` characters wide: the names when they
/// fit, else abbreviations when those stay distinct, else numbers (`true` then: the row labels
/// carry the same numbers). Labels sharing a prefix ("digit 1", "digit 2") never all read
/// "dig.".
pub fn column_labels(labels: &[String], fit: usize) -> (Vec<String>, bool) {
    if labels.iter().all(|l| l.chars().count() <= fit) {
        return (labels.to_vec(), false);
    }
    let short: Vec<String> = labels
        .iter()
        .map(|l| {
            if l.chars().count() > fit {
                l.chars().take(fit.saturating_sub(1)).chain(['.']).collect()
            } else {
                l.clone()
            }
        })
        .collect();
    let distinct = short.iter().collect::<std::collections::HashSet<_>>().len() == short.len();
    if distinct {
        (short, false)
    } else {
        ((1..=labels.len()).map(|k| k.to_string()).collect(), true)
    }
}

/// Confusion matrix as a heatmap: rows are true labels, columns predicted ones. Returns the
/// clicked cell.
pub fn confusion_heatmap(
    ui: &mut egui::Ui,
    cm: &ConfusionMatrix,
    normalised: bool,
    selected: Option<(usize, usize)>,
) -> Option<(usize, usize)> {
    let n = cm.labels.len().max(1);
    let cell = (300.0 / n as f32).clamp(28.0, 64.0);
    // Column labels get the cell's width; the full names are in the row labels (numbered
    // when the columns are).
    let (columns, numbered) = column_labels(&cm.labels, ((cell / 7.0) as usize).max(3));
    let row_labels: Vec<String> = if numbered {
        cm.labels
            .iter()
            .enumerate()
            .map(|(k, l)| format!("{} {l}", k + 1))
            .collect()
    } else {
        cm.labels.clone()
    };
    let label_w = row_labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(4) as f32
        * 7.0
        + 16.0;
    // The "predicted" header above the cells, one line of column labels below them.
    let size = egui::vec2(
        label_w + cell * n as f32 + 10.0,
        24.0 + cell * n as f32 + 24.0,
    );
    let (rect, response) = ui.allocate_exact_size(size, egui::Sense::click());
    let painter = ui.painter_at(rect);
    let origin = rect.min + egui::vec2(label_w, 24.0);
    let values = if normalised {
        cm.row_normalised()
    } else {
        cm.counts
            .iter()
            .map(|r| r.iter().map(|&c| c as f64).collect())
            .collect()
    };
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let text_color = ui.visuals().text_color();
    let font = egui::FontId::proportional(12.0);
    painter.text(
        origin + egui::vec2(cell * n as f32 / 2.0, -14.0),
        egui::Align2::CENTER_CENTER,
        "predicted",
        egui::FontId::proportional(13.0),
        text_color,
    );
    painter.text(
        rect.min + egui::vec2(4.0, 10.0),
        egui::Align2::LEFT_CENTER,
        "true",
        egui::FontId::proportional(13.0),
        text_color,
    );
    for (i, row) in values.iter().enumerate() {
        painter.text(
            origin + egui::vec2(-6.0, cell * (i as f32 + 0.5)),
            egui::Align2::RIGHT_CENTER,
            &row_labels[i],
            font.clone(),
            text_color,
        );
        for (j, v) in row.iter().enumerate() {
            let t = (v / max) as f32;
            let color = egui::Color32::from_rgb(
                (235.0 - t * 190.0) as u8,
                (240.0 - t * 150.0) as u8,
                (250.0 - t * 90.0) as u8,
            );
            let r = egui::Rect::from_min_size(
                origin + egui::vec2(cell * j as f32, cell * i as f32),
                egui::vec2(cell - 2.0, cell - 2.0),
            );
            painter.rect_filled(r, 2.0, color);
            if selected == Some((i, j)) {
                painter.rect_stroke(
                    r,
                    2.0,
                    egui::Stroke::new(2.5, egui::Color32::from_rgb(230, 126, 34)),
                    egui::StrokeKind::Inside,
                );
            }
            let label = if normalised {
                format!("{v:.2}")
            } else {
                format!("{}", cm.counts[i][j])
            };
            let fg = if t > 0.55 {
                egui::Color32::WHITE
            } else {
                egui::Color32::BLACK
            };
            painter.text(
                r.center(),
                egui::Align2::CENTER_CENTER,
                label,
                font.clone(),
                fg,
            );
        }
    }
    for (j, short) in columns.into_iter().enumerate() {
        let pos = origin + egui::vec2(cell * (j as f32 + 0.5), cell * n as f32 + 4.0);
        painter.text(
            pos,
            egui::Align2::CENTER_TOP,
            short,
            font.clone(),
            text_color,
        );
    }
    let clicked = response
        .clicked()
        .then(|| response.interact_pointer_pos())
        .flatten()
        .and_then(|p| {
            let d = p - origin;
            let (i, j) = ((d.y / cell).floor(), (d.x / cell).floor());
            (i >= 0.0 && j >= 0.0 && (i as usize) < n && (j as usize) < n)
                .then_some((i as usize, j as usize))
        });
    response.on_hover_text("Click a cell to see its images");
    clicked
}

/// A config setting shown in Compare: its name and how to read it from a run.
type ConfigRow = (&'static str, fn(&RunSummary) -> String);

/// Metrics of several runs with the best value per column marked, and their configs.
pub fn compare_table(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug + Copy,
    runs: &[RunSummary],
) {
    type Col = (&'static str, bool, fn(&RunSummary) -> Option<f64>);
    let cols: [Col; 6] = [
        ("accuracy", true, |r| r.val.as_ref().map(|m| m.accuracy)),
        ("balanced acc.", true, |r| {
            r.val.as_ref().map(|m| m.balanced_accuracy)
        }),
        ("macro F1", true, |r| r.val.as_ref().map(|m| m.macro_f1)),
        ("macro AUC", true, |r| {
            r.val.as_ref().and_then(|m| m.macro_auc)
        }),
        ("val loss", false, |r| r.val.as_ref().and_then(|m| m.loss)),
        ("best epoch", false, |r| r.best_epoch.map(f64::from)),
    ];
    // Runs of different datasets or tasks are shown side by side, never ranked.
    let incomparable = RunSummary::incomparable(runs);
    if let Some(why) = &incomparable {
        ui.colored_label(
            egui::Color32::from_rgb(230, 126, 34),
            format!("Not comparable: {why}. No best value is marked."),
        );
        ui.label(egui::RichText::new("Validation metrics").strong());
    } else {
        ui.label(egui::RichText::new("Validation metrics (best per column in green)").strong());
    }
    egui::Grid::new((id, "metrics"))
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("run");
            ui.strong("state");
            for (name, _, _) in &cols {
                ui.strong(*name);
            }
            ui.end_row();
            let best: Vec<Option<f64>> = cols
                .iter()
                .map(|(name, higher, f)| {
                    if *name == "best epoch" || incomparable.is_some() {
                        return None;
                    }
                    let vals = runs.iter().filter_map(f);
                    if *higher {
                        vals.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
                    } else {
                        vals.fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))))
                    }
                })
                .collect();
            for r in runs {
                ui.label(&r.id);
                ui.label(format!("{:?}", r.state).to_lowercase());
                for ((name, _, f), b) in cols.iter().zip(&best) {
                    match f(r) {
                        Some(v) => {
                            let text = egui::RichText::new(if *name == "best epoch" {
                                format!("{v:.0}")
                            } else {
                                format!("{v:.4}")
                            });
                            if b.is_some_and(|b| (b - v).abs() < 1e-12) {
                                ui.label(text.color(egui::Color32::from_rgb(46, 160, 67)).strong());
                            } else {
                                ui.label(text);
                            }
                        }
                        None => {
                            ui.label("-");
                        }
                    }
                }
                ui.end_row();
            }
        });
    ui.add_space(6.0);
    ui.label(egui::RichText::new("Configurations").strong());
    egui::Grid::new((id, "configs"))
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("setting");
            for r in runs {
                ui.strong(&r.id);
            }
            ui.end_row();
            let rows: [ConfigRow; 13] = [
                ("dataset", |r| {
                    r.dataset_root
                        .as_ref()
                        .and_then(|p| p.file_name())
                        .map_or_else(|| "?".to_owned(), |n| n.to_string_lossy().into_owned())
                }),
                ("task", |r| {
                    r.task.map_or_else(|| "?".to_owned(), |t| format!("{t:?}"))
                }),
                ("mode", |r| format!("{:?}", r.config.mode)),
                ("backbone", |r| r.config.backbone.short_name().to_owned()),
                ("device", |r| r.device.clone().unwrap_or_default()),
                ("epochs", |r| r.config.epochs.to_string()),
                ("batch size", |r| r.config.batch_size.to_string()),
                ("learning rate", |r| {
                    format!("{:.1e}", r.config.learning_rate)
                }),
                ("weight decay", |r| format!("{:.1e}", r.config.weight_decay)),
                ("optimizer", |r| format!("{:?}", r.config.optimizer)),
                ("schedule", |r| format!("{:?}", r.config.schedule)),
                ("imbalance", |r| format!("{:?}", r.config.imbalance)),
                ("image size", |r| r.config.preprocess.size.to_string()),
            ];
            for (name, f) in rows {
                ui.label(name);
                let values: Vec<String> = runs.iter().map(f).collect();
                let differs = values.iter().any(|v| v != &values[0]);
                for v in values {
                    if differs {
                        ui.label(egui::RichText::new(v).strong())
                    } else {
                        ui.label(v)
                    };
                }
                ui.end_row();
            }
        });
}

/// How many thumbnails fit a row of `width`.
pub fn columns_for(width: f32) -> usize {
    ((width / (THUMB_SIDE as f32 + 12.0)) as usize).max(1)
}

/// A plot that fits its bounds to its data again whenever the data changes (a new run, a new
/// epoch, a relaunch that restored old bounds); between changes the user's zoom and pan stay.
/// `signature` summarises the data (e.g. run ids and point counts).
pub fn refitting_plot<'a>(ui: &egui::Ui, id: egui::Id, signature: u64) -> egui_plot::Plot<'a> {
    let key = id.with("data-signature");
    let changed = ui.data_mut(|d| {
        let old = d.get_temp::<u64>(key);
        d.insert_temp(key, signature);
        old != Some(signature)
    });
    // The wheel scrolls the notebook, not the plot (zoom stays on Ctrl + wheel).
    let plot = egui_plot::Plot::new(id).id(id).allow_scroll(false);
    if changed { plot.reset() } else { plot }
}

/// A signature of plotted series: their names and lengths, and the last value of each.
pub fn series_signature<'a>(series: impl IntoIterator<Item = (&'a str, &'a [[f64; 2]])>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, points) in series {
        name.hash(&mut h);
        points.len().hash(&mut h);
        if let Some(p) = points.last() {
            p[0].to_bits().hash(&mut h);
            p[1].to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// One bar per label with its probability, the most probable first (at most `top`).
pub fn probability_bars(ui: &mut egui::Ui, labels: &[String], probs: &[f32], top: usize) {
    let mut order: Vec<usize> = (0..labels.len().min(probs.len())).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    for &k in order.iter().take(top) {
        ui.horizontal(|ui| {
            ui.add_sized(
                [110.0, 16.0],
                egui::Label::new(egui::RichText::new(&labels[k]).small()).truncate(),
            )
            .on_hover_text(&labels[k]);
            ui.add(
                egui::ProgressBar::new(probs[k].clamp(0.0, 1.0))
                    .desired_width(140.0)
                    .text(format!("{:.3}", probs[k])),
            );
        });
    }
}

/// What a file dialog gave.
pub enum Picked {
    Path(std::path::PathBuf),
    /// The user closed the dialog.
    Cancelled,
    /// No dialog could be shown (no desktop portal or zenity on this system).
    Unavailable,
}

/// File dialogs and exports into folders exist on the desktop; the browser takes dropped files
/// and offers downloads instead.
pub const DESKTOP: bool = cfg!(not(target_arch = "wasm32"));

/// A folder chosen in the system's file dialog (always `None` in the browser).
pub fn folder_dialog() -> Option<std::path::PathBuf> {
    #[cfg(not(target_arch = "wasm32"))]
    let picked = rfd::FileDialog::new().pick_folder();
    #[cfg(target_arch = "wasm32")]
    let picked = None;
    picked
}

/// A CSV file chosen in the system's file dialog (always `None` in the browser).
pub fn csv_dialog() -> Option<std::path::PathBuf> {
    #[cfg(not(target_arch = "wasm32"))]
    let picked = rfd::FileDialog::new()
        .add_filter("CSV", &["csv"])
        .pick_file();
    #[cfg(target_arch = "wasm32")]
    let picked = None;
    picked
}

/// Runs a file dialog. rfd answers "nothing chosen" both when the user cancels and when no
/// dialog can be shown at all; a dialog that closes at once was never shown.
pub fn pick(dialog: impl FnOnce() -> Option<std::path::PathBuf>) -> Picked {
    let started = web_time::Instant::now();
    match dialog() {
        Some(p) => Picked::Path(p),
        None if started.elapsed() < std::time::Duration::from_millis(300) => Picked::Unavailable,
        None => Picked::Cancelled,
    }
}

/// What to tell the user when no file dialog can be shown.
pub const NO_DIALOG: &str = "No file dialog is available on this system (no desktop portal or zenity): type or paste the path into the cell's path field and press Enter, or drop the folder or CSV on the window.";

/// Ten distinct category colours (matplotlib's `tab10`).
pub const CATEGORY_PALETTE: [egui::Color32; 10] = [
    egui::Color32::from_rgb(31, 119, 180),
    egui::Color32::from_rgb(255, 127, 14),
    egui::Color32::from_rgb(44, 160, 44),
    egui::Color32::from_rgb(214, 39, 40),
    egui::Color32::from_rgb(148, 103, 189),
    egui::Color32::from_rgb(140, 86, 75),
    egui::Color32::from_rgb(227, 119, 194),
    egui::Color32::from_rgb(127, 127, 127),
    egui::Color32::from_rgb(188, 189, 34),
    egui::Color32::from_rgb(23, 190, 207),
];

/// A distinct colour for the `k`-th series of a chart (legend and markers agree): the first
/// six category colours, in turn.
pub fn series_color(k: usize) -> egui::Color32 {
    CATEGORY_PALETTE[k % CATEGORY_PALETTE.len()]
}

/// Draws each series as a line with a marker on every point, both in the series' palette
/// colour: a series of one point (a one-epoch run, or one fit) still shows.
pub fn marked_series<'a>(
    p: &mut egui_plot::PlotUi<'_>,
    series: impl IntoIterator<Item = (&'a str, &'a [[f64; 2]])>,
) {
    for (k, (name, pts)) in series.into_iter().enumerate() {
        let color = series_color(k);
        p.line(egui_plot::Line::new(name, egui_plot::PlotPoints::from(pts.to_vec())).color(color));
        p.points(
            egui_plot::Points::new(name, egui_plot::PlotPoints::from(pts.to_vec()))
                .radius(3.0)
                .color(color),
        );
    }
}

/// A metric's name as the tables print it.
pub fn metric_title(key: &str) -> String {
    match key {
        "balanced_accuracy" => "balanced accuracy".into(),
        "macro_f1" => "macro F1".into(),
        "macro_auc" => "macro AUC".into(),
        "kappa_quadratic" => "quadratic kappa".into(),
        other => other.replace('_', " "),
    }
}

/// Cross-validations side by side: per metric (the loss left out: another scale), each
/// one's folds as dots and its mean as a bar ± one standard deviation, in its own colour, so
/// the spread shows how big a difference between them really is.
pub fn fold_spread_plot(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    cvs: &[(String, &crate::experiment::cv::CvSummary)],
) {
    use egui_plot::{Legend, Line, Plot, PlotPoints, Points};
    let mut keys: Vec<&String> = cvs
        .iter()
        .flat_map(|(_, s)| s.metrics.keys())
        .filter(|k| k.as_str() != "loss")
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return;
    }
    let names: Vec<String> = keys.iter().map(|k| metric_title(k)).collect();
    let n = cvs.len().max(1) as f64;
    let width = 0.6 / n;
    Plot::new(id)
        .height(220.0)
        .include_y(0.0)
        .include_y(1.0)
        .include_x(-0.5)
        .include_x(keys.len() as f64 - 0.5)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .legend(Legend::default().position(egui_plot::Corner::RightBottom))
        .y_axis_label("held-out score per fold")
        .x_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, |p| {
            for (c, (name, summary)) in cvs.iter().enumerate() {
                let color = series_color(c);
                for (j, key) in keys.iter().enumerate() {
                    let Some(spread) = summary.metrics.get(*key) else {
                        continue;
                    };
                    let x = j as f64 - 0.3 + width * (c as f64 + 0.5);
                    let k = spread.folds.len().max(1) as f64;
                    let dots: Vec<[f64; 2]> = spread
                        .folds
                        .iter()
                        .enumerate()
                        .map(|(f, v)| [x - width * 0.3 + width * 0.6 * f as f64 / k, *v])
                        .collect();
                    p.points(Points::new(name.clone(), dots).radius(2.5).color(color));
                    let (lo, hi) = (spread.mean - spread.sd, spread.mean + spread.sd);
                    p.line(
                        Line::new(name.clone(), PlotPoints::from(vec![[x, lo], [x, hi]]))
                            .color(color)
                            .width(2.0),
                    );
                    p.line(
                        Line::new(
                            name.clone(),
                            PlotPoints::from(vec![
                                [x - width * 0.4, spread.mean],
                                [x + width * 0.4, spread.mean],
                            ]),
                        )
                        .color(color)
                        .width(2.5),
                    );
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_labels_stay_distinct() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        // Names that fit are kept.
        assert_eq!(
            column_labels(&names(&["all", "hem"]), 5),
            (names(&["all", "hem"]), false)
        );
        // Distinct abbreviations are used.
        assert_eq!(
            column_labels(&names(&["Basophil", "Eosinophil", "Monocyte"]), 4),
            (names(&["Bas.", "Eos.", "Mon."]), false)
        );
        // A shared prefix gives numbers instead of "dig." three times.
        assert_eq!(
            column_labels(&names(&["digit 1", "digit 2", "digit 3"]), 4),
            (names(&["1", "2", "3"]), true)
        );
    }

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        assert_eq!(shorten("short", 10), None);
        let cut = shorten(&"x".repeat(200), 90).unwrap();
        assert_eq!(cut.chars().count(), 90);
        assert!(cut.ends_with('…'));
    }
}
