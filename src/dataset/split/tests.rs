use super::*;

fn rec(path: &str, label: &str, patient: Option<&str>) -> Record {
    Record {
        path: path.into(),
        labels: vec![label.into()],
        patient: patient.map(Into::into),
        ..Default::default()
    }
}

/// 40 patients, label by patient, 1–9 images each.
fn cohort() -> Vec<Record> {
    let mut rng = SplitMix64::new(1);
    let mut out = Vec::new();
    for p in 0..40 {
        let label = if p % 4 == 0 { "hem" } else { "all" };
        for i in 0..(1 + rng.below(9)) {
            out.push(rec(&format!("p{p}/{i}.bmp"), label, Some(&format!("P{p}"))));
        }
    }
    out
}

fn apply(records: &mut [Record], cfg: &SplitConfig) {
    let sides = assign_splits(records, &[], cfg).unwrap();
    for (r, s) in records.iter_mut().zip(sides) {
        r.split = s;
    }
}

#[test]
fn folds_keep_patients_whole_and_share_out_every_label() {
    let records = cohort();
    for seed in 0..10 {
        let folds = assign_folds(&records, &[], 5, seed).unwrap();
        let mut fold_of_patient: HashMap<&str, usize> = HashMap::new();
        let mut sizes = [0usize; 5];
        let mut hem = [0usize; 5];
        for (r, f) in records.iter().zip(&folds) {
            let f = f.expect("every usable record gets a fold");
            let p = r.patient.as_deref().unwrap();
            assert_eq!(
                *fold_of_patient.entry(p).or_insert(f),
                f,
                "patient {p} split"
            );
            sizes[f] += 1;
            hem[f] += usize::from(r.labels[0] == "hem");
        }
        let total = records.len() as f64;
        for (f, &n) in sizes.iter().enumerate() {
            // Whole patients of up to 9 images: each fold within 10 images of a fifth.
            assert!(
                (n as f64 - total / 5.0).abs() <= 10.0,
                "seed {seed} fold {f}: {sizes:?}"
            );
        }
        assert!(
            hem.iter().all(|&h| h > 0),
            "seed {seed}: hem per fold {hem:?}"
        );
    }
    // Too few patients for the folds, and fewer than two folds, are errors.
    let few: Vec<Record> = (0..3)
        .map(|p| rec(&format!("{p}.bmp"), "all", Some(&format!("P{p}"))))
        .collect();
    assert!(matches!(
        assign_folds(&few, &[], 5, 0),
        Err(SplitError::TooFewGroups {
            folds: 5,
            groups: 3
        })
    ));
    assert!(matches!(
        assign_folds(&few, &[], 1, 0),
        Err(SplitError::BadFolds(1))
    ));
}

#[test]
fn no_patient_on_two_sides() {
    for seed in 0..20 {
        let mut records = cohort();
        apply(
            &mut records,
            &SplitConfig {
                test: 0.2,
                val: 0.1,
                seed,
                by_image: false,
            },
        );
        assert!(check_leakage(&records).is_empty(), "seed {seed}");
        assert!(records.iter().all(|r| r.split.is_some()));
    }
}

