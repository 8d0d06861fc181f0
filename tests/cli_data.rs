//! End-to-end tests of the data commands (`explore`, `split`, `synth`) on real data from
//! `../shared/data` and on files the tests write.

mod common;

use common::*;

#[test]
fn explore_bccd_class_folders() {
    let data = shared_data().join("bccd/BCCD_cropped");
    let report = run_json(&["explore", path_str(&data), "--json"]);
    assert_eq!(report["summary"]["format"], "class-folders");
    assert_eq!(report["summary"]["images"], 351);
    assert_eq!(report["summary"]["patients"], serde_json::Value::Null);
    assert_eq!(
        label_images(&report),
        [
            ("Neutrophil".to_owned(), 207),
            ("Eosinophil".to_owned(), 88),
            ("Lymphocyte".to_owned(), 33),
            ("Monocyte".to_owned(), 20),
            ("Basophil".to_owned(), 3),
        ]
    );
    let ratio = report["imbalance"]["ratio"].as_f64().unwrap();
    assert!((ratio - 69.0).abs() < 1e-9, "{ratio}");
    assert_eq!(report["imbalance"]["minority"], "Basophil");
}

#[test]
fn explore_cnmc_samples_parses_patients_and_cells() {
    let data = shared_data().join("cnmc-samples");
    let report = run_json(&["explore", path_str(&data), "--json", "--check", "headers"]);
    assert_eq!(report["summary"]["format"], "cnmc");
    assert_eq!(report["summary"]["patients"], 2);
    let labels = report["labels"].as_array().unwrap();
    for l in labels {
        assert_eq!(l["images"], 3);
        assert_eq!(l["patients"], 1);
    }
    assert_eq!(report["cells"]["cell_numbers"], serde_json::json!([1]));
    assert_eq!(report["images_per_patient"]["all"]["median"], 3.0);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{}",
        report["problems"]
    );
}

#[test]
fn explore_nih_csv_without_images_matches_known_figures() {
    let csv = shared_data().join("nih-cxr14/Data_Entry_2017_v2020.csv");
    let report = run_json(&["explore", path_str(&csv), "--json"]);
    assert_eq!(report["summary"]["format"], "nih");
    assert_eq!(report["summary"]["images"], 112_120);
    assert_eq!(report["summary"]["patients"], 30_805);
    assert_eq!(report["summary"]["multi_label"], true);
    let counts: std::collections::HashMap<String, u64> =
        label_images(&report).into_iter().collect();
    assert_eq!(counts["Infiltration"], 19_894);
    assert_eq!(counts["Hernia"], 227);
    assert_eq!(counts.len(), 15);
    let first = &report["labels"][0]["label"];
    assert_eq!(first, "No Finding");
    assert_eq!(report["imbalance"]["minority"], "Hernia");
    // Co-occurrence diagonal equals the per-label count.
    let co = &report["cooccurrence"];
    let i = co["labels"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l == "Infiltration")
        .unwrap();
    assert_eq!(co["counts"][i][i], 19_894);
    // No images beside the CSV: one summary problem, not 112k.
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["kind"], "missing-image");
    assert_eq!(problems[0]["count"], 1);
}

