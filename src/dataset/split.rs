//! Patient-grouped, label-stratified, seeded train/validation/test splits and the leakage check.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Record;

/// Which side of a split an image sits on.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Self; 3] = [Self::Train, Self::Val, Self::Test];

    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Val => "val",
            Self::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Self::Train),
            "val" | "valid" | "validation" => Ok(Self::Val),
            "test" | "testing" => Ok(Self::Test),
            other => Err(format!(
                "unknown split {other:?} (expected train, val or test)"
            )),
        }
    }
}

/// Parameters of a split. Fractions are of images; patients are never divided.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SplitConfig {
    /// Fraction of images for the test side.
    pub test: f64,
    /// Fraction of images for the validation side.
    pub val: f64,
    pub seed: u64,
    /// Split images one by one even when patients are known: the leaky split, kept to show how
    /// much it flatters a model next to the patient split (its leakage check fails, as it
    /// should). Copies of one image still stay together.
    pub by_image: bool,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            test: 0.2,
            val: 0.1,
            seed: 7,
            by_image: false,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SplitError {
    #[error(
        "split fractions must be in [0, 1) and leave some training data (test {test} + val {val})"
    )]
    BadFractions { test: f64, val: f64 },
    #[error("the dataset has no usable images to split")]
    Empty,
    #[error("cross-validation needs at least 2 folds (got {0})")]
    BadFolds(usize),
    #[error(
        "{folds} folds need at least {folds} patients (or images without patient ids); only {groups} folds could be filled"
    )]
    TooFewGroups { folds: usize, groups: usize },
}

/// What the split keeps together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Every image of a patient lands on the same side.
    Patient,
    /// The dataset has no patient ids: images are split individually.
    Image,
}

/// Counts of one side of a split.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitCounts {
    pub split: Split,
    pub images: usize,
    /// Distinct patients (0 when the dataset has none).
    pub patients: usize,
    /// Images per label (a multi-label image counts for each of its labels).
    pub labels: BTreeMap<String, usize>,
}

/// A patient found on more than one side.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leak {
    pub patient: String,
    pub splits: Vec<Split>,
    pub images: usize,
}

/// Identical images (see [`crate::dataset::duplicates`]) found on more than one side.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CopyLeak {
    /// The identical files, by record path.
    pub paths: Vec<String>,
    pub splits: Vec<Split>,
}

/// The outcome of a split, or of checking an existing one.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SplitReport {
    pub group_by: GroupBy,
    pub counts: Vec<SplitCounts>,
    /// Empty when no patient crosses sides.
    pub leaks: Vec<Leak>,
    /// Empty when no image has a copy on another side.
    #[serde(default)]
    pub copy_leaks: Vec<CopyLeak>,
    /// Images without a split (unusable images are left out of every side).
    pub unassigned: usize,
}

impl SplitReport {
    /// Builds the report of whatever split the records carry; `copies` are the dataset's
    /// groups of identical images ([`crate::dataset::Manifest::copies`]).
    pub fn of(records: &[Record], copies: &[Vec<String>]) -> Self {
        let group_by = if records.iter().any(|r| r.patient.is_some()) {
            GroupBy::Patient
        } else {
            GroupBy::Image
        };
        let mut counts: Vec<SplitCounts> = Split::ALL
            .iter()
            .map(|&split| SplitCounts {
                split,
                images: 0,
                patients: 0,
                labels: BTreeMap::new(),
            })
            .collect();
        let mut patients: [BTreeSet<&str>; 3] = Default::default();
        let mut unassigned = 0;
        for r in records {
            let Some(split) = r.split else {
                unassigned += 1;
                continue;
            };
            let i = split as usize;
            counts[i].images += 1;
            for l in &r.labels {
                *counts[i].labels.entry(l.clone()).or_default() += 1;
            }
            if let Some(p) = &r.patient {
                patients[i].insert(p);
            }
        }
        for (c, p) in counts.iter_mut().zip(&patients) {
            c.patients = p.len();
        }
        counts.retain(|c| c.images > 0 || c.split == Split::Train);
        Self {
            group_by,
            counts,
            leaks: check_leakage(records),
            copy_leaks: check_copy_leakage(records, copies),
            unassigned,
        }
    }

    /// The sides `config` asks for (a share above 0) that came out empty, one sentence each:
    /// whole patients (or images) could not make up that share. `copies`: the dataset has
    /// groups of identical images (each group counts as one).
    pub fn empty_sides(&self, config: &SplitConfig, copies: bool) -> Vec<String> {
        [(Split::Val, config.val), (Split::Test, config.test)]
            .into_iter()
            .filter(|&(side, share)| {
                share > 0.0
                    && self
                        .counts
                        .iter()
                        .find(|c| c.split == side)
                        .is_none_or(|c| c.images == 0)
            })
            .map(|(side, share)| {
                format!(
                    "the {} side is empty: whole {}{} cannot make up {:.0}% of this dataset",
                    side.name(),
                    match self.group_by {
                        GroupBy::Patient => "patients",
                        GroupBy::Image => "images",
                    },
                    if copies {
                        " (copies of one image count as one)"
                    } else {
                        ""
                    },
                    share * 100.0
                )
            })
            .collect()
    }