/// Images without patient ids are split one by one, except copies: every copy group ends
/// on one side, whatever the seed, and a split that separates copies fails the check.
#[test]
fn copies_stay_together_and_separated_copies_fail_the_check() {
    let mut records: Vec<Record> = (0..60)
        .map(|i| {
            rec(
                &format!("{}/{i:02}.png", i % 2),
                &format!("{}", i % 2),
                None,
            )
        })
        .collect();
    let copies: Vec<Vec<String>> = (0..10)
        .map(|g| vec![records[g].path.clone(), records[59 - g].path.clone()])
        .chain([vec![
            records[20].path.clone(),
            records[30].path.clone(),
            records[40].path.clone(),
        ]])
        .collect();
    for seed in 0..20 {
        let cfg = SplitConfig {
            test: 0.3,
            val: 0.2,
            seed,
            by_image: false,
        };
        let sides = assign_splits(&records, &copies, &cfg).unwrap();
        for (r, s) in records.iter_mut().zip(&sides) {
            r.split = *s;
        }
        let report = SplitReport::of(&records, &copies);
        assert!(report.passed(), "seed {seed}: {:?}", report.copy_leaks);
        let folds = assign_folds(&records, &copies, 4, seed).unwrap();
        let fold_of = |p: &str| folds[records.iter().position(|r| r.path == p).unwrap()];
        for g in &copies {
            assert!(
                g.iter().all(|p| fold_of(p) == fold_of(&g[0])),
                "seed {seed}"
            );
        }
    }
    // Without the copies the same seeds separate some of them, and the check says so.
    let sides = assign_splits(
        &records,
        &[],
        &SplitConfig {
            test: 0.3,
            val: 0.2,
            seed: 1,
            by_image: false,
        },
    )
    .unwrap();
    for (r, s) in records.iter_mut().zip(sides) {
        r.split = s;
    }
    let report = SplitReport::of(&records, &copies);
    assert!(!report.passed());
    assert!(report.leaks.is_empty());
    assert!(report.copy_leaks.iter().all(|l| l.splits.len() > 1));
}

/// The image-level split (for the comparison with the patient split) puts most patients
/// on both sides, and says so through the leakage check.
#[test]
fn an_image_split_divides_patients_and_the_check_says_so() {
    let mut records = cohort();
    apply(
        &mut records,
        &SplitConfig {
            test: 0.0,
            val: 0.3,
            seed: 2,
            by_image: true,
        },
    );
    let leaks = check_leakage(&records);
    let patients_with_two_or_more = 40
        - records
            .iter()
            .fold(BTreeMap::<&str, usize>::new(), |mut m, r| {
                *m.entry(r.patient.as_deref().unwrap()).or_default() += 1;
                m
            })
            .values()
            .filter(|&&n| n == 1)
            .count();
    assert!(
        leaks.len() * 2 > patients_with_two_or_more,
        "{} leaks",
        leaks.len()
    );
    let val = records
        .iter()
        .filter(|r| r.split == Some(Split::Val))
        .count() as f64;
    assert!((val / records.len() as f64 - 0.3).abs() < 0.05);
}

#[test]
fn stratified_within_tolerance() {
    let mut records = cohort();
    apply(
        &mut records,
        &SplitConfig {
            test: 0.25,
            val: 0.0,
            seed: 3,
            by_image: false,
        },
    );
    let report = SplitReport::of(&records, &[]);
    let total = |label: &str| records.iter().filter(|r| r.labels[0] == label).count() as f64;
    let test = report
        .counts
        .iter()
        .find(|c| c.split == Split::Test)
        .unwrap();
    for label in ["all", "hem"] {
        let share = test.labels[label] as f64 / total(label);
        // Whole patients of up to 9 images move at once: allow one patient's worth.
        assert!((share - 0.25).abs() < 0.12, "{label}: {share}");
    }
    assert!(report.counts.iter().all(|c| c.split != Split::Val));
}

#[test]
fn same_seed_same_split_other_seed_other_split() {
    let split = |seed| {
        let mut r = cohort();
        apply(
            &mut r,
            &SplitConfig {
                test: 0.2,
                val: 0.1,
                seed,
                by_image: false,
            },
        );
        r.into_iter().map(|r| r.split).collect::<Vec<_>>()
    };
    assert_eq!(split(7), split(7));
    assert_ne!(split(7), split(8));
}

#[test]
fn leakage_is_reported_with_every_patient() {
    let mut records = vec![
        rec("a", "x", Some("P1")),
        rec("b", "x", Some("P1")),
        rec("c", "y", Some("P2")),
        rec("d", "y", Some("P3")),
        rec("e", "y", Some("P3")),
    ];
    for (r, s) in records.iter_mut().zip([
        Split::Train,
        Split::Test,
        Split::Train,
        Split::Val,
        Split::Train,
    ]) {
        r.split = Some(s);
    }
    let leaks = check_leakage(&records);
    assert_eq!(
        leaks,
        vec![
            Leak {
                patient: "P1".into(),
                splits: vec![Split::Train, Split::Test],
                images: 2
            },
            Leak {
                patient: "P3".into(),
                splits: vec![Split::Train, Split::Val],
                images: 2
            },
        ]
    );
}

