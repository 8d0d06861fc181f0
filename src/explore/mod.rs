//! Dataset statistics: plain group-bys over the manifest's records, collected into plain
//! structs that the CLI prints, the GUI draws and `--json` serialises. No dataframe library, so
//! the same code serves the desktop and the browser.

pub mod batch_effect;
pub mod bins;
#[cfg(all(not(target_arch = "wasm32"), feature = "gui"))]
pub mod charts;
pub mod embedding;
pub mod table;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::dataset::split::SplitReport;
use crate::dataset::{DatasetFormat, Manifest, ProblemSummary, Record};
pub use table::Table;

/// Everything `cellbench explore` reports.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExploreReport {
    pub summary: Summary,
    /// Images and distinct patients per label, most frequent label first.
    pub labels: Vec<LabelCount>,
    /// Cell index distribution per label (C-NMC-style data).
    pub cells: Option<CellTable>,
    /// Images per patient (datasets with patient ids).
    pub images_per_patient: Option<PatientStats>,
    /// Label co-occurrence (multi-label data).
    pub cooccurrence: Option<Cooccurrence>,
    /// Largest over smallest label count.
    pub imbalance: Option<Imbalance>,
    /// Present when the manifest carries a split.
    pub split: Option<SplitReport>,
    pub problems: Vec<ProblemSummary>,
    /// Whether the features identify the patient more easily than the label (on request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_effect: Option<batch_effect::BatchEffect>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub source: String,
    pub format: DatasetFormat,
    pub images: u64,
    /// Images that exist and have no known problem.
    pub usable_images: u64,
    pub labels: u64,
    /// Distinct patients (`None` without patient ids).
    pub patients: Option<u64>,
    pub multi_label: bool,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelCount {
    pub label: String,
    pub images: u64,
    /// Share of images carrying this label.
    pub share: f64,
    pub patients: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CellTable {
    /// Column headers: the cell indices seen, ascending.
    pub cell_numbers: Vec<u32>,
    /// One row per label: counts aligned with `cell_numbers`.
    pub rows: Vec<(String, Vec<u64>)>,
}

/// Distribution of images per patient.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distribution {
    pub patients: u64,
    pub min: u64,
    pub median: f64,
    pub mean: f64,
    pub max: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PatientStats {
    pub all: Distribution,
    /// Per label: images of that label per patient having it.
    pub by_label: Vec<(String, Distribution)>,
    /// Histogram of images per patient: (images, patients), ascending.
    pub histogram: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cooccurrence {
    pub labels: Vec<String>,
    /// `counts[i][j]`: images carrying both label i and label j (the diagonal: label i at all).
    pub counts: Vec<Vec<u64>>,
}

impl Cooccurrence {
    /// Off-diagonal pairs, most frequent first.
    pub fn top_pairs(&self, n: usize) -> Vec<(String, String, u64)> {
        let mut pairs = Vec::new();
        for i in 0..self.labels.len() {
            for j in i + 1..self.labels.len() {
                if self.counts[i][j] > 0 {
                    pairs.push((
                        self.labels[i].clone(),
                        self.labels[j].clone(),
                        self.counts[i][j],
                    ));
                }
            }
        }
        pairs.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        pairs.truncate(n);
        pairs
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Imbalance {
    pub majority: String,
    pub minority: String,
    /// Majority count over minority count.
    pub ratio: f64,
}

/// Per-label tallies from one pass over the records.
#[derive(Default)]
struct LabelTally<'a> {
    /// (image, label) pairs: the images carrying the label.
    images: u64,
    /// Images of this label per patient having it.
    per_patient: HashMap<&'a str, u64>,
}

/// Min, median, mean and max of images-per-patient counts. Without patients: 0 for the counts
/// and extremes, NaN for the median and mean.
fn distribution(mut counts: Vec<u64>) -> Distribution {
    counts.sort_unstable();
    let n = counts.len();
    let median = match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => counts[n / 2] as f64,
        _ => (counts[n / 2 - 1] as f64 + counts[n / 2] as f64) / 2.0,
    };
    let mean = if n == 0 {
        f64::NAN
    } else {
        counts.iter().sum::<u64>() as f64 / n as f64
    };
    Distribution {
        patients: n as u64,
        min: counts.first().copied().unwrap_or(0),
        median,
        mean,
        max: counts.last().copied().unwrap_or(0),
    }
}

/// Images per (label, cell index) over the records that have a cell index; rows by label name.
fn cell_table(records: &[Record]) -> CellTable {
    let mut per_label: BTreeMap<&str, BTreeMap<u32, u64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for r in records {
        let Some(cell) = r.cell_no else { continue };
        for label in &r.labels {
            *per_label
                .entry(label.as_str())
                .or_default()
                .entry(cell)
                .or_default() += 1;
            seen.insert(cell);
        }
    }
    let cell_numbers: Vec<u32> = seen.into_iter().collect();
    let rows = per_label
        .into_iter()
        .map(|(label, by_cell)| {
            let counts = cell_numbers
                .iter()
                .map(|c| by_cell.get(c).copied().unwrap_or(0))
                .collect();
            (label.to_owned(), counts)
        })
        .collect();
    CellTable { cell_numbers, rows }
}

/// Images per patient (each image once, whatever its labels), per label, and the histogram.
fn patient_stats(records: &[Record], tallies: &[(&str, LabelTally)]) -> PatientStats {
    let mut per_patient: HashMap<&str, u64> = HashMap::new();
    for r in records.iter().filter(|r| !r.labels.is_empty()) {
        if let Some(patient) = r.patient.as_deref() {
            *per_patient.entry(patient).or_default() += 1;
        }
    }
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    for &n in per_patient.values() {
        *histogram.entry(n).or_default() += 1;
    }
    let by_label = tallies
        .iter()
        .map(|(label, t)| {
            let counts = t.per_patient.values().copied().collect();
            ((*label).to_owned(), distribution(counts))
        })
        .collect();
    PatientStats {
        all: distribution(per_patient.into_values().collect()),
        by_label,
        histogram: histogram.into_iter().collect(),
    }
}

/// Images carrying both labels, for every ordered pair of `order`, diagonal included.
fn cooccurrence(records: &[Record], order: Vec<String>) -> Cooccurrence {
    let index: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut counts = vec![vec![0u64; order.len()]; order.len()];
    let mut at = Vec::new();
    for r in records {
        at.clear();
        at.extend(
            r.labels
                .iter()
                .filter_map(|l| index.get(l.as_str()).copied()),
        );
        for &i in &at {
            for &j in &at {
                counts[i][j] += 1;
            }
        }
    }
    Cooccurrence {
        labels: order,
        counts,
    }
}

/// Computes the whole report. Pure: reads the manifest, returns plain data. Never fails today;
/// the `Result` leaves room for checks that can.
pub fn explore(manifest: &Manifest) -> anyhow::Result<ExploreReport> {
    let records = &manifest.records;
    let images = records.len() as u64;
    let has_patients = manifest.has_patients();
    let multi_label = manifest.is_multi_label();

    let mut tallies: HashMap<&str, LabelTally> = HashMap::new();
    for r in records {
        for label in &r.labels {
            let t = tallies.entry(label.as_str()).or_default();
            t.images += 1;
            if let Some(patient) = r.patient.as_deref() {
                *t.per_patient.entry(patient).or_default() += 1;
            }
        }
    }
    // Most frequent first, ties by name.
    let mut tallies: Vec<(&str, LabelTally)> = tallies.into_iter().collect();
    tallies.sort_unstable_by(|a, b| b.1.images.cmp(&a.1.images).then_with(|| a.0.cmp(b.0)));

    let labels: Vec<LabelCount> = tallies
        .iter()
        .map(|(label, t)| LabelCount {
            label: (*label).to_owned(),
            images: t.images,
            share: if images > 0 {
                t.images as f64 / images as f64
            } else {
                0.0
            },
            patients: has_patients.then_some(t.per_patient.len() as u64),
        })
        .collect();

    let cells = records
        .iter()
        .any(|r| r.cell_no.is_some())
        .then(|| cell_table(records));

    let images_per_patient = has_patients.then(|| patient_stats(records, &tallies));

    let cooccurrence = multi_label
        .then(|| cooccurrence(records, labels.iter().map(|l| l.label.clone()).collect()));

    let imbalance = match (labels.first(), labels.last()) {
        (Some(max), Some(min)) if labels.len() > 1 && min.images > 0 => Some(Imbalance {
            majority: max.label.clone(),
            minority: min.label.clone(),
            ratio: max.images as f64 / min.images as f64,
        }),
        _ => None,
    };

    let split = records
        .iter()
        .any(|r| r.split.is_some())
        .then(|| SplitReport::of(records, &manifest.copies));

    let patients = has_patients.then(|| {
        records
            .iter()
            .filter_map(|r| r.patient.as_deref())
            .collect::<HashSet<_>>()
            .len() as u64
    });
    Ok(ExploreReport {
        summary: Summary {
            source: manifest.source.display().to_string(),
            format: manifest.format,
            images,
            usable_images: records.iter().filter(|r| r.is_usable()).count() as u64,
            labels: labels.len() as u64,
            patients,
            multi_label,
        },
        labels,
        cells,
        images_per_patient,
        cooccurrence,
        imbalance,
        split,
        problems: manifest.problem_summary(),
        batch_effect: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Problem, ProblemKind, Record};

    fn rec(path: &str, labels: &[&str], patient: Option<&str>, cell: Option<u32>) -> Record {
        Record {
            path: path.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            patient: patient.map(Into::into),
            cell_no: cell,
            bytes: Some(10),
            ..Default::default()
        }
    }

    fn manifest(records: Vec<Record>) -> Manifest {
        Manifest {
            root: ".".into(),
            source: "fixture".into(),
            format: DatasetFormat::Cnmc,
            records,
            problems: vec![Problem::new(ProblemKind::NameMismatch, "x.bmp", "")],
            copies: Vec::new(),
        }
    }

    /// Hand-computed: all = P1 (3 images, cells 1,1,2) + P2 (1 image, cell 1);
    /// hem = H1 (2 images, cells 1,3).
    #[test]
    fn counts_match_hand_computed_values() {
        let m = manifest(vec![
            rec("a", &["all"], Some("P1"), Some(1)),
            rec("b", &["all"], Some("P1"), Some(1)),
            rec("c", &["all"], Some("P1"), Some(2)),
            rec("d", &["all"], Some("P2"), Some(1)),
            rec("e", &["hem"], Some("H1"), Some(1)),
            rec("f", &["hem"], Some("H1"), Some(3)),
        ]);
        let r = explore(&m).unwrap();
        assert_eq!(r.summary.images, 6);
        assert_eq!(r.summary.patients, Some(3));
        assert_eq!(
            r.labels
                .iter()
                .map(|l| (l.label.as_str(), l.images, l.patients))
                .collect::<Vec<_>>(),
            [("all", 4, Some(2)), ("hem", 2, Some(1))]
        );
        let cells = r.cells.unwrap();
        assert_eq!(cells.cell_numbers, [1, 2, 3]);
        assert_eq!(
            cells.rows,
            [
                ("all".to_owned(), vec![3, 1, 0]),
                ("hem".to_owned(), vec![1, 0, 1])
            ]
        );
        let pp = r.images_per_patient.unwrap();
        assert_eq!((pp.all.patients, pp.all.min, pp.all.max), (3, 1, 3));
        assert_eq!(pp.all.median, 2.0);
        assert!((pp.all.mean - 2.0).abs() < 1e-12);
        assert_eq!(pp.histogram, [(1, 1), (2, 1), (3, 1)]);
        let all = &pp.by_label.iter().find(|(l, _)| l == "all").unwrap().1;
        assert_eq!((all.patients, all.min, all.max, all.median), (2, 1, 3, 2.0));
        let im = r.imbalance.unwrap();
        assert_eq!(
            (im.majority.as_str(), im.minority.as_str(), im.ratio),
            ("all", "hem", 2.0)
        );
        assert!(r.cooccurrence.is_none());
        assert_eq!(r.problems.len(), 1);
    }

    #[test]
    fn multi_label_counts_and_cooccurrence() {
        let m = manifest(vec![
            rec("1", &["Effusion", "Infiltration"], Some("1"), None),
            rec("2", &["Infiltration"], Some("1"), None),
            rec("3", &["No Finding"], Some("2"), None),
            rec("4", &["Effusion", "Infiltration", "Mass"], Some("3"), None),
        ]);
        let r = explore(&m).unwrap();
        assert!(r.summary.multi_label);
        let counts: Vec<_> = r
            .labels
            .iter()
            .map(|l| (l.label.as_str(), l.images))
            .collect();
        assert_eq!(
            counts,
            [
                ("Infiltration", 3),
                ("Effusion", 2),
                ("Mass", 1),
                ("No Finding", 1)
            ]
        );
        // Images per patient counts images, not (image, label) pairs.
        assert_eq!(r.images_per_patient.unwrap().all.max, 2);
        let co = r.cooccurrence.unwrap();
        let at = |a: &str, b: &str| {
            let i = co.labels.iter().position(|l| l == a).unwrap();
            let j = co.labels.iter().position(|l| l == b).unwrap();
            co.counts[i][j]
        };
        assert_eq!(at("Effusion", "Infiltration"), 2);
        assert_eq!(at("Infiltration", "Effusion"), 2);
        assert_eq!(at("Mass", "Effusion"), 1);
        assert_eq!(at("No Finding", "Mass"), 0);
        assert_eq!(at("Infiltration", "Infiltration"), 3);
        assert_eq!(
            co.top_pairs(1),
            [("Infiltration".into(), "Effusion".into(), 2)]
        );
    }

    /// Every statistic on a small multi-label manifest, by hand:
    ///
    /// | image | labels | patient | cell |
    /// |---|---|---|---|
    /// | a | x, y | P1 | 1 |
    /// | b | x | P1 | 2 |
    /// | c | y | P2 | 1 |
    /// | d | x, z | P3 | – |
    /// | e | w | – | 2 |
    /// | f | x | P2 | – |
    /// | g | y (unreadable) | P2 | – |
    #[test]
    fn every_statistic_matches_hand_computed_values() {
        let mut g = rec("g", &["y"], Some("P2"), None);
        g.problem = Some("unreadable".into());
        let m = manifest(vec![
            rec("a", &["x", "y"], Some("P1"), Some(1)),
            rec("b", &["x"], Some("P1"), Some(2)),
            rec("c", &["y"], Some("P2"), Some(1)),
            rec("d", &["x", "z"], Some("P3"), None),
            rec("e", &["w"], None, Some(2)),
            rec("f", &["x"], Some("P2"), None),
            g,
        ]);
        let r = explore(&m).unwrap();

        assert_eq!(
            r.summary,
            Summary {
                source: "fixture".into(),
                format: DatasetFormat::Cnmc,
                images: 7,
                usable_images: 6,
                labels: 4,
                patients: Some(3),
                multi_label: true,
            }
        );

        // x 4, y 3, then the tie w = z = 1 by name; w has no patient, so Some(0).
        let label = |label: &str, images: u64, patients: u64| LabelCount {
            label: label.into(),
            images,
            share: images as f64 / 7.0,
            patients: Some(patients),
        };
        assert_eq!(
            r.labels,
            [
                label("x", 4, 3),
                label("y", 3, 2),
                label("w", 1, 0),
                label("z", 1, 1)
            ]
        );

        // Rows by label name; z has no cell index, so no row.
        assert_eq!(
            r.cells,
            Some(CellTable {
                cell_numbers: vec![1, 2],
                rows: vec![
                    ("w".into(), vec![0, 1]),
                    ("x".into(), vec![1, 1]),
                    ("y".into(), vec![2, 0]),
                ],
            })
        );

        // Images per patient: P1 2 (a, b), P2 3 (c, f, g), P3 1 (d); image a counts once.
        let pp = r.images_per_patient.unwrap();
        let dist = |patients, min, median, mean, max| Distribution {
            patients,
            min,
            median,
            mean,
            max,
        };
        assert_eq!(pp.all, dist(3, 1, 2.0, 2.0, 3));
        assert_eq!(pp.histogram, [(1, 1), (2, 1), (3, 1)]);
        let names: Vec<&str> = pp.by_label.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(names, ["x", "y", "w", "z"]);
        // x: P1 2, P2 1, P3 1 -> sorted 1, 1, 2.
        assert_eq!(pp.by_label[0].1, dist(3, 1, 1.0, 4.0 / 3.0, 2));
        // y: P1 1, P2 2 -> an even count, median halfway.
        assert_eq!(pp.by_label[1].1, dist(2, 1, 1.5, 1.5, 2));
        // w: no patients -> zero counts, NaN median and mean.
        let w = &pp.by_label[2].1;
        assert_eq!((w.patients, w.min, w.max), (0, 0, 0));
        assert!(w.median.is_nan() && w.mean.is_nan());
        assert_eq!(pp.by_label[3].1, dist(1, 1, 1.0, 1.0, 1));

        let co = r.cooccurrence.unwrap();
        assert_eq!(co.labels, ["x", "y", "w", "z"]);
        assert_eq!(
            co.counts,
            [[4, 1, 0, 1], [1, 3, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]
        );
        assert_eq!(
            co.top_pairs(5),
            [("x".into(), "y".into(), 1), ("x".into(), "z".into(), 1)]
        );

        assert_eq!(
            r.imbalance,
            Some(Imbalance {
                majority: "x".into(),
                minority: "z".into(),
                ratio: 4.0,
            })
        );
        assert_eq!(r.split, None);
    }
}
