//! The default probe (logistic regression solved to convergence): what it chooses, on which
//! data, and that the kept model is the one its numbers describe. Real cells from
//! `../shared/data`.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;

fn runs_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut d: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    d.sort();
    d
}

/// `path → (side, probabilities)` of a predictions CSV (`side` empty for `predict` output).
fn probabilities(csv: &Path) -> HashMap<String, (String, Vec<f64>)> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let p_cols: Vec<usize> = (0..header.len())
        .filter(|&i| header[i].starts_with("p_"))
        .collect();
    let split = header.iter().position(|h| *h == "split");
    lines
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            let name = Path::new(c[0])
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let side = split.map_or_else(String::new, |s| c[s].to_owned());
            (
                name,
                (
                    side,
                    p_cols.iter().map(|&i| c[i].parse().unwrap()).collect(),
                ),
            )
        })
        .collect()
}

fn train(args: &[&str], cache: &Path) -> std::process::Output {
    cellbench()
        .env("CELLBENCH_CACHE", cache)
        .arg("train")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn default_probe_chooses_on_inner_folds_and_keeps_the_model_its_numbers_describe() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 12);
    let cache = tmp.path().join("cache");
    let common = ["--backend", "cpu", "--image-size", "64", "--json"];

    // A train/validation split: the settings are chosen on inner folds of the training side
    // alone, the kept model is fitted on it, and the validation side scores it once.
    let runs = tmp.path().join("runs");
    let mut args = vec![path_str(&data), "--runs", path_str(&runs)];
    args.extend(common);
    let out = train(&args, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_dir = runs_in(&runs).pop().unwrap();
    let m = read_json(&run_dir.join("metrics.json"));
    let chose = &m["val"]["chose"];
    assert_eq!(chose["solver"], "lbfgs", "{m}");
    let grid = chose["grid"].as_array().unwrap();
    assert_eq!(grid.len(), 16, "8 L2 strengths × 2 class weightings");
    let lowest = grid
        .iter()
        .map(|g| g["log_loss"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    let picked = grid
        .iter()
        .find(|g| g["c"] == chose["c"] && g["class_weighting"] == chose["class_weighting"])
        .expect("the choice is a grid point");
    assert_eq!(
        picked["log_loss"].as_f64().unwrap(),
        lowest,
        "the point with the lowest pooled log loss is chosen"
    );
    // Chosen on every training image, none of the validation side's.
    let chosen_on = chose["chosen_on"].as_str().unwrap();
    assert!(
        chosen_on.contains("inner folds of the training side"),
        "{chosen_on}"
    );
    assert_eq!(
        chose["chosen_images"].as_u64().unwrap() + m["val"]["n"].as_u64().unwrap(),
        36,
        "{m}"
    );
    assert!(
        chose["refit_on"]
            .as_str()
            .unwrap()
            .contains("training side")
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("probe settings chosen on the pooled held-out predictions"),
        "{stdout}"
    );
    // The saved model predicts what the run recorded.
    assert_predict_reproduces_the_run(&run_dir, &data, &tmp.path().join("pred.csv"));

    // Nested cross-validation: the choice is refitted on training + validation, and the
    // fold (test side) is scored by exactly the kept model.
    let cv_runs = tmp.path().join("cv");
    let mut args = vec![
        path_str(&data),
        "--folds",
        "3",
        "--runs",
        path_str(&cv_runs),
    ];
    args.extend(common);
    let out = train(&args, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for run in runs_in(&cv_runs) {
        let m = read_json(&run.join("metrics.json"));
        let refit_on = m["val"]["chose"]["refit_on"].as_str().unwrap();
        assert!(refit_on.contains("training and validation"), "{refit_on}");
        let pred = run.join("again.csv");
        let out = run_cmd_predict(&run, &data, &pred);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let saved = probabilities(&pred);
        let mut scored = 0;
        for (name, (side, p)) in probabilities(&run.join("predictions.csv")) {
            if side == "test" {
                let q = &saved[&name].1;
                assert!(p.iter().zip(q).all(|(a, b)| (a - b).abs() < 1e-4), "{name}");
                scored += 1;
            }
        }
        assert_eq!(scored as u64, m["test"]["n"].as_u64().unwrap());
    }
}

/// Temperature scaling of a solved probe is fitted on held-out predictions (the inner folds'),
/// applied to the kept model, and the loss each side reports is that of the scaled
/// probabilities it reports.
#[test]
fn calibrated_probe_reports_the_loss_of_its_scaled_probabilities() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 12);
    let cache = tmp.path().join("cache");
    let runs = tmp.path().join("cv");
    let args = [
        path_str(&data),
        "--folds",
        "3",
        "--calibrate",
        "--imbalance",
        "none",
        "--runs",
        path_str(&runs),
        "--backend",
        "cpu",
        "--json",
    ];
    let out = train(&args, &cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = |p: &Path| std::fs::read_to_string(p).unwrap();
    let mut scaled = 0;
    for run in runs_in(&runs) {
        let m = read_json(&run.join("metrics.json"));
        let info = read_json(&run.join("model.json"));
        let t = info["temperature"].as_f64().expect("a temperature");
        scaled += usize::from((t - 1.0).abs() > 0.1);
        let scaling = &m["test"]["temperature"];
        assert_eq!(scaling["temperature"].as_f64().unwrap(), t, "{m}");
        let fitted_on = scaling["fitted_on"].as_str().unwrap();
        assert!(fitted_on.contains("inner folds"), "{fitted_on}");
        // Mean cross-entropy of the test rows as written (scaled) in predictions.csv.
        let csv = text(&run.join("predictions.csv"));
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (split, truth) = (col("split"), col("truth"));
        let (mut sum, mut n) = (0.0, 0);
        for line in lines {
            let c: Vec<&str> = line.split(',').collect();
            if c[split] != "test" {
                continue;
            }
            let p: f64 = c[col(&format!("p_{}", c[truth]))].parse().unwrap();
            sum -= p.max(1e-12).ln();
            n += 1;
        }
        let loss = m["test"]["loss"].as_f64().unwrap();
        assert!(
            (loss - sum / f64::from(n)).abs() < 1e-3,
            "reported {loss}, scaled predictions {} (temperature {t})",
            sum / f64::from(n)
        );
    }
    assert!(scaled > 0, "no fold's temperature moved its probabilities");
}

/// `(multiscale, feature width)` of a run's saved model.
fn features_read(run_dir: &Path) -> (bool, usize) {
    let info = read_json(&run_dir.join("model.json"));
    (
        info["multiscale"].as_bool().unwrap(),
        info["feature_mean"].as_array().unwrap().len(),
    )
}

/// The default probe reads multi-scale features (the final pool, then two earlier stages'
/// pools), its saved model predicts what the run recorded, and `explain` maps its score.
#[test]
fn default_probe_reads_multiscale_features_predicts_what_it_recorded_and_explains_its_score() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 12);
    let cache = tmp.path().join("cache");
    let runs = tmp.path().join("runs");
    let out = train(
        &[
            path_str(&data),
            "--backend",
            "cpu",
            "--image-size",
            "64",
            "--json",
            "--runs",
            path_str(&runs),
        ],
        &cache,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_dir = runs_in(&runs).pop().unwrap();
    assert_eq!(features_read(&run_dir), (true, 1280 + 112 + 192));
    let config = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config.contains("multiscale = true"), "{config}");
    assert_predict_reproduces_the_run(&run_dir, &data, &tmp.path().join("pred.csv"));
    // A file that is not an image is listed and skipped; only --strict makes that an exit 3.
    std::fs::write(data.join("Eosinophil/broken.jpeg"), b"not a jpeg").unwrap();
    let explained = tmp.path().join("explained");
    let eosinophils = data.join("Eosinophil");
    let explain = |strict: bool| {
        let mut args = vec![
            "explain",
            path_str(&run_dir),
            path_str(&eosinophils),
            "--out",
            path_str(&explained),
        ];
        if strict {
            args.push("--strict");
        }
        run(&args)
    };
    let out = explain(false);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.jpeg"));
    let index = std::fs::read_to_string(explained.join("saliency.csv")).unwrap();
    assert_eq!(index.lines().count(), 13, "{index}");
    assert_eq!(explain(true).status.code(), Some(3));
}

