//! Parallel folder walk → [`Manifest`] for C-NMC and class-folder datasets.

use std::path::Path;
#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;
#[cfg(not(target_arch = "wasm32"))]
use std::sync::Mutex;

use rayon::prelude::*;

use super::naming::{is_image_extension, parse_cnmc};
use super::{DatasetFormat, Manifest, OpenError, Problem, ProblemKind, Record, relative_path};

/// Documentation and label files that datasets keep beside their images; skipped silently.
const SIDECAR_EXTENSIONS: [&str; 10] = [
    "txt", "md", "csv", "tsv", "json", "toml", "yaml", "yml", "xml", "pdf",
];

/// A file found by the walk.
#[derive(Debug)]
pub struct FoundFile {
    /// Relative to the walk root, `/`-separated.
    pub rel: String,
    pub bytes: u64,
}

/// What a walk found: image files (by extension) and the problems met on the way.
#[derive(Debug, Default)]
pub struct Walk {
    pub images: Vec<FoundFile>,
    pub problems: Vec<Problem>,
}

/// Walks `root` in parallel, following symlinks (loops become problems), skipping hidden
/// files. Image files are returned sorted by path.
#[cfg(not(target_arch = "wasm32"))]
pub fn walk_images(root: &Path) -> Walk {
    let out = Mutex::new(Walk::default());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .hidden(true)
        .follow_links(true)
        .threads(threads)
        .build_parallel();
    walker.run(|| {
        let out = &out;
        let mut local = Walk::default();
        // Flush the thread-local batch into the shared result when the visitor is dropped.
        struct Flush<'a> {
            local: Walk,
            out: &'a Mutex<Walk>,
        }
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
                out.images.append(&mut self.local.images);
                out.problems.append(&mut self.local.problems);
            }
        }
        local.images.reserve(1024);
        let mut flush = Flush { local, out };
        Box::new(move |entry| {
            visit(root, entry, &mut flush.local);
            ignore::WalkState::Continue
        })
    });
    sorted(out.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Walks the in-memory file system of the browser (dropped files, the bundled demo): the
/// same rules as the desktop walk, hidden files skipped.
#[cfg(target_arch = "wasm32")]
pub fn walk_images(root: &Path) -> Walk {
    let mut walk = Walk::default();
    let root = crate::fs::memory::normalise(root);
    for path in crate::fs::files_below(&root) {
        let hidden = path
            .strip_prefix(&root)
            .is_ok_and(|rel| rel.iter().any(|c| c.to_string_lossy().starts_with('.')));
        if !hidden {
            let len = crate::fs::metadata(&path).map(|m| m.len());
            visit_file(&root, &path, len, &mut walk);
        }
    }
    sorted(walk)
}

fn sorted(mut walk: Walk) -> Walk {
    walk.images.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    walk.problems
        .sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
    walk
}

#[cfg(not(target_arch = "wasm32"))]
fn visit(root: &Path, entry: Result<ignore::DirEntry, ignore::Error>, out: &mut Walk) {
    let entry = match entry {
        Ok(entry) => entry,
        Err(err) => {
            let path = error_path(&err).map_or_else(String::new, |p| p.display().to_string());
            out.problems
                .push(Problem::new(ProblemKind::WalkError, path, strip_path(&err)));
            return;
        }
    };
    if !entry.file_type().is_some_and(|t| t.is_file()) {
        return;
    }
    let len = entry.metadata().map(|m| m.len()).map_err(|e| e.to_string());
    visit_file(root, entry.path(), len, out);
}

/// Sorts one file into an image or a problem.
fn visit_file<E: std::fmt::Display>(root: &Path, path: &Path, len: Result<u64, E>, out: &mut Walk) {
    let Some(rel) = relative_path(path, root) else {
        out.problems.push(Problem::new(
            ProblemKind::NonUtf8Name,
            path.to_string_lossy(),
            "skipped",
        ));
        return;
    };
    let ext = rel.rsplit_once('.').map_or("", |(_, e)| e);
    if !is_image_extension(ext) {
        if SIDECAR_EXTENSIONS
            .iter()
            .any(|e| e.eq_ignore_ascii_case(ext))
        {
            return; // README.txt, labels.csv, … sit beside images in most datasets.
        }
        out.problems
            .push(Problem::new(ProblemKind::NotAnImage, rel, String::new()));
        return;
    }
    let bytes = match len {
        Ok(len) => len,
        Err(err) => {
            out.problems
                .push(Problem::new(ProblemKind::WalkError, rel, err.to_string()));
            return;
        }
    };
    out.images.push(FoundFile { rel, bytes });
}

#[cfg(not(target_arch = "wasm32"))]
fn error_path(err: &ignore::Error) -> Option<PathBuf> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child.clone()),
        _ => None,
    }
}

