//! CSV datasets: NIH ChestX-ray14, Kaggle retinopathy, and generic manifests
//! (including the ones cellbench writes).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::naming::{is_image_extension, parse_retina, split_labels};
use super::scan::walk_images;
use super::{DatasetFormat, Manifest, OpenError, OpenOptions, Problem, ProblemKind, Record, Split};

const PATH_CANDIDATES: [&str; 9] = [
    "path",
    "image_path",
    "file",
    "filename",
    "file_name",
    "image",
    "image_id",
    "image index",
    "id",
];
const LABEL_CANDIDATES: [&str; 9] = [
    "label",
    "labels",
    "finding labels",
    "class",
    "target",
    "diagnosis",
    "level",
    "category",
    "y",
];
const PATIENT_CANDIDATES: [&str; 7] = [
    "patient",
    "patient id",
    "patient_id",
    "patientid",
    "subject",
    "subject_id",
    "case_id",
];

/// Extensions tried, in order, for CSV ids without one (`10_left` → `10_left.jpeg`).
const ID_EXTENSIONS: [&str; 6] = ["jpeg", "jpg", "png", "tif", "tiff", "bmp"];

/// Reads the CSV into a frame of strings (no type inference: ids such as `00012` stay intact).
pub fn read_csv_strings(path: &Path) -> Result<DataFrame, OpenError> {
    let csv_err = |e: PolarsError| OpenError::Csv {
        path: path.to_owned(),
        message: e.to_string(),
    };
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .map_parse_options(|o| o.with_truncate_ragged_lines(true))
        .try_into_reader_with_file_path(Some(path.to_owned()))
        .map_err(csv_err)?
        .finish()
        .map_err(csv_err)
}

/// Detects the CSV flavour from its column names.
pub fn detect_csv_format(columns: &[String]) -> DatasetFormat {
    let has = |name: &str| columns.iter().any(|c| c == name);
    if has("Image Index") && has("Finding Labels") {
        DatasetFormat::Nih
    } else if columns.len() == 2 && has("image") && has("level") {
        DatasetFormat::Retina
    } else {
        DatasetFormat::Csv
    }
}

fn find_column(columns: &[String], candidates: &[&str]) -> Option<String> {
    candidates.iter().find_map(|cand| {
        columns
            .iter()
            .find(|c| c.trim().eq_ignore_ascii_case(cand))
            .cloned()
    })
}

