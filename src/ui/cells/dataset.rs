//! The Dataset cell: path and format, the gallery with its filters, the inspector and the problems.

use std::sync::Arc;

use eframe::egui;

use crate::dataset::{DatasetFormat, Manifest, Split};

use crate::ui::cells::{Command, Loading, Notebook, Task as BgTask};
use crate::ui::widgets;

use super::*;

pub(super) fn dataset_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    path: &mut String,
    options: &mut crate::dataset::OpenOptions,
) {
    let base = app.base_dir();
    let format = &mut options.format;
    ui.horizontal(|ui| {
        ui.label("Folder or CSV");
        let edit = ui
            .add(
                egui::TextEdit::singleline(path)
                    .id(egui::Id::NULL.with(("dataset-path", id)))
                    .desired_width(420.0)
                    .hint_text("path to a dataset"),
            )
            .on_hover_text(
                "A folder (C-NMC names or class folders) or a CSV manifest; relative to the workbook. Enter opens it.",
            );
        if edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            app.push(Command::RunCell(id));
        }
        if widgets::DESKTOP && ui
            .button("Browse…")
            .on_hover_text("Pick a dataset folder")
            .clicked()
        {
            match widgets::pick(widgets::folder_dialog) {
                widgets::Picked::Path(dir) => {
                    *path = crate::workbook::stored_path(&dir, &app.base_dir());
                }
                widgets::Picked::Unavailable => app.rt.note(true, widgets::NO_DIALOG),
                widgets::Picked::Cancelled => {}
            }
        }
        egui::ComboBox::from_id_salt(("format", id))
            .selected_text(format.map_or("auto-detect".to_owned(), |f| f.name().to_owned()))
            .show_ui(ui, |ui| {
                ui.selectable_value(format, None, "auto-detect");
                for f in DatasetFormat::ALL {
                    ui.selectable_value(format, Some(f), f.description());
                }
            })
            .response
            .on_hover_text("How names and labels are read; auto-detect looks at the files");
    });
    csv_import_ui(app, ui, id, path, options);
    let Some(rt) = app.rt.dataset_mut(id) else {
        ui.label("Not opened yet: press Run.");
        return;
    };
    match &rt.data {
        Loading::Idle => {}
        Loading::Busy(_) => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Scanning…");
            });
            return;
        }
        Loading::Failed(e) => {
            error_label(
                ui,
                &format!("Could not open the dataset: {}", in_cell_words(e)),
            );
            if e.contains("could not guess") || e.contains("has no column") {
                ui.label("Choose the CSV's columns above, then press Run.");
            }
            return;
        }
        Loading::Ready(_) => {}
    }
    let Some(data) = rt.data.ready() else { return };
    let manifest = data.manifest.clone();
    let s = &data.report.summary;
    let problems: usize = data.report.problems.iter().map(|p| p.count).sum();
    ui.label(format!(
        "{} images · {} labels · {} · {} · {} problems",
        s.images,
        s.labels,
        s.patients
            .map_or("no patient ids".to_owned(), |p| format!("{p} patients")),
        s.format.description(),
        problems
    ));
    // A manifest: how many of its rows found a usable image (the import's first check).
    if matches!(
        manifest.format,
        DatasetFormat::Csv | DatasetFormat::Nih | DatasetFormat::Retina
    ) {
        let usable = manifest
            .records
            .iter()
            .filter(|r| r.problem.is_none())
            .count();
        let text = format!(
            "{usable} of {} listed images found and usable under {}",
            manifest.records.len(),
            crate::workbook::stored_path(
                &manifest.root,
                &crate::workbook::Workbook::base_dir(&app.workbook_path)
            )
        );
        if usable == manifest.records.len() {
            ui.label(text);
        } else {
            ui.colored_label(STALE_COLOR, text);
        }
    }
    // The layout may not be what class folders look like: say so before anything trains.
    let mut open_csv: Option<String> = None;
    for p in &data.report.problems {
        use crate::dataset::ProblemKind as K;
        if !matches!(p.kind, K::SuspiciousLabel | K::SameStem | K::UnusedCsv) {
            continue;
        }
        ui.colored_label(
            STALE_COLOR,
            format!(
                "Check the layout: {} ({}): {}",
                in_cell_words(&p.description),
                p.count,
                in_cell_words(&p.examples.join("; "))
            ),
        );
        if p.kind == K::UnusedCsv {
            ui.horizontal_wrapped(|ui| {
                for e in &p.examples {
                    let file = e.split(": ").next().unwrap_or(e).to_owned();
                    if ui
                        .small_button(format!("Open {file} instead"))
                        .on_hover_text("Use this CSV as the dataset (its path and label columns; the images folder is the CSV's folder unless you set one)")
                        .clicked()
                    {
                        open_csv = Some(file);
                    }
                }
            });
        }
    }
    let open_csv = open_csv.map(|file| data.manifest.root.join(file));
    // Filters.
    let labels = data.facets.labels.clone();
    let has_split = data.facets.has_split;
    let has_patients = data.facets.has_patients;
    let unusable = data.facets.unusable;
    let cells = data.facets.cell_numbers.clone();
    let filter = &mut rt.filter;
    ui.horizontal_wrapped(|ui| {
        egui::ComboBox::from_id_salt(("label-filter", id))
            .selected_text(filter.label.clone().unwrap_or_else(|| "all labels".into()))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut filter.label, None, "all labels");
                for l in &labels {
                    ui.selectable_value(&mut filter.label, Some(l.clone()), l);
                }
            })
            .response
            .on_hover_text("Show one label only (or click a bar in Explore)");
        if has_split {
            egui::ComboBox::from_id_salt(("split-filter", id))
                .selected_text(filter.split.map_or("all splits".into(), |s| s.to_string()))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut filter.split, None, "all splits");
                    for s in Split::ALL {
                        ui.selectable_value(&mut filter.split, Some(s), s.name());
                    }
                });
        }
        if !cells.is_empty() {
            egui::ComboBox::from_id_salt(("cell-filter", id))
                .selected_text(
                    filter
                        .cell_no
                        .map_or("any cell number".into(), |c| format!("cell {c}")),
                )
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut filter.cell_no, None, "any cell number");
                    for c in &cells {
                        ui.selectable_value(&mut filter.cell_no, Some(*c), format!("cell {c}"));
                    }
                })
                .response
                .on_hover_text("C-NMC cell index within the microscope image");
        }
        if has_patients {
            ui.add(
                egui::TextEdit::singleline(&mut filter.patient)
                    .desired_width(90.0)
                    .hint_text("patient"),
            )
            .on_hover_text("Show one patient's images");
        }
        if unusable > 0 {
            ui.checkbox(
                &mut filter.show_unusable,
                format!("show {unusable} missing or unreadable"),
            )
            .on_hover_text("Images listed by the dataset that cannot be used (see Problems)");
        }
        ui.add(
            egui::TextEdit::singleline(&mut filter.search)
                .desired_width(160.0)
                .hint_text("search path"),
        )
        .on_hover_text("Show images whose path contains this text");
        if let Some(picked) = &filter.picked
            && ui
                .button(format!("{} selected on the map · clear", picked.len()))
                .on_hover_text("Show every image again")
                .clicked()
        {
            filter.picked = None;
        }
    });
    if rt.visible_for.as_ref() != Some(&rt.filter) {
        let f = rt.filter.clone();
        let patient = f.patient.trim().to_ascii_uppercase();
        let search = f.search.trim().to_lowercase();
        let visible: Vec<usize> = manifest
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| f.label.as_ref().is_none_or(|l| r.labels.contains(l)))
            .filter(|(_, r)| f.split.is_none_or(|s| r.split == Some(s)))
            .filter(|(_, r)| f.cell_no.is_none_or(|c| r.cell_no == Some(c)))
            .filter(|(_, r)| {
                patient.is_empty()
                    || r.patient
                        .as_deref()
                        .is_some_and(|p| p.eq_ignore_ascii_case(&patient))
            })
            .filter(|(_, r)| search.is_empty() || r.path.to_lowercase().contains(&search))
            .filter(|(_, r)| f.show_unusable || r.is_usable())
            .filter(|(i, _)| f.picked.as_ref().is_none_or(|p| p.binary_search(i).is_ok()))
            .map(|(i, _)| i)
            .collect();
        rt.visible = Arc::new(visible);
        rt.visible_for = Some(f);
    }
    let visible = rt.visible.clone();
    ui.label(format!(
        "{} of {} images shown",
        visible.len(),
        manifest.records.len()
    ));
    let mut selected = rt.selected;
    let current = selected;
    widgets::gallery(
        ui,
        ("gallery", id),
        &mut app.rt.thumbs,
        visible.len(),
        |k| {
            let r = &manifest.records[visible[k]];
            (
                manifest.image_path(r),
                r.label_string(),
                Some(visible[k]) == current,
            )
        },
        &mut |k| selected = Some(visible[k]),
    );
    inspector_ui(app, ui, id, &manifest, selected);
    if let Some(rt) = app.rt.dataset_mut(id) {
        rt.selected = selected;
    }
    if let Some(data) = app.rt.dataset(id).and_then(|d| d.data.ready())
        && !data.report.problems.is_empty()
    {
        egui::CollapsingHeader::new(format!("Problems ({problems})"))
            .id_salt(("problems", id))
            .show(ui, |ui| {
                for p in &data.report.problems {
                    ui.label(
                        egui::RichText::new(format!(
                            "{} × {}",
                            p.count,
                            in_cell_words(&p.description)
                        ))
                        .strong(),
                    );
                    for e in &p.examples {
                        ui.label(
                            egui::RichText::new(format!("   {}", in_cell_words(e)))
                                .monospace()
                                .small(),
                        );
                    }
                }
            });
    }
    if let Some(csv) = open_csv {
        *path = crate::workbook::stored_path(&csv, &base);
        app.push(Command::RunCell(id));
    }
}

