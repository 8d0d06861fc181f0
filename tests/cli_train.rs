//! End-to-end tests of training, prediction, evaluation and serving on the CPU backend, on
//! real images from `../shared/data`.

mod common;

use std::path::Path;

use common::*;

fn events(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn only_run(runs: &Path) -> std::path::PathBuf {
    let mut dirs: Vec<_> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs.pop().expect("a run folder")
}

#[test]
fn probe_learns_on_real_cells_then_predict_evaluate_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte", "Neutrophil"], 60);
    // A corrupt image in the middle of the data: listed and skipped, the run goes on.
    std::fs::write(
        data.join("Neutrophil/BloodImage_99999_1.jpg"),
        b"not a jpeg",
    )
    .unwrap();
    let runs = tmp.path().join("runs");
    let cache = tmp.path().join("cache");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            path_str(&data),
            "--backend",
            "cpu",
            "--image-size",
            "128",
            "--runs",
            path_str(&runs),
            "--json",
            "--seed",
            "3",
        ];
        args.extend_from_slice(extra);
        cellbench()
            .args(&args)
            .env("CELLBENCH_CACHE", &cache)
            .output()
            .unwrap()
    };
    let out = train(&["--epochs", "25"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), stdout(&out));
    let run = only_run(&runs);
    for f in [
        "config.toml",
        "events.jsonl",
        "metrics.json",
        "confusion.json",
        "predictions.csv",
        "model.safetensors",
        "model.json",
        "status.json",
        "dataset.json",
        "checkpoint/LATEST",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let latest = std::fs::read_to_string(run.join("checkpoint/LATEST")).unwrap();
    assert!(
        run.join("checkpoint")
            .join(latest.trim())
            .join("model.safetensors")
            .is_file(),
        "{latest}"
    );
    assert!(
        !run.join("lock").exists(),
        "a finished run releases its lock"
    );
    for f in ["model.json", "status.json", "metrics.json", "dataset.json"] {
        assert_eq!(
            read_json(&run.join(f))["format_version"],
            1,
            "{f} names its format"
        );
    }
    let ev = events(&run);
    assert_eq!(ev[0]["event"], "started");
    assert_eq!(ev.last().unwrap()["event"], "finished");
    assert!(ev.iter().any(|e| {
        e["event"] == "warning"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("BloodImage_99999_1.jpg")
    }));
    let metrics = read_json(&run.join("metrics.json"));
    let val = &metrics["val"];
    let n = val["n"].as_f64().unwrap();
    let majority = val["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["support"].as_f64().unwrap())
        .fold(0.0, f64::max)
        / n;
    let acc = val["accuracy"].as_f64().unwrap();
    assert!(
        acc > majority + 0.15,
        "accuracy {acc} vs majority {majority}"
    );
    assert!(
        val["macro_auc"].as_f64().unwrap() > 0.8,
        "{}",
        val["macro_auc"]
    );

    // Second run with other head settings: every feature comes from the cache.
    let out = train(&["--lr", "0.003", "--epochs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = only_run(&runs);
    assert_ne!(second, run);
    assert!(
        events(&second).iter().any(|e| e["event"] == "info"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("153 of 154 feature vectors came from the cache")),
        "{:?}",
        events(&second)
    );

    // Predict a folder, then evaluate the run's own predictions file.
    let pred = tmp.path().join("pred.csv");
    let out = run_cmd(&[
        "predict",
        path_str(&run),
        path_str(&data.join("Eosinophil")),
        "--out",
        path_str(&pred),
        "--backend",
        "cpu",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A skipped image is listed; only --strict turns it into exit code 3.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(
        bccd_class_files("Eosinophil", 1)[0].clone(),
        mixed.join("good.jpg"),
    )
    .unwrap();
    std::fs::write(mixed.join("broken.jpg"), b"not an image").unwrap();
    let mixed_csv = tmp.path().join("mixed.csv");
    for (strict, code) in [(false, 0), (true, 3)] {
        let mut args = vec![
            "predict",
            path_str(&run),
            path_str(&mixed),
            "--out",
            path_str(&mixed_csv),
            "--backend",
            "cpu",
        ];
        if strict {
            args.push("--strict");
        }
        let out = run_cmd(&args);
        assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("skipped unreadable image"),
            "{}",
            stderr(&out)
        );
    }
    let text = std::fs::read_to_string(&pred).unwrap();
    assert!(
        text.starts_with("path,predicted,p_Eosinophil,p_Lymphocyte,p_Neutrophil\n"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 61);
    let eval = run_json(&[
        "evaluate",
        "--pred",
        path_str(&run.join("predictions.csv")),
        "--json",
    ]);
    assert!((eval["metrics"]["accuracy"].as_f64().unwrap() - acc).abs() < 1e-9);

    serve_answers_predictions_and_rejects_bad_requests(&run, &data);
}

fn http(port: u16, request: &[u8]) -> (u16, serde_json::Value) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn post(port: u16, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    http(port, &req)
}

fn serve_answers_predictions_and_rejects_bad_requests(run: &Path, data: &Path) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = cellbench()
        .args([
            "serve",
            path_str(run),
            "--port",
            &port.to_string(),
            "--backend",
            "cpu",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let health = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break http(
                port,
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            );
        }
        assert!(std::time::Instant::now() < deadline, "server did not start");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(health.0, 200);
    assert_eq!(
        health.1["labels"],
        serde_json::json!(["Eosinophil", "Lymphocyte", "Neutrophil"])
    );

    let mut files: Vec<_> = std::fs::read_dir(data.join("Lymphocyte"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let (status, body) = post(port, "/predict", &std::fs::read(&files[0]).unwrap());
    assert_eq!(status, 200, "{body}");
    let probs = body["probabilities"].as_object().unwrap();
    let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
    assert!((sum - 1.0).abs() < 1e-4, "{body}");
    assert!(probs.contains_key(body["predicted"].as_str().unwrap()));

    let (status, body) = post(port, "/predict", b"garbage bytes");
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a readable image"),
        "{body}"
    );
    assert_eq!(post(port, "/predict", b"").0, 400);
    assert_eq!(
        http(
            port,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .0,
        404
    );
    assert_eq!(
        http(
            port,
            b"GET /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .0,
        405
    );
    let (status, _) = http(port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 30000000\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 413);
    server.kill().ok();
    server.wait().ok();
}

fn run_cmd(args: &[&str]) -> std::process::Output {
    run(args)
}

#[test]
fn finetune_and_scratch_run_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 12);
    let runs = tmp.path().join("runs");
    for mode in ["probe", "finetune", "scratch"] {
        let out = run(&[
            "train",
            path_str(&data),
            "--mode",
            mode,
            "--backend",
            "cpu",
            "--epochs",
            "2",
            "--image-size",
            "64",
            "--batch-size",
            "8",
            "--runs",
            path_str(&runs.join(mode)),
            "--json",
        ]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        let run = only_run(&runs.join(mode));
        let ev = events(&run);
        // The probe is solved to convergence: one "epoch"; the others train the two asked.
        assert_eq!(
            ev.iter().filter(|e| e["event"] == "epoch").count(),
            if mode == "probe" { 1 } else { 2 },
            "{mode}"
        );
        assert!(
            ev.iter()
                .all(|e| e["event"] != "epoch" || e["train"]["loss"].as_f64().unwrap().is_finite())
        );
        // The saved model loads back and predicts.
        let pred = tmp.path().join(format!("{mode}.csv"));
        let out = run_cmd(&[
            "predict",
            path_str(&run),
            path_str(&data),
            "--out",
            path_str(&pred),
            "--backend",
            "cpu",
        ]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&pred).unwrap().lines().count(), 25);
        assert_run_agrees_with_predict(&run, &data, &pred, mode);
    }
}

/// The labels a run wrote to its `predictions.csv` equal what `cellbench predict` answers for
/// the same images, exactly, and the probabilities agree to 1e-5: one model contract.
fn assert_run_agrees_with_predict(run: &Path, data: &Path, predict_csv: &Path, mode: &str) {
    let rows = |path: &Path| -> Vec<Vec<String>> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split(',').map(str::to_owned).collect())
            .collect()
    };
    let ours = rows(&run.join("predictions.csv"));
    let theirs = rows(predict_csv);
    let (oh, th) = (&ours[0], &theirs[0]);
    assert_eq!(&oh[..5], ["path", "patient", "split", "truth", "predicted"]);
    assert_eq!(&th[..2], ["path", "predicted"]);
    assert_eq!(oh[5..], th[2..], "{mode}: the same probability columns");
    let by_path: std::collections::HashMap<String, &Vec<String>> = theirs[1..]
        .iter()
        .map(|r| {
            let rel = Path::new(&r[0]).strip_prefix(data).unwrap();
            (rel.to_string_lossy().into_owned(), r)
        })
        .collect();
    assert!(
        ours.len() > 1,
        "{mode}: the run predicted its validation images"
    );
    for r in &ours[1..] {
        let t = by_path
            .get(&r[0])
            .unwrap_or_else(|| panic!("{mode}: {} not predicted", r[0]));
        assert_eq!(r[4], t[1], "{mode}: label of {}", r[0]);
        for (a, b) in r[5..].iter().zip(&t[2..]) {
            let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
            assert!(
                (a - b).abs() <= 1e-5,
                "{mode}: {} probability {a} vs {b}",
                r[0]
            );
        }
    }
}

#[test]
fn cancel_leaves_a_consistent_run_that_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 10);
    let runs = tmp.path().join("runs");
    let sent = std::time::Instant::now();
    let (status, rest) = interrupt_after_first_checkpoint(&[
        "train",
        path_str(&data),
        "--mode",
        "scratch",
        "--backend",
        "cpu",
        "--epochs",
        "200",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--runs",
        path_str(&runs),
        "--json",
        "--patience",
        "1000",
    ]);
    assert!(sent.elapsed().as_secs_f64() < 60.0);
    assert_eq!(status.code(), Some(130));
    assert!(
        rest.iter().any(|l| l.contains("\"event\":\"cancelled\"")),
        "{rest:?}"
    );
    let run = only_run(&runs);
    let s = read_json(&run.join("status.json"));
    assert_eq!(s["state"], "cancelled");
    let done = s["epoch"].as_u64().unwrap();
    assert!(done >= 1);

    // Resume with fewer total epochs than planned is not possible; resume the same run with
    // its own config but stop again quickly by editing epochs in its config.
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let cfg = cfg.replace("epochs = 200", &format!("epochs = {}", done + 1));
    std::fs::write(run.join("config.toml"), cfg).unwrap();
    let out = run_cmd(&["train", "--resume", path_str(&run), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ev = events(&run);
    assert_eq!(ev.last().unwrap()["event"], "finished");
    let epochs: Vec<u64> = ev
        .iter()
        .filter(|e| e["event"] == "epoch")
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(*epochs.last().unwrap(), done + 1, "{epochs:?}");
}

/// Runs cellbench with `args` (a `--json` training run), interrupts it like Ctrl-C right
/// after its first checkpoint event, and returns its exit status and the lines it printed
/// after the interrupt.
fn interrupt_after_first_checkpoint(args: &[&str]) -> (std::process::ExitStatus, Vec<String>) {
    let mut child = cellbench()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    for line in lines.by_ref() {
        if line.unwrap().contains("\"event\":\"checkpoint\"") {
            break;
        }
    }
    let sent = std::time::Instant::now();
    unsafe_sigint(child.id());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(
        sent.elapsed().as_secs_f64() < 10.0,
        "stopping took {:?}",
        sent.elapsed()
    );
    (status, rest)
}

/// A run interrupted after a checkpoint and resumed ends exactly where an uninterrupted run
/// ends: the same batches in the same order, the same optimiser moments, the same best epoch.
#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 10);
    let train = |runs: &Path| -> Vec<String> {
        [
            "train",
            path_str(&data),
            "--mode",
            "finetune",
            "--backend",
            "cpu",
            "--epochs",
            "6",
            "--image-size",
            "64",
            "--batch-size",
            "4",
            // Dropout masks come from the backend's generator, which a checkpoint does not hold.
            "--dropout",
            "0",
            "--patience",
            "1000",
            "--runs",
            path_str(runs),
            "--json",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let whole = tmp.path().join("whole");
    let args = train(&whole);
    let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = only_run(&whole);

    let parts = tmp.path().join("parts");
    let args = train(&parts);
    let (status, _) =
        interrupt_after_first_checkpoint(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(status.code(), Some(130));
    let parts = only_run(&parts);
    let s = read_json(&parts.join("status.json"));
    assert!(s["epoch"].as_u64().unwrap() < 6, "{s}");
    let generation = parts.join("checkpoint").join(
        std::fs::read_to_string(parts.join("checkpoint/LATEST"))
            .unwrap()
            .trim(),
    );
    for f in [
        "param_ids.json",
        "optimizer-0.bpk",
        "optimizer-1.bpk",
        "best.safetensors",
        "state.json",
        "model.safetensors",
    ] {
        assert!(generation.join(f).is_file(), "{f}");
    }
    let out = run(&["train", "--resume", path_str(&parts), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !events(&parts).iter().any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("fresh optimiser"))),
        "the saved optimiser state was not found"
    );

    let metrics = |run: &Path| -> serde_json::Value { read_json(&run.join("metrics.json")) };
    let (a, b) = (metrics(&whole), metrics(&parts));
    assert_eq!(a["best_epoch"], b["best_epoch"]);
    for key in ["loss", "accuracy", "macro_auc"] {
        let (x, y) = (
            a["val"][key].as_f64().unwrap(),
            b["val"][key].as_f64().unwrap(),
        );
        assert!(
            (x - y).abs() < 1e-5,
            "val {key}: {x} uninterrupted, {y} resumed"
        );
    }
    let read = |run: &Path| std::fs::read_to_string(run.join("predictions.csv")).unwrap();
    assert_eq!(read(&whole), read(&parts));
    assert_same_weights(&whole, &parts);
}

/// The final weights of two runs, bit for bit: every tensor's name, dtype, shape and bytes
/// (the safetensors header's metadata map has no fixed order, so whole files may differ).
fn assert_same_weights(a: &Path, b: &Path) {
    fn tensors(run: &Path) -> std::collections::BTreeMap<String, (String, Vec<u8>)> {
        let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let data = &bytes[8 + n..];
        header
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let off = v["data_offsets"].as_array().unwrap();
                let (s, e) = (
                    off[0].as_u64().unwrap() as usize,
                    off[1].as_u64().unwrap() as usize,
                );
                (
                    k.clone(),
                    (
                        format!("{} {}", v["dtype"], v["shape"]),
                        data[s..e].to_vec(),
                    ),
                )
            })
            .collect()
    }
    let (x, y) = (tensors(a), tensors(b));
    assert!(!x.is_empty());
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (k, v) in &x {
        assert!(
            v == &y[k],
            "{k}: the resumed run's weights differ from the uninterrupted run's"
        );
    }
}

/// SIGKILL in the middle of a checkpoint write (the process is paused between the files of
/// a generation), then `--resume`: the half-written generation is ignored, the stale lock
/// and the `running` status of the dead process are taken over, and the run ends with the
/// same weights, bit for bit, as an uninterrupted one — for a probe (with its default
/// dropout) and a fine-tune.
#[test]
fn killed_during_a_checkpoint_write_resumes_to_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    // Epoch-based training (the probe's sgd solver and fine-tuning) checkpoints every epoch.
    for (mode, epochs) in [("probe", "5"), ("finetune", "3")] {
        let args = |runs: &Path| -> Vec<String> {
            [
                "train",
                path_str(&data),
                "--mode",
                mode,
                "--solver",
                "sgd",
                "--backend",
                "cpu",
                "--epochs",
                epochs,
                "--image-size",
                "64",
                "--batch-size",
                "4",
                "--patience",
                "1000",
                "--runs",
                path_str(runs),
                "--json",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let whole = tmp.path().join(format!("{mode}-whole"));
        let out = run(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{mode}: {}", stderr(&out));

        let parts = tmp.path().join(format!("{mode}-parts"));
        let mut child = cellbench()
            .args(args(&parts))
            .env("CELLBENCH_CHECKPOINT_PAUSE_MS", "700")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the second generation is half-written (the first is complete).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
        let partial = loop {
            let found = std::fs::read_dir(&parts)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.path().join("checkpoint/epoch-2.partial"))
                .filter(|p| p.join("model.safetensors").is_file());
            if let Some(p) = found {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{mode}: no checkpoint"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let run_dir = partial.parent().unwrap().parent().unwrap().to_owned();
        assert_eq!(
            std::fs::read_to_string(run_dir.join("checkpoint/LATEST")).unwrap(),
            "epoch-1",
            "{mode}"
        );
        assert!(
            run_dir.join("lock").is_file(),
            "{mode}: the dead owner's lock is left"
        );
        assert_eq!(read_json(&run_dir.join("status.json"))["state"], "running");

        let out = run(&["train", "--resume", path_str(&run_dir), "--json"]);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert!(
            !run_dir.join("lock").exists(),
            "{mode}: the lock is released"
        );
        assert_eq!(read_json(&run_dir.join("status.json"))["state"], "finished");
        assert_same_weights(&only_run(&whole), &run_dir);
    }
}

/// A second trainer on a run that is still training is refused, and the first one goes on.
#[test]
fn resume_of_a_run_in_training_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let runs = tmp.path().join("runs");
    let mut child = cellbench()
        .args([
            "train",
            path_str(&data),
            "--backend",
            "cpu",
            "--epochs",
            "3",
            "--image-size",
            "64",
            "--runs",
            path_str(&runs),
            "--json",
        ])
        .env("CELLBENCH_CHECKPOINT_PAUSE_MS", "1500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let run_dir = loop {
        let found = std::fs::read_dir(&runs)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.join("checkpoint").is_dir());
        if let Some(p) = found {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = run(&["train", "--resume", path_str(&run_dir), "--json"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("being trained by process"),
        "{}",
        stderr(&out)
    );
    assert!(
        child.wait().unwrap().success(),
        "the first trainer finished"
    );
    assert_eq!(read_json(&run_dir.join("status.json"))["state"], "finished");
}

fn unsafe_sigint(pid: u32) {
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
}

fn started_task(run: &Path) -> String {
    events(run)
        .iter()
        .find(|e| e["event"] == "started")
        .map(|e| e["task"].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn multi_label_csv_trains_with_sigmoid_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let mut csv = String::from("path,labels\n");
    for (class, labels) in [
        ("Eosinophil", "granulocyte|Eosinophil"),
        ("Neutrophil", "granulocyte|Neutrophil"),
        ("Lymphocyte", "Lymphocyte"),
    ] {
        for f in bccd_class_files(class, 14) {
            let name = format!("{class}_{}", f.file_name().unwrap().to_string_lossy());
            std::fs::copy(&f, tmp.path().join(&name)).unwrap();
            csv.push_str(&format!("{name},{labels}\n"));
        }
    }
    let manifest = tmp.path().join("labels.csv");
    std::fs::write(&manifest, csv).unwrap();
    let runs = tmp.path().join("runs");
    let out = run(&[
        "train",
        path_str(&manifest),
        "--backend",
        "cpu",
        "--epochs",
        "4",
        "--image-size",
        "64",
        "--runs",
        path_str(&runs),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = only_run(&runs);
    assert_eq!(started_task(&run_dir), "multi-label");
    let metrics = read_json(&run_dir.join("metrics.json"));
    assert!(
        metrics["val"]["hamming_loss"].is_number(),
        "{}",
        metrics["val"]
    );
    let labels: Vec<&str> = metrics["val"]["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["Eosinophil", "Lymphocyte", "Neutrophil", "granulocyte"]
    );
    let preds = std::fs::read_to_string(run_dir.join("predictions.csv")).unwrap();
    assert!(
        preds
            .lines()
            .skip(1)
            .any(|l| l.contains("granulocyte|") || l.contains("|granulocyte")),
        "{preds}"
    );
    // Sigmoid outputs: a row's probabilities need not sum to 1.
    assert!(preds.lines().nth(1).unwrap().split(',').count() == 5 + 4);
}

#[test]
fn ordinal_retinopathy_csv_reports_kappa_and_keeps_both_eyes_together() {
    let tmp = tempfile::tempdir().unwrap();
    let (labels, images) = retinopathy_csv(tmp.path());
    // The patient split keeps both eyes of a patient on one side.
    let split = tmp.path().join("split.csv");
    let out = run(&[
        "split",
        path_str(&labels),
        "--images",
        path_str(&images),
        "--test",
        "0",
        "--val",
        "0.25",
        "--out",
        path_str(&split),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = tmp.path().join("runs");
    let out = run(&[
        "train",
        "--split",
        path_str(&split),
        "--task",
        "ordinal",
        "--backend",
        "cpu",
        "--epochs",
        "4",
        "--image-size",
        "64",
        "--runs",
        path_str(&runs),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = only_run(&runs);
    assert_eq!(started_task(&run_dir), "ordinal");
    let metrics = read_json(&run_dir.join("metrics.json"));
    assert!(
        metrics["val"]["kappa_quadratic"].is_number(),
        "{}",
        metrics["val"]
    );
    assert!(
        metrics["val_patients"]["n"].as_u64().unwrap() >= 3,
        "patient-level metrics: {}",
        metrics["val_patients"]
    );
    let preds = std::fs::read_to_string(run_dir.join("predictions.csv")).unwrap();
    let mut sides: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for line in preds.lines().skip(1) {
        let cols: Vec<&str> = line.split(',').collect();
        sides
            .entry(cols[1].to_owned())
            .or_default()
            .insert(cols[2].to_owned());
    }
    assert!(sides.values().all(|s| s.len() == 1));
    assert!(preds.lines().skip(1).all(|l| {
        l.split(',')
            .nth(3)
            .is_some_and(|t| ["0", "1", "2"].contains(&t))
    }));

    // Grades are learnt as cumulative thresholds P(grade > 0), P(grade > 1): two outputs for
    // three grades, turned back into one probability per grade that sums to one.
    let info = read_json(&run_dir.join("model.json"));
    assert_eq!(info["cumulative"], true);
    let head = std::fs::read(run_dir.join("model.safetensors")).unwrap();
    let (len, rest) = head.split_at(8);
    let len = u64::from_le_bytes(len.try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&rest[..len]).unwrap();
    let bias = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(name, _)| name.ends_with("fc.bias"))
        .map(|(_, t)| t["shape"].clone())
        .unwrap();
    assert_eq!(bias, serde_json::json!([2]));
    let pred = tmp.path().join("pred.csv");
    let out = run(&[
        "predict",
        path_str(&run_dir),
        path_str(&images),
        "--out",
        path_str(&pred),
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&pred).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("path,predicted,p_0,p_1,p_2"));
    let mut rows = 0;
    for line in lines {
        let p: Vec<f64> = line
            .split(',')
            .skip(2)
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(p.len(), 3, "{line}");
        assert!(p.iter().all(|&v| (0.0..=1.0).contains(&v)), "{line}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-3, "{line}");
        rows += 1;
    }
    assert_eq!(rows, 48);
}

/// A Kaggle-retinopathy-style `trainLabels.csv` in `dir` with real cell images as "eyes":
/// 24 patients with a left and a right image each, grade 0, 1 or 2 by cell type. Returns the
/// CSV and the image folder.
fn retinopathy_csv(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let images = dir.join("train");
    std::fs::create_dir(&images).unwrap();
    let mut csv = String::from("image,level\n");
    let mut patient = 10;
    for (level, class) in ["Neutrophil", "Eosinophil", "Lymphocyte"]
        .iter()
        .enumerate()
    {
        let files = bccd_class_files(class, 16);
        for pair in files.chunks(2) {
            for (eye, f) in ["left", "right"].iter().zip(pair) {
                std::fs::copy(f, images.join(format!("{patient}_{eye}.jpeg"))).unwrap();
                csv.push_str(&format!("{patient}_{eye},{level}\n"));
            }
            patient += 1;
        }
    }
    let labels = dir.join("trainLabels.csv");
    std::fs::write(&labels, csv).unwrap();
    (labels, images)
}

/// k-fold cross-validation: k runs whose validation sides partition the data, patients whole,
/// and a summary whose per-fold values are the runs' own metrics.
#[test]
fn cross_validation_validates_every_image_once_with_patients_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let (labels, _) = retinopathy_csv(tmp.path());
    let runs = tmp.path().join("runs");
    let out = run(&[
        "train",
        path_str(&labels),
        "--folds",
        "3",
        "--backend",
        "cpu",
        "--epochs",
        "3",
        "--image-size",
        "64",
        "--runs",
        path_str(&runs),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cross-validation, 3 folds"), "{text}");
    let mut run_dirs: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    run_dirs.sort();
    assert_eq!(run_dirs.len(), 3);
    let summary_file = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("cv-"))
        .expect("a cv summary beside the runs");
    let summary = read_json(&summary_file);

    // Every image is scored exactly once, on its run's test side; a patient's two eyes in
    // the same fold; the choices were made on an inner validation part disjoint from it.
    let mut seen: std::collections::HashMap<String, usize> = Default::default();
    let mut fold_of_patient: std::collections::HashMap<String, usize> = Default::default();
    let mut accuracies = Vec::new();
    for (fold, dir) in run_dirs.iter().enumerate() {
        let preds = std::fs::read_to_string(dir.join("predictions.csv")).unwrap();
        let mut chose = std::collections::HashSet::new();
        let mut scored = std::collections::HashSet::new();
        for line in preds.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            match cols[2] {
                "val" => chose.insert(cols[1].to_owned()),
                "test" => scored.insert(cols[1].to_owned()),
                other => panic!("unexpected side {other}"),
            };
            if cols[2] != "test" {
                continue;
            }
            *seen.entry(cols[0].to_owned()).or_default() += 1;
            let f = *fold_of_patient.entry(cols[1].to_owned()).or_insert(fold);
            assert_eq!(f, fold, "patient {} in two folds", cols[1]);
        }
        assert!(!chose.is_empty() && !scored.is_empty());
        assert!(
            chose.is_disjoint(&scored),
            "patients that chose were scored: {chose:?} {scored:?}"
        );
        let m = read_json(&dir.join("metrics.json"));
        accuracies.push(m["test"]["accuracy"].as_f64().unwrap());
        // Both sides carry bootstrap intervals (over patients: the rows have patient ids)
        // around their point estimates, and their calibration.
        for side in ["val", "test"] {
            let ci = &m[side]["ci"];
            assert_eq!(ci["unit"], "patients", "{m}");
            for metric in ["accuracy", "macro_f1", "kappa_quadratic"] {
                let v = m[side][metric].as_f64().unwrap();
                let (lo, hi) = (
                    ci[metric]["low"].as_f64().unwrap(),
                    ci[metric]["high"].as_f64().unwrap(),
                );
                assert!(
                    lo <= v && v <= hi,
                    "{side} {metric} {v} outside [{lo}, {hi}]"
                );
            }
            assert!(m[side]["calibration"]["ece"].as_f64().unwrap() >= 0.0);
            assert_eq!(m[side]["calibration"]["bins"].as_array().unwrap().len(), 10);
        }
    }
    assert_eq!(seen.len(), 48, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    assert_eq!(fold_of_patient.len(), 24);

    let acc = &summary["metrics"]["accuracy"];
    let folds: Vec<f64> = acc["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(folds, accuracies);
    let mean = accuracies.iter().sum::<f64>() / 3.0;
    assert!((acc["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
    assert!(summary["metrics"]["kappa_quadratic"]["mean"].is_number());
    // The default probe chooses on inner folds of each fold's training side, never on the fold.
    let chosen_on = summary["chosen_on"].as_str().unwrap();
    assert!(
        chosen_on.contains("inner folds of each fold's training side"),
        "{chosen_on}"
    );
    assert!(text.contains("chosen on:"), "{text}");
    // The pooled held-out predictions: every image once, with an interval around the score.
    let pooled = &summary["pooled"];
    assert_eq!(pooled["n"], 48);
    assert_eq!(pooled["ci"]["units"], 24);
    let v = pooled["accuracy"].as_f64().unwrap();
    assert!(pooled["ci"]["accuracy"]["low"].as_f64().unwrap() <= v);
    assert!(pooled["ci"]["accuracy"]["high"].as_f64().unwrap() >= v);
    assert!(text.contains("held-out predictions together"), "{text}");
}

/// A probe on orientation-averaged features gives a cell and the same cell turned by 90°
/// the same probabilities.
#[test]
fn orientation_mean_probe_sees_a_turned_cell_as_the_same_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 12);
    let runs = tmp.path().join("runs");
    let out = run(&[
        "train",
        path_str(&data),
        "--orientation-mean",
        "--backend",
        "cpu",
        "--epochs",
        "5",
        "--image-size",
        "64",
        "--runs",
        path_str(&runs),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_dir = only_run(&runs);
    let info = read_json(&run_dir.join("model.json"));
    assert_eq!(info["orientation_mean"], true);

    let cells = tmp.path().join("cells");
    std::fs::create_dir(&cells).unwrap();
    let file = bccd_class_files("Eosinophil", 1).remove(0);
    let img = image::open(&file).unwrap().to_rgb8();
    // A square crop, so that turning the picture commutes with resizing it.
    let side = img.width().min(img.height());
    let square = image::imageops::crop_imm(&img, 0, 0, side, side).to_image();
    square.save(cells.join("a.png")).unwrap();
    image::imageops::rotate90(&square)
        .save(cells.join("b_turned.png"))
        .unwrap();
    let pred = tmp.path().join("pred.csv");
    let out = run(&[
        "predict",
        path_str(&run_dir),
        path_str(&cells),
        "--out",
        path_str(&pred),
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&pred).unwrap();
    let probs: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').skip(2).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(probs.len(), 2, "{text}");
    for (a, b) in probs[0].iter().zip(&probs[1]) {
        assert!((a - b).abs() < 0.01, "{text}");
    }
}

#[test]
fn finetune_learns_on_real_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 24);
    let runs = tmp.path().join("runs");
    let out = run(&[
        "train",
        path_str(&data),
        "--mode",
        "finetune",
        "--backend",
        "cpu",
        "--epochs",
        "6",
        "--image-size",
        "96",
        "--batch-size",
        "8",
        "--runs",
        path_str(&runs),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let metrics = read_json(&only_run(&runs).join("metrics.json"));
    let val = &metrics["val"];
    let majority = val["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["support"].as_f64().unwrap())
        .fold(0.0, f64::max)
        / val["n"].as_f64().unwrap();
    let acc = val["accuracy"].as_f64().unwrap();
    assert!(
        acc >= majority + 0.2,
        "fine-tuned accuracy {acc} vs majority {majority}"
    );
}

/// `--calibrate` fits a temperature on the validation side, saves it with the model, reports
/// the calibration error before and after, and `predict` applies it: the run's predictions and
/// `predict`'s still agree to 1e-5.
#[test]
fn calibrated_probe_saves_its_temperature_and_predict_uses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 12);
    let runs = tmp.path().join("runs");
    let out = train_small(&data, &runs, &["--calibrate"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("temperature scaling"),
        "the metrics table names the temperature"
    );
    let dir = only_run(&runs);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    let t = info["temperature"]
        .as_f64()
        .expect("a temperature in model.json");
    assert!(t.is_finite() && t > 0.0, "{t}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    let scaling = &metrics["val"]["temperature"];
    assert!((scaling["temperature"].as_f64().unwrap() - t).abs() < 1e-6);
    assert!(scaling["ece_before"].as_f64().unwrap().is_finite());
    let pred = tmp.path().join("predicted.csv");
    let out = run(&[
        "predict",
        path_str(&dir),
        path_str(&data),
        "--out",
        path_str(&pred),
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_run_agrees_with_predict(&dir, &data, &pred, "calibrated probe");
}

/// `cellbench train DATA EXTRA… --backend cpu --image-size 64 --runs RUNS`, asserted to succeed.
fn train_small(data: &Path, runs: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["train", path_str(data)];
    args.extend_from_slice(extra);
    args.extend([
        "--backend",
        "cpu",
        "--image-size",
        "64",
        "--runs",
        path_str(runs),
    ]);
    let out = run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

/// A finished run is not trained again by `--resume` (its model stays the one its results
/// came from). A run stopped before its first checkpoint (here: its checkpoints removed and
/// its status that of a killed process) resumes by starting again, says so, and finishes;
/// options given with `--resume` are named as ignored.
#[test]
fn a_run_without_a_checkpoint_resumes_by_starting_again() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let runs = tmp.path().join("runs");
    train_small(&data, &runs, &[]);
    let run_dir = only_run(&runs);
    let model = std::fs::read(run_dir.join("model.json")).unwrap();
    let out = run(&["train", "--resume", path_str(&run_dir)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already finished"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(run_dir.join("model.json")).unwrap(), model);
    assert_eq!(read_json(&run_dir.join("status.json"))["state"], "finished");
    std::fs::remove_dir_all(run_dir.join("checkpoint")).unwrap();
    let status = run_dir.join("status.json");
    let text = std::fs::read_to_string(&status)
        .unwrap()
        .replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&status, text).unwrap();
    let out = run(&[
        "train",
        "--resume",
        path_str(&run_dir),
        "--epochs",
        "9",
        "--runs",
        path_str(&runs),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(all.contains("starts again from the beginning"), "{all}");
    assert!(all.contains("ignored: --epochs"), "{all}");
    assert_eq!(read_json(&run_dir.join("status.json"))["state"], "finished");
}

/// Options the run's mode does not use are named, not silently dropped; a label whose
/// images are all unreadable is reported as never learnt.
#[test]
fn unused_options_and_an_unlearnt_label_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let dead = data.join("Monocyte");
    std::fs::create_dir_all(&dead).unwrap();
    for i in 0..6 {
        std::fs::write(dead.join(format!("m{i}.jpg")), b"not a jpeg").unwrap();
    }
    let runs = tmp.path().join("runs");
    let out = train_small(&data, &runs, &["--head-init", "random"]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("not used by a probe run: --head-init (fine-tuning only)"),
        "{all}"
    );
    assert!(
        all.contains("of label Monocyte could be read: the model never learnt it"),
        "{all}"
    );
}

/// A closed stderr (a reader that left the pipe) loses the message, not the process: the
/// exit status stays the command's own, never a panic's 101.
#[test]
fn a_closed_stderr_does_not_turn_an_error_into_a_panic() {
    let mut child = cellbench()
        .args(["predict", "/nonexistent/run", "/nonexistent/images"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "panicked on a closed stderr");
    assert!(!status.success());
}

/// A cut-off JPEG decodes to a picture with a grey lower part; training never takes it for the
/// image: it is skipped with the reason, like an unreadable file.
#[test]
fn a_truncated_jpeg_is_skipped_not_trained_on() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let whole = std::fs::read(bccd_class_files("Eosinophil", 7).pop().unwrap()).unwrap();
    let cut = data.join("Eosinophil/cut.jpeg");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let runs = tmp.path().join("runs");
    let out = train_small(&data, &runs, &[]);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("skipped unreadable image (truncated") && all.contains("cut.jpeg"),
        "{all}"
    );
}

/// `--resume` refuses data that changed since the run started — images added, or two class
/// folders swapped (the same labels and counts) — before touching the run: its status stays.
#[test]
fn resume_on_changed_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let runs = tmp.path().join("runs");
    train_small(&data, &runs, &[]);
    let run_dir = only_run(&runs);
    let status = run_dir.join("status.json");
    let text = std::fs::read_to_string(&status)
        .unwrap()
        .replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&status, &text).unwrap();
    let resume = || run(&["train", "--resume", path_str(&run_dir)]);

    // Two class folders swapped: labels and counts as before, each image's label not.
    std::fs::rename(data.join("Eosinophil"), data.join("x")).unwrap();
    std::fs::rename(data.join("Lymphocyte"), data.join("Eosinophil")).unwrap();
    std::fs::rename(data.join("x"), data.join("Lymphocyte")).unwrap();
    let out = resume();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the data changed since run") && stderr(&out).contains("swapped"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&status).unwrap(), text);

    // More images than the run started with.
    std::fs::rename(data.join("Eosinophil"), data.join("x")).unwrap();
    std::fs::rename(data.join("Lymphocyte"), data.join("Eosinophil")).unwrap();
    std::fs::rename(data.join("x"), data.join("Lymphocyte")).unwrap();
    for f in common::bccd_class_files("Lymphocyte", 9)
        .into_iter()
        .skip(6)
    {
        std::fs::copy(&f, data.join("Lymphocyte").join(f.file_name().unwrap())).unwrap();
    }
    let out = resume();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("training/validation images then"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&status).unwrap(), text);

    // Not a run at all.
    let out = run(&["train", "--resume", path_str(&data)]);
    assert!(
        stderr(&out).contains("not a run folder"),
        "{}",
        stderr(&out)
    );
}

/// Predict never ends in silence without predictions: a folder whose only image cannot be
/// read is an error, a file name that is not UTF-8 is named as skipped (exit 3 with
/// `--strict`), and the run's own predictions.csv is not overwritten.
#[test]
fn predict_names_what_it_could_not_use() {
    use std::os::unix::ffi::OsStrExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let runs = tmp.path().join("runs");
    train_small(&data, &runs, &[]);
    let run_dir = only_run(&runs);
    let own = std::fs::read(run_dir.join("predictions.csv")).unwrap();
    let out = run(&[
        "predict",
        path_str(&run_dir),
        path_str(&data.join("Eosinophil")),
        "--out",
        path_str(&run_dir.join("predictions.csv")),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the run's own predictions"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(run_dir.join("predictions.csv")).unwrap(), own);

    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("blank.jpg"), b"").unwrap();
    let csv = tmp.path().join("p.csv");
    let out = run(&[
        "predict",
        path_str(&run_dir),
        path_str(&empty),
        "--out",
        path_str(&csv),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("none of the 1 image(s) could be read"),
        "{}",
        stderr(&out)
    );

    let odd = tmp.path().join("odd");
    std::fs::create_dir_all(&odd).unwrap();
    let good = common::bccd_class_files("Lymphocyte", 1).remove(0);
    std::fs::copy(&good, odd.join("ok.jpg")).unwrap();
    let bad_name = std::ffi::OsStr::from_bytes(b"bad\xffname.jpg");
    std::fs::copy(&good, odd.join(bad_name)).unwrap();
    let out = run(&[
        "predict",
        path_str(&run_dir),
        path_str(&odd),
        "--out",
        path_str(&csv),
        "--strict",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("not valid UTF-8"), "{}", stderr(&out));
}

/// A checkpoint file that is there but does not read stops `--resume` with the file named (a
/// checkpoint without a file list, as older versions wrote); it is never taken for an absent
/// one and trained past with fresh optimiser moments.
#[test]
fn a_damaged_checkpoint_file_stops_the_resume_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    let runs = tmp.path().join("runs");
    let args = [
        "train",
        path_str(&data),
        "--mode",
        "probe",
        "--solver",
        "sgd",
        "--backend",
        "cpu",
        "--epochs",
        "5",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--patience",
        "1000",
        "--runs",
        path_str(&runs),
        "--json",
    ];
    let (status, _) = interrupt_after_first_checkpoint(&args);
    assert_eq!(status.code(), Some(130));
    let run_dir = only_run(&runs);
    let generation = run_dir.join("checkpoint").join(
        std::fs::read_to_string(run_dir.join("checkpoint/LATEST"))
            .unwrap()
            .trim(),
    );
    std::fs::remove_file(generation.join("files.json")).ok();
    std::fs::write(
        generation.join("optimizer-0.bpk"),
        b"not an optimiser state",
    )
    .unwrap();
    let out = run(&["train", "--resume", path_str(&run_dir), "--json"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("optimizer-0.bpk is damaged"), "{err}");
}

/// `cellbench run` runs a workbook's cells in order (dataset, split, train, predict), saves
/// the run id back into it, and its Predict cell names every image it did not predict (a cut
/// file in the folder, a manifest row whose image is gone) instead of dropping it.
#[test]
fn a_workbook_runs_headless_and_names_what_it_did_not_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    let new = tmp.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    for (i, file) in bccd_class_files("Neutrophil", 2).iter().enumerate() {
        std::fs::copy(file, new.join(format!("cell{i}.jpg"))).unwrap();
    }
    let whole = std::fs::read(bccd_class_files("Neutrophil", 3).pop().unwrap()).unwrap();
    std::fs::write(new.join("cut.jpg"), &whole[..whole.len() / 3]).unwrap();
    std::fs::write(
        tmp.path().join("list.csv"),
        "path,label\nnew/cell0.jpg,x\nnew/gone.jpg,x\n",
    )
    .unwrap();
    let book = tmp.path().join("book.cellbook.toml");
    std::fs::write(
        &book,
        format!(
            "title = \"headless\"\n\
             [[cell]]\nid = 1\nkind = \"dataset\"\npath = \"{}\"\n\
             [[cell]]\nid = 2\nkind = \"split\"\n[cell.config]\ntest = 0.0\nval = 0.3\n\
             [[cell]]\nid = 3\nkind = \"train\"\n[cell.config]\nbackend = \"cpu\"\n\
             [[cell]]\nid = 4\nkind = \"predict\"\ninput = \"new\"\noutput = \"folder.csv\"\n\
             [[cell]]\nid = 5\nkind = \"predict\"\ninput = \"list.csv\"\noutput = \"list-out.csv\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = run(&["run", path_str(&book)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("2 predictions written to"), "{text}");
    assert!(text.contains("1 not predicted"), "{text}");
    assert!(text.contains("cut.jpg (unreadable"), "{text}");
    assert!(text.contains("gone.jpg ("), "{text}");
    let lines = |name: &str| {
        std::fs::read_to_string(tmp.path().join(name))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(
        lines("folder.csv"),
        3,
        "a header and the two readable cells"
    );
    assert_eq!(
        lines("list-out.csv"),
        2,
        "a header and the listed cell that exists"
    );
    let saved = std::fs::read_to_string(&book).unwrap();
    assert!(
        saved.contains("run = \""),
        "the run id is saved back: {saved}"
    );
}

/// A CSV whose columns cellbench cannot guess trains with them named, as `dataset` and
/// `split` read it; its images folder, given relative to the shell's folder, is recorded
/// absolute, so the run resumes from anywhere. With --split those options are ignored, and
/// said to be: a split CSV names its own columns and paths.
#[test]
fn a_csv_with_named_columns_trains_and_records_its_images_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let scans = tmp.path().join("scans");
    std::fs::create_dir(&scans).unwrap();
    let mut csv = String::from("specimen,finding,donor\n");
    for class in ["Eosinophil", "Lymphocyte"] {
        for (i, f) in bccd_class_files(class, 8).into_iter().enumerate() {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&f, scans.join(&name)).unwrap();
            csv.push_str(&format!("{name},{class},d{}{class}\n", i % 4));
        }
    }
    std::fs::write(tmp.path().join("cells.csv"), csv).unwrap();
    let columns = [
        "--path-column",
        "specimen",
        "--label-column",
        "finding",
        "--patient-column",
        "donor",
        "--images",
        "scans",
    ];
    let train = |args: &[&str]| {
        cellbench()
            .current_dir(tmp.path())
            .args(["train", "--backend", "cpu", "--image-size", "64"])
            .args(["--runs", "runs"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = train(&[&["cells.csv"][..], &columns].concat());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("2 labels, "), "{err}");
    let run = only_run(&tmp.path().join("runs"));
    let recorded = read_json(&run.join("dataset.json"));
    assert_eq!(recorded["options"]["path_column"], "specimen", "{recorded}");
    let images = recorded["options"]["images"].as_str().map(Path::new);
    assert!(images.is_some_and(Path::is_absolute), "{recorded}");
    assert_eq!(
        images.map(|p| p.canonicalize().unwrap()),
        Some(scans.canonicalize().unwrap()),
        "{recorded}"
    );
    // Without the columns the same CSV is refused with the flag to use.
    let out = train(&["cells.csv"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--path-column"), "{}", stderr(&out));

    let out = cellbench()
        .current_dir(tmp.path())
        .args(["split", "cells.csv", "--val", "0.25", "--test", "0"])
        .args(["--out", "split.csv"])
        .args(columns)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = train(&[&["--split", "split.csv"][..], &columns].concat());
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("note: the dataset options are ignored with --split"),
        "{err}"
    );
}