#[test]
fn explore_tables_and_plots() {
    let data = shared_data().join("cnmc-samples");
    let plots = tempfile::tempdir().unwrap();
    let out = run(&[
        "explore",
        path_str(&data),
        "--plots",
        path_str(plots.path()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for heading in [
        "Images and patients per label",
        "Cell number per label",
        "Images per patient",
        "Problems",
    ] {
        assert!(text.contains(heading), "missing {heading:?} in\n{text}");
    }
    for (stem, title) in [
        ("images_per_label", "Images per label"),
        ("patients_per_label", "Patients per label"),
        ("images_per_patient", "Images per patient"),
        ("cell_number_per_label", "Cell number per label"),
    ] {
        let png = plots.path().join(format!("{stem}.png"));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(img.width() >= 800 && img.height() >= 500);
        // Not a blank canvas: bars and text are drawn.
        let rgb = img.to_rgb8();
        let non_white = rgb.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 2_000, "{stem}: {non_white} drawn pixels");
        let svg = std::fs::read_to_string(plots.path().join(format!("{stem}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains(title),
            "{stem}.svg has no title {title:?}"
        );
    }
}

/// The texts of an SVG, trimmed, in order.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let body = t.split_once('>')?.1;
            let text = body.split_once("</text>")?.0.trim();
            Some(text.replace("&gt;", ">").replace("&lt;", "<"))
        })
        .collect()
}

/// Exported images-per-patient charts: a count axis reaching only 1 names whole numbers (not
/// 0, 0, 0, 1, 1 at fractional ticks); a long tail's bar, one patient too short to see, carries
/// its count and the axis says what it holds.
#[test]
fn exported_patient_histograms_name_counts_and_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut one = String::from("path,label,patient\n");
    for i in 0..50 {
        one.push_str(&format!("img{i}.png,{},P1\n", ["a", "b"][i % 2]));
    }
    let mut tail = String::from("path,label,patient\n");
    for p in 0..40 {
        for i in 0..(1 + p % 3) {
            tail.push_str(&format!("p{p}_{i}.png,a,P{p}\n"));
        }
    }
    for i in 0..500 {
        tail.push_str(&format!("whale_{i}.png,b,W\n"));
    }
    for (name, text) in [("one", one), ("tail", tail)] {
        let csv = dir.path().join(format!("{name}.csv"));
        std::fs::write(&csv, text).unwrap();
        let plots = dir.path().join(format!("{name}_plots"));
        let out = run(&["explore", path_str(&csv), "--plots", path_str(&plots)]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let svg = |name: &str| {
        std::fs::read_to_string(
            dir.path()
                .join(format!("{name}_plots/images_per_patient.svg")),
        )
        .unwrap()
    };
    let texts = svg_texts(&svg("one"));
    let zeros = texts.iter().filter(|t| *t == "0").count();
    assert_eq!(zeros, 1, "{texts:?}");
    assert!(texts.iter().any(|t| t == "50"), "{texts:?}");
    let texts = svg_texts(&svg("tail"));
    assert!(
        texts
            .iter()
            .any(|t| t.contains("last bar: 1 patient with more than 3 images, up to 500")),
        "{texts:?}"
    );
    assert!(texts.iter().any(|t| t == ">3"), "{texts:?}");
    // Each bar's count: 14, 13 and 13 patients with 1, 2 and 3 images (the axis has even
    // ticks), then the one: `1` names both the first bar and the last one's count.
    assert_eq!(texts.iter().filter(|t| *t == "13").count(), 2, "{texts:?}");
    assert_eq!(texts.iter().filter(|t| *t == "1").count(), 2, "{texts:?}");
}

#[test]
fn retina_csv_patients_from_image_ids_and_missing_images() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trainLabels.csv");
    std::fs::write(
        &csv,
        "image,level\n10_left,0\n10_right,2\n13_left,0\n13_right,0\n15_left,4\n15_right,4\n",
    )
    .unwrap();
    let images = dir.path().join("train");
    std::fs::create_dir(&images).unwrap();
    image::RgbImage::new(8, 8)
        .save(images.join("10_left.jpeg"))
        .unwrap();
    image::RgbImage::new(8, 8)
        .save(images.join("10_right.jpeg"))
        .unwrap();
    let report = run_json(&[
        "explore",
        path_str(&csv),
        "--images",
        path_str(&images),
        "--json",
    ]);
    assert_eq!(report["summary"]["format"], "retina");
    assert_eq!(report["summary"]["patients"], 3);
    assert_eq!(report["summary"]["usable_images"], 2);
    let counts: std::collections::HashMap<String, u64> =
        label_images(&report).into_iter().collect();
    assert_eq!((counts["0"], counts["2"], counts["4"]), (3, 1, 2));
    let missing = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "missing-image")
        .unwrap();
    assert_eq!(missing["count"], 4);
}

#[test]
fn generic_csv_with_multi_labels_patients_and_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("manifest.csv");
    std::fs::write(
        &csv,
        "filename,diagnosis,subject\na.png,A|B,s1\nb.png,B,s1\nc.png,A,s2\na.png,A,s3\n,B,s4\n",
    )
    .unwrap();
    for (i, n) in ["a.png", "b.png", "c.png"].into_iter().enumerate() {
        image::RgbImage::from_pixel(4, 4, image::Rgb([i as u8 * 60, 0, 0]))
            .save(dir.path().join(n))
            .unwrap();
    }
    let report = run_json(&["explore", path_str(&csv), "--json"]);
    assert_eq!(report["summary"]["format"], "csv");
    assert_eq!(report["summary"]["images"], 3);
    assert_eq!(report["summary"]["patients"], 2);
    assert_eq!(
        label_images(&report),
        [("A".to_owned(), 2), ("B".to_owned(), 2)]
    );
    let kinds: Vec<&str> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["duplicate-path", "bad-row"]);
    assert_eq!(
        report["cooccurrence"]["counts"],
        serde_json::json!([[2, 1], [1, 2]])
    );
}

