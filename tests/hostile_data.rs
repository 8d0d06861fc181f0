//! Hostile and malformed inputs, written at test time: every one is listed or refused with a
//! clear message, nothing panics.

mod common;

use std::path::Path;

use common::*;

fn problem<'a>(report: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == kind)
}

fn count(report: &serde_json::Value, kind: &str) -> u64 {
    problem(report, kind).map_or(0, |p| p["count"].as_u64().unwrap())
}

fn noise(w: u32, h: u32, seed: u32) -> image::RgbImage {
    let mut state = seed.max(1);
    image::RgbImage::from_fn(w, h, |_, _| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    })
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn cells_longer_than_a_format_width_are_cut_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("long.csv");
    let long_label = "L".repeat(70_000);
    let long_path = format!("{}.png", "ü".repeat(70_000));
    std::fs::write(
        &csv,
        format!("path,label\na.png,{long_label}\n{long_path},short\nb.png,short\n"),
    )
    .unwrap();
    image::RgbImage::new(4, 4)
        .save(dir.path().join("a.png"))
        .unwrap();
    image::RgbImage::new(4, 4)
        .save(dir.path().join("b.png"))
        .unwrap();
    let plots = dir.path().join("plots");
    let out = run(&["explore", path_str(&csv), "--plots", path_str(&plots)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("LLL…"), "{text}");
    let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
    assert!(longest < 1_000, "a printed line of {longest} characters");
    assert!(stderr(&out).len() < 2_000, "{}", stderr(&out));
    // JSON keeps the whole label.
    let report = run_json(&["explore", path_str(&csv), "--json"]);
    assert!(
        label_images(&report)
            .iter()
            .any(|(l, n)| l.len() == 70_000 && *n == 1)
    );
}

#[test]
fn nested_class_folders_are_labelled_by_the_first_folder_and_listed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let png = |rel: &str| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        noise(8, 8, 3).save(path).unwrap();
    };
    png("A/b1/x.png");
    png("B/b1/y.png");
    png("A/a.png");
    png("B/b.png");
    let report = run_json(&["explore", path_str(root), "--json"]);
    assert_eq!(report["summary"]["format"], "class-folders");
    assert_eq!(
        label_images(&report),
        [("A".to_owned(), 2), ("B".to_owned(), 2)]
    );
    let nested = problem(&report, "nested-folder").expect("nested images are listed");
    assert_eq!(nested["count"], 2);
    assert!(
        nested["examples"][0]
            .as_str()
            .unwrap()
            .starts_with("A/b1/x.png: labelled \"A\", not \"b1\""),
        "{nested}"
    );
    let strict = run(&["explore", path_str(root), "--strict"]);
    assert_eq!(strict.status.code(), Some(3), "{}", stderr(&strict));
}

#[test]
fn decode_check_lists_truncated_images_of_every_codec() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let img = noise(48, 40, 11);
    let encode = |format: image::ImageFormat| {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    };
    let jpeg = encode(image::ImageFormat::Jpeg);
    let png = encode(image::ImageFormat::Png);
    let bmp = encode(image::ImageFormat::Bmp);
    let webp = encode(image::ImageFormat::WebP);
    let tiff = encode(image::ImageFormat::Tiff);
    write(&root.join("ok/a.jpg"), &jpeg);
    write(&root.join("ok/b.png"), &png);
    write(&root.join("ok/c.bmp"), &bmp);
    write(&root.join("ok/d.webp"), &webp);
    write(&root.join("ok/e.tif"), &tiff);
    // Cut before each format's end marker; a cut JPEG still decodes.
    write(&root.join("cut/a.jpg"), &jpeg[..jpeg.len() * 2 / 3]);
    write(&root.join("cut/b.png"), &png[..png.len() - 12]);
    write(&root.join("cut/c.bmp"), &bmp[..bmp.len() - 100]);
    write(&root.join("cut/d.webp"), &webp[..webp.len() - 10]);
    // This TIFF keeps its directory after its pixels: the cut takes the directory, and is
    // still said as a cut rather than as garbage.
    write(&root.join("cut/e.tif"), &tiff[..tiff.len() - 8]);

    let report = run_json(&["explore", path_str(root), "--check", "decode", "--json"]);
    let truncated = problem(&report, "truncated").expect("truncated images are listed");
    assert_eq!(truncated["count"], 5, "{}", report["problems"]);
    let examples: Vec<&str> = truncated["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for (name, marker) in [
        ("cut/a.jpg", "FF D9"),
        ("cut/b.png", "IEND"),
        ("cut/c.bmp", "BMP header declares"),
        ("cut/d.webp", "RIFF"),
        ("cut/e.tif", "TIFF"),
    ] {
        let line = examples
            .iter()
            .find(|e| e.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {examples:?}"));
        assert!(line.contains(marker), "{line}");
    }
    assert_eq!(count(&report, "unreadable"), 0, "{}", report["problems"]);
    // The intact WebP and TIFF decode like the others.
    assert_eq!(report["summary"]["usable_images"], 5);
    assert_eq!(report["summary"]["images"], 10);
}