pub(super) fn inspector_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    manifest: &Manifest,
    selected: Option<usize>,
) {
    let Some(index) = selected else {
        ui.label(egui::RichText::new("Click an image to inspect it.").weak());
        return;
    };
    let Some(record) = manifest.records.get(index) else {
        return;
    };
    let path = manifest.image_path(record);
    // What an evaluated run of this dataset predicted for the image (its validation or test
    // side), when an Evaluate cell has one open.
    let root = std::path::absolute(&manifest.root).unwrap_or_else(|_| manifest.root.clone());
    let predicted = app.rt.evals().find_map(|(_, e)| {
        let ev = e.data.ready()?;
        let same_data = ev
            .dataset_root
            .as_ref()
            .is_some_and(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()) == root);
        let row = ev
            .rows
            .iter()
            .find(|r| same_data && r.path == record.path)?;
        Some((ev.id.clone(), ev.labels.clone(), row.clone()))
    });
    let ctx = ui.ctx().clone();
    let Some(rt) = app.rt.dataset_mut(id) else {
        return;
    };
    if rt.preview.as_ref().is_none_or(|(i, _)| *i != index) {
        let p = path.clone();
        let c = ctx.clone();
        let task = BgTask::spawn(&ctx, "preview", move || {
            crate::ui::thumbs::decode_preview(&p).map(|img| {
                c.load_texture(p.display().to_string(), img, egui::TextureOptions::LINEAR)
            })
        });
        rt.preview = Some((index, Loading::Busy(task)));
    }
    ui.separator();
    ui.horizontal_top(|ui| {
        match rt.preview.as_ref().map(|p| &p.1) {
            Some(Loading::Ready(tex)) => {
                let size = tex.size_vec2();
                let scale = (260.0 / size.x.max(size.y)).min(2.0);
                ui.add(egui::Image::new(tex).fit_to_exact_size(size * scale));
            }
            Some(Loading::Failed(e)) => error_label(ui, &format!("Cannot show this image: {e}")),
            _ => {
                ui.spinner();
            }
        }
        ui.vertical(|ui| {
            egui::Grid::new(("inspector", id))
                .num_columns(2)
                .spacing([12.0, 2.0])
                .show(ui, |ui| {
                    let mut row = |k: &str, v: String| {
                        ui.label(egui::RichText::new(k).weak());
                        ui.label(v);
                        ui.end_row();
                    };
                    row("file", record.path.clone());
                    row("label", record.label_string());
                    if let Some(p) = &record.patient {
                        row("patient", p.clone());
                    }
                    if let Some(n) = record.image_no {
                        row("image no.", n.to_string());
                    }
                    if let Some(n) = record.cell_no {
                        row("cell no.", n.to_string());
                    }
                    if let Some(s) = record.split {
                        row("split", s.to_string());
                    }
                    if let Some(b) = record.bytes {
                        row("size", format!("{:.1} kB", b as f64 / 1e3));
                    }
                    if let (Some(w), Some(h)) = (record.width, record.height) {
                        row("pixels", format!("{w} × {h}"));
                    }
                });
            if let Some(p) = &record.problem {
                error_label(ui, &format!("Problem: {p}"));
            }
            if let Some((run, labels, row)) = &predicted {
                ui.separator();
                ui.label(format!(
                    "Run {run} ({} side): predicted {}",
                    row.split, row.predicted
                ));
                widgets::probability_bars(ui, labels, &row.probs, 3);
            }
        });
    });
}

