//! From a manifest to what training needs: the task, the label list, per-image targets and
//! the train/validation/test sides.

use std::path::PathBuf;

use crate::dataset::split::{SplitConfig, assign_splits};
use crate::dataset::{DatasetFormat, Manifest, Split};
use crate::experiment::metrics::Target;

use crate::experiment::config::TrainConfig;
use crate::experiment::metrics::Task;

/// One usable image.
#[derive(Clone, Debug)]
pub struct Item {
    pub path: PathBuf,
    /// As in the manifest (relative to its root), for reports and predictions.
    pub name: String,
    pub patient: Option<String>,
    pub target: Target,
}

/// A dataset ready for training.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub task: Task,
    pub labels: Vec<String>,
    pub items: Vec<Item>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
    /// True when the sides came from the manifest's `split` column.
    pub split_given: bool,
}

impl Prepared {
    /// A digest of what training sees: the task, the labels in order, and each side's images
    /// with their labels. Recorded when a run starts, so that a resume on data that has
    /// changed since (images added or removed, class folders renamed or swapped, another
    /// split) is refused instead of continuing on other data.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(format!("{:?}\n{}\n", self.task, self.labels.join("\u{1f}")));
        for (side, idx) in [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ] {
            let mut rows: Vec<String> = idx
                .iter()
                .map(|&i| {
                    let item = &self.items[i];
                    format!("{}\u{1f}{}", item.name, self.label_string(item))
                })
                .collect();
            rows.sort();
            h.update(format!("{side} {}\n", rows.len()));
            for r in rows {
                h.update(r.as_bytes());
                h.update(b"\n");
            }
        }
        format!("{:x}", h.finalize())
    }

    /// An item's true label(s) as written in files: the class, or `A|B` for several labels.
    pub fn label_string(&self, item: &Item) -> String {
        match &item.target {
            Target::Class(c) => self.labels[*c].clone(),
            Target::Multi(flags) => flags
                .iter()
                .zip(&self.labels)
                .filter(|(f, _)| **f)
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("|"),
        }
    }

    /// Images per class on the training side (multi-label: images carrying each label).
    pub fn train_class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for &i in &self.train {
            match &self.items[i].target {
                Target::Class(c) => counts[*c] += 1,
                Target::Multi(flags) => {
                    for (k, &f) in flags.iter().enumerate() {
                        counts[k] += usize::from(f);
                    }
                }
            }
        }
        counts
    }
}

/// Decides the task from the data when the config does not name one.
pub fn infer_task(manifest: &Manifest) -> Task {
    if manifest.is_multi_label() {
        Task::MultiLabel
    } else if manifest.format == DatasetFormat::Retina {
        Task::Ordinal
    } else if manifest.label_names().len() == 2 {
        Task::Binary
    } else {
        Task::MultiClass
    }
}

/// A label's grade: the label as a number (`2`, `2.5`), or its leading whole number before a
/// separator (`0_none`, `1-mild`, `2 moderate`).
fn grade(label: &str) -> Option<f64> {
    if let Ok(v) = label.parse::<f64>() {
        return Some(v);
    }
    let digits = label.len() - label.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let rest = &label[digits..];
    (digits > 0 && rest.starts_with(['_', '-', ' ', '.']))
        .then(|| label[..digits].parse::<f64>().ok())
        .flatten()
}

/// Orders labels: by grade when every label has one (ordinal grades), else alphabetically.
fn ordered_labels(mut labels: Vec<String>) -> Vec<String> {
    if labels.iter().all(|l| grade(l).is_some()) {
        labels.sort_by(|a, b| {
            grade(a)
                .unwrap_or(0.0)
                .total_cmp(&grade(b).unwrap_or(0.0))
                .then_with(|| a.cmp(b))
        });
    }
    labels
}

