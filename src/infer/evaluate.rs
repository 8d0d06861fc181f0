//! `cellbench evaluate`: every metric from any predictions CSV (ours or another tool's).
//!
//! Expected columns: `p_<label>` probability columns, a truth column (`truth`, `label`,
//! `true` or `target`; `A|B` for multi-label) unless a separate truth CSV is given (joined on
//! `path`, or on file name), and optionally `patient` for patient-level metrics.
//!
//! A row whose probabilities are missing, not numbers, not finite or outside [0, 1] is left
//! out of the metrics and listed with its line number; single-label rows whose probabilities
//! do not sum to 1 are scored but counted in a warning.

use std::collections::HashMap;
use std::path::Path;

use crate::dataset::naming::split_labels;
use crate::experiment::metrics::{self, Metrics, Task};
use crate::fsio::CsvTable;

/// The evaluation of a predictions file.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    pub rows: usize,
    pub labels: Vec<String>,
    pub metrics: Metrics,
    /// Cells averaged per patient (single-label tasks with a `patient` column).
    pub patient_metrics: Option<Metrics>,
    /// Rows left out of the metrics because of their probabilities, in file order.
    pub problems: Vec<RowProblem>,
    /// Single-label rows (scored) whose probabilities do not sum to 1 within
    /// [`SUM_TOLERANCE`].
    pub unnormalised_rows: usize,
    /// Line numbers of the first few of those rows.
    pub unnormalised_examples: Vec<usize>,
    /// Which rows were scored when not all were: a run's `predictions.csv` holds its
    /// validation rows (which chose and, for a probe, trained the kept model) and its test
    /// rows; only the test rows are an honest score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scored: Option<String>,
    /// Rows without a truth label, left out.
    pub rows_without_truth: usize,
}

/// A predictions row that was left out of the metrics.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RowProblem {
    /// 1-based line in the predictions CSV (the header is line 1).
    pub line: usize,
    /// What is wrong, per column: `p_all: not a number "abc"`.
    pub detail: String,
}

/// How far a single-label row's probabilities may sum from 1 before it is counted.
pub const SUM_TOLERANCE: f64 = 1e-3;
/// Rounding slack for a probability just outside [0, 1] (`1.0000001` from a float sum).
const RANGE_SLACK: f64 = 1e-6;
/// How many example line numbers a warning keeps.
const EXAMPLES: usize = 5;
/// How many skipped rows are logged one by one.
const LOGGED: usize = 10;

impl Evaluation {
    /// True when no row was left out and every single-label row sums to 1.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.unnormalised_rows == 0 && self.rows_without_truth == 0
    }
}

/// A probability cell: a finite number in [0, 1], or why not.
fn parse_probability(cell: &str) -> Result<f32, String> {
    if cell.is_empty() {
        return Err("missing".into());
    }
    let shown = crate::explore::table::clip_chars(cell, 40);
    let v: f64 = cell
        .parse()
        .map_err(|_| format!("not a number {shown:?}"))?;
    if !v.is_finite() {
        return Err(format!("not finite ({shown})"));
    }
    if !(-RANGE_SLACK..=1.0 + RANGE_SLACK).contains(&v) {
        return Err(format!("outside [0, 1] ({shown})"));
    }
    Ok(v.clamp(0.0, 1.0) as f32)
}

fn column(df: &CsvTable, name: &str) -> Option<Vec<String>> {
    df.column(name)
}

/// Whether a row's probabilities sum to 1 within [`SUM_TOLERANCE`] (one class per image).
fn sums_to_one(p: &[f32]) -> bool {
    let sum: f64 = p.iter().map(|&x| f64::from(x)).sum();
    (sum - 1.0).abs() <= SUM_TOLERANCE
}

fn base_name(p: &str) -> &str {
    p.rsplit(['/', '\\']).next().unwrap_or(p)
}

/// Rows up to which the headline metrics get bootstrap intervals (each interval scores 1000
/// resamples of the rows).
pub const INTERVAL_ROWS: usize = 50_000;

