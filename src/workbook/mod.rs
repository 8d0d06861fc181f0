//! The workbook: an ordered list of cells with their parameters, saved as a readable
//! `.cellbook.toml` and re-runnable headless with `cellbench run <book>`.
//!
//! A workbook holds references (dataset paths relative to the workbook, run ids), never
//! results and never secrets.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::dataset::OpenOptions;
use crate::dataset::split::SplitConfig;
use crate::train::TrainConfig;

pub mod graph;
pub mod run;

/// One cell of the notebook.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    /// Stable id within the workbook (survives reordering).
    pub id: u64,
    #[serde(default)]
    pub collapsed: bool,
    #[serde(flatten)]
    pub kind: CellKind,
}

/// What a cell does. Cells below a Dataset cell work on that dataset; Train uses the nearest
/// Split above it when there is one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum CellKind {
    /// Markdown text.
    Note { text: String },
    /// A dataset folder or CSV (relative to the workbook when possible).
    Dataset {
        path: String,
        #[serde(default)]
        options: OpenOptions,
    },
    /// Counts and charts of the dataset above.
    Explore {},
    /// A map of the dataset above: its images' backbone features, projected to 2-D; coloured
    /// by a run's predictions when `run` names one.
    Embedding {
        #[serde(default)]
        run: Option<String>,
    },
    /// Patient split of the dataset above.
    Split {
        #[serde(default)]
        config: SplitConfig,
    },
    /// A training run.
    Train {
        #[serde(default)]
        config: TrainConfig,
        /// The run this cell produced last (under the runs folder).
        #[serde(default)]
        run: Option<String>,
        /// Cross-validate with this many patient-grouped folds instead of training once
        /// (0: train once, on the split above).
        #[serde(default)]
        folds: u32,
    },
    /// Metrics, confusion matrix, ROC curves and mistakes of a run (default: the Train above).
    Evaluate {
        #[serde(default)]
        run: Option<String>,
    },
    /// Several runs side by side.
    Compare {
        #[serde(default)]
        runs: Vec<String>,
    },
    /// The Train cell above, run as a job on a Ray cluster.
    Cluster {
        /// Profile name from clusters.toml (tokens never live in the workbook).
        #[serde(default)]
        profile: String,
        /// The dataset as the cluster sees it (default: the Dataset cell's path).
        #[serde(default)]
        dataset: String,
        /// Run folder location on the cluster (a shared folder, or empty for the job's own).
        #[serde(default)]
        runs: String,
        #[serde(default)]
        gpus: f64,
        /// The submitted job, remembered so a reopened workbook re-attaches to it.
        #[serde(default)]
        job: Option<String>,
    },
    /// Batch prediction of a folder with a run.
    Predict {
        #[serde(default)]
        run: Option<String>,
        #[serde(default)]
        input: String,
        #[serde(default = "default_predictions")]
        output: String,
        /// Test-time augmentation: each image's probabilities averaged over its 8 orientations.
        #[serde(default)]
        tta: bool,
    },
}

fn default_predictions() -> String {
    "predictions.csv".into()
}

impl CellKind {
    pub fn title(&self) -> &'static str {
        match self {
            Self::Note { .. } => "Note",
            Self::Dataset { .. } => "Dataset",
            Self::Explore {} => "Explore",
            Self::Embedding { .. } => "Embedding",
            Self::Split { .. } => "Split",
            Self::Train { .. } => "Train",
            Self::Evaluate { .. } => "Evaluate",
            Self::Compare { .. } => "Compare",
            Self::Predict { .. } => "Predict",
            Self::Cluster { .. } => "Cluster job",
        }
    }

    /// A fresh cell of each kind, in menu order.
    pub fn templates() -> Vec<Self> {
        vec![
            Self::Dataset {
                path: String::new(),
                options: OpenOptions::default(),
            },
            Self::Explore {},
            Self::Embedding { run: None },
            Self::Split {
                config: SplitConfig::default(),
            },
            Self::Train {
                config: TrainConfig::default(),
                run: None,
                folds: 0,
            },
            Self::Evaluate { run: None },
            Self::Compare { runs: Vec::new() },
            Self::Predict {
                run: None,
                input: String::new(),
                output: default_predictions(),
                tta: false,
            },
            Self::Note {
                text: String::new(),
            },
        ]
    }
}