#[test]
fn images_without_patients_split_individually_and_unusable_ones_are_left_out() {
    let mut records: Vec<Record> = (0..50)
        .map(|i| rec(&format!("{i}.png"), if i < 25 { "a" } else { "b" }, None))
        .collect();
    records[3].problem = Some("unreadable".into());
    apply(
        &mut records,
        &SplitConfig {
            test: 0.2,
            val: 0.0,
            seed: 1,
            by_image: false,
        },
    );
    let report = SplitReport::of(&records, &[]);
    assert_eq!(report.group_by, GroupBy::Image);
    assert_eq!(report.unassigned, 1);
    let test = report
        .counts
        .iter()
        .find(|c| c.split == Split::Test)
        .unwrap();
    assert_eq!(test.images, 10);
}

#[test]
fn bad_fractions_are_rejected() {
    let records = cohort();
    for (test, val) in [(0.6, 0.4), (-0.1, 0.1), (1.0, 0.0)] {
        assert_eq!(
            assign_splits(
                &records,
                &[],
                &SplitConfig {
                    test,
                    val,
                    seed: 1,
                    by_image: false
                }
            ),
            Err(SplitError::BadFractions { test, val })
        );
    }
}

/// One rule decides whether a split may be trained on, wherever it is applied: a clean split
/// or one split by image on purpose; a patient split never leaks, and copies of one image on
/// two sides are refused even in an image split.
#[test]
fn only_a_clean_or_a_deliberate_image_split_is_trainable() {
    let manifest = |records: Vec<Record>, copies: Vec<Vec<String>>| crate::dataset::Manifest {
        root: "/data".into(),
        source: "/data".into(),
        format: crate::dataset::DatasetFormat::ClassFolders,
        records,
        problems: Vec::new(),
        copies,
    };
    let by = |by_image| SplitConfig {
        test: 0.0,
        val: 0.3,
        seed: 2,
        by_image,
    };
    let (split, report) = apply_split(&manifest(cohort(), Vec::new()), &by(false)).unwrap();
    assert!(split.records.iter().all(|r| r.split.is_some()));
    assert_eq!(report.check_trainable(false), Ok(()));

    let (_, report) = apply_split(&manifest(cohort(), Vec::new()), &by(true)).unwrap();
    assert_eq!(report.group_by, GroupBy::Image);
    assert!(!report.leaks.is_empty());
    assert_eq!(report.check_trainable(true), Ok(()));
    // The same leaks without the deliberate choice are refused, and the count is named.
    let why = report.check_trainable(false).unwrap_err();
    assert!(
        why.starts_with(&format!("{} patients", report.leaks.len())),
        "{why}"
    );

    let mut leaky = report.clone();
    leaky.copy_leaks = vec![CopyLeak {
        paths: vec!["p0/0.bmp".into(), "p1/0.bmp".into()],
        splits: vec![Split::Train, Split::Val],
    }];
    assert!(leaky.check_trainable(true).is_err());
}

/// A share asked for that whole patients cannot make up leaves its side empty, and the report
/// says so (the workbench's Split cell and `cellbench run` show it; training then needs it).
#[test]
fn a_side_too_small_for_whole_patients_is_named_empty() {
    let mut records: Vec<Record> = (0..6)
        .flat_map(|p| {
            (0..8).map(move |i| {
                rec(
                    &format!("p{p}/{i}.bmp"),
                    if p % 3 == 0 { "hem" } else { "all" },
                    Some(&format!("P{p}")),
                )
            })
        })
        .collect();
    let cfg = SplitConfig {
        test: 0.2,
        val: 0.05,
        seed: 7,
        by_image: false,
    };
    apply(&mut records, &cfg);
    let report = SplitReport::of(&records, &[]);
    assert_eq!(
        report.empty_sides(&cfg, false),
        ["the val side is empty: whole patients cannot make up 5% of this dataset"]
    );
    let asked_none = SplitConfig { val: 0.0, ..cfg };
    assert!(report.empty_sides(&asked_none, false).is_empty());
}