/// The metrics of scored rows with 95% bootstrap intervals (resampling patients when every row
/// has one, else rows; seeded, so a file always gives the same intervals) and, for one class
/// per image, their calibration. Above [`INTERVAL_ROWS`] rows, without intervals.
fn with_intervals(
    task: Task,
    labels: &[String],
    targets: &[metrics::Target],
    patients: &[Option<String>],
    probs: &[Vec<f32>],
) -> Metrics {
    if targets.len() <= INTERVAL_ROWS {
        let patients: Vec<Option<String>> = if patients.len() == targets.len() {
            patients.to_vec()
        } else {
            vec![None; targets.len()]
        };
        return crate::experiment::uncertainty::score(task, labels, targets, &patients, probs, 7);
    }
    log::info!(
        "{} rows: no bootstrap intervals above {INTERVAL_ROWS} rows",
        targets.len()
    );
    if task == Task::MultiLabel {
        let truth: Vec<Vec<bool>> = targets
            .iter()
            .map(|t| match t {
                metrics::Target::Multi(f) => f.clone(),
                metrics::Target::Class(c) => (0..labels.len()).map(|j| j == *c).collect(),
            })
            .collect();
        return metrics::evaluate_multi_label(
            labels,
            &truth,
            probs,
            crate::model::decision::MULTI_LABEL_THRESHOLD,
        );
    }
    let truth: Vec<usize> = targets
        .iter()
        .map(|t| match t {
            metrics::Target::Class(c) => *c,
            metrics::Target::Multi(_) => 0,
        })
        .collect();
    let mut m = metrics::evaluate_single(task, labels, &truth, probs);
    m.calibration = crate::experiment::uncertainty::calibration(&truth, probs, 10);
    m
}