fn string_column(
    df: &DataFrame,
    name: &str,
    path: &Path,
) -> Result<Vec<Option<String>>, OpenError> {
    let column = df.column(name).map_err(|_| OpenError::MissingColumn {
        wanted: name.to_owned(),
        columns: column_list(df),
        path: path.to_owned(),
    })?;
    let ca = column.str().map_err(|e| OpenError::Csv {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(ca
        .iter()
        .map(|v| {
            v.map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .collect())
}

fn column_list(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The columns a CSV dataset is read from, after detection and user overrides.
#[derive(Debug)]
struct Columns {
    path: String,
    label: String,
    patient: Option<String>,
}

fn choose_columns(
    format: DatasetFormat,
    names: &[String],
    options: &OpenOptions,
    path: &Path,
) -> Result<Columns, OpenError> {
    let (default_path, default_label, default_patient) = match format {
        DatasetFormat::Nih => (
            Some("Image Index".to_owned()),
            Some("Finding Labels".to_owned()),
            Some("Patient ID".to_owned()),
        ),
        DatasetFormat::Retina => (Some("image".to_owned()), Some("level".to_owned()), None),
        _ => (
            find_column(names, &PATH_CANDIDATES),
            find_column(names, &LABEL_CANDIDATES),
            find_column(names, &PATIENT_CANDIDATES),
        ),
    };
    let unknown = |role| OpenError::UnknownColumn {
        role,
        columns: names.join(", "),
        path: path.to_owned(),
    };
    let path_col = options
        .path_column
        .clone()
        .or(default_path)
        .ok_or_else(|| unknown("path"))?;
    let label_col = options
        .label_column
        .clone()
        .or(default_label)
        .ok_or_else(|| unknown("label"))?;
    let patient_col = options.patient_column.clone().or(default_patient);
    for wanted in [Some(&path_col), Some(&label_col), patient_col.as_ref()]
        .into_iter()
        .flatten()
    {
        if !names.contains(wanted) {
            return Err(OpenError::MissingColumn {
                wanted: wanted.clone(),
                columns: names.join(", "),
                path: path.to_owned(),
            });
        }
    }
    Ok(Columns {
        path: path_col,
        label: label_col,
        patient: patient_col,
    })
}

/// Where the images of a CSV dataset are, found by one walk of the images folder.
struct ImageIndex {
    /// Relative paths present under the images folder.
    present: HashSet<String>,
    /// File name → relative path, for CSVs that list bare names of files kept in subfolders
    /// (NIH ships `images_001/images/…`). `None` marks a name found more than once.
    by_name: HashMap<String, Option<String>>,
    /// Size of each present file.
    bytes: HashMap<String, u64>,
}

impl ImageIndex {
    fn build(images_dir: &Path) -> (Self, Vec<Problem>) {
        let mut index = Self {
            present: HashSet::new(),
            by_name: HashMap::new(),
            bytes: HashMap::new(),
        };
        if !images_dir.is_dir() {
            return (index, Vec::new());
        }
        let walk = walk_images(images_dir);
        for f in walk.images {
            let name = f
                .rel
                .rsplit_once('/')
                .map_or(f.rel.as_str(), |(_, n)| n)
                .to_owned();
            index
                .by_name
                .entry(name)
                .and_modify(|v| *v = None)
                .or_insert_with(|| Some(f.rel.clone()));
            index.bytes.insert(f.rel.clone(), f.bytes);
            index.present.insert(f.rel);
        }
        // Non-image files next to a CSV are expected (the CSV itself): do not report them.
        let problems = walk
            .problems
            .into_iter()
            .filter(|p| p.kind != ProblemKind::NotAnImage)
            .collect();
        (index, problems)
    }

    fn is_empty(&self) -> bool {
        self.present.is_empty()
    }

    /// Resolves a CSV path value to a path under the images folder (or an absolute path that
    /// exists) and its size.
    fn resolve(&self, value: &str) -> Option<(String, u64)> {
        if Path::new(value).is_absolute() {
            let meta = std::fs::metadata(value).ok().filter(|m| m.is_file())?;
            return Some((value.to_owned(), meta.len()));
        }
        let found = self.resolve_relative(value)?;
        let bytes = self.bytes.get(&found).copied().unwrap_or(0);
        Some((found, bytes))
    }

    fn resolve_relative(&self, value: &str) -> Option<String> {
        let value = value.trim_start_matches("./").replace('\\', "/");
        let has_ext = value
            .rsplit_once('.')
            .is_some_and(|(_, ext)| is_image_extension(ext));
        let candidates: Vec<String> = if has_ext {
            vec![value]
        } else {
            ID_EXTENSIONS
                .iter()
                .map(|e| format!("{value}.{e}"))
                .collect()
        };
        for cand in &candidates {
            if self.present.contains(cand) {
                return Some(cand.clone());
            }
        }
        for cand in &candidates {
            let name = cand.rsplit_once('/').map_or(cand.as_str(), |(_, n)| n);
            if let Some(Some(rel)) = self.by_name.get(name) {
                return Some(rel.clone());
            }
        }
        None
    }
}

/// Reads a CSV dataset.
pub fn read_csv_dataset(source: &Path, options: &OpenOptions) -> Result<Manifest, OpenError> {
    let df = read_csv_strings(source)?;
    if df.height() == 0 {
        return Err(OpenError::EmptyCsv(source.to_owned()));
    }
    let names: Vec<String> = df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    let format = options.format.unwrap_or_else(|| detect_csv_format(&names));
    let cols = choose_columns(format, &names, options, source)?;

    let paths = string_column(&df, &cols.path, source)?;
    let labels = string_column(&df, &cols.label, source)?;
    let patients = match &cols.patient {
        Some(c) => string_column(&df, c, source)?,
        None => vec![None; df.height()],
    };
    let optional = |name: &str| -> Result<Vec<Option<String>>, OpenError> {
        if names.iter().any(|n| n == name) && format == DatasetFormat::Csv {
            string_column(&df, name, source)
        } else {
            Ok(vec![None; df.height()])
        }
    };
    let splits = optional("split")?;
    let image_nos = optional("image_no")?;
    let cell_nos = optional("cell_no")?;

    let csv_dir = source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root: PathBuf = options.images.clone().unwrap_or_else(|| csv_dir.to_owned());
    let (index, mut problems) = ImageIndex::build(&root);
    let no_images_at_all = index.is_empty();

    let mut seen = HashSet::with_capacity(df.height());
    let mut records = Vec::with_capacity(df.height());
    let mut missing = 0usize;
    for row in 0..df.height() {
        let line = row + 2; // 1-based, after the header
        let (Some(value), Some(label_cell)) = (&paths[row], &labels[row]) else {
            problems.push(Problem::new(
                ProblemKind::BadRow,
                format!("{}:{line}", source.display()),
                "empty path or label",
            ));
            continue;
        };
        let row_labels = if format == DatasetFormat::Nih || format == DatasetFormat::Csv {
            split_labels(label_cell)
        } else {
            vec![label_cell.clone()]
        };
        if row_labels.is_empty() {
            problems.push(Problem::new(
                ProblemKind::BadRow,
                format!("{}:{line}", source.display()),
                "empty label",
            ));
            continue;
        }
        let resolved = index.resolve(value);
        let rel = resolved
            .as_ref()
            .map_or_else(|| value.clone(), |(rel, _)| rel.clone());
        if !seen.insert(rel.clone()) {
            problems.push(Problem::new(
                ProblemKind::DuplicatePath,
                rel,
                format!("line {line}; the first row is kept"),
            ));
            continue;
        }
        let patient = patients[row].clone().or_else(|| {
            (format == DatasetFormat::Retina)
                .then(|| parse_retina(value).map(|r| r.patient))
                .flatten()
        });
        let bytes = resolved.as_ref().map(|(_, bytes)| *bytes);
        let problem = match bytes {
            None => {
                missing += 1;
                if !no_images_at_all {
                    problems.push(Problem::new(
                        ProblemKind::MissingImage,
                        value.clone(),
                        format!("line {line}"),
                    ));
                }
                Some(ProblemKind::MissingImage.description().to_owned())
            }
            Some(0) => {
                problems.push(Problem::new(ProblemKind::EmptyFile, rel.clone(), ""));
                Some(ProblemKind::EmptyFile.description().to_owned())
            }
            _ => None,
        };
        records.push(Record {
            path: rel,
            labels: row_labels,
            patient,
            image_no: image_nos[row].as_deref().and_then(|s| s.parse().ok()),
            cell_no: cell_nos[row].as_deref().and_then(|s| s.parse().ok()),
            split: splits[row].as_deref().and_then(|s| s.parse::<Split>().ok()),
            bytes,
            problem,
            ..Default::default()
        });
    }
    if no_images_at_all && missing > 0 {
        problems.push(Problem::new(
            ProblemKind::MissingImage,
            root.display().to_string(),
            format!(
                "none of the {missing} listed images is under this folder; counting labels only (give the images folder with --images)"
            ),
        ));
    }
    records.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(Manifest {
        root,
        source: source.to_owned(),
        format,
        records,
        problems,
    })
}
