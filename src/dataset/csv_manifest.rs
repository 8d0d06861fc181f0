//! CSV datasets: NIH ChestX-ray14, Kaggle retinopathy, and generic manifests
//! (including the ones cellbench writes).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::fsio::CsvTable;

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

/// Longest piece of a CSV parser's message quoted in an error, in bytes.
const MAX_MESSAGE_BYTES: usize = 200;

/// Reads the CSV into a frame of strings (no type inference: ids such as `00012` stay intact).
///
/// A CSV with an unterminated quote is refused with the line where the quote opens; parser
/// errors are cut to a couple of hundred bytes (they can quote the rest of the file).
pub fn read_csv_strings(path: &Path) -> Result<CsvTable, OpenError> {
    let csv_err = |message: String| OpenError::Csv {
        path: path.to_owned(),
        message,
    };
    let bytes = crate::fs::read(path).map_err(|e| csv_err(e.to_string()))?;
    if let Some(quote) = unterminated_quote(&bytes) {
        return Err(csv_err(format!(
            "line {}: a quote is never closed (the rest of the file would be one field): {}",
            quote.line, quote.excerpt
        )));
    }
    let table = CsvTable::parse(&String::from_utf8_lossy(&bytes))
        .map_err(|e| csv_err(clip_message(&e, MAX_MESSAGE_BYTES)))?;
    let mut seen = HashSet::new();
    if let Some(twice) = table.header.iter().find(|h| !seen.insert(h.trim())) {
        return Err(csv_err(format!(
            "the column {twice:?} appears twice in the header"
        )));
    }
    Ok(table)
}

/// `text` on one line, cut to at most `max_bytes` (at a character boundary) with `…`.
fn clip_message(text: &str, max_bytes: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= max_bytes {
        return one_line;
    }
    let mut cut = max_bytes;
    while !one_line.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &one_line[..cut])
}

/// Where a quote that is never closed opens.
#[derive(Debug, PartialEq, Eq)]
struct OpenQuote {
    /// 1-based line number.
    line: usize,
    /// The start of that line (at most [`MAX_MESSAGE_BYTES`]), quoted.
    excerpt: String,
}

/// One pass over the file counting quotes (`""` inside a quoted field counts twice, so it
/// never changes the parity): `Some` when the file ends inside a quoted field.
fn unterminated_quote(bytes: &[u8]) -> Option<OpenQuote> {
    let mut line = 1usize;
    let mut line_start = 0usize; // byte offset of the current line
    let mut open: Option<(usize, usize)> = None; // (line, line start) of the open quote
    for (offset, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => {
                open = match open {
                    Some(_) => None,
                    None => Some((line, line_start)),
                }
            }
            b'\n' => {
                line += 1;
                line_start = offset + 1;
            }
            _ => {}
        }
    }
    let (line, start) = open?;
    let head = &bytes[start..bytes.len().min(start + MAX_MESSAGE_BYTES + 4)];
    let text = String::from_utf8_lossy(head);
    let first_line = text.split('\n').next().unwrap_or_default();
    Some(OpenQuote {
        line,
        excerpt: format!(
            "`{}`",
            clip_message(first_line.trim_end(), MAX_MESSAGE_BYTES)
        ),
    })
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

fn string_column(df: &CsvTable, name: &str, path: &Path) -> Result<Vec<Option<String>>, OpenError> {
    let column = df.column(name).ok_or_else(|| OpenError::MissingColumn {
        wanted: name.to_owned(),
        columns: column_list(df),
        path: path.to_owned(),
    })?;
    Ok(column
        .into_iter()
        .map(|v| (!v.is_empty()).then_some(v))
        .collect())
}

fn column_list(df: &CsvTable) -> String {
    df.header.join(", ")
}

/// The columns a CSV dataset is read from, after detection and user overrides.
#[derive(Debug)]
struct Columns {
    path: String,
    /// `None` only where labels are optional (prediction) and none could be guessed.
    label: Option<String>,
    patient: Option<String>,
}

/// Whether a CSV's rows must carry labels: a dataset's must; images to predict need none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Labels {
    Required,
    Optional,
}