    /// True when no patient and no copied image is on more than one side.
    pub fn passed(&self) -> bool {
        self.leaks.is_empty() && self.copy_leaks.is_empty()
    }

    /// Whether a model may be trained on this split, made with `by_image` as given: only a
    /// split that passes the leakage check, or one split by image on purpose (patients may
    /// cross sides; copies of one image never do). `Err` says what crosses.
    pub fn check_trainable(&self, by_image: bool) -> Result<(), String> {
        if self.passed() || (by_image && self.copy_leaks.is_empty()) {
            return Ok(());
        }
        Err(format!(
            "{} patients and {} groups of identical images are on more than one side",
            self.leaks.len(),
            self.copy_leaks.len()
        ))
    }
}

/// Splits a manifest by `config` ([`assign_splits`]) and reports the result: how the
/// workbench's Split cell and `cellbench run` apply a split, written once.
pub fn apply_split(
    manifest: &super::Manifest,
    config: &SplitConfig,
) -> Result<(super::Manifest, SplitReport), SplitError> {
    let sides = assign_splits(&manifest.records, &manifest.copies, config)?;
    let mut split = manifest.clone();
    for (r, side) in split.records.iter_mut().zip(sides) {
        r.split = side;
    }
    let mut report = SplitReport::of(&split.records, &split.copies);
    if config.by_image {
        report.group_by = GroupBy::Image;
    }
    Ok((split, report))
}

/// Every group of identical images whose members sit on more than one side.
pub fn check_copy_leakage(records: &[Record], copies: &[Vec<String>]) -> Vec<CopyLeak> {
    if copies.is_empty() {
        return Vec::new();
    }
    let side: HashMap<&str, Split> = records
        .iter()
        .filter_map(|r| r.split.map(|s| (r.path.as_str(), s)))
        .collect();
    copies
        .iter()
        .filter_map(|group| {
            let sides: BTreeSet<Split> = group
                .iter()
                .filter_map(|p| side.get(p.as_str()).copied())
                .collect();
            (sides.len() > 1).then(|| CopyLeak {
                paths: group.clone(),
                splits: sides.into_iter().collect(),
            })
        })
        .collect()
}

/// Every patient whose images sit on more than one side, sorted by patient id.
pub fn check_leakage(records: &[Record]) -> Vec<Leak> {
    let mut sides: BTreeMap<&str, (BTreeSet<Split>, usize)> = BTreeMap::new();
    for r in records {
        if let (Some(p), Some(s)) = (&r.patient, r.split) {
            let e = sides.entry(p).or_default();
            e.0.insert(s);
            e.1 += 1;
        }
    }
    sides
        .into_iter()
        .filter(|(_, (s, _))| s.len() > 1)
        .map(|(p, (s, n))| Leak {
            patient: p.to_owned(),
            splits: s.into_iter().collect(),
            images: n,
        })
        .collect()
}

/// Assigns every usable record to a side: patients kept whole, identical images (`copies`,
/// groups of record paths) kept together, stratified by label, seeded. Records with a problem
/// get no side. Returns one entry per record.
pub fn assign_splits(
    records: &[Record],
    copies: &[Vec<String>],
    config: &SplitConfig,
) -> Result<Vec<Option<Split>>, SplitError> {
    let (test, val) = (config.test, config.val);
    let ok = |f: f64| (0.0..1.0).contains(&f);
    if !ok(test) || !ok(val) || test + val >= 1.0 {
        return Err(SplitError::BadFractions { test, val });
    }
    let sides = assign_groups(
        records,
        copies,
        &[1.0 - test - val, val, test],
        config.seed,
        false,
        config.by_image,
    )?;
    Ok(sides
        .into_iter()
        .map(|s| s.map(|k| Split::ALL[k]))
        .collect())
}

/// Assigns every usable record to one of `k` folds of about equal size for cross-validation,
/// with the same rules as [`assign_splits`]: patients kept whole, stratified by label, seeded.
pub fn assign_folds(
    records: &[Record],
    copies: &[Vec<String>],
    k: usize,
    seed: u64,
) -> Result<Vec<Option<usize>>, SplitError> {
    if k < 2 {
        return Err(SplitError::BadFolds(k));
    }
    let folds = assign_groups(records, copies, &vec![1.0 / k as f64; k], seed, true, false)?;
    let filled: BTreeSet<usize> = folds.iter().flatten().copied().collect();
    if filled.len() < k {
        return Err(SplitError::TooFewGroups {
            folds: k,
            groups: filled.len(),
        });
    }
    Ok(folds)
}