/// A notebook of cells. Unknown keys (a typo such as `[[cellz]]` or `epochz = 3`) make the
/// file fail to load rather than read as less than it says.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workbook {
    #[serde(default)]
    pub title: String,
    /// Folder of run folders, relative to the workbook.
    #[serde(default = "default_runs")]
    pub runs: String,
    #[serde(default, rename = "cell")]
    pub cells: Vec<Cell>,
}

fn default_runs() -> String {
    "runs".into()
}

impl Default for Workbook {
    fn default() -> Self {
        Self {
            title: "Untitled".into(),
            runs: default_runs(),
            cells: Vec::new(),
        }
    }
}

impl Workbook {
    /// The starter workbook: the bundled demo dataset through every step.
    pub fn demo(dataset: &str) -> Self {
        let mut book = Self {
            title: "Demo: white blood cells (BCCD)".into(),
            ..Self::default()
        };
        book.push(CellKind::Note {
            text:
                "# White blood cells\nFive classes of real BCCD crops. Explore the counts, split, \
                   train a linear probe on EfficientNet-Lite0 features, and look at the mistakes."
                    .into(),
        });
        book.push(CellKind::Dataset {
            path: dataset.into(),
            options: OpenOptions::default(),
        });
        book.push(CellKind::Explore {});
        book.push(CellKind::Embedding { run: None });
        book.push(CellKind::Split {
            config: SplitConfig {
                test: 0.0,
                val: 0.3,
                seed: 7,
                by_image: false,
            },
        });
        book.push(CellKind::Train {
            config: TrainConfig {
                epochs: 15,
                ..TrainConfig::default()
            },
            run: None,
            folds: 0,
        });
        book.push(CellKind::Evaluate { run: None });
        book.push(CellKind::Compare { runs: Vec::new() });
        book.push(CellKind::Predict {
            run: None,
            input: dataset.into(),
            output: default_predictions(),
            tta: false,
        });
        book
    }

    /// Appends a cell with a fresh id; returns the id.
    pub fn push(&mut self, kind: CellKind) -> u64 {
        let id = self.next_id();
        self.cells.push(Cell {
            id,
            collapsed: false,
            kind,
        });
        id
    }

    /// Inserts a cell after `after` (or at the end); returns the id.
    pub fn insert_after(&mut self, after: Option<u64>, kind: CellKind) -> u64 {
        let id = self.next_id();
        let at = after
            .and_then(|a| self.position(a))
            .map_or(self.cells.len(), |i| i + 1);
        self.cells.insert(
            at,
            Cell {
                id,
                collapsed: false,
                kind,
            },
        );
        id
    }

    fn next_id(&self) -> u64 {
        self.cells.iter().map(|c| c.id).max().map_or(1, |m| m + 1)
    }

    pub fn position(&self, id: u64) -> Option<usize> {
        self.cells.iter().position(|c| c.id == id)
    }

    pub fn remove(&mut self, id: u64) {
        self.cells.retain(|c| c.id != id);
    }

    /// Moves a cell one place up (`-1`) or down (`+1`).
    pub fn move_cell(&mut self, id: u64, delta: isize) {
        if let Some(i) = self.position(id) {
            let j = i as isize + delta;
            if j >= 0 && (j as usize) < self.cells.len() {
                self.cells.swap(i, j as usize);
            }
        }
    }

    /// The nearest cell above `id` (exclusive) matching `pred`.
    pub fn above(&self, id: u64, pred: impl Fn(&CellKind) -> bool) -> Option<&Cell> {
        let i = self.position(id)?;
        self.cells[..i].iter().rev().find(|c| pred(&c.kind))
    }

