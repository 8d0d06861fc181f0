//! Saliency explains the right thing: on generated images whose class is decided only by the
//! colour of a small disk placed at random, a probe's class activation map lies on the disk;
//! and `cellbench explain` writes overlays, maps and an index.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

const SIDE: u32 = 224;
const RADIUS: f32 = 30.0;

/// Deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The classes: the colour of the disk. A fourth class, `none`, has no disk: without it a
/// model may recognise one colour by exclusion ("neither of the others"), and that class's
/// map then rightly lights up everything but its disk.
const COLOURS: [(&str, [u8; 3]); 3] = [
    ("red", [210, 40, 40]),
    ("green", [40, 180, 60]),
    ("blue", [40, 60, 210]),
];

/// A grey noisy field with a disk of colour `class` at a random place (no disk for a class
/// past the colours); returns the disk's centre.
fn blob_image(rng: &mut Rng, class: usize) -> (RgbImage, (f32, f32)) {
    let margin = RADIUS + 4.0;
    let cx = margin + rng.next() * (SIDE as f32 - 2.0 * margin);
    let cy = margin + rng.next() * (SIDE as f32 - 2.0 * margin);
    let mut img = RgbImage::new(SIDE, SIDE);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let g = 150.0 + 40.0 * rng.next();
        let g = g.clamp(0.0, 255.0) as u8;
        *px = Rgb([g, g, g]);
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        if d <= RADIUS && class < COLOURS.len() {
            *px = Rgb(COLOURS[class].1);
        }
    }
    (img, (cx, cy))
}

fn cellbench(args: &[&str], cache: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cellbench"))
        .env("CELLBENCH_CACHE", cache)
        .args(args)
        .output()
        .expect("cellbench runs")
}

fn only_run(runs: &Path) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("model.json").is_file())
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