/// Puts whole groups (patients, or single images without patient ids) on sides with the given
/// fractions, per label stratum, in an order shuffled by `seed`: each group goes to the side
/// furthest below its target; with `spread_ties`, a tie goes to the side with the fewest
/// images overall (equal folds), else to the earlier side. Returns a side index per record
/// (`None`: unusable record).
fn assign_groups(
    records: &[Record],
    copies: &[Vec<String>],
    fractions: &[f64],
    seed: u64,
    spread_ties: bool,
    by_image: bool,
) -> Result<Vec<Option<usize>>, SplitError> {
    // Groups: patients, or single images when there are no patient ids (or `by_image`).
    let by_patient = !by_image && records.iter().any(|r| r.patient.is_some());
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        if !r.is_usable() {
            continue;
        }
        let key = match (&r.patient, by_patient) {
            (Some(p), true) => p.clone(),
            _ => format!("\u{0}{}", r.path), // images without a patient stay alone
        };
        groups.entry(key).or_default().push(i);
    }
    merge_copies(&mut groups, records, copies);
    if groups.is_empty() {
        return Err(SplitError::Empty);
    }

    // Global label frequency, to stratify multi-label groups by their rarest label.
    let mut label_freq: HashMap<&str, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.is_usable()) {
        for l in &r.labels {
            *label_freq.entry(l).or_default() += 1;
        }
    }
    let stratum_of = |members: &[usize]| -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for &i in members {
            for l in &records[i].labels {
                *counts.entry(l).or_default() += 1;
            }
        }
        let multi = members.iter().any(|&i| records[i].labels.len() > 1);
        let pick = if multi {
            counts.keys().min_by_key(|l| (label_freq[*l], **l))
        } else {
            counts
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(l, _)| l)
        };
        pick.map_or_else(String::new, |l| (*l).to_owned())
    };
    let mut strata: BTreeMap<String, Vec<Vec<usize>>> = BTreeMap::new();
    for members in groups.into_values() {
        strata
            .entry(stratum_of(&members))
            .or_default()
            .push(members);
    }

    let sides = fractions.len();
    let mut rng = SplitMix64::new(seed);
    let mut out = vec![None; records.len()];
    // Images per side over all strata, for `spread_ties`: small strata then do not all land
    // on the first fold.
    let mut overall = vec![0usize; sides];
    for mut stratum_groups in strata.into_values() {
        rng.shuffle(&mut stratum_groups);
        let total: usize = stratum_groups.iter().map(Vec::len).sum();
        let targets: Vec<f64> = fractions.iter().map(|f| f * total as f64).collect();
        let mut assigned = vec![0usize; sides];
        for members in stratum_groups {
            // The side furthest below its target takes the group.
            let side = (0..sides)
                .filter(|&k| fractions[k] > 0.0)
                .max_by(|&a, &b| {
                    let da = targets[a] - assigned[a] as f64;
                    let db = targets[b] - assigned[b] as f64;
                    let ties = if spread_ties {
                        overall[b].cmp(&overall[a])
                    } else {
                        std::cmp::Ordering::Equal
                    };
                    da.total_cmp(&db).then(ties).then(b.cmp(&a))
                })
                .unwrap_or(0);
            assigned[side] += members.len();
            overall[side] += members.len();
            for i in members {
                out[i] = Some(side);
            }
        }
    }
    Ok(out)
}

/// Merges the groups that hold copies of one image (whatever their patients) into the group
/// of the smallest key, so that no split separates identical files.
fn merge_copies(
    groups: &mut BTreeMap<String, Vec<usize>>,
    records: &[Record],
    copies: &[Vec<String>],
) {
    if copies.is_empty() {
        return;
    }
    let mut key_of: HashMap<&str, String> = HashMap::new();
    for (key, members) in groups.iter() {
        for &i in members {
            key_of.insert(records[i].path.as_str(), key.clone());
        }
    }
    // Union-find over group keys; a root is the smallest key of its set (deterministic).
    let mut parent: HashMap<String, String> = HashMap::new();
    fn find(parent: &mut HashMap<String, String>, k: &str) -> String {
        let mut root = k.to_owned();
        while let Some(p) = parent.get(&root).filter(|p| **p != root) {
            root = p.clone();
        }
        parent.insert(k.to_owned(), root.clone());
        root
    }
    for group in copies {
        let keys: Vec<&String> = group
            .iter()
            .filter_map(|p| key_of.get(p.as_str()))
            .collect();
        for pair in keys.windows(2) {
            let (a, b) = (find(&mut parent, pair[0]), find(&mut parent, pair[1]));
            if a != b {
                let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                parent.insert(hi, lo);
            }
        }
    }
    let keys: Vec<String> = parent.keys().cloned().collect();
    for key in keys {
        let root = find(&mut parent, &key);
        if root != key
            && let Some(members) = groups.remove(&key)
        {
            groups.entry(root).or_default().extend(members);
        }
    }
}

/// A tiny, fully specified PRNG so that a seed gives the same split on every platform and
/// every version of every dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests;