/// Builds targets and sides. Without a `split` column, patients (or images) are split into
/// train and validation by `config.val_fraction`, seeded.
pub fn prepare(manifest: &Manifest, config: &TrainConfig) -> anyhow::Result<Prepared> {
    let task = config.task.unwrap_or_else(|| infer_task(manifest));
    let usable: Vec<&crate::dataset::Record> =
        manifest.records.iter().filter(|r| r.is_usable()).collect();
    anyhow::ensure!(!usable.is_empty(), "the dataset has no usable images");
    let labels = ordered_labels(manifest.label_names());
    anyhow::ensure!(
        labels.len() >= 2,
        "training needs at least two labels, found {labels:?}"
    );
    anyhow::ensure!(
        task != Task::Binary || labels.len() == 2,
        "a binary task needs exactly two labels; the data has {}: {}",
        labels.len(),
        labels.join(", ")
    );
    // Grades in alphabetical order would be silently wrong ("none" after "moderate").
    anyhow::ensure!(
        task != Task::Ordinal || labels.iter().all(|l| grade(l).is_some()),
        "an ordinal task needs labels that say their order: numbers (0, 1, 2, …) or names that \
         start with one (0_none, 1_mild, …); these do not: {}",
        labels
            .iter()
            .filter(|l| grade(l).is_none())
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    let index = |l: &str| {
        labels
            .iter()
            .position(|x| x == l)
            .expect("label from the same manifest")
    };
    let items: Vec<Item> = usable
        .iter()
        .map(|r| Item {
            path: manifest.image_path(r),
            name: r.path.clone(),
            patient: r.patient.clone(),
            target: if task == Task::MultiLabel {
                let mut flags = vec![false; labels.len()];
                for l in &r.labels {
                    flags[index(l)] = true;
                }
                Target::Multi(flags)
            } else {
                Target::Class(index(&r.labels[0]))
            },
        })
        .collect();
    let split_given = usable.iter().any(|r| r.split.is_some());
    let sides: Vec<Option<Split>> = if split_given {
        usable.iter().map(|r| r.split).collect()
    } else {
        let records: Vec<crate::dataset::Record> = usable.iter().map(|r| (*r).clone()).collect();
        assign_splits(
            &records,
            &manifest.copies,
            &SplitConfig {
                test: 0.0,
                val: config.val_fraction,
                seed: config.seed,
                by_image: false,
            },
        )?
    };
    let pick =
        |s: Split| -> Vec<usize> { (0..items.len()).filter(|&i| sides[i] == Some(s)).collect() };
    let (train, val, test) = (pick(Split::Train), pick(Split::Val), pick(Split::Test));
    anyhow::ensure!(!train.is_empty(), "the training side is empty");
    if split_given {
        anyhow::ensure!(
            !val.is_empty(),
            "the given split has no validation rows (split = val): the run needs them to choose \
             its model; make one with `cellbench split --val 0.2`"
        );
    }
    anyhow::ensure!(
        !val.is_empty(),
        "the validation side is empty (too few patients/images for a {:.0}% validation split)",
        config.val_fraction * 100.0
    );
    Ok(Prepared {
        task,
        labels,
        items,
        train,
        val,
        test,
        split_given,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Grades come from numbers or a leading number; other names keep their (alphabetical)
    /// order and have no grade.
    #[test]
    fn labels_are_ordered_by_their_grade_when_they_say_it() {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            ordered_labels(owned(&["10", "2", "1.5", "0"])),
            owned(&["0", "1.5", "2", "10"])
        );
        assert_eq!(
            ordered_labels(owned(&["2_moderate", "10_worst", "0_none", "1-mild"])),
            owned(&["0_none", "1-mild", "2_moderate", "10_worst"])
        );
        let names = owned(&["mild", "moderate", "none", "severe"]);
        assert_eq!(ordered_labels(names.clone()), names);
        assert_eq!(grade("none"), None);
        assert_eq!(
            grade("3d"),
            None,
            "a number must be followed by a separator"
        );
        assert_eq!(grade("3 severe"), Some(3.0));
    }
}
