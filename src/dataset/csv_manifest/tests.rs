use super::*;

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    crate::fs::create_dir_all(path.parent().unwrap()).unwrap();
    crate::fs::write(path, bytes).unwrap();
}

fn problems_of(m: &Manifest, kind: ProblemKind) -> Vec<&Problem> {
    m.problems.iter().filter(|p| p.kind == kind).collect()
}

#[test]
fn patterns_parse_and_pad_numeric_ids_only() {
    let p = ImagePattern::parse("{id:03}.bmp").unwrap();
    assert_eq!(p.apply("19"), "019.bmp");
    assert_eq!(p.apply("183"), "183.bmp");
    assert_eq!(p.apply("1834"), "1834.bmp");
    assert_eq!(p.apply("ab"), "ab.bmp");
    let p = ImagePattern::parse("img/{id}_x.png").unwrap();
    assert_eq!(p.apply("7"), "img/7_x.png");
    for bad in [
        "x.bmp",
        "{id",
        "{name}.bmp",
        "{id:3}.bmp",
        "{id:0}.bmp",
        "{id}}.bmp",
        "",
    ] {
        let err = ImagePattern::parse(bad).unwrap_err();
        assert!(
            err.to_string().contains("bad image pattern"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn an_id_matching_two_files_is_ambiguous_unless_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "183.bmp", b"image");
    write(root, "183.png", b"mask");
    write(root, "184.bmp", b"image");
    let csv = root.join("labels.csv");
    crate::fs::write(&csv, "id,label\n183,a\n184,b\n").unwrap();
    let m = read_csv_dataset(&csv, &OpenOptions::default()).unwrap();
    let ambiguous = problems_of(&m, ProblemKind::AmbiguousId);
    assert_eq!(ambiguous.len(), 1, "{:?}", m.problems);
    assert_eq!(ambiguous[0].path, "183");
    assert!(
        ambiguous[0]
            .detail
            .starts_with("ambiguous: 183.bmp, 183.png (line 2)"),
        "{}",
        ambiguous[0].detail
    );
    let r183 = m.records.iter().find(|r| r.path == "183").unwrap();
    assert!(!r183.is_usable());
    assert_eq!(r183.problem.as_deref(), Some("ambiguous: 183.bmp, 183.png"));
    // 184 has one file: matched, no problem.
    assert!(
        m.records
            .iter()
            .any(|r| r.path == "184.bmp" && r.is_usable())
    );

    let options = OpenOptions {
        image_pattern: Some("{id}.bmp".into()),
        ..Default::default()
    };
    let m = read_csv_dataset(&csv, &options).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let paths: Vec<&str> = m.records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["183.bmp", "184.bmp"]);

    // Naming the extension in the CSV settles it too.
    crate::fs::write(&csv, "id,label\n183.png,a\n").unwrap();
    let m = read_csv_dataset(&csv, &OpenOptions::default()).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert_eq!(m.records[0].path, "183.png");
}

#[test]
fn numeric_ids_fall_back_to_zero_padded_names_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "img/019.bmp", b"x");
    write(root, "img/007.bmp", b"x");
    write(root, "img/183.bmp", b"x");
    let csv = root.join("labels.csv");
    crate::fs::write(&csv, "id,label\n19,a\n7,b\n183,a\n5,b\n").unwrap();
    let m = read_csv_dataset(&csv, &OpenOptions::default()).unwrap();
    let paths: Vec<&str> = m.records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["5", "img/007.bmp", "img/019.bmp", "img/183.bmp"]);
    let padded = problems_of(&m, ProblemKind::PaddedId);
    assert_eq!(padded.len(), 1, "{:?}", m.problems);
    assert!(
        padded[0]
            .detail
            .starts_with("2 id(s) matched only a zero-padded file name (e.g. 19 → img/019.bmp)"),
        "{}",
        padded[0].detail
    );
    assert!(padded[0].detail.contains("--image-pattern \"{id:03}.bmp\""));
    assert_eq!(problems_of(&m, ProblemKind::MissingImage).len(), 1);

    // With the pattern the padding is the user's word: no note.
    let options = OpenOptions {
        image_pattern: Some("{id:03}.bmp".into()),
        ..Default::default()
    };
    let m = read_csv_dataset(&csv, &options).unwrap();
    assert!(problems_of(&m, ProblemKind::PaddedId).is_empty());
    assert_eq!(m.records.iter().filter(|r| r.is_usable()).count(), 3);
}