/// The error's message without the path (which is reported separately).
#[cfg(not(target_arch = "wasm32"))]
fn strip_path(err: &ignore::Error) -> String {
    match err {
        ignore::Error::WithPath { err, .. } => strip_path(err),
        ignore::Error::WithDepth { err, .. } => strip_path(err),
        ignore::Error::Loop { ancestor, .. } => {
            format!("symlink loop back to {}", ancestor.display())
        }
        other => other.to_string(),
    }
}

/// Scans a folder dataset (C-NMC names or class folders).
pub fn scan_folder(root: &Path, format: Option<DatasetFormat>) -> Result<Manifest, OpenError> {
    let walk = walk_images(root);
    if walk.images.is_empty() {
        return Err(OpenError::NoImages {
            path: root.to_owned(),
        });
    }
    let format = format.unwrap_or_else(|| detect_folder_format(&walk.images));
    let mut problems = walk.problems;
    let parsed: Vec<(Result<Record, Problem>, Option<Problem>)> = walk
        .images
        .into_par_iter()
        .map(|file| match format {
            DatasetFormat::Cnmc => cnmc_record(file),
            _ => class_folder_record(file),
        })
        .collect();
    let mut records = Vec::with_capacity(parsed.len());
    for (r, note) in parsed {
        problems.extend(note);
        match r {
            Ok(record) => {
                if record.bytes == Some(0) {
                    problems.push(Problem::new(
                        ProblemKind::EmptyFile,
                        record.path.clone(),
                        "",
                    ));
                }
                records.push(record);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if format != DatasetFormat::Cnmc {
        problems.extend(layout_warnings(root, &records));
    }
    if records.is_empty() {
        // Images exist but none fits the format: the problems say why.
        let hint = problems
            .iter()
            .find(|p| p.kind == ProblemKind::NameMismatch || p.kind == ProblemKind::NoClassFolder);
        if hint.is_some() {
            return Ok(Manifest {
                root: root.to_owned(),
                source: root.to_owned(),
                format,
                records,
                problems,
                copies: Vec::new(),
            });
        }
        return Err(OpenError::NoImages {
            path: root.to_owned(),
        });
    }
    Ok(Manifest {
        root: root.to_owned(),
        source: root.to_owned(),
        format,
        records,
        problems,
        copies: Vec::new(),
    })
}

/// Signs that a folder is not what class folders look like, so that it is never trained on
/// silently: labels named like dataset structure, image/mask pairs sharing a name, and CSVs
/// beside the images (the root and its first level) that may hold the real labels.
pub fn layout_warnings(root: &Path, records: &[Record]) -> Vec<Problem> {
    let mut out = Vec::new();
    let labels: std::collections::BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r.labels.first().map(String::as_str))
        .collect();
    for label in labels {
        if looks_like_structure(label) {
            out.push(Problem::new(
                ProblemKind::SuspiciousLabel,
                label,
                "a folder name used as a class label",
            ));
        }
    }
    let mut by_stem: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for r in records {
        let stem = r.path.rsplit_once('.').map_or(r.path.as_str(), |(s, _)| s);
        by_stem.entry(stem).or_default().push(&r.path);
    }
    for files in by_stem.values().filter(|f| f.len() > 1) {
        out.push(Problem::new(
            ProblemKind::SameStem,
            files[0],
            format!("also {}", files[1..].join(", ")),
        ));
    }
    let mut folders = vec![root.to_owned()];
    if let Ok(entries) = crate::fs::read_dir(root) {
        folders.extend(
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| crate::fs::is_dir(p)),
        );
    }
    for folder in folders {
        for entry in crate::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                let shown =
                    relative_path(&path, root).unwrap_or_else(|| path.display().to_string());
                out.push(Problem::new(
                    ProblemKind::UnusedCsv,
                    shown,
                    "open this CSV as the dataset if it holds the labels",
                ));
            }
        }
    }
    out
}