/// `--single-scale` gives the probe the final pool alone; a run from before multi-scale was
/// the default (its `config.toml` does not say) resumes as the single-scale probe it was.
#[test]
fn single_scale_probe_reads_the_final_pool_and_an_old_run_resumes_as_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    let cache = tmp.path().join("cache");
    let runs = tmp.path().join("runs");
    let out = train(
        &[
            path_str(&data),
            "--single-scale",
            "--backend",
            "cpu",
            "--image-size",
            "64",
            "--json",
            "--runs",
            path_str(&runs),
        ],
        &cache,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = runs_in(&runs).pop().unwrap();
    assert_eq!(features_read(&run_dir), (false, 1280));
    assert_predict_reproduces_the_run(&run_dir, &data, &tmp.path().join("pred.csv"));

    // The run as one written before the setting existed: no `multiscale` key, stopped
    // before its first checkpoint. Resumed, it starts again with the features it had.
    let config = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("multiscale = false"), "{text}");
    let old: String = text
        .lines()
        .filter(|l| !l.starts_with("multiscale"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, old).unwrap();
    std::fs::remove_dir_all(run_dir.join("checkpoint")).ok();
    std::fs::remove_file(run_dir.join("model.json")).unwrap();
    let status = run_dir.join("status.json");
    let text = std::fs::read_to_string(&status)
        .unwrap()
        .replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&status, text).unwrap();
    let out = train(&["--resume", path_str(&run_dir), "--json"], &cache);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_json(&status)["state"], "finished");
    assert_eq!(features_read(&run_dir), (false, 1280));
    assert_predict_reproduces_the_run(&run_dir, &data, &tmp.path().join("again.csv"));
}