#[test]
fn a_probe_map_lies_on_the_disk_that_decides_the_class() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("disks");
    let mut rng = Rng(0x5eed_1234_abcd_0042);
    for i in 0..30 {
        let labels = COLOURS.iter().map(|c| c.0).chain(["none"]);
        for (class, label) in labels.enumerate() {
            let folder = data.join(label);
            std::fs::create_dir_all(&folder).unwrap();
            blob_image(&mut rng, class)
                .0
                .save(folder.join(format!("{i:03}.png")))
                .unwrap();
        }
    }
    let runs = dir.path().join("runs");
    let cache = dir.path().join("cache");
    let out = cellbench(
        &[
            "train",
            data.to_str().unwrap(),
            "--runs",
            runs.to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        &cache,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = only_run(&runs);

    // Fresh images: the map of the predicted class must lie on the disk. Measured on this
    // set: the mean inside the disk is 2 to 200 times the mean outside in every image; the
    // peak falls inside the disk in about half of them and within 16 pixels of its edge in
    // about 93%: features that answer to the disk's edge make a ring around it.
    let device = burn::tensor::Device::flex();
    let classifier = cellbench::model::Classifier::load(&run, &device).unwrap();
    let (mut concentrated, mut peak_on_disk) = (0, 0);
    let trials = 42;
    let fresh = dir.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    for i in 0..trials {
        let class = i % COLOURS.len();
        let (img, (cx, cy)) = blob_image(&mut rng, class);
        let map = classifier
            .saliency(&image::DynamicImage::ImageRgb8(img.clone()), None)
            .unwrap();
        assert_eq!(
            classifier.info.labels[map.class], COLOURS[class].0,
            "image {i} is classified right"
        );
        let heat = map.upsampled(SIDE, SIDE);
        let distance = |j: usize| {
            let (x, y) = (
                (j as u32 % SIDE) as f32 + 0.5,
                (j as u32 / SIDE) as f32 + 0.5,
            );
            ((x - cx).powi(2) + (y - cy).powi(2)).sqrt()
        };
        let (mut inside, mut n_inside, mut outside, mut n_outside) = (0.0f32, 0, 0.0f32, 0);
        for (j, v) in heat.iter().enumerate() {
            if distance(j) <= RADIUS {
                inside += v;
                n_inside += 1;
            } else {
                outside += v;
                n_outside += 1;
            }
        }
        if inside / n_inside as f32 >= 2.0 * outside / n_outside as f32 {
            concentrated += 1;
        }
        let peak = cellbench::model::decision::argmax(&heat);
        if distance(peak) <= RADIUS + 16.0 {
            peak_on_disk += 1;
        }
        if i < 4 {
            img.save(fresh.join(format!("{i}.png"))).unwrap();
        }
    }
    assert!(
        concentrated * 10 >= trials * 9,
        "the map was concentrated on the disk in {concentrated} of {trials} images"
    );
    assert!(
        peak_on_disk * 10 >= trials * 8,
        "the map peaked on the disk or its rim in {peak_on_disk} of {trials} images"
    );

    // The command writes an overlay and a map per image, and an index.
    let explained = dir.path().join("explained");
    let out = cellbench(
        &[
            "explain",
            run.to_str().unwrap(),
            fresh.to_str().unwrap(),
            "--out",
            explained.to_str().unwrap(),
        ],
        &cache,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read_to_string(explained.join("saliency.csv")).unwrap();
    assert_eq!(index.lines().count(), 5, "{index}");
    let overlay = image::open(explained.join("0.png.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (SIDE, SIDE));
    let map = std::fs::read_to_string(explained.join("0.png.csv")).unwrap();
    assert_eq!(map.lines().count(), 14);
    assert!(map.lines().all(|l| l.split(',').count() == 14));

    // A manifest CSV is read as `train` reads it: an id without its extension names its
    // image, a row whose image is missing is left out with the reason, never explained.
    std::fs::write(
        fresh.join("list.csv"),
        "path,label\n0,red\n1.png,red\ngone.png,red\n",
    )
    .unwrap();
    let from_csv = dir.path().join("explained-csv");
    let out = cellbench(
        &[
            "explain",
            run.to_str().unwrap(),
            fresh.join("list.csv").to_str().unwrap(),
            "--out",
            from_csv.to_str().unwrap(),
        ],
        &cache,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gone.png"), "{err}");
    assert!(!err.contains("unreadable"), "{err}");
    let index = std::fs::read_to_string(from_csv.join("saliency.csv")).unwrap();
    assert_eq!(index.lines().count(), 3, "{index}");
    assert!(
        index.contains("0.png") && index.contains("1.png"),
        "{index}"
    );

    // An unknown label is refused with the labels listed.
    let out = cellbench(
        &[
            "explain",
            run.to_str().unwrap(),
            fresh.to_str().unwrap(),
            "--out",
            explained.to_str().unwrap(),
            "--class",
            "purple",
        ],
        &cache,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("purple") && err.contains("blue, green, none, red"),
        "{err}"
    );
}

/// `cellbench embed` maps every readable image of the bundled demo to two coordinates and
/// draws them; an image that is not one is listed and left out.
#[test]
fn embed_maps_the_demo_cells_and_skips_a_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cells");
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/bccd");
    let mut count = 0;
    for label in ["Lymphocyte", "Neutrophil"] {
        std::fs::create_dir_all(data.join(label)).unwrap();
        for e in std::fs::read_dir(demo.join(label)).unwrap().flatten() {
            std::fs::copy(e.path(), data.join(label).join(e.file_name())).unwrap();
            count += 1;
        }
    }
    std::fs::write(data.join("Neutrophil/broken.jpg"), "not a jpeg").unwrap();
    let (csv, png) = (dir.path().join("map.csv"), dir.path().join("map.png"));
    let out = cellbench(
        &[
            "embed",
            data.to_str().unwrap(),
            "--out",
            csv.to_str().unwrap(),
            "--png",
            png.to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        &dir.path().join("cache"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("broken.jpg"), "{stderr}");
    assert!(stderr.contains("% of their variance"), "{stderr}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "path,label,patient,x,y");
    assert_eq!(lines.len(), count + 1, "{text}");
    assert!(lines[1..].iter().all(|l| {
        let f: Vec<&str> = l.split(',').collect();
        f.len() == 5 && f[3].parse::<f32>().is_ok() && f[4].parse::<f32>().is_ok()
    }));
    // The two kinds of cell sit apart along the first axis more often than not.
    let mean_x = |label: &str| {
        let xs: Vec<f32> = lines[1..]
            .iter()
            .filter(|l| l.split(',').nth(1) == Some(label))
            .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
            .collect();
        xs.iter().sum::<f32>() / xs.len() as f32
    };
    assert!((mean_x("Lymphocyte") - mean_x("Neutrophil")).abs() > 1.0);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1000, 800));
}

/// `explore --check features` on generated C-NMC-style data, where each patient has its own
/// stain: the batch-effect check reads the patient within each label far above chance and
/// says what to do; on a folder without patient ids it refuses with a reason.
#[test]
fn the_batch_effect_check_reads_each_patients_stain() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("synth");
    let cache = dir.path().join("cache");
    let out = cellbench(
        &[
            "synth",
            data.to_str().unwrap(),
            "--patients",
            "8",
            "--images",
            "10",
            "--size",
            "64",
            "--seed",
            "5",
        ],
        &cache,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cellbench(
        &[
            "explore",
            data.to_str().unwrap(),
            "--check",
            "features",
            "--json",
            "--backend",
            "cpu",
        ],
        &cache,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b = &report["batch_effect"];
    assert_eq!(b["patients"], 8, "{b}");
    assert_eq!(b["labels"], 2, "{b}");
    assert_eq!(b["images"], 80, "{b}");
    let p = &b["patient_probe"];
    let (acc, chance) = (
        p["accuracy"].as_f64().unwrap(),
        p["chance"].as_f64().unwrap(),
    );
    assert!(acc > chance + 0.3, "{b}");
    assert!(b["summary"].as_str().unwrap().contains("patient"), "{b}");

    // Text output: one plain sentence with the numbers.
    let out = cellbench(
        &[
            "explore",
            data.to_str().unwrap(),
            "--check",
            "features",
            "--backend",
            "cpu",
        ],
        &cache,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("batch effect (80 of 80 images, 8 patients, 2 labels)"),
        "{text}"
    );

    // Class folders have no patient ids: a clear refusal.
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/bccd");
    let out = cellbench(
        &["explore", demo.to_str().unwrap(), "--check", "features"],
        &cache,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no patient ids"));
}

/// A map of copies of one image has no axes: a clear refusal, not a crash.
#[test]
fn embed_refuses_a_folder_of_identical_images() {
    let dir = tempfile::tempdir().unwrap();
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/bccd");
    let one = std::fs::read_dir(demo.join("Basophil"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join("same").join(class)).unwrap();
        std::fs::copy(&one, dir.path().join("same").join(class).join("x.jpg")).unwrap();
    }
    let out = cellbench(
        &[
            "embed",
            dir.path().join("same").to_str().unwrap(),
            "--out",
            dir.path().join("m.csv").to_str().unwrap(),
            "--backend",
            "cpu",
        ],
        &dir.path().join("cache"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("identical features"), "{stderr}");
}

/// `bench map` draws offscreen on the machine's adapter (Mesa's software Vulkan here) and
/// refuses a target or a point count beyond the adapter's limits with a message, not a panic.
#[test]
fn bench_map_draws_offscreen_and_refuses_sizes_beyond_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let out = cellbench(
        &[
            "bench", "map", "--points", "1000", "--frames", "2", "--json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["points"], 1000);
    assert!(r["frame_p50_ms"].as_f64().unwrap() > 0.0);
    for (args, says) in [
        (&["--width", "100000"][..], "pixels a side"),
        (&["--points", "50000000"][..], "points in one buffer"),
        (&["--frames", "0"][..], "--frames"),
    ] {
        let mut all = vec!["bench", "map", "--height", "64"];
        all.extend_from_slice(args);
        let out = cellbench(&all, dir.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}
