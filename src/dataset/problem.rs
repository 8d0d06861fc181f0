//! Per-file trouble found while opening a dataset: listed, counted, never fatal.

/// What kind of trouble a file or row has.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A zero-byte file.
    EmptyFile,
    /// The header or pixels could not be decoded (corrupt, too large).
    Unreadable,
    /// The file ends before its format's end marker (JPEG EOI, PNG IEND, BMP declared size):
    /// a decoder may still return pixels, partly grey or black.
    Truncated,
    /// An image whose name does not follow the dataset's naming convention.
    NameMismatch,
    /// An image lying directly in the root of a class-folder dataset (no label).
    NoClassFolder,
    /// An image deeper than `<root>/<label>/` in a class-folder dataset; it is labelled by its
    /// first folder under the root, and listed so that nested folders are never a silent label.
    NestedFolder,
    /// A CSV id without an extension that matches several files (`183.bmp`, `183.png`).
    AmbiguousId,
    /// CSV ids that matched only a zero-padded file name (`19` → `019.bmp`): one entry with a
    /// count.
    PaddedId,
    /// A CSV row whose image file is not there.
    MissingImage,
    /// A CSV row that repeats an earlier row's image.
    DuplicatePath,
    /// A CSV row with an empty path or label.
    BadRow,
    /// A file name that is not valid UTF-8.
    NonUtf8Name,
    /// The walk could not enter a path: a symlink loop, a permission error, …
    WalkError,
    /// A file without an image extension (skipped).
    NotAnImage,
    /// Class folders whose names look like a dataset's own structure (`Dataset 1`, `train`,
    /// `test`, `masks`) rather than classes: a model would learn to tell the folders apart.
    SuspiciousLabel,
    /// Two images with one name and different extensions in one folder (`183.bmp` and
    /// `183.png`): usually an image and its segmentation mask, both counted as cells.
    SameStem,
    /// A CSV beside the images that the dataset does not use: it may hold the real labels.
    UnusedCsv,
    /// Files with identical content under different names (copied between folders): one
    /// entry per group, on its first file.
    IdenticalImages,
}

impl ProblemKind {
    /// Short description shown in tables.
    pub fn description(self) -> &'static str {
        match self {
            Self::EmptyFile => "empty file (0 bytes)",
            Self::Unreadable => "unreadable or corrupt image",
            Self::Truncated => "truncated image (ends before its end marker)",
            Self::NameMismatch => "name does not follow the naming convention",
            Self::NoClassFolder => "image not inside a class folder",
            Self::NestedFolder => {
                "image in a subfolder of a class folder (labelled by the class folder)"
            }
            Self::AmbiguousId => "id matches several files (name the extension or --image-pattern)",
            Self::PaddedId => "ids matched only zero-padded file names",
            Self::MissingImage => "image listed but not found",
            Self::DuplicatePath => "image listed more than once",
            Self::BadRow => "row without path or label",
            Self::NonUtf8Name => "file name is not valid UTF-8",
            Self::WalkError => "could not walk into path (symlink loop, permissions)",
            Self::NotAnImage => "not an image file (skipped)",
            Self::SuspiciousLabel => {
                "folder used as a label looks like dataset structure, not a class (train/test/Dataset N/masks)"
            }
            Self::SameStem => "two images share a name (an image and its mask?)",
            Self::UnusedCsv => {
                "CSV beside the images is not used (it may hold the labels: open it instead)"
            }
            Self::IdenticalImages => {
                "identical images under different names (kept on one side of every split)"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::EmptyFile => "empty-file",
            Self::Unreadable => "unreadable",
            Self::Truncated => "truncated",
            Self::NameMismatch => "name-mismatch",
            Self::NoClassFolder => "no-class-folder",
            Self::NestedFolder => "nested-folder",
            Self::AmbiguousId => "ambiguous-id",
            Self::PaddedId => "padded-id",
            Self::MissingImage => "missing-image",
            Self::DuplicatePath => "duplicate-path",
            Self::BadRow => "bad-row",
            Self::NonUtf8Name => "non-utf8-name",
            Self::WalkError => "walk-error",
            Self::NotAnImage => "not-an-image",
            Self::SuspiciousLabel => "suspicious-label",
            Self::SameStem => "same-stem",
            Self::UnusedCsv => "unused-csv",
            Self::IdenticalImages => "identical-images",
        }
    }
}

/// One problem with one file or row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The file (or CSV row reference) concerned, lossily converted for display.
    pub path: String,
    /// Details, e.g. the decoder's message.
    pub detail: String,
}

impl Problem {
    pub fn new(kind: ProblemKind, path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.into(),
            detail: detail.into(),
        }
    }
}

/// All problems of one kind.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProblemSummary {
    pub kind: ProblemKind,
    pub description: String,
    pub count: usize,
    /// Up to [`EXAMPLES_PER_KIND`] examples, `path: detail`.
    pub examples: Vec<String>,
}

/// How many example paths a summary keeps per kind.
pub const EXAMPLES_PER_KIND: usize = 5;

/// Groups problems by kind (in [`ProblemKind`] order).
pub fn summarise(problems: &[Problem]) -> Vec<ProblemSummary> {
    let mut by_kind: std::collections::BTreeMap<ProblemKind, ProblemSummary> = Default::default();
    for p in problems {
        let entry = by_kind.entry(p.kind).or_insert_with(|| ProblemSummary {
            kind: p.kind,
            description: p.kind.description().to_owned(),
            count: 0,
            examples: Vec::new(),
        });
        entry.count += 1;
        if entry.examples.len() < EXAMPLES_PER_KIND {
            entry.examples.push(if p.detail.is_empty() {
                p.path.clone()
            } else {
                format!("{}: {}", p.path, p.detail)
            });
        }
    }
    by_kind.into_values().collect()
}