#[test]
fn two_padded_candidates_are_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "019.bmp", b"x");
    write(dir.path(), "0019.bmp", b"x");
    let csv = dir.path().join("labels.csv");
    crate::fs::write(&csv, "id,label\n19,a\n").unwrap();
    let m = read_csv_dataset(&csv, &OpenOptions::default()).unwrap();
    let ambiguous = problems_of(&m, ProblemKind::AmbiguousId);
    assert_eq!(ambiguous.len(), 1, "{:?}", m.problems);
    assert!(ambiguous[0].detail.contains("0019.bmp, 019.bmp"));
}

#[test]
fn an_unterminated_quote_names_its_line_and_quotes_little() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("broken.csv");
    let mut text = String::from("path,label\na.png,x\nb.png,\"y\nc.png,z\n");
    for i in 0..20_000 {
        text.push_str(&format!("img_{i}.png,label_{i}\n"));
    }
    crate::fs::write(&csv, &text).unwrap();
    let err = read_csv_strings(&csv).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("b.png,\"y"), "{err}");
    assert!(err.ends_with(&csv.display().to_string()), "{err}");
    assert!(
        err.len() < 400 + csv.display().to_string().len(),
        "{} bytes",
        err.len()
    );

    // Quotes that are closed, and doubled quotes inside them, are fine.
    crate::fs::write(
        &csv,
        "path,label\n\"a,1.png\",\"say \"\"hi\"\"\"\nb.png,x\n",
    )
    .unwrap();
    let df = read_csv_strings(&csv).unwrap();
    assert_eq!(df.height(), 2);
}

#[test]
fn parser_messages_are_cut() {
    let long = "é".repeat(1000);
    let cut = clip_message(&format!("bad\nthing {long}"), MAX_MESSAGE_BYTES);
    assert!(cut.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
    assert!(cut.starts_with("bad thing é"));
    assert!(cut.ends_with('…'));
    assert_eq!(clip_message("short", 200), "short");
}

/// Images to predict need no labels: a CSV of paths alone is read, and a row with an empty
/// label is kept; a dataset's CSV still needs both.
#[test]
fn a_csv_of_images_to_predict_needs_no_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "a.bmp", b"x");
    write(root, "b.bmp", b"x");
    let csv = root.join("images.csv");
    crate::fs::write(&csv, "path\na.bmp\nb.bmp\n").unwrap();
    let err = read_csv_dataset(&csv, &OpenOptions::default()).unwrap_err();
    assert!(err.to_string().contains("label column"), "{err}");
    let m = read_csv_images(&csv, &OpenOptions::default()).unwrap();
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    let paths: Vec<&str> = m.records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["a.bmp", "b.bmp"]);
    assert!(m.records.iter().all(|r| r.labels.is_empty()));

    crate::fs::write(&csv, "path,label\na.bmp,x\nb.bmp,\n,y\n").unwrap();
    let m = read_csv_images(&csv, &OpenOptions::default()).unwrap();
    let paths: Vec<&str> = m.records.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["a.bmp", "b.bmp"]);
    let bad = problems_of(&m, ProblemKind::BadRow);
    assert_eq!(bad.len(), 1, "{:?}", m.problems);
    assert_eq!(bad[0].detail, "empty path");
    let m = read_csv_dataset(&csv, &OpenOptions::default()).unwrap();
    assert_eq!(m.records.len(), 1);
    assert_eq!(problems_of(&m, ProblemKind::BadRow).len(), 2);
}
