//! Datasets: scanning folders and CSV manifests into a [`Manifest`], naming conventions,
//! patient-grouped splits, image decoding with limits and the synthetic generator.
//!
//! Nothing here decodes pixels to build a manifest; only [`headers`] (on request) and
//! [`image_io`] (when an image is actually used) touch image contents.

pub mod naming;
pub mod preprocess;
pub mod problem;

pub mod csv_manifest;
pub mod duplicates;
#[cfg(not(target_arch = "wasm32"))]
pub mod frame;
pub mod headers;
pub mod image_io;
pub mod scan;
pub mod split;
#[cfg(not(target_arch = "wasm32"))]
pub mod synth;

use std::path::{Path, PathBuf};

pub use problem::{Problem, ProblemKind, ProblemSummary};
pub use split::Split;

/// How a dataset names its images and labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetFormat {
    /// C-NMC 2019: `UID_<patient>_<image>_<cell>_<all|hem>.bmp` anywhere under a folder.
    Cnmc,
    /// `<root>/<label>/<image>`; the label is the image's parent folder.
    ClassFolders,
    /// NIH ChestX-ray14 `Data_Entry_2017.csv` (`Image Index`, `Finding Labels`, `Patient ID`).
    Nih,
    /// Kaggle diabetic retinopathy `trainLabels.csv` (`image,level`; patient from `10_left`).
    Retina,
    /// Any CSV with a path column, a label column (`A|B` for multi-label) and an optional
    /// patient column. Also the format cellbench itself writes (`split` column included).
    Csv,
}

impl DatasetFormat {
    pub const ALL: [Self; 5] = [
        Self::Cnmc,
        Self::ClassFolders,
        Self::Nih,
        Self::Retina,
        Self::Csv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Cnmc => "cnmc",
            Self::ClassFolders => "class-folders",
            Self::Nih => "nih",
            Self::Retina => "retina",
            Self::Csv => "csv",
        }
    }

    /// Human-readable description for reports.
    pub fn description(self) -> &'static str {
        match self {
            Self::Cnmc => "C-NMC cell names (UID_<patient>_<image>_<cell>_<all|hem>)",
            Self::ClassFolders => "class folders (<root>/<label>/<image>)",
            Self::Nih => "NIH ChestX-ray14 label CSV",
            Self::Retina => "Kaggle retinopathy trainLabels.csv",
            Self::Csv => "CSV manifest",
        }
    }
}

impl std::fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DatasetFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown dataset format {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// Options for opening a dataset. One struct serves the CLI, the GUI and workbooks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct OpenOptions {
    /// Force a format instead of detecting it.
    pub format: Option<DatasetFormat>,
    /// For CSV inputs: the folder where the listed images live (default: the CSV's folder).
    pub images: Option<PathBuf>,
    /// CSV column holding the image path or id (default: guessed from the header).
    pub path_column: Option<String>,
    /// CSV column holding the label(s) (default: guessed).
    pub label_column: Option<String>,
    /// CSV column holding the patient id (default: guessed; optional).
    pub patient_column: Option<String>,
    /// For CSVs whose path column holds ids: the image file name made from each id, e.g.
    /// `{id}.bmp` or `{id:03}.bmp` (numeric ids zero-padded to 3 digits: `19` → `019.bmp`).
    /// Without it an id without an extension matches any image file of that name, and an id
    /// that matches several files (`183.bmp`, `183.png`) is listed as ambiguous.
    #[serde(default)]
    pub image_pattern: Option<String>,
}

/// One image of a dataset.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Path relative to [`Manifest::root`], `/`-separated.
    pub path: String,
    /// One label, or several for multi-label data, in the order given.
    pub labels: Vec<String>,
    pub patient: Option<String>,
    /// Microscope image number (C-NMC).
    pub image_no: Option<u32>,
    /// Cell index within the microscope image (C-NMC).
    pub cell_no: Option<u32>,
    pub split: Option<Split>,
    /// File size; `None` when the file is missing.
    pub bytes: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Container format read from the header (`png`, `jpeg`, …).
    pub format: Option<String>,
    /// Why this image cannot be used (missing, empty, unreadable); `None` when usable.
    pub problem: Option<String>,
}