/// `train`, `test`, `val`, `Dataset 1`, `set_2`, `masks`, `images`, …
fn looks_like_structure(label: &str) -> bool {
    let l = label.trim().to_ascii_lowercase();
    const NAMES: [&str; 14] = [
        "train",
        "training",
        "test",
        "testing",
        "val",
        "valid",
        "validation",
        "images",
        "imgs",
        "masks",
        "mask",
        "labels",
        "data",
        "dataset",
    ];
    if NAMES.contains(&l.as_str()) {
        return true;
    }
    let word = l.trim_end_matches(|c: char| c.is_ascii_digit());
    let numbered = word.len() < l.len();
    let word = word.trim_end_matches([' ', '_', '-']);
    numbered && ["dataset", "data", "set", "batch", "part", "fold", "split"].contains(&word)
}

/// C-NMC when at least half of the image names parse as C-NMC names.
pub fn detect_folder_format(images: &[FoundFile]) -> DatasetFormat {
    let sample = images.len().min(2000);
    let step = (images.len() / sample.max(1)).max(1);
    let hits = images
        .iter()
        .step_by(step)
        .take(sample)
        .filter(|f| parse_cnmc(file_name(&f.rel)).is_some())
        .count();
    if hits * 2 >= sample {
        DatasetFormat::Cnmc
    } else {
        DatasetFormat::ClassFolders
    }
}

fn file_name(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, name)| name)
}

fn empty_file_problem(bytes: u64) -> Option<String> {
    (bytes == 0).then(|| ProblemKind::EmptyFile.description().to_owned())
}

/// A C-NMC cell: the label is the name's `all` or `hem`. A cell in a folder named for the
/// other class (`hem/UID_3_1_1_all.bmp`) keeps its name's label and comes back with a
/// [`ProblemKind::NameMismatch`] entry: one of the two is wrong, and the user should know.
fn cnmc_record(file: FoundFile) -> (Result<Record, Problem>, Option<Problem>) {
    let Some(name) = parse_cnmc(file_name(&file.rel)) else {
        let problem = Problem::new(
            ProblemKind::NameMismatch,
            file.rel,
            "expected UID_<patient>_<image>_<cell>_<all|hem>.<ext>",
        );
        return (Err(problem), None);
    };
    let folder = file
        .rel
        .rsplit_once('/')
        .map(|(dir, _)| file_name(dir).to_ascii_lowercase());
    let disagrees = folder
        .as_deref()
        .filter(|f| matches!(*f, "all" | "hem") && *f != name.label)
        .map(|f| {
            Problem::new(
                ProblemKind::NameMismatch,
                file.rel.clone(),
                format!(
                    "named {:?} but in a folder {f:?}; labelled {:?} by its name",
                    name.label, name.label
                ),
            )
        });
    let record = Record {
        problem: empty_file_problem(file.bytes),
        path: file.rel,
        labels: vec![name.label],
        patient: Some(name.patient),
        image_no: Some(name.image_no),
        cell_no: Some(name.cell_no),
        bytes: Some(file.bytes),
        ..Default::default()
    };
    (Ok(record), disagrees)
}