#[test]
fn bad_input_corpus_is_listed_never_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let good = root.join("good");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(root.join("bad")).unwrap();
    let img = image::RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8, y as u8, 7]));
    img.save(good.join("ok.png")).unwrap();
    img.save(good.join("ok2.jpg")).unwrap();
    let png = std::fs::read(good.join("ok.png")).unwrap();
    std::fs::write(root.join("bad/truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(root.join("bad/empty.png"), b"").unwrap();
    std::fs::write(root.join("bad/garbage.jpg"), b"definitely not a jpeg").unwrap();
    std::fs::write(root.join("bad/notes.bin"), b"x").unwrap();
    std::fs::write(root.join("loose.png"), &png).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt as _;
        let name = std::ffi::OsStr::from_bytes(b"bad/caf\xe9.png");
        std::fs::write(root.join(name), &png).unwrap();
        std::os::unix::fs::symlink(root, good.join("loop")).unwrap();
    }
    let out = run(&["explore", path_str(root), "--check", "decode", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |kind: &str| {
        report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .map_or(0, |p| p["count"].as_u64().unwrap())
    };
    assert_eq!(count("empty-file"), 1);
    assert_eq!(count("unreadable"), 1, "{}", report["problems"]);
    assert_eq!(count("truncated"), 1, "{}", report["problems"]);
    assert_eq!(count("not-an-image"), 1);
    assert_eq!(count("no-class-folder"), 1);
    #[cfg(unix)]
    {
        assert_eq!(count("non-utf8-name"), 1);
        assert!(
            count("walk-error") >= 1,
            "symlink loop: {}",
            report["problems"]
        );
    }
    assert_eq!(report["summary"]["usable_images"], 2);

    let strict = run(&["explore", path_str(root), "--strict"]);
    assert_eq!(strict.status.code(), Some(3));
}

#[test]
fn empty_folder_and_missing_path_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["explore", path_str(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no images found"), "{}", stderr(&out));
    let out = run(&["explore", "/no/such/dataset"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no such file or folder"),
        "{}",
        stderr(&out)
    );
    let out = run(&["explore"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn file_system_errors_name_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = bccd_subset(dir.path(), &["Basophil", "Monocyte"], 4);
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).unwrap();
    let fails_naming = |args: &[&str], what: &str, path: &std::path::Path| {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(what) && err.contains(path_str(path)),
            "{args:?}: {err}"
        );
        assert!(!err.contains("os error 17"), "{args:?}: {err}");
    };
    // A file where a folder must be made.
    let below_file = file.join("split.csv");
    fails_naming(
        &["split", path_str(&dataset), "--out", path_str(&below_file)],
        "a file of that name exists",
        &file,
    );
    let deeper = file.join("sub/split.csv");
    fails_naming(
        &["split", path_str(&dataset), "--out", path_str(&deeper)],
        "a file is in the way",
        &file,
    );
    fails_naming(
        &["explore", path_str(&dataset), "--plots", path_str(&file)],
        "a file of that name exists",
        &file,
    );
    // A folder where a file must be written.
    fails_naming(
        &["split", path_str(&dataset), "--out", path_str(&folder)],
        "a folder is in its place",
        &folder,
    );
}

#[test]
fn a_display_without_a_runtime_folder_prints_no_wayland_noise() {
    // An X11 display (e.g. over ssh) and no XDG_RUNTIME_DIR: probing the GPUs must stay quiet.
    let out = cellbench()
        .args(["weights", "check", "--backend", "auto"])
        .env("DISPLAY", ":77")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cat"), "{}", stdout(&out));
    assert!(
        !stderr(&out).contains("XDG_RUNTIME_DIR"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn synth_split_and_leakage_check() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let out = run(&[
        "synth",
        path_str(&data),
        "--patients",
        "15",
        "--images",
        "12",
        "--size",
        "32",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let report = run_json(&["explore", path_str(&data), "--json", "--check", "headers"]);
    assert_eq!(report["summary"]["format"], "cnmc");
    assert_eq!(report["summary"]["images"], 180);
    assert_eq!(report["summary"]["patients"], 15);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{}",
        report["problems"]
    );
    // Healthy subject 3 is written `h3` on some files and must still be one patient.
    let names: Vec<String> = walk_names(&data);
    assert!(
        names.iter().any(|n| n.starts_with("UID_h3_")),
        "no lower-case h3 file"
    );
    assert!(names.iter().any(|n| n.starts_with("UID_H3_")));

    let split_csv = dir.path().join("split.csv");
    let out = run(&[
        "split",
        path_str(&data),
        "--test",
        "0.2",
        "--val",
        "0.2",
        "--seed",
        "7",
        "--out",
        path_str(&split_csv),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("leakage check: passed"));

    let check = run(&["split", "--check", path_str(&split_csv)]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    // Determinism: same seed, same file.
    let again = dir.path().join("again.csv");
    run(&[
        "split",
        path_str(&data),
        "--test",
        "0.2",
        "--val",
        "0.2",
        "--seed",
        "7",
        "--out",
        path_str(&again),
    ]);
    assert_eq!(
        std::fs::read(&split_csv).unwrap(),
        std::fs::read(&again).unwrap()
    );

    // Move one image of patient H3 to another side: the check names the patient.
    let text = std::fs::read_to_string(&split_csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let i = lines
        .iter()
        .position(|l| l.contains(",H3,"))
        .expect("a row of patient H3");
    let side = if lines[i].contains(",train,") {
        ",test,"
    } else {
        ",train,"
    };
    lines[i] = lines[i]
        .replace(",train,", side)
        .replace(",val,", side)
        .replace(",test,", side);
    let tampered = dir.path().join("tampered.csv");
    std::fs::write(&tampered, lines.join("\n") + "\n").unwrap();
    let check = run(&["split", "--check", path_str(&tampered)]);
    assert_eq!(check.status.code(), Some(4));
    assert!(stderr(&check).contains("patient H3"), "{}", stderr(&check));
}

fn walk_names(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_names(&p));
        } else {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// A folder copied between trees (the same image under two names, once in each class):
/// `explore` lists the copies, a split keeps them on one side, and a split that separates
/// them fails `split --check` like a patient leak.
#[test]
fn identical_images_are_listed_kept_together_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cells");
    let neutrophils = common::bccd_class_files("Neutrophil", 12);
    let lymphocytes = common::bccd_class_files("Lymphocyte", 12);
    for (class, files) in [("Neutrophil", &neutrophils), ("Lymphocyte", &lymphocytes)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for f in files.iter() {
            std::fs::copy(f, data.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    // Two copies of one neutrophil: one renamed in its own class, one (mislabelled) among the
    // lymphocytes.
    std::fs::copy(&neutrophils[0], data.join("Neutrophil/copy_of_first.jpg")).unwrap();
    std::fs::copy(&neutrophils[0], data.join("Lymphocyte/stray.jpg")).unwrap();

    let report = run_json(&["explore", path_str(&data), "--json"]);
    let problems = report["problems"].as_array().unwrap();
    let copies = problems
        .iter()
        .find(|p| p["kind"] == "identical-images")
        .unwrap_or_else(|| panic!("{problems:?}"));
    assert_eq!(copies["count"], 1, "{copies}");
    let text = copies.to_string();
    assert!(
        text.contains("stray.jpg") && text.contains("copy_of_first.jpg"),
        "{text}"
    );
    assert!(text.contains("Lymphocyte vs Neutrophil"), "{text}");

    // Every seed keeps the three copies on one side.
    let copy_paths = [
        format!(
            "Neutrophil/{}",
            neutrophils[0].file_name().unwrap().to_str().unwrap()
        ),
        "Neutrophil/copy_of_first.jpg".to_owned(),
        "Lymphocyte/stray.jpg".to_owned(),
    ];
    let split_csv = dir.path().join("split.csv");
    for seed in ["1", "2", "3", "4"] {
        let out = run(&[
            "split",
            path_str(&data),
            "--test",
            "0.3",
            "--val",
            "0.3",
            "--seed",
            seed,
            "--out",
            path_str(&split_csv),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stdout(&out).contains("no copy of an image"),
            "{}",
            stdout(&out)
        );
        let text = std::fs::read_to_string(&split_csv).unwrap();
        let sides: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| copy_paths.iter().any(|p| l.contains(p.as_str())))
            .map(|l| {
                ["train", "val", "test"]
                    .into_iter()
                    .find(|s| l.contains(&format!(",{s}")))
                    .unwrap()
            })
            .collect();
        assert_eq!(sides.len(), 1, "seed {seed}: {text}");
    }
    let check = run(&["split", "--check", path_str(&split_csv)]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));

    // Move one copy to another side: the check fails and names the copies.
    let text = std::fs::read_to_string(&split_csv).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .map(|l| {
            if l.contains("stray.jpg") {
                let side = if l.contains(",test") {
                    ",test"
                } else if l.contains(",val") {
                    ",val"
                } else {
                    ",train"
                };
                let other = if side == ",train" { ",test" } else { ",train" };
                l.replace(side, other)
            } else {
                l.to_owned()
            }
        })
        .collect();
    let tampered_csv = dir.path().join("tampered.csv");
    std::fs::write(&tampered_csv, tampered.join("\n") + "\n").unwrap();
    let check = run(&["split", "--check", path_str(&tampered_csv)]);
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("identical images") && stderr(&check).contains("stray.jpg"),
        "{}",
        stderr(&check)
    );
}

/// `split --by-image` divides patients on purpose (for the comparison with a patient split):
/// it succeeds, names the divided patients and says why the scores will be optimistic; the
/// patient split of the same data divides none.
#[test]
fn an_image_split_is_allowed_on_purpose_and_says_what_it_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let out = run(&[
        "synth",
        path_str(&data),
        "--patients",
        "9",
        "--images",
        "10",
        "--size",
        "24",
        "--signal",
        "0.5",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = dir.path().join("image.csv");
    let out = run(&[
        "split",
        path_str(&data),
        "--by-image",
        "--test",
        "0",
        "--val",
        "0.3",
        "--out",
        path_str(&csv),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("split by image on purpose"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("split (grouped by image)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("have images on more than one side, as --by-image does"),
        "{}",
        stderr(&out)
    );
    // The same file, checked as a split, is leaky.
    let check = run(&["split", "--check", path_str(&csv)]);
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    // Training on it works, and says the scores will be optimistic.
    let out = cellbench()
        .env("CELLBENCH_CACHE", dir.path().join("cache"))
        .args(["train", "--split", path_str(&csv)])
        .args(["--image-size", "32", "--backend", "cpu"])
        .args(["--runs", path_str(&dir.path().join("runs"))])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("validation scores on it are optimistic"),
        "{}",
        stderr(&out)
    );
}

/// `split --check` says what it could not check and does not pass it: a split value that is
/// not train/val/test, and a split CSV moved away from its images (copies among them cannot
/// be compared).
#[test]
fn a_split_check_that_cannot_see_everything_fails() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let out = run(&[
        "synth",
        path_str(&data),
        "--patients",
        "6",
        "--images",
        "4",
        "--size",
        "24",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let csv = dir.path().join("split.csv");
    let out = run(&[
        "split",
        path_str(&data),
        "--out",
        path_str(&csv),
        "--val",
        "0.3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        run(&["split", "--check", path_str(&csv)]).status.code(),
        Some(0)
    );

    let text = std::fs::read_to_string(&csv).unwrap();
    let holdout = dir.path().join("holdout.csv");
    std::fs::write(&holdout, text.replacen(",train,", ",holdout,", 1)).unwrap();
    let check = run(&["split", "--check", path_str(&holdout)]);
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("unknown split \"holdout\""),
        "{}",
        stderr(&check)
    );

    let away = dir.path().join("elsewhere");
    std::fs::create_dir_all(&away).unwrap();
    std::fs::copy(&csv, away.join("split.csv")).unwrap();
    let check = run(&["split", "--check", path_str(&away.join("split.csv"))]);
    assert_eq!(check.status.code(), Some(4), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("could not be checked"),
        "{}",
        stderr(&check)
    );
    // Given the images folder, the same file passes.
    let check = run(&[
        "split",
        "--check",
        path_str(&away.join("split.csv")),
        "--images",
        path_str(dir.path()),
    ]);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
}