pub fn evaluate_csv(
    predictions: &Path,
    truth_csv: Option<&Path>,
    task: Option<Task>,
) -> anyhow::Result<Evaluation> {
    let df = CsvTable::read(predictions)?;
    let names: Vec<String> = df.header.iter().map(|c| c.trim().to_string()).collect();
    let prob_cols: Vec<&String> = names.iter().filter(|n| n.starts_with("p_")).collect();
    anyhow::ensure!(
        prob_cols.len() >= 2,
        "no probability columns (p_<label>) in {} (columns: {})",
        predictions.display(),
        names.join(", ")
    );
    let labels: Vec<String> = prob_cols.iter().map(|c| c[2..].to_owned()).collect();
    anyhow::ensure!(
        labels.iter().all(|l| !l.is_empty()),
        "a probability column without a label name (`p_`) in {}",
        predictions.display()
    );
    for (i, name) in names.iter().enumerate() {
        anyhow::ensure!(
            !names[..i].contains(name),
            "column `{name}` appears twice in {}: which one holds the values is ambiguous",
            predictions.display()
        );
    }
    let n = df.height();
    let mut probs = vec![Vec::with_capacity(labels.len()); n];
    let mut bad: Vec<Vec<String>> = vec![Vec::new(); n];
    for c in &prob_cols {
        let values = column(&df, c).unwrap_or_else(|| vec![String::new(); n]);
        for (row, v) in values.iter().enumerate() {
            match parse_probability(v) {
                Ok(p) => probs[row].push(p),
                Err(why) => {
                    probs[row].push(f32::NAN);
                    bad[row].push(format!("{c}: {why}"));
                }
            }
        }
    }
    let problems: Vec<RowProblem> = bad
        .iter()
        .enumerate()
        .filter(|(_, why)| !why.is_empty())
        .map(|(row, why)| RowProblem {
            line: row + 2,
            detail: why.join("; "),
        })
        .collect();
    let truth: Vec<String> = match truth_csv {
        None => ["truth", "label", "true", "target"]
            .iter()
            .find_map(|c| column(&df, c))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no truth column (truth, label, true, target) in {}: give --truth",
                    predictions.display()
                )
            })?,
        Some(t) => {
            let tdf = CsvTable::read(t)?;
            let paths = column(&tdf, "path")
                .ok_or_else(|| anyhow::anyhow!("no `path` column in {}", t.display()))?;
            let labels_col = ["label", "truth", "labels", "target"]
                .iter()
                .find_map(|c| column(&tdf, c))
                .ok_or_else(|| anyhow::anyhow!("no label column in {}", t.display()))?;
            let mut by_path: HashMap<String, String> = HashMap::new();
            let mut by_name: HashMap<String, String> = HashMap::new();
            for (p, l) in paths.iter().zip(labels_col) {
                by_name.insert(base_name(p).to_owned(), l.clone());
                by_path.insert(p.clone(), l);
            }
            let pred_paths = column(&df, "path")
                .ok_or_else(|| anyhow::anyhow!("no `path` column in {}", predictions.display()))?;
            pred_paths
                .iter()
                .map(|p| {
                    by_path
                        .get(p)
                        .or_else(|| by_name.get(base_name(p)))
                        .cloned()
                        .unwrap_or_default()
                })
                .collect()
        }
    };
    // A run's predictions: score its test side alone when it has one.
    let sides = column(&df, "split");
    let test_only = sides
        .as_ref()
        .is_some_and(|s| s.iter().any(|v| v == "test") && s.iter().any(|v| v != "test"));
    let scored = test_only.then(|| {
        let sides = sides.as_deref().unwrap_or_default();
        let test = sides.iter().filter(|v| *v == "test").count();
        format!(
            "the {test} test rows of {n} (the split column's other rows chose the model, so they would flatter it)"
        )
    });
    let on_side = |i: usize| !test_only || sides.as_ref().is_some_and(|s| s[i] == "test");
    let rows_without_truth = (0..n)
        .filter(|&i| on_side(i) && truth[i].is_empty())
        .count();
    let keep: Vec<usize> = (0..n)
        .filter(|&i| on_side(i) && !truth[i].is_empty() && bad[i].is_empty())
        .collect();
    for p in problems.iter().take(LOGGED) {
        log::warn!("line {}: {} (row skipped)", p.line, p.detail);
    }
    if problems.len() > LOGGED {
        log::warn!(
            "… and {} more row(s) skipped for their probabilities",
            problems.len() - LOGGED
        );
    }
    anyhow::ensure!(
        !keep.is_empty(),
        "no row has both a known truth and valid probabilities ({} row(s) skipped for their probabilities): {}",
        problems.len(),
        predictions.display()
    );
    let multi = truth.iter().any(|t| t.contains('|'));
    match task {
        Some(Task::Binary) => anyhow::ensure!(
            labels.len() == 2,
            "--task binary needs two probability columns; {} has {} ({})",
            predictions.display(),
            labels.len(),
            prob_cols
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(t) if t != Task::MultiLabel && multi => anyhow::bail!(
            "--task {}: {} has multi-label truth (labels joined with |); use --task multi-label",
            serde_json::to_value(t)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            predictions.display()
        ),
        _ => {}
    }
    let task = task.unwrap_or(if multi {
        Task::MultiLabel
    } else if labels.len() == 2 {
        Task::Binary
    } else {
        Task::MultiClass
    });
    let probs: Vec<Vec<f32>> = keep.iter().map(|&i| probs[i].clone()).collect();
    if task == Task::MultiLabel && !multi && probs.iter().all(|p| sums_to_one(p)) {
        log::warn!(
            "multi-label scoring of single-label truth whose probabilities all sum to 1 (one \
             class per image, as a multi-class model predicts): each probability is taken alone \
             against 0.5, so most images get no label; --task multi-class scores them as predicted"
        );
    }
    let mut unnormalised_rows = 0;
    let mut unnormalised_examples = Vec::new();
    if task != Task::MultiLabel {
        for (&i, p) in keep.iter().zip(&probs) {
            if !sums_to_one(p) {
                unnormalised_rows += 1;
                if unnormalised_examples.len() < EXAMPLES {
                    unnormalised_examples.push(i + 2);
                }
            }
        }
    }
    if unnormalised_rows > 0 {
        log::warn!(
            "{unnormalised_rows} row(s) whose probabilities do not sum to 1 (±{SUM_TOLERANCE}), e.g. line(s) {unnormalised_examples:?}: {}",
            predictions.display()
        );
    }
    let index = |l: &str| labels.iter().position(|x| x == l);
    let (metrics, patient_metrics) = if task == Task::MultiLabel {
        let t: Vec<Vec<bool>> = keep
            .iter()
            .map(|&i| {
                let set = split_labels(&truth[i]);
                labels.iter().map(|l| set.contains(l)).collect()
            })
            .collect();
        let targets: Vec<metrics::Target> = t.into_iter().map(metrics::Target::Multi).collect();
        (with_intervals(task, &labels, &targets, &[], &probs), None)
    } else {
        let mut t = Vec::with_capacity(keep.len());
        for &i in &keep {
            t.push(index(&truth[i]).ok_or_else(|| {
                anyhow::anyhow!(
                    "row {}: truth {:?} is not one of the labels {labels:?}",
                    i + 2,
                    truth[i]
                )
            })?);
        }
        let patient_col = column(&df, "patient");
        let patients: Vec<Option<String>> = match &patient_col {
            Some(p) if keep.iter().all(|&i| !p[i].is_empty()) => {
                keep.iter().map(|&i| Some(p[i].clone())).collect()
            }
            _ => Vec::new(),
        };
        let targets: Vec<metrics::Target> = t.iter().map(|&c| metrics::Target::Class(c)).collect();
        let m = with_intervals(task, &labels, &targets, &patients, &probs);
        let pm = patient_col
            .filter(|p| keep.iter().all(|&i| !p[i].is_empty()))
            .map(|p| {
                let patients: Vec<&str> = keep.iter().map(|&i| p[i].as_str()).collect();
                let (_, pt, pp) = metrics::aggregate_by_patient(&patients, &t, &probs);
                metrics::evaluate_single(task, &labels, &pt, &pp)
            });
        (m, pm)
    };
    Ok(Evaluation {
        rows: keep.len(),
        labels,
        metrics,
        patient_metrics,
        problems,
        unnormalised_rows,
        unnormalised_examples,
        scored,
        rows_without_truth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(text: &str) -> anyhow::Result<Evaluation> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pred.csv");
        crate::fs::write(&path, text).unwrap();
        evaluate_csv(&path, None, None)
    }

    const GOOD: &str = "path,truth,p_a,p_b\n\
        1.png,a,0.9,0.1\n\
        2.png,b,0.2,0.8\n\
        3.png,a,0.4,0.6\n\
        4.png,b,0.3,0.7\n";

    /// The headline numbers come with bootstrap intervals (over patients when every row has
    /// one) and calibration, as a run's `metrics.json` has them; kappa for unordered classes.
    #[test]
    fn headline_metrics_have_intervals_calibration_and_kappa() {
        let mut text = String::from("path,patient,truth,p_a,p_b,p_c\n");
        for i in 0..60 {
            let truth = ["a", "b", "c"][i % 3];
            let p = match (i % 3, i % 7 == 0) {
                (0, false) => "0.7,0.2,0.1",
                (1, false) => "0.2,0.6,0.2",
                (2, false) => "0.1,0.3,0.6",
                _ => "0.2,0.2,0.6",
            };
            text.push_str(&format!("{i}.png,P{},{truth},{p}\n", i / 4));
        }
        let e = eval(&text).unwrap();
        let m = &e.metrics;
        let ci = m.ci.as_ref().expect("intervals");
        assert_eq!((ci.unit.as_str(), ci.units), ("patients", 15));
        assert!(ci.accuracy.unwrap().contains(m.accuracy));
        assert!(ci.macro_f1.unwrap().contains(m.macro_f1));
        let kappa = m.kappa.expect("kappa for multi-class");
        assert!(ci.kappa.unwrap().contains(kappa));
        assert!(m.calibration.as_ref().is_some_and(|c| c.ece.is_finite()));
        // Without patient ids, images are resampled.
        let e = eval(GOOD).unwrap();
        assert_eq!(e.metrics.ci.as_ref().unwrap().unit, "images");
    }

    #[test]
    fn bad_probabilities_are_listed_by_line_and_left_out_of_the_metrics() {
        let clean = eval(GOOD).unwrap();
        assert!(clean.is_clean());
        assert_eq!(clean.rows, 4);
        let bad_rows = [
            "5.png,b,abc,0.5",
            "6.png,a,NaN,0.5",
            "7.png,a,inf,0.0",
            "8.png,b,-0.2,1.2",
            "9.png,a,1.5,0.5",
            "10.png,b,,0.5",
            "11.png,a,0.5",
        ];
        let text = format!("{GOOD}{}\n", bad_rows.join("\n"));
        let e = eval(&text).unwrap();
        assert_eq!(e.rows, 4);
        let lines: Vec<usize> = e.problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [6, 7, 8, 9, 10, 11, 12]);
        let details: Vec<&str> = e.problems.iter().map(|p| p.detail.as_str()).collect();
        assert_eq!(details[0], "p_a: not a number \"abc\"");
        assert_eq!(details[1], "p_a: not finite (NaN)");
        assert_eq!(details[2], "p_a: not finite (inf)");
        assert_eq!(
            details[3],
            "p_a: outside [0, 1] (-0.2); p_b: outside [0, 1] (1.2)"
        );
        assert_eq!(details[5], "p_a: missing");
        assert_eq!(details[6], "p_b: missing");
        // The metrics are those of the good rows alone.
        assert_eq!(e.metrics, clean.metrics);
        assert!(!e.is_clean());
    }

    /// A run's predictions are scored on their test rows alone (the validation rows chose
    /// the model), and the choice is said; without test rows every row counts. Ambiguous
    /// columns are refused; rows without truth are counted.
    #[test]
    fn a_runs_test_rows_are_scored_alone_and_ambiguous_columns_refused() {
        let dir = tempfile::tempdir().unwrap();
        let both = dir.path().join("both.csv");
        crate::fs::write(
            &both,
            "path,split,truth,p_a,p_b\n1,val,a,0.9,0.1\n2,val,b,0.9,0.1\n3,test,a,0.8,0.2\n4,test,b,0.3,0.7\n5,test,,0.5,0.5\n",
        )
        .unwrap();
        let e = evaluate_csv(&both, None, None).unwrap();
        assert_eq!(e.rows, 2);
        assert_eq!(e.metrics.accuracy, 1.0, "the wrong val row is not scored");
        assert!(
            e.scored
                .as_deref()
                .unwrap()
                .starts_with("the 3 test rows of 5")
        );
        assert_eq!(e.rows_without_truth, 1);
        assert!(!e.is_clean());
        let val = dir.path().join("val.csv");
        crate::fs::write(
            &val,
            "path,split,truth,p_a,p_b\n1,val,a,0.9,0.1\n2,val,b,0.9,0.1\n",
        )
        .unwrap();
        let e = evaluate_csv(&val, None, None).unwrap();
        assert_eq!((e.rows, e.scored.as_deref()), (2, None));
        for (text, says) in [
            ("path,truth,p_a,p_b,p_a\n1,a,0.9,0.1,0.1\n", "appears twice"),
            ("path,truth,truth,p_a,p_b\n1,a,b,0.9,0.1\n", "appears twice"),
            ("path,truth,p_,p_b\n1,b,0.9,0.1\n", "without a label name"),
        ] {
            let bad = dir.path().join("bad.csv");
            crate::fs::write(&bad, text).unwrap();
            let e = evaluate_csv(&bad, None, None).unwrap_err();
            assert!(format!("{e:#}").contains(says), "{e:#}");
        }
    }

    /// A task that cannot be the file's is refused, not evaluated as another.
    #[test]
    fn a_task_the_file_cannot_be_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let three = dir.path().join("three.csv");
        crate::fs::write(&three, "path,truth,p_a,p_b,p_c\n1.png,a,0.8,0.1,0.1\n").unwrap();
        let e = evaluate_csv(&three, None, Some(Task::Binary)).unwrap_err();
        assert!(
            format!("{e:#}").contains("--task binary needs two probability columns"),
            "{e:#}"
        );
        let multi = dir.path().join("multi.csv");
        crate::fs::write(&multi, "path,truth,p_a,p_b\n1.png,a|b,0.8,0.7\n").unwrap();
        let e = evaluate_csv(&multi, None, Some(Task::MultiClass)).unwrap_err();
        assert!(format!("{e:#}").contains("--task multi-class:"), "{e:#}");
        assert!(evaluate_csv(&multi, None, Some(Task::MultiLabel)).is_ok());
        assert!(evaluate_csv(&three, None, Some(Task::MultiClass)).is_ok());
    }

    #[test]
    fn rows_that_do_not_sum_to_one_are_counted_not_dropped() {
        let text = format!("{GOOD}5.png,a,0.9,0.3\n6.png,b,0.1,0.1\n7.png,a,0.5,0.5004\n");
        let e = eval(&text).unwrap();
        assert!(e.problems.is_empty());
        assert_eq!(e.rows, 7);
        assert_eq!(e.unnormalised_rows, 2);
        assert_eq!(e.unnormalised_examples, [6, 7]);
        assert!(!e.is_clean());
        // Multi-label rows are independent probabilities: no sum check.
        let multi = "path,truth,p_a,p_b\n1.png,a|b,0.9,0.8\n2.png,b,0.1,0.7\n3.png,a,0.6,0.2\n";
        let e = eval(multi).unwrap();
        assert_eq!(e.unnormalised_rows, 0);
    }

    #[test]
    fn a_file_with_no_usable_row_is_an_error_naming_it() {
        let err = eval("path,truth,p_a,p_b\n1.png,a,x,y\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 row(s) skipped"), "{err}");
        assert!(err.ends_with("pred.csv"), "{err}");
    }
}