/// A class-folder image: the label is the first folder under the root. An image deeper than
/// `<root>/<label>/<image>` keeps that label and comes back with a
/// [`ProblemKind::NestedFolder`] entry, so that `A/b1/x.jpg` is never silently labelled `b1`.
fn class_folder_record(file: FoundFile) -> (Result<Record, Problem>, Option<Problem>) {
    let Some((label, rest)) = file.rel.split_once('/') else {
        let problem = Problem::new(
            ProblemKind::NoClassFolder,
            file.rel,
            "put images in <root>/<label>/",
        );
        return (Err(problem), None);
    };
    let nested = rest.rsplit_once('/').map(|(sub, _name)| {
        Problem::new(
            ProblemKind::NestedFolder,
            file.rel.clone(),
            format!(
                "labelled {label:?}, not {:?}; class folders are <root>/<label>/<image>",
                file_name(sub)
            ),
        )
    });
    let record = Record {
        problem: empty_file_problem(file.bytes),
        labels: vec![label.to_owned()],
        bytes: Some(file.bytes),
        path: file.rel.clone(),
        ..Default::default()
    };
    (Ok(record), nested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_dataset_folder_with_masks_and_label_csvs_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let png = |p: &Path| {
            crate::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::RgbImage::new(4, 4).save(p).unwrap();
        };
        for set in ["Dataset 1", "Dataset 2"] {
            png(&dir.path().join(set).join("001.bmp"));
            png(&dir.path().join(set).join("001.png"));
            crate::fs::write(
                dir.path().join(format!("{set} labels.csv")),
                "id,class\n1,a\n",
            )
            .unwrap();
        }
        let m = scan_folder(dir.path(), None).unwrap();
        let kinds = |k: ProblemKind| m.problems.iter().filter(|p| p.kind == k).count();
        assert_eq!(kinds(ProblemKind::SuspiciousLabel), 2, "{:?}", m.problems);
        assert_eq!(kinds(ProblemKind::SameStem), 2, "{:?}", m.problems);
        assert_eq!(kinds(ProblemKind::UnusedCsv), 2, "{:?}", m.problems);
        // Real class names and distinct files raise nothing.
        let ok = tempfile::tempdir().unwrap();
        png(&ok.path().join("Lymphocyte").join("a.png"));
        png(&ok.path().join("Neutrophil").join("b.png"));
        assert!(scan_folder(ok.path(), None).unwrap().problems.is_empty());
        assert!(looks_like_structure("set_3") && looks_like_structure("Train"));
        assert!(!looks_like_structure("Neutrophil") && !looks_like_structure("hem"));
    }

    /// A C-NMC cell named for one class inside the other class's folder keeps its name's
    /// label and is listed; one in the right folder, or in a neutral one, is not.
    #[test]
    fn a_cnmc_cell_in_the_other_classs_folder_is_listed() {
        let file = |rel: &str| FoundFile {
            rel: rel.to_owned(),
            bytes: 10,
        };
        let (record, note) = cnmc_record(file("fold_0/hem/UID_3_1_1_all.bmp"));
        assert_eq!(record.unwrap().labels, ["all"]);
        let note = note.expect("listed");
        assert_eq!(note.kind, ProblemKind::NameMismatch);
        assert!(
            note.detail.contains("in a folder \"hem\""),
            "{}",
            note.detail
        );
        for fine in [
            "fold_0/ALL/UID_3_1_1_all.bmp",
            "cells/UID_3_1_1_all.bmp",
            "UID_H3_1_1_hem.bmp",
        ] {
            let (record, note) = cnmc_record(file(fine));
            assert!(record.is_ok() && note.is_none(), "{fine}");
        }
    }

    #[test]
    fn nested_class_folders_keep_the_first_folder_as_label_and_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["A/b1/x.jpg", "B/b1/y.jpg", "A/top.jpg", "B/c/d/deep.png"] {
            let path = root.join(rel);
            crate::fs::create_dir_all(path.parent().unwrap()).unwrap();
            crate::fs::write(path, b"not decoded here").unwrap();
        }
        let m = scan_folder(root, Some(DatasetFormat::ClassFolders)).unwrap();
        let labels: Vec<(&str, &str)> = m
            .records
            .iter()
            .map(|r| (r.path.as_str(), r.labels[0].as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("A/b1/x.jpg", "A"),
                ("A/top.jpg", "A"),
                ("B/b1/y.jpg", "B"),
                ("B/c/d/deep.png", "B"),
            ]
        );
        assert_eq!(m.label_names(), ["A", "B"]);
        let nested: Vec<&str> = m
            .problems
            .iter()
            .filter(|p| p.kind == ProblemKind::NestedFolder)
            .map(|p| p.path.as_str())
            .collect();
        assert_eq!(nested, ["A/b1/x.jpg", "B/b1/y.jpg", "B/c/d/deep.png"]);
        let deep = m
            .problems
            .iter()
            .find(|p| p.path == "B/c/d/deep.png")
            .unwrap();
        assert!(
            deep.detail.contains("labelled \"B\", not \"d\""),
            "{}",
            deep.detail
        );
    }
}
