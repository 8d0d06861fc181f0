//! Dataset statistics: polars plans over the manifest, collected into plain structs that the
//! CLI prints, the GUI draws and `--json` serialises.

pub mod charts;
pub mod table;

use polars::prelude::*;

use crate::dataset::frame::labels_frame;
use crate::dataset::split::SplitReport;
use crate::dataset::{DatasetFormat, Manifest, ProblemSummary};
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

fn u64_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<u64>> {
    let c = df.column(name)?.cast(&DataType::UInt64)?;
    Ok(c.u64()?.iter().map(|v| v.unwrap_or(0)).collect())
}

fn f64_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<f64>> {
    let c = df.column(name)?.cast(&DataType::Float64)?;
    Ok(c.f64()?.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

fn str_column(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|v| v.unwrap_or_default().to_owned())
        .collect())
}

/// Images and distinct patients per label.
pub fn label_counts_plan(labels: LazyFrame) -> LazyFrame {
    labels
        .group_by([col("label")])
        .agg([
            len().alias("images"),
            col("patient").drop_nulls().n_unique().alias("patients"),
        ])
        .sort(
            ["images", "label"],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
}

/// Images per (label, cell index).
pub fn cell_counts_plan(labels: LazyFrame) -> LazyFrame {
    labels
        .filter(col("cell_no").is_not_null())
        .group_by([col("label"), col("cell_no")])
        .agg([len().alias("images")])
        .sort(["label", "cell_no"], SortMultipleOptions::default())
}

/// Images per patient, and per (patient, label).
pub fn per_patient_plan(labels: LazyFrame, by_label: bool) -> LazyFrame {
    let keys = if by_label {
        vec![col("patient"), col("label")]
    } else {
        vec![col("patient")]
    };
    let lf = labels.filter(col("patient").is_not_null());
    // Count images, not (image, label) rows, when not grouping by label.
    let lf = if by_label {
        lf
    } else {
        lf.unique(Some(cols(["image"])), UniqueKeepStrategy::First)
    };
    lf.group_by(keys).agg([len().alias("n")])
}

/// (label a, label b, images with both) over all pairs, diagonal included.
pub fn cooccurrence_plan(labels: LazyFrame) -> LazyFrame {
    let pairs = labels.clone().select([col("image"), col("label")]);
    let right = labels.select([col("image"), col("label").alias("other")]);
    pairs
        .join(
            right,
            [col("image")],
            [col("image")],
            JoinArgs::new(JoinType::Inner),
        )
        .group_by([col("label"), col("other")])
        .agg([len().alias("n")])
}

fn distribution(df: &DataFrame) -> PolarsResult<Distribution> {
    let stats = df
        .clone()
        .lazy()
        .select([
            len().alias("patients"),
            col("n").min().alias("min"),
            col("n").median().alias("median"),
            col("n").mean().alias("mean"),
            col("n").max().alias("max"),
        ])
        .collect()?;
    Ok(Distribution {
        patients: u64_column(&stats, "patients")?[0],
        min: u64_column(&stats, "min")?[0],
        median: f64_column(&stats, "median")?[0],
        mean: f64_column(&stats, "mean")?[0],
        max: u64_column(&stats, "max")?[0],
    })
}

/// Computes the whole report. Pure: reads the manifest, returns plain data.
pub fn explore(manifest: &Manifest) -> PolarsResult<ExploreReport> {
    let records = &manifest.records;
    let labels_df = labels_frame(records)?;
    let images = records.len() as u64;
    let has_patients = manifest.has_patients();
    let multi_label = manifest.is_multi_label();

    let counts = label_counts_plan(labels_df.clone().lazy()).collect()?;
    let names = str_column(&counts, "label")?;
    let n_images = u64_column(&counts, "images")?;
    let n_patients = u64_column(&counts, "patients")?;
    let labels: Vec<LabelCount> = names
        .iter()
        .zip(&n_images)
        .zip(&n_patients)
        .map(|((label, &img), &pat)| LabelCount {
            label: label.clone(),
            images: img,
            share: if images > 0 {
                img as f64 / images as f64
            } else {
                0.0
            },
            patients: has_patients.then_some(pat),
        })
        .collect();

    let cells = if records.iter().any(|r| r.cell_no.is_some()) {
        let df = cell_counts_plan(labels_df.clone().lazy()).collect()?;
        let label = str_column(&df, "label")?;
        let cell = u64_column(&df, "cell_no")?;
        let n = u64_column(&df, "images")?;
        let mut cell_numbers: Vec<u32> = cell.iter().map(|&c| c as u32).collect();
        cell_numbers.sort_unstable();
        cell_numbers.dedup();
        let mut rows: Vec<(String, Vec<u64>)> = Vec::new();
        for ((l, c), n) in label.into_iter().zip(cell).zip(n) {
            if rows.last().is_none_or(|r| r.0 != l) {
                rows.push((l.clone(), vec![0; cell_numbers.len()]));
            }
            let col = cell_numbers.binary_search(&(c as u32)).unwrap_or(0);
            rows.last_mut().expect("pushed above").1[col] = n;
        }
        Some(CellTable { cell_numbers, rows })
    } else {
        None
    };

    let images_per_patient = if has_patients {
        let per_patient = per_patient_plan(labels_df.clone().lazy(), false).collect()?;
        let all = distribution(&per_patient)?;
        let mut histogram: std::collections::BTreeMap<u64, u64> = Default::default();
        for n in u64_column(&per_patient, "n")? {
            *histogram.entry(n).or_default() += 1;
        }
        let per_label = per_patient_plan(labels_df.clone().lazy(), true).collect()?;
        let mut by_label = Vec::new();
        for l in &labels {
            let df = per_label
                .clone()
                .lazy()
                .filter(col("label").eq(lit(l.label.as_str())))
                .collect()?;
            by_label.push((l.label.clone(), distribution(&df)?));
        }
        Some(PatientStats {
            all,
            by_label,
            histogram: histogram.into_iter().collect(),
        })
    } else {
        None
    };

    let cooccurrence = if multi_label {
        let df = cooccurrence_plan(labels_df.lazy()).collect()?;
        let order: Vec<String> = labels.iter().map(|l| l.label.clone()).collect();
        let index = |s: &str| order.iter().position(|l| l == s);
        let mut counts = vec![vec![0u64; order.len()]; order.len()];
        for ((a, b), n) in str_column(&df, "label")?
            .iter()
            .zip(str_column(&df, "other")?)
            .zip(u64_column(&df, "n")?)
        {
            if let (Some(i), Some(j)) = (index(a), index(&b)) {
                counts[i][j] = n;
            }
        }
        Some(Cooccurrence {
            labels: order,
            counts,
        })
    } else {
        None
    };

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
        .then(|| SplitReport::of(records));

    let patients = has_patients.then(|| {
        records
            .iter()
            .filter_map(|r| r.patient.as_deref())
            .collect::<std::collections::HashSet<_>>()
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
}