/// `predict` on `data` with the run's saved model gives the probabilities its
/// `predictions.csv` recorded (to 1e-4), for every image it recorded.
fn assert_predict_reproduces_the_run(run_dir: &Path, data: &Path, pred: &Path) {
    let out = run_cmd_predict(run_dir, data, pred);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = probabilities(pred);
    let recorded = probabilities(&run_dir.join("predictions.csv"));
    assert!(!recorded.is_empty());
    for (name, (_, p)) in &recorded {
        let q = &saved[name].1;
        assert!(
            p.iter().zip(q).all(|(a, b)| (a - b).abs() < 1e-4),
            "{name}: {p:?} {q:?}"
        );
    }
}

fn run_cmd_predict(run_dir: &Path, data: &Path, out: &Path) -> std::process::Output {
    run(&[
        "predict",
        path_str(run_dir),
        path_str(data),
        "--out",
        path_str(out),
        "--backend",
        "cpu",
    ])
}

/// The epoch-based probe is still there: several epochs, the best one chosen, no grid.
#[test]
fn sgd_solver_trains_in_epochs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    let runs = tmp.path().join("runs");
    let out = train(
        &[
            path_str(&data),
            "--solver",
            "sgd",
            "--epochs",
            "3",
            "--backend",
            "cpu",
            "--image-size",
            "64",
            "--runs",
            path_str(&runs),
            "--json",
        ],
        &tmp.path().join("cache"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = runs_in(&runs).pop().unwrap();
    let m = read_json(&run.join("metrics.json"));
    assert!(m["val"].get("chose").is_none(), "{m}");
    let epochs = std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event\":\"epoch\""))
        .count();
    assert_eq!(epochs, 3);
}

/// `predict --tta` averages over the 8 orientations: a quarter-turned, mirrored copy of an
/// image gets the same probabilities as the image, which a plain prediction does not give.
#[test]
fn test_time_augmentation_gives_every_orientation_of_an_image_the_same_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 8);
    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let out = train(
        &[
            path_str(&data),
            "--runs",
            path_str(&runs),
            "--backend",
            "cpu",
            "--image-size",
            "64",
        ],
        &cache,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = runs_in(&runs).pop().unwrap();
    // The same pixels, turned a quarter and mirrored, saved losslessly.
    let (upright, turned) = (tmp.path().join("upright"), tmp.path().join("turned"));
    std::fs::create_dir_all(&upright).unwrap();
    std::fs::create_dir_all(&turned).unwrap();
    for (i, f) in bccd_class_files("Neutrophil", 4).iter().enumerate() {
        let img = image::open(f).unwrap().to_rgb8();
        img.save(upright.join(format!("{i}.png"))).unwrap();
        image::imageops::flip_horizontal(&image::imageops::rotate90(&img))
            .save(turned.join(format!("{i}.png")))
            .unwrap();
    }
    let predict = |dir: &Path, tta: bool| {
        let csv = tmp.path().join(format!(
            "{}-{tta}.csv",
            dir.file_name().unwrap().to_string_lossy()
        ));
        let mut args = vec![
            "predict",
            path_str(&run_dir),
            path_str(dir),
            "--out",
            path_str(&csv),
            "--backend",
            "cpu",
        ];
        if tta {
            args.push("--tta");
        }
        let out = run(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        probabilities(&csv)
    };
    let gap = |a: &HashMap<String, (String, Vec<f64>)>, b: &HashMap<String, (String, Vec<f64>)>| {
        a.iter()
            .flat_map(|(name, (_, p))| p.iter().zip(&b[name].1).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f64::max)
    };
    let (plain_up, plain_turned) = (predict(&upright, false), predict(&turned, false));
    let (tta_up, tta_turned) = (predict(&upright, true), predict(&turned, true));
    assert_eq!(tta_up.len(), 4);
    assert!(
        gap(&tta_up, &tta_turned) < 2e-3,
        "with --tta: {tta_up:?} vs {tta_turned:?}"
    );
    assert!(
        gap(&plain_up, &plain_turned) > 2e-3,
        "without --tta the orientation shows: {plain_up:?} vs {plain_turned:?}"
    );
    assert!(gap(&plain_up, &tta_up) > 2e-3, "--tta changes the answer");
}

/// The `f32` tensors of a safetensors file, by name: `(shape, values)`.
fn safetensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let shape = v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            let at = |i: usize| v["data_offsets"][i].as_u64().unwrap() as usize;
            let values = data[at(0)..at(1)]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (k.clone(), (shape, values))
        })
        .collect()
}