fn choose_columns(
    format: DatasetFormat,
    names: &[String],
    options: &OpenOptions,
    path: &Path,
    labels: Labels,
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
    let label_col = match options.label_column.clone().or(default_label) {
        Some(c) => Some(c),
        None if labels == Labels::Optional => None,
        None => return Err(unknown("label")),
    };
    let patient_col = options.patient_column.clone().or(default_patient);
    for wanted in [Some(&path_col), label_col.as_ref(), patient_col.as_ref()]
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

/// A file-name pattern for CSV ids: literal text around `{id}` or `{id:0N}` (numeric ids
/// zero-padded to N digits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImagePattern {
    parts: Vec<PatternPart>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PatternPart {
    Text(String),
    /// `{id}` (`pad` 0) or `{id:0N}`.
    Id {
        pad: usize,
    },
}

impl ImagePattern {
    /// Parses `{id}.bmp`, `{id:03}.bmp`, `images/{id}.png`, …
    pub fn parse(pattern: &str) -> Result<Self, OpenError> {
        let bad = |message: &str| OpenError::BadPattern {
            pattern: pattern.to_owned(),
            message: message.to_owned(),
        };
        let mut parts = Vec::new();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(PatternPart::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad("a `{` is never closed"))?
                + open;
            let field = &rest[open + 1..close];
            let pad = match field.strip_prefix("id") {
                Some("") => 0,
                Some(spec) => spec
                    .strip_prefix(":0")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=32).contains(n))
                    .ok_or_else(|| bad("write {id} or {id:0N}, e.g. {id:03}"))?,
                None => return Err(bad("the only field is {id} (or {id:0N})")),
            };
            parts.push(PatternPart::Id { pad });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(bad("a `}` without its `{`"));
        }
        if !rest.is_empty() {
            parts.push(PatternPart::Text(rest.to_owned()));
        }
        if !parts.iter().any(|p| matches!(p, PatternPart::Id { .. })) {
            return Err(bad("it has no {id} field"));
        }
        Ok(Self { parts })
    }

    /// The file name for one id. Only ids made of digits are zero-padded.
    pub fn apply(&self, id: &str) -> String {
        let numeric = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit());
        let mut out = String::new();
        for part in &self.parts {
            match part {
                PatternPart::Text(t) => out.push_str(t),
                PatternPart::Id { pad } if numeric => {
                    out.push_str(&format!("{id:0>pad$}", pad = (*pad).min(32)));
                }
                PatternPart::Id { .. } => out.push_str(id),
            }
        }
        out
    }
}

/// How one CSV path value was matched to a file.
#[derive(Debug, PartialEq, Eq)]
enum Resolution {
    /// One file: its path under the images folder (or the absolute path given) and size.
    Found {
        rel: String,
        bytes: u64,
        /// Matched only through a zero-padded name (`19` → `019.bmp`).
        padded: bool,
    },
    /// Several files fit, sorted.
    Ambiguous(Vec<String>),
    Missing,
}

/// Where the images of a CSV dataset are, found by one walk of the images folder.
struct ImageIndex {
    /// Relative paths present under the images folder, with their sizes.
    bytes: HashMap<String, u64>,
    /// File name → relative paths, for CSVs that list bare names of files kept in subfolders
    /// (NIH ships `images_001/images/…`).
    by_name: HashMap<String, Vec<String>>,
    /// Relative path without its extension → relative paths (`a/183` → `a/183.bmp`).
    by_stem: HashMap<String, Vec<String>>,
    /// File name without its extension → relative paths.
    by_name_stem: HashMap<String, Vec<String>>,
    /// For all-digit file names: the number without leading zeros → relative paths
    /// (`19` → `019.bmp`).
    by_number: HashMap<String, Vec<String>>,
}

fn file_name(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, n)| n)
}