    /// Reads a workbook; fails, naming the file and the key, on anything it does not know.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = crate::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("reading the workbook {}", path.display()))
    }

    /// Parses a workbook's text, refusing unknown keys at any depth (the parameter tables of
    /// cells included, whose types accept partial tables).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let book: Self = toml::from_str(text)?;
        let written: toml::Table = toml::from_str(text)?;
        let known = toml::Table::try_from(&book)?;
        if let Some(key) = unknown_key(&written, &known, "") {
            anyhow::bail!("unknown key `{key}`");
        }
        Ok(book)
    }

    /// Saves atomically. An existing file that does not read as a workbook (a typo, a newer
    /// cellbench's keys) is never overwritten: saving fails and the file stays as it is.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if crate::fs::exists(path) {
            let existing = crate::fs::read_to_string(path)
                .map_err(anyhow::Error::from)
                .and_then(|text| Self::parse(&text));
            if let Err(e) = existing {
                anyhow::bail!(
                    "not saving over a file that does not read as a workbook ({e:#}): {}",
                    path.display()
                );
            }
        }
        let text = toml::to_string_pretty(self)?;
        crate::fsio::write_atomic_bytes(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The folder relative paths in this workbook are resolved against.
    pub fn base_dir(path: &Path) -> PathBuf {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    }
}

/// The first key of `written` that `known` (the same file read and written back) lacks, as a
/// dotted path (`cell[2].config.epochz`). A key read back into a type keeps its place when
/// written, so a missing one is a key no type read.
fn unknown_key(written: &toml::Table, known: &toml::Table, at: &str) -> Option<String> {
    written.iter().find_map(|(key, value)| {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        match known.get(key) {
            None => Some(path),
            Some(kept) => unknown_in(value, kept, &path),
        }
    })
}

fn unknown_in(written: &toml::Value, known: &toml::Value, at: &str) -> Option<String> {
    match (written, known) {
        (toml::Value::Table(w), toml::Value::Table(k)) => unknown_key(w, k, at),
        (toml::Value::Array(w), toml::Value::Array(k)) => w
            .iter()
            .zip(k)
            .enumerate()
            .find_map(|(i, (w, k))| unknown_in(w, k, &format!("{at}[{i}]"))),
        _ => None,
    }
}

/// `path` as stored in a workbook at `base`: relative when it lies under `base`, else as is.
pub fn stored_path(path: &Path, base: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
    crate::dataset::relative_path(&abs, &base)
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}