impl Record {
    /// The labels joined with `|`, as they appear in CSV files.
    pub fn label_string(&self) -> String {
        self.labels.join("|")
    }

    /// True when the image file exists and nothing is known to be wrong with it.
    pub fn is_usable(&self) -> bool {
        self.problem.is_none()
    }
}

/// A scanned dataset: one [`Record`] per image plus everything that went wrong on the way.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Folder that record paths are relative to.
    pub root: PathBuf,
    /// What was opened (the folder or CSV the user gave).
    pub source: PathBuf,
    pub format: DatasetFormat,
    /// Sorted by path.
    pub records: Vec<Record>,
    pub problems: Vec<Problem>,
    /// Groups of record paths whose files are identical (see [`duplicates`]); filled when the
    /// dataset is opened. Splits keep each group on one side.
    #[serde(default)]
    pub copies: Vec<Vec<String>>,
}

impl Manifest {
    /// Absolute (or root-relative) path of a record's image.
    pub fn image_path(&self, record: &Record) -> PathBuf {
        self.root.join(&record.path)
    }

    /// True when any record has more than one label.
    pub fn is_multi_label(&self) -> bool {
        self.records.iter().any(|r| r.labels.len() > 1)
    }

    /// True when records carry patient ids.
    pub fn has_patients(&self) -> bool {
        self.records.iter().any(|r| r.patient.is_some())
    }

    /// Distinct labels, sorted.
    pub fn label_names(&self) -> Vec<String> {
        let set: std::collections::BTreeSet<&str> = self
            .records
            .iter()
            .flat_map(|r| r.labels.iter().map(String::as_str))
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Problems grouped by kind, with a count and the first few paths of each.
    pub fn problem_summary(&self) -> Vec<ProblemSummary> {
        problem::summarise(&self.problems)
    }
}

/// Errors that stop a dataset from opening at all. Per-image trouble is a [`Problem`] instead.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no such file or folder: {0}")]
    NotFound(PathBuf),
    #[error("no images found (looked for {exts}) in {path}", exts = naming::IMAGE_EXTENSIONS.join(", "))]
    NoImages { path: PathBuf },
    #[error("the CSV has no column {wanted:?} (columns: {columns}): {path}")]
    MissingColumn {
        wanted: String,
        columns: String,
        path: PathBuf,
    },
    #[error(
        "could not guess the {role} column (columns: {columns}); name it with --{role}-column: {path}"
    )]
    UnknownColumn {
        role: &'static str,
        columns: String,
        path: PathBuf,
    },
    #[error("the CSV has no rows: {0}")]
    EmptyCsv(PathBuf),
    #[error("could not read CSV: {message}: {path}")]
    Csv { path: PathBuf, message: String },
    #[error("bad image pattern {pattern:?}: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("{format} expects a {expected}, got {path}")]
    WrongKind {
        format: DatasetFormat,
        expected: &'static str,
        path: PathBuf,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Opens a folder or CSV as a dataset, detecting the format unless `options.format` forces one.
pub fn open(source: &Path, options: &OpenOptions) -> Result<Manifest, OpenError> {
    if !crate::fs::exists(source) {
        return Err(OpenError::NotFound(source.to_owned()));
    }
    let mut manifest = if crate::fs::is_dir(source) {
        if let Some(format @ (DatasetFormat::Nih | DatasetFormat::Retina | DatasetFormat::Csv)) =
            options.format
        {
            return Err(OpenError::WrongKind {
                format,
                expected: "CSV file",
                path: source.to_owned(),
            });
        }
        scan::scan_folder(source, options.format)
    } else {
        if let Some(format @ (DatasetFormat::Cnmc | DatasetFormat::ClassFolders)) = options.format {
            return Err(OpenError::WrongKind {
                format,
                expected: "folder",
                path: source.to_owned(),
            });
        }
        csv_manifest::read_csv_dataset(source, options)
    }?;
    duplicates::check_copies(&mut manifest);
    Ok(manifest)
}

/// `path` relative to `base` when it lies under it, `/`-separated; otherwise `None`.
pub fn relative_path(path: &Path, base: &Path) -> Option<String> {
    let rel = path.strip_prefix(base).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}