fn split_ext(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once('.') {
        Some((stem, ext)) if is_image_extension(ext) && !stem.ends_with('/') => (stem, Some(ext)),
        _ => (name, None),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn without_leading_zeros(digits: &str) -> &str {
    let t = digits.trim_start_matches('0');
    if t.is_empty() { "0" } else { t }
}

fn one_or_ambiguous(found: &[String], bytes: &HashMap<String, u64>, padded: bool) -> Resolution {
    match found {
        [] => Resolution::Missing,
        [rel] => Resolution::Found {
            rel: rel.clone(),
            bytes: bytes.get(rel).copied().unwrap_or(0),
            padded,
        },
        many => {
            let mut v = many.to_vec();
            v.sort();
            Resolution::Ambiguous(v)
        }
    }
}

impl ImageIndex {
    fn build(images_dir: &Path) -> (Self, Vec<Problem>) {
        let mut index = Self {
            bytes: HashMap::new(),
            by_name: HashMap::new(),
            by_stem: HashMap::new(),
            by_name_stem: HashMap::new(),
            by_number: HashMap::new(),
        };
        if !crate::fs::is_dir(images_dir) {
            return (index, Vec::new());
        }
        let walk = walk_images(images_dir);
        for f in walk.images {
            let name = file_name(&f.rel);
            let (stem, _) = split_ext(name);
            let (rel_stem, _) = split_ext(&f.rel);
            let push = |map: &mut HashMap<String, Vec<String>>, key: &str| {
                map.entry(key.to_owned()).or_default().push(f.rel.clone());
            };
            push(&mut index.by_name, name);
            push(&mut index.by_name_stem, stem);
            push(&mut index.by_stem, rel_stem);
            if is_number(stem) {
                push(&mut index.by_number, without_leading_zeros(stem));
            }
            index.bytes.insert(f.rel, f.bytes);
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
        self.bytes.is_empty()
    }

    /// Resolves a CSV path value to a path under the images folder (or an absolute path that
    /// exists). With a pattern, the value is an id and the pattern names its file.
    fn resolve(&self, value: &str, pattern: Option<&ImagePattern>) -> Resolution {
        if Path::new(value).is_absolute() {
            return match crate::fs::metadata(value).ok().filter(|m| m.is_file()) {
                Some(meta) => Resolution::Found {
                    rel: value.to_owned(),
                    bytes: meta.len(),
                    padded: false,
                },
                None => Resolution::Missing,
            };
        }
        let value = value.trim_start_matches("./").replace('\\', "/");
        if let Some(pattern) = pattern {
            return self.exact(&pattern.apply(&value));
        }
        let (stem, ext) = split_ext(&value);
        let found = match ext {
            Some(_) => self.exact(&value),
            None => match self.by_stem.get(stem) {
                Some(v) => one_or_ambiguous(v, &self.bytes, false),
                None => self
                    .by_name_stem
                    .get(file_name(stem))
                    .map_or(Resolution::Missing, |v| {
                        one_or_ambiguous(v, &self.bytes, false)
                    }),
            },
        };
        if found != Resolution::Missing {
            return found;
        }
        // Numeric ids: zero-padded names, when nothing else matched (`19` → `019.bmp`).
        let (dir, name) = match stem.rsplit_once('/') {
            Some((dir, name)) => (Some(dir), name),
            None => (None, stem),
        };
        if !is_number(name) {
            return Resolution::Missing;
        }
        let Some(candidates) = self.by_number.get(without_leading_zeros(name)) else {
            return Resolution::Missing;
        };
        let fits: Vec<String> = candidates
            .iter()
            .filter(|rel| {
                let (rel_stem, rel_ext) = split_ext(rel);
                let same_ext =
                    ext.is_none_or(|e| rel_ext.is_some_and(|r| r.eq_ignore_ascii_case(e)));
                let same_dir =
                    dir.is_none_or(|d| rel_stem.rsplit_once('/').is_some_and(|(rd, _)| rd == d));
                same_ext && same_dir
            })
            .cloned()
            .collect();
        one_or_ambiguous(&fits, &self.bytes, true)
    }

    /// A file name with its extension: the path under the images folder, or a unique file of
    /// that name in any subfolder.
    fn exact(&self, value: &str) -> Resolution {
        if let Some(&bytes) = self.bytes.get(value) {
            return Resolution::Found {
                rel: value.to_owned(),
                bytes,
                padded: false,
            };
        }
        self.by_name
            .get(file_name(value))
            .map_or(Resolution::Missing, |v| {
                one_or_ambiguous(v, &self.bytes, false)
            })
    }
}

fn empty_file_problem(bytes: u64) -> Option<String> {
    (bytes == 0).then(|| ProblemKind::EmptyFile.description().to_owned())
}

/// Lists at most five candidates.
fn candidate_list(candidates: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = candidates
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if candidates.len() > SHOWN {
        text.push_str(&format!(" and {} more", candidates.len() - SHOWN));
    }
    text
}

/// The pattern that names a zero-padded file, for the hint: `019.bmp` → `{id:03}.bmp`.
fn padded_pattern_hint(rel: &str) -> Option<String> {
    let (stem, ext) = split_ext(file_name(rel));
    Some(format!("{{id:0{}}}.{}", stem.len(), ext?))
}

/// Reads a CSV dataset.
pub fn read_csv_dataset(source: &Path, options: &OpenOptions) -> Result<Manifest, OpenError> {
    read_csv(source, options, Labels::Required)
}

/// Reads a CSV of images to predict: as [`read_csv_dataset`], but a label column is optional
/// (a CSV of paths alone is read) and a row with an empty label is kept without labels.
pub fn read_csv_images(source: &Path, options: &OpenOptions) -> Result<Manifest, OpenError> {
    read_csv(source, options, Labels::Optional)
}

fn read_csv(source: &Path, options: &OpenOptions, need: Labels) -> Result<Manifest, OpenError> {
    let pattern = options
        .image_pattern
        .as_deref()
        .map(ImagePattern::parse)
        .transpose()?;
    let df = read_csv_strings(source)?;
    if df.height() == 0 {
        return Err(OpenError::EmptyCsv(source.to_owned()));
    }
    let names: Vec<String> = df.header.clone();
    let format = options.format.unwrap_or_else(|| detect_csv_format(&names));
    let cols = choose_columns(format, &names, options, source, need)?;

    let paths = string_column(&df, &cols.path, source)?;
    let labels = match &cols.label {
        Some(c) => string_column(&df, c, source)?,
        None => vec![None; df.height()],
    };
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
    let mut padded_ids = 0usize;
    let mut padded_example: Option<(String, String)> = None;
    for row in 0..df.height() {
        let line = row + 2; // 1-based, after the header
        let (Some(value), label_cell) = (&paths[row], &labels[row]) else {
            problems.push(Problem::new(
                ProblemKind::BadRow,
                format!("{}:{line}", source.display()),
                "empty path",
            ));
            continue;
        };
        let row_labels = match label_cell {
            Some(cell) if format == DatasetFormat::Nih || format == DatasetFormat::Csv => {
                split_labels(cell)
            }
            Some(cell) => vec![cell.clone()],
            None => Vec::new(),
        };
        if row_labels.is_empty() && need == Labels::Required {
            problems.push(Problem::new(
                ProblemKind::BadRow,
                format!("{}:{line}", source.display()),
                "empty label",
            ));
            continue;
        }
        let resolution = index.resolve(value, pattern.as_ref());
        let rel = match &resolution {
            Resolution::Found { rel, .. } => rel.clone(),
            Resolution::Ambiguous(_) | Resolution::Missing => value.clone(),
        };
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
        let (bytes, problem) = match resolution {
            Resolution::Found { bytes, padded, .. } => {
                if padded {
                    padded_ids += 1;
                    padded_example.get_or_insert_with(|| (value.clone(), rel.clone()));
                }
                if bytes == 0 {
                    problems.push(Problem::new(ProblemKind::EmptyFile, rel.clone(), ""));
                }
                (Some(bytes), empty_file_problem(bytes))
            }
            Resolution::Ambiguous(candidates) => {
                let list = candidate_list(&candidates);
                problems.push(Problem::new(
                    ProblemKind::AmbiguousId,
                    value.clone(),
                    format!(
                        "ambiguous: {list} (line {line}); name the extension in the CSV or give --image-pattern"
                    ),
                ));
                (None, Some(format!("ambiguous: {list}")))
            }
            Resolution::Missing => {
                missing += 1;
                if !no_images_at_all {
                    problems.push(Problem::new(
                        ProblemKind::MissingImage,
                        value.clone(),
                        format!("line {line}"),
                    ));
                }
                (
                    None,
                    Some(ProblemKind::MissingImage.description().to_owned()),
                )
            }
        };
        // A split column's value is train, val or test (or empty: no side, as `split` writes
        // for unusable images): anything else is listed, never read as "no side" in silence.
        let split = match splits[row]
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse::<Split>())
        {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                problems.push(Problem::new(
                    ProblemKind::BadRow,
                    rel.clone(),
                    format!("line {line}: {e}"),
                ));
                None
            }
            None => None,
        };
        records.push(Record {
            path: rel,
            labels: row_labels,
            patient,
            image_no: image_nos[row].as_deref().and_then(|s| s.parse().ok()),
            cell_no: cell_nos[row].as_deref().and_then(|s| s.parse().ok()),
            split,
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
    if let Some((id, rel)) = padded_example {
        let hint = padded_pattern_hint(&rel).map_or_else(String::new, |p| {
            format!("; confirm with --image-pattern \"{p}\"")
        });
        problems.push(Problem::new(
            ProblemKind::PaddedId,
            source.display().to_string(),
            format!(
                "{padded_ids} id(s) matched only a zero-padded file name (e.g. {id} → {rel}){hint}"
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
        copies: Vec::new(),
    })
}

#[cfg(test)]
mod tests;