/// Resolves a stored path against the workbook folder.
pub fn resolve_path(stored: &str, base: &Path) -> PathBuf {
    let p = Path::new(stored);
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

/// A Dataset cell's options with their paths (a CSV's images folder) resolved against the
/// workbook folder, as the cell's own path is: the GUI and `cellbench run` open the same files.
pub fn resolve_options(
    options: &crate::dataset::OpenOptions,
    base: &Path,
) -> crate::dataset::OpenOptions {
    let mut resolved = options.clone();
    resolved.images = options
        .images
        .as_ref()
        .map(|p| resolve_path(&p.to_string_lossy(), base));
    resolved
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative images folder is the workbook folder's, never the current directory's.
    #[test]
    fn options_resolve_against_the_workbook_folder() {
        let options = crate::dataset::OpenOptions {
            images: Some("scans/images".into()),
            ..Default::default()
        };
        let base = Path::new("/books");
        assert_eq!(
            resolve_options(&options, base).images,
            Some(PathBuf::from("/books/scans/images"))
        );
        let absolute = crate::dataset::OpenOptions {
            images: Some("/data/x".into()),
            ..Default::default()
        };
        assert_eq!(
            resolve_options(&absolute, base).images,
            Some(PathBuf::from("/data/x"))
        );
    }

    #[test]
    fn toml_round_trip_is_readable() {
        let book = Workbook::demo("data/bccd");
        let text = toml::to_string_pretty(&book).unwrap();
        assert!(text.contains("[[cell]]"), "{text}");
        assert!(text.contains("kind = \"dataset\""), "{text}");
        assert!(text.contains("path = \"data/bccd\""), "{text}");
        let back: Workbook = toml::from_str(&text).unwrap();
        assert_eq!(back, book);
    }

    #[test]
    fn every_cell_kind_reads_back_through_the_strict_parser() {
        let mut book = Workbook::demo("data/bccd");
        for kind in CellKind::templates() {
            book.push(kind);
        }
        book.cells[1].collapsed = true;
        let text = toml::to_string_pretty(&book).unwrap();
        assert_eq!(Workbook::parse(&text).unwrap(), book);
    }

    /// A workbook file in a fresh folder.
    fn written(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("book.cellbook.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn load_error(text: &str) -> String {
        let (_dir, path) = written(text);
        let err = format!("{:#}", Workbook::load(&path).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        err
    }

    #[test]
    fn unknown_keys_fail_to_load_and_are_named() {
        let err = load_error("title = \"t\"\n[[cellz]]\nid = 1\nkind = \"explore\"\n");
        assert!(err.contains("cellz"), "{err}");
        let err = load_error("[[cell]]\nid = 1\nkind = \"dataset\"\npathh = \"data\"\n");
        assert!(err.contains("pathh"), "{err}");
        let err = load_error(
            "[[cell]]\nid = 1\nkind = \"dataset\"\npath = \"d\"\n\
             [[cell]]\nid = 2\nkind = \"train\"\n[cell.config]\nepochz = 3\n",
        );
        assert!(err.contains("cell[1].config.epochz"), "{err}");
        let err = load_error(
            "[[cell]]\nid = 1\nkind = \"dataset\"\npath = \"d\"\n[cell.options]\nimage_patern = \"{id}.png\"\n",
        );
        assert!(err.contains("cell[0].options.image_patern"), "{err}");
    }

    #[test]
    fn a_file_that_does_not_load_is_never_saved_over() {
        let text = "title = \"mine\"\n[[cellz]]\nid = 1\nkind = \"explore\"\n";
        let (_dir, path) = written(text);
        assert!(Workbook::load(&path).is_err());
        let err = Workbook::default().save(&path).unwrap_err();
        assert!(format!("{err:#}").contains("cellz"), "{err:#}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // A workbook that reads is saved over as before.
        let book = Workbook::demo("data/bccd");
        std::fs::write(&path, toml::to_string_pretty(&Workbook::default()).unwrap()).unwrap();
        book.save(&path).unwrap();
        assert_eq!(Workbook::load(&path).unwrap(), book);
    }

    #[test]
    fn add_move_remove_and_lookup_above() {
        let mut book = Workbook::default();
        let d = book.push(CellKind::Dataset {
            path: "a".into(),
            options: OpenOptions::default(),
        });
        let t = book.push(CellKind::Train {
            config: TrainConfig::default(),
            run: None,
            folds: 0,
        });
        let s = book.insert_after(
            Some(d),
            CellKind::Split {
                config: SplitConfig::default(),
            },
        );
        assert_eq!(
            book.cells.iter().map(|c| c.id).collect::<Vec<_>>(),
            [d, s, t]
        );
        assert_eq!(
            book.above(t, |k| matches!(k, CellKind::Split { .. }))
                .unwrap()
                .id,
            s
        );
        book.move_cell(s, 1);
        assert_eq!(
            book.cells.iter().map(|c| c.id).collect::<Vec<_>>(),
            [d, t, s]
        );
        assert!(
            book.above(t, |k| matches!(k, CellKind::Split { .. }))
                .is_none()
        );
        book.move_cell(d, -1);
        assert_eq!(book.cells[0].id, d);
        book.remove(t);
        assert_eq!(book.cells.len(), 2);
    }

    #[test]
    fn paths_are_stored_relative_to_the_workbook() {
        let base = Path::new("/data/books");
        assert_eq!(
            stored_path(Path::new("/data/books/cells/a"), base),
            "cells/a"
        );
        assert_eq!(stored_path(Path::new("/elsewhere/b"), base), "/elsewhere/b");
        assert_eq!(
            resolve_path("cells/a", base),
            Path::new("/data/books/cells/a")
        );
        assert_eq!(resolve_path("/x", base), Path::new("/x"));
    }
}