#[test]
fn evaluate_lists_bad_probability_rows_and_strict_fails() {
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.csv");
    let good =
        "path,truth,p_a,p_b\n1.png,a,0.9,0.1\n2.png,b,0.2,0.8\n3.png,a,0.4,0.6\n4.png,b,0.3,0.7\n";
    std::fs::write(&clean, good).unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{good}5.png,a,oops,0.5\n6.png,b,NaN,0.5\n7.png,a,1.7,0.1\n8.png,b,,0.9\n9.png,a,0.7,0.7\n"),
    )
    .unwrap();
    let base = run_json(&["evaluate", "--pred", path_str(&clean), "--json"]);
    let out = run(&["evaluate", "--pred", path_str(&bad), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let lines: Vec<u64> = e["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [6, 7, 8, 9]);
    assert_eq!(e["unnormalised_rows"], 1);
    assert_eq!(e["unnormalised_examples"], serde_json::json!([10]));
    assert_eq!(e["rows"], 5);
    let err = stderr(&out);
    for needle in [
        "line 6",
        "not a number",
        "line 9",
        "missing",
        "do not sum to 1",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // The skipped rows do not move the metrics; the unnormalised row is scored.
    assert_eq!(base["problems"], serde_json::json!([]));
    assert_eq!(base["rows"], 4);
    let scored = dir.path().join("scored.csv");
    std::fs::write(&scored, format!("{good}9.png,a,0.7,0.7\n")).unwrap();
    let scored = run_json(&["evaluate", "--pred", path_str(&scored), "--json"]);
    assert_eq!(e["metrics"], scored["metrics"]);
    assert_ne!(e["metrics"], base["metrics"]);

    let strict = run(&["evaluate", "--pred", path_str(&bad), "--strict"]);
    assert_eq!(strict.status.code(), Some(3), "{}", stderr(&strict));
    assert!(
        stderr(&strict).contains("4 row(s) skipped"),
        "{}",
        stderr(&strict)
    );
    let ok = run(&["evaluate", "--pred", path_str(&clean), "--strict"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(stdout(&ok).contains("accuracy"));
}

#[test]
fn an_unterminated_quote_is_one_short_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("quote.csv");
    let mut text = String::from("path,label\na.png,x\nb.png,\"unclosed\nc.png,y\n");
    for i in 0..5_000 {
        text.push_str(&format!("image_{i:05}.png,label_{}\n", i % 3));
    }
    std::fs::write(&csv, &text).unwrap();
    let out = run(&["explore", path_str(&csv)]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("line 3"), "{err}");
    assert!(err.trim_end().ends_with(path_str(&csv)), "{err}");
    assert!(err.len() < 600, "{} bytes on stderr:\n{err}", err.len());
    // The same for evaluate, which reads its CSVs the same way.
    let out = run(&["evaluate", "--pred", path_str(&csv)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    assert!(stderr(&out).len() < 600);
}

#[test]
fn ids_matching_several_files_are_ambiguous_until_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for (seed, name) in ["183.bmp", "019.bmp", "020.bmp"].into_iter().enumerate() {
        noise(6, 6, 10 + seed as u32).save(root.join(name)).unwrap();
    }
    noise(6, 6, 7).save(root.join("183.png")).unwrap(); // a mask beside its image
    let csv = root.join("labels.csv");
    std::fs::write(&csv, "id,label\n183,a\n19,b\n20,a\n").unwrap();

    let report = run_json(&["explore", path_str(&csv), "--json"]);
    let ambiguous = problem(&report, "ambiguous-id").expect("listed");
    assert_eq!(ambiguous["count"], 1);
    let example = ambiguous["examples"][0].as_str().unwrap();
    assert!(
        example.starts_with("183: ambiguous: 183.bmp, 183.png"),
        "{example}"
    );
    let padded = problem(&report, "padded-id").expect("the padding is said");
    assert!(
        padded["examples"][0]
            .as_str()
            .unwrap()
            .contains("2 id(s) matched only a zero-padded file name"),
        "{padded}"
    );
    assert_eq!(report["summary"]["usable_images"], 2);

    let report = run_json(&[
        "explore",
        path_str(&csv),
        "--image-pattern",
        "{id:03}.bmp",
        "--json",
    ]);
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["summary"]["usable_images"], 3);

    let out = run(&["explore", path_str(&csv), "--image-pattern", "{name}.bmp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bad image pattern"),
        "{}",
        stderr(&out)
    );
    // split opens datasets the same way.
    let split_csv = root.join("split.csv");
    let out = run(&[
        "split",
        path_str(&csv),
        "--image-pattern",
        "{id:03}.bmp",
        "--out",
        path_str(&split_csv),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&split_csv).unwrap();
    assert!(
        written.contains("183.bmp") && written.contains("019.bmp"),
        "{written}"
    );
}

/// `cellbench train` with its feature cache in `dir`.
fn train(dir: &Path, args: &[&str]) -> std::process::Output {
    cellbench()
        .arg("train")
        .args(args)
        .args(["--backend", "cpu", "--image-size", "64", "--seed", "1"])
        .env("CELLBENCH_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

/// The only run folder under `runs`.
fn the_run(runs: &Path) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn training_on_files_that_are_not_images_fails_with_no_usable_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    for (class, ext) in [("a", "png"), ("b", "jpg")] {
        for i in 0..4 {
            write(
                &root.join(format!("{class}/{i}.{ext}")),
                format!("not an image {i}").as_bytes(),
            );
        }
    }
    let runs = dir.path().join("runs");
    let out = train(
        dir.path(),
        &[path_str(&root), "--epochs", "1", "--runs", path_str(&runs)],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no usable images"),
        "{}",
        stderr(&out)
    );
    if runs.is_dir() {
        for run in std::fs::read_dir(&runs).unwrap() {
            let run = run.unwrap().path();
            assert!(!run.join("model.safetensors").exists(), "{run:?}");
        }
    }
}

#[test]
fn a_nan_loss_stops_the_run_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    // A learning rate this large overflows the weights within the first epoch.
    let out = train(
        dir.path(),
        &[
            path_str(&cellbench::demo_dataset()),
            "--solver",
            "sgd",
            "--lr",
            "1e38",
            "--epochs",
            "3",
            "--runs",
            path_str(&runs),
        ],
    );
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("NaN"), "{}", stderr(&out));
    let run = the_run(&runs);
    let status = read_json(&run.join("status.json"));
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("NaN"),
        "{status}"
    );
    assert!(!run.join("model.safetensors").exists());
}

#[test]
fn a_70000_character_cell_goes_through_train() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut images: Vec<_> = walk_images(&cellbench::demo_dataset());
    images.truncate(14);
    let mut rows = vec!["path,label".to_owned()];
    for (i, image) in images.iter().enumerate() {
        let name = format!("im{i}.jpg");
        write(&root.join(&name), &std::fs::read(image).unwrap());
        let label = match i {
            12 | 13 => "L".repeat(70_000),
            i if i % 2 == 0 => "a".to_owned(),
            _ => "b".to_owned(),
        };
        rows.push(format!("{name},{label}"));
    }
    rows.push(format!("{}.jpg,a", "x".repeat(70_000)));
    let csv = root.join("labels.csv");
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let runs = dir.path().join("runs");
    let out = train(
        dir.path(),
        &[path_str(&csv), "--epochs", "1", "--runs", path_str(&runs)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("LLL…"), "{text}");
    // Neither the report nor a warning (on standard error) prints a label whole.
    for text in [text, stderr(&out)] {
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(longest < 1_000, "a printed line of {longest} characters");
    }
    assert!(the_run(&runs).join("model.safetensors").is_file());
}

/// Every image file below `dir`, sorted.
fn walk_images(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "jpg") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn predict_resolves_manifest_ids_as_train_does() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let out = train(
        dir.path(),
        &[
            path_str(&cellbench::demo_dataset()),
            "--epochs",
            "1",
            "--runs",
            path_str(&runs),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = the_run(&runs);

    let root = dir.path().join("data");
    for (seed, name) in ["183.bmp", "019.bmp", "020.bmp"].into_iter().enumerate() {
        std::fs::create_dir_all(&root).unwrap();
        noise(16, 16, 10 + seed as u32)
            .save(root.join(name))
            .unwrap();
    }
    noise(16, 16, 7).save(root.join("183.png")).unwrap(); // a mask beside its image
    let csv = root.join("labels.csv");
    std::fs::write(&csv, "id,label\n183,a\n19,b\n20,a\n").unwrap();
    let predictions = dir.path().join("predictions.csv");
    let predict = |extra: &[&str]| {
        cellbench()
            .args([
                "predict",
                path_str(&run),
                path_str(&csv),
                "--backend",
                "cpu",
            ])
            .args(["--out", path_str(&predictions)])
            .args(extra)
            .output()
            .unwrap()
    };

    let out = predict(&[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("ambiguous: 183.bmp, 183.png"), "{err}");
    assert!(err.contains("zero-padded"), "{err}");
    let written = std::fs::read_to_string(&predictions).unwrap();
    assert!(
        written.contains("019.bmp") && !written.contains("183"),
        "{written}"
    );
    let out = predict(&["--strict"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let out = predict(&["--image-pattern", "{id:03}.bmp"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("ambiguous"), "{err}");
    let written = std::fs::read_to_string(&predictions).unwrap();
    assert_eq!(written.lines().count(), 4, "{written}");
    assert!(written.contains("183.bmp"), "{written}");

    // Images to predict need no labels: a CSV of paths alone, a row with an empty label.
    std::fs::write(&csv, "path\n019.bmp\n020.bmp\n").unwrap();
    let out = predict(&[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let written = std::fs::read_to_string(&predictions).unwrap();
    assert_eq!(written.lines().count(), 3, "{written}");
    std::fs::write(&csv, "path,label\n019.bmp,a\n020.bmp,\n").unwrap();
    let out = predict(&[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let written = std::fs::read_to_string(&predictions).unwrap();
    assert!(written.contains("020.bmp"), "{err}\n{written}");
}

/// `cellbench run` that fails at a later cell keeps what it trained: the Train cell's run id
/// is saved back into the workbook, and the error names the failing cell.
#[test]
fn a_workbook_that_fails_after_training_keeps_its_run_id() {
    let dir = tempfile::tempdir().unwrap();
    let book = dir.path().join("book.cellbook.toml");
    std::fs::write(
        &book,
        format!(
            "title = \"fails late\"\n\
             [[cell]]\nid = 1\nkind = \"dataset\"\npath = \"{}\"\n\
             [[cell]]\nid = 2\nkind = \"split\"\n[cell.config]\ntest = 0.0\nval = 0.3\n\
             [[cell]]\nid = 3\nkind = \"train\"\n[cell.config]\nbackend = \"cpu\"\n\
             [cell.config.preprocess]\nsize = 64\n\
             [[cell]]\nid = 4\nkind = \"predict\"\ninput = \"gone.csv\"\noutput = \"out.csv\"\n",
            path_str(&cellbench::demo_dataset())
        ),
    )
    .unwrap();
    let out = cellbench()
        .args(["run", path_str(&book)])
        .env("CELLBENCH_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cell 4 (Predict)"), "{err}");
    assert!(err.contains("gone.csv"), "{err}");
    let saved = std::fs::read_to_string(&book).unwrap();
    assert!(
        saved.contains("run = \""),
        "the run id is saved back: {saved}"
    );

    // A Split cell whose validation share whole patients cannot fill says so itself.
    let saved = saved.replace("val = 0.3", "val = 0.01");
    std::fs::write(&book, saved).unwrap();
    let out = cellbench()
        .args(["run", path_str(&book)])
        .env("CELLBENCH_CACHE", dir.path().join("cache"))
        .output()
        .unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("warning: the val side is empty: whole"),
        "{text}"
    );
}