/// An opening error as the cell says it: its fields instead of the command line's flags.
pub fn in_cell_words(error: &str) -> String {
    [
        (
            "name it with --path-column",
            "choose the Image column above",
        ),
        (
            "name it with --label-column",
            "choose the Label column above",
        ),
        (
            "name it with --patient-column",
            "choose the Patient column above",
        ),
        ("--image-pattern", "the File name of an id field"),
        (
            "give the images folder with --images",
            "choose the Images folder above",
        ),
    ]
    .iter()
    .fold(error.to_owned(), |e, (flag, field)| e.replace(flag, field))
}

/// The header of the CSV a Dataset cell points at (read in the background, once per path).
pub struct CsvColumns {
    pub path: std::path::PathBuf,
    pub columns: Loading<Vec<String>>,
}

/// Reads the header line of a CSV.
fn read_header(path: &std::path::Path) -> Result<Vec<String>, String> {
    use std::io::Read as _;
    let mut file = crate::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut head = vec![0u8; 64 * 1024];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    let text = String::from_utf8_lossy(&head[..n]);
    let line = text.lines().next().unwrap_or_default();
    let table = crate::fsio::CsvTable::parse(line)?;
    Ok(table.header)
}

/// The import step for CSV manifests: which columns hold the image path (or id), the label
/// and the patient, where the images are and how ids become file names. The choices are part
/// of the cell (saved in the workbook); changing one makes the cell out of date.
fn csv_import_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    path: &str,
    options: &mut crate::dataset::OpenOptions,
) {
    let is_csv = std::path::Path::new(path.trim())
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if !is_csv {
        return;
    }
    let full = crate::workbook::resolve_path(path.trim(), &app.base_dir());
    let ctx = ui.ctx().clone();
    let entry = app.rt.csv_columns(id);
    if entry.is_none_or(|c| c.path != full) {
        let p = full.clone();
        let task = BgTask::spawn(&ctx, "csv-header", move || read_header(&p));
        app.rt.set_csv_columns(
            id,
            CsvColumns {
                path: full.clone(),
                columns: Loading::Busy(task),
            },
        );
    }
    let columns: Vec<String> = app
        .rt
        .csv_columns(id)
        .and_then(|c| c.columns.ready().cloned())
        .unwrap_or_default();
    let column_combo = |ui: &mut egui::Ui, what: &str, value: &mut Option<String>, hint: &str| {
        ui.label(what);
        egui::ComboBox::from_id_salt(("csv-column", what, id))
            .selected_text(value.clone().unwrap_or_else(|| "guess".to_owned()))
            .show_ui(ui, |ui| {
                ui.selectable_value(value, None, "guess");
                for c in &columns {
                    ui.selectable_value(value, Some(c.clone()), c);
                }
            })
            .response
            .on_hover_text(hint);
    };
    ui.horizontal_wrapped(|ui| {
        column_combo(
            ui,
            "Image column",
            &mut options.path_column,
            "The column with image paths, file names or ids",
        );
        column_combo(
            ui,
            "Label column",
            &mut options.label_column,
            "The column with labels (A|B for several)",
        );
        column_combo(
            ui,
            "Patient column",
            &mut options.patient_column,
            "The column with patient ids (keeps each patient on one side of a split)",
        );
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("Images folder");
        let mut folder = options
            .images
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if ui
            .add(
                egui::TextEdit::singleline(&mut folder)
                    .id(egui::Id::NULL.with(("images-folder", id)))
                    .desired_width(260.0)
                    .hint_text("the CSV's folder"),
            )
            .on_hover_text("Where the images are looked up (by path, or by file name in any subfolder); a relative folder is the workbook's")
            .changed()
        {
            options.images = (!folder.trim().is_empty()).then(|| folder.trim().into());
        }
        if widgets::DESKTOP && ui.button("Browse…").clicked() {
            match widgets::pick(widgets::folder_dialog) {
                widgets::Picked::Path(dir) => {
                    // Stored as the cell's path is: relative to the workbook when inside it.
                    options.images = Some(crate::workbook::stored_path(&dir, &app.base_dir()).into());
                }
                widgets::Picked::Unavailable => app.rt.note(true, widgets::NO_DIALOG),
                widgets::Picked::Cancelled => {}
            }
        }
        ui.label("File name of an id");
        let mut pattern = options.image_pattern.clone().unwrap_or_default();
        if ui
            .add(
                egui::TextEdit::singleline(&mut pattern)
                    .id(egui::Id::NULL.with(("image-pattern", id)))
                    .desired_width(110.0)
                    .hint_text("{id}.bmp"),
            )
            .on_hover_text(
                "For ids without an extension: the file name, e.g. {id}.bmp, or {id:03}.bmp for ids zero-padded to 3 digits",
            )
            .changed()
        {
            options.image_pattern = (!pattern.trim().is_empty()).then(|| pattern.trim().to_owned());
        }
    });
}