/// A saved ordinal probe is rank-consistent end to end: the head written to the run folder
/// shares one weight vector across its thresholds with non-increasing biases, so
/// `P(grade > j)` cannot rise with `j` on any input; `model::Classifier` loaded from the run
/// gives exactly the differences of those exceedances (nothing left for the running minimum
/// to repair), and `cellbench predict` reproduces the run's predictions.
#[test]
fn saved_ordinal_probe_is_rank_consistent_through_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 12);
    for (class, grade) in [
        ("Eosinophil", "0_eosinophil"),
        ("Lymphocyte", "1_lymphocyte"),
        ("Neutrophil", "2_neutrophil"),
    ] {
        std::fs::rename(data.join(class), data.join(grade)).unwrap();
    }
    let runs = tmp.path().join("runs");
    let out = train(
        &[
            path_str(&data),
            "--task",
            "ordinal",
            "--backend",
            "cpu",
            "--image-size",
            "64",
            "--json",
            "--runs",
            path_str(&runs),
        ],
        &tmp.path().join("cache"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_dir = runs_in(&runs).pop().unwrap();
    let info = read_json(&run_dir.join("model.json"));
    assert_eq!(info["cumulative"], true);

    // The saved head: `[features, thresholds]` weights, one column repeated; biases ordered.
    let tensors = safetensors(&run_dir.join("model.safetensors"));
    let (shape, weight) = tensors
        .values()
        .find(|(s, _)| s.len() == 2)
        .expect("a weight matrix")
        .clone();
    let (_, bias) = tensors
        .values()
        .find(|(s, _)| s.len() == 1)
        .expect("a bias")
        .clone();
    let (d, k) = (shape[0], shape[1]);
    assert_eq!(k, 2, "3 grades, 2 thresholds");
    assert!(
        weight.chunks(k).all(|row| row.iter().all(|&w| w == row[0])),
        "one weight vector shared by every threshold"
    );
    assert!(bias.windows(2).all(|b| b[1] <= b[0]), "{bias:?}");

    // Through the loaded model, on raw feature vectors near and far from the data: its
    // probabilities are the plain differences of the saved head's exceedances.
    let device = burn::tensor::Device::flex();
    let model = cellbench::model::Classifier::load(&run_dir, &device).unwrap();
    let mean: Vec<f64> = info["feature_mean"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let std: Vec<f64> = info["feature_std"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(mean.len(), d);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut unit = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    let mut rows = Vec::new();
    for scale in [0.1, 1.0, 3.0, 10.0] {
        for _ in 0..16 {
            rows.push(
                (0..d)
                    .map(|f| (mean[f] + scale * std[f] * unit()) as f32)
                    .collect::<Vec<f32>>(),
            );
        }
    }
    let n = rows.len();
    let probs = model.probabilities_from_features(rows.concat(), n);
    assert_eq!(probs.len(), n);
    let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
    for (row, p) in rows.iter().zip(&probs) {
        let exceed: Vec<f64> = (0..k)
            .map(|j| {
                let z: f64 = row
                    .iter()
                    .enumerate()
                    .map(|(f, &x)| (f64::from(x) - mean[f]) / std[f] * f64::from(weight[f * k + j]))
                    .sum();
                sigmoid(z + f64::from(bias[j]))
            })
            .collect();
        assert!(exceed.windows(2).all(|e| e[1] <= e[0]), "{exceed:?}");
        let want = [1.0 - exceed[0], exceed[0] - exceed[1], exceed[1]];
        for (a, b) in p.iter().zip(want) {
            assert!((f64::from(*a) - b).abs() < 1e-4, "{p:?} vs {want:?}");
        }
    }

    // `cellbench predict` gives what the run recorded, each row a distribution over grades.
    let pred = tmp.path().join("pred.csv");
    assert_predict_reproduces_the_run(&run_dir, &data, &pred);
    for (name, (_, p)) in probabilities(&pred) {
        assert!(p.iter().all(|&v| v >= 0.0), "{name}: {p:?}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{name}: {p:?}");
    }
}
