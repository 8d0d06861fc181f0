//! End-to-end tests of the Ray Jobs client against a real Ray head (see tests/common/ray.rs).

mod common;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use cellbench::cluster::{
    ClusterBackend, ClusterError, ClusterProfile, JobStatus, JobSubmission, RayClient,
    build_package,
};
use common::ray::RayHead;

/// Records every log line of the library, to check what it says (and never says).
struct Capture;
static LOGGED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LOGGED.lock().unwrap().push(format!(
            "{} {} {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        static LOGGER: Capture = Capture;
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn logged() -> Vec<String> {
    LOGGED.lock().unwrap().clone()
}

fn client(head: &RayHead) -> RayClient {
    capture_logs();
    let mut profile = ClusterProfile::new("e2e", head.address());
    profile.token_file = Some(head.token_file().to_path_buf());
    RayClient::new(&profile).expect("client")
}

fn wait_terminal(c: &RayClient, id: &str, within: Duration) -> cellbench::cluster::JobInfo {
    let deadline = Instant::now() + within;
    loop {
        let info = c.status(id).expect("status");
        if info.is_terminal() || Instant::now() > deadline {
            return info;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

const JOB_SH: &str = r#"#!/usr/bin/env bash
set -e
# The package keeps the executable bit of files that had it.
test -x ./cellbench-stub || { echo "cellbench-stub lost its executable bit" >&2; exit 3; }
./cellbench-stub
sleep 2
echo '{"event":"finished","ok":true}'
"#;

#[test]
fn packaged_job_streams_json_lines_and_succeeds() {
    let head = RayHead::shared();
    let c = client(&head);
    let dir = tempfile::tempdir().unwrap();
    let stub = dir.path().join("stub.sh");
    std::fs::write(
        &stub,
        "#!/bin/sh\necho '{\"event\":\"progress\",\"step\":1}'\n",
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let zip = build_package(
        &[("cellbench-stub".into(), stub)],
        &[("job.sh".into(), JOB_SH.as_bytes().to_vec())],
    )
    .unwrap();
    let uri = c.upload_package(&zip).unwrap();
    assert!(
        uri.starts_with("gcs://_ray_pkg_") && uri.ends_with(".zip"),
        "{uri}"
    );
    assert_eq!(
        c.upload_package(&zip).unwrap(),
        uri,
        "re-upload of the same bytes"
    );

    let mut job = JobSubmission::new("bash job.sh");
    job.working_dir = Some(uri);
    job.metadata.insert("test".into(), "e2e".into());
    job.entrypoint_num_cpus = Some(1.0);
    let t0 = Instant::now();
    let id = c.submit(&job).unwrap();
    assert_eq!(id, job.submission_id);

    let mut first_line = None;
    let mut first_json = None;
    let mut events = Vec::new();
    let mut all = Vec::new();
    c.tail(&id, &mut |line| {
        first_line.get_or_insert(t0.elapsed());
        all.push(line.to_string());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            first_json.get_or_insert(t0.elapsed());
            events.push(v["event"].as_str().unwrap_or("?").to_string());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    let total = t0.elapsed();
    assert_eq!(
        events,
        ["progress", "finished"],
        "all lines: {all:#?}\nhead log:\n{}",
        head.log_tail()
    );
    let info = c.status(&id).unwrap();
    assert_eq!(info.status, JobStatus::Succeeded, "{info:?}");
    assert_eq!(info.metadata.get("test").map(String::as_str), Some("e2e"));
    assert_eq!(info.entrypoint_num_cpus, Some(1.0));
    println!(
        "LATENCY submit → first streamed line {:?}, → first JSON line {:?}, → tail ended {:?}",
        first_line.unwrap(),
        first_json.unwrap(),
        total
    );

    assert!(
        !logged()
            .iter()
            .any(|l| l.contains(&id) && l.contains("following by polling")),
        "the WebSocket should have carried the log: {:#?}",
        logged()
    );

    // The same job followed by polling only (proxies without WebSockets).
    let mut polled = Vec::new();
    client(&head)
        .with_websocket(false)
        .tail(&id, &mut |line| {
            polled.push(line.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(polled, all, "polling yields the same lines");

    // Submitting the same id again (a retry after a lost answer) is a no-op.
    assert_eq!(c.submit(&job).unwrap(), id);
    let same: Vec<_> = c
        .list()
        .unwrap()
        .into_iter()
        .filter(|j| j.submission_id == id)
        .collect();
    assert_eq!(same.len(), 1, "{same:?}");

    let logs = c.logs(&id).unwrap();
    assert!(logs.contains(r#"{"event":"finished","ok":true}"#), "{logs}");

    c.delete(&id).unwrap();
    assert!(matches!(c.status(&id), Err(ClusterError::NotFound { .. })));
    assert!(!c.list().unwrap().iter().any(|j| j.submission_id == id));

    let lines = logged();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("submitted job {id}"))),
        "{lines:#?}"
    );
    let leaks: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(head.token()))
        .map(|l| l.replace(head.token(), "<TOKEN>"))
        .collect();
    assert!(leaks.is_empty(), "log lines hold the token: {leaks:#?}");
}

#[test]
fn long_job_runs_and_stops() {
    let head = RayHead::shared();
    let c = client(&head);
    let job = JobSubmission::new("sleep 300");
    let id = c.submit(&job).unwrap();
    let info = c.wait_until_running(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(info.status, JobStatus::Running);
    assert!(matches!(
        c.delete(&id),
        Err(ClusterError::NotTerminal { .. })
    ));
    assert!(c.stop(&id).unwrap());
    let info = wait_terminal(&c, &id, Duration::from_secs(30));
    assert_eq!(info.status, JobStatus::Stopped, "{info:?}");
    assert!(!c.stop(&id).unwrap(), "stopping an ended job reports false");
    c.delete(&id).unwrap();
}

#[test]
fn wrong_token_is_unauthorized_and_never_shown() {
    let head = RayHead::shared();
    let dir = tempfile::tempdir().unwrap();
    let wrong = "wrong-token-1f2e3d4c5b6a";
    let file = dir.path().join("token");
    std::fs::write(&file, wrong).unwrap();
    let mut profile = ClusterProfile::new("bad", head.address());
    profile.token_file = Some(file.clone());
    let c = RayClient::new(&profile).unwrap();
    let errors = [
        c.list().unwrap_err(),
        c.submit(&JobSubmission::new("true")).unwrap_err(),
        c.upload_package(b"x").unwrap_err(),
        c.tail("anything", &mut |_| ControlFlow::Continue(()))
            .unwrap_err(),
    ];
    for e in &errors {
        assert!(
            matches!(e, ClusterError::Unauthorized { status: 403, .. }),
            "{e:?}"
        );
        let text = format!("{e} {e:?}");
        assert!(text.contains(&file.display().to_string()), "{text}");
        assert!(
            !text.contains(wrong) && !text.contains(head.token()),
            "{text}"
        );
    }
    let mut none = profile.clone();
    none.token_file = None;
    let e = RayClient::new(&none).unwrap().list().unwrap_err();
    assert!(matches!(e, ClusterError::TokenRequired { .. }), "{e:?}");
}

#[test]
fn unknown_ids_bad_runtime_env_and_unmet_resources() {
    let head = RayHead::shared();
    let c = client(&head);
    assert!(matches!(
        c.status("cellbench-no-such-job"),
        Err(ClusterError::NotFound { .. })
    ));
    assert!(matches!(
        c.logs("cellbench-no-such-job"),
        Err(ClusterError::NotFound { .. })
    ));

    let mut job = JobSubmission::new("true");
    job.working_dir = Some("gcs://_ray_pkg_00000000000000000000000000000000.zip".into());
    let id = c.submit(&job).unwrap();
    let e = c
        .wait_until_running(&id, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(e, ClusterError::RuntimeEnvSetup { .. }), "{e:?}");
    assert!(e.to_string().contains("_ray_pkg_0000"), "{e}");

    // The head has no GPU: the job stays PENDING (and Ray cannot stop it; it is left there).
    let mut gpu = JobSubmission::new("true");
    gpu.entrypoint_num_gpus = Some(1.0);
    let id = c.submit(&gpu).unwrap();
    let e = c
        .wait_until_running(&id, Duration::from_secs(3))
        .unwrap_err();
    assert!(matches!(e, ClusterError::PendingTooLong { .. }), "{e:?}");
    assert!(e.to_string().contains("1 GPUs"), "{e}");
}

// ── cellbench jobs on the real head: the packaged cellbench binary trains on real cells ──

fn run_config(dir: &std::path::Path, mode: &str, epochs: u32) -> std::path::PathBuf {
    let path = dir.join(format!("{mode}.toml"));
    std::fs::write(
        &path,
        // The epoch-based probe: these tests follow epochs streaming live.
        format!("mode = \"{mode}\"\nsolver = \"sgd\"\nepochs = {epochs}\nbackend = \"cpu\"\nbatch_size = 8\nearly_stopping_patience = 1000\n[preprocess]\nsize = 64\n"),
    )
    .unwrap();
    path
}

fn submit_cli(
    head: &RayHead,
    config: &std::path::Path,
    data: &std::path::Path,
    runs: &std::path::Path,
) -> String {
    let out = common::cellbench()
        .args([
            "cluster",
            "submit",
            common::path_str(config),
            "--dataset",
            common::path_str(data),
        ])
        .args(["--runs", common::path_str(runs), "--cpus", "1"])
        .args(head.cli_target())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit failed: {}",
        common::stderr(&out)
    );
    let id = common::stdout(&out).trim().to_owned();
    assert!(id.starts_with("cellbench-"), "{id}");
    id
}

#[test]
fn cellbench_training_job_streams_live_events_and_results_come_back() {
    let head = RayHead::shared();
    let c = client(&head);
    let tmp = tempfile::tempdir().unwrap();
    let data = common::bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 12);
    let shared_runs = tmp.path().join("shared-runs");
    let config = run_config(tmp.path(), "probe", 6);

    let submitted = Instant::now();
    let id = submit_cli(&head, &config, &data, &shared_runs);
    let uploaded = submitted.elapsed();
    let mut first_event: Option<Duration> = None;
    let mut first_metric: Option<Duration> = None;
    let mut kinds = Vec::new();
    let events = cellbench::cluster::job::follow(&c, &id, &mut |e| {
        first_event.get_or_insert_with(|| submitted.elapsed());
        if first_metric.is_none() && matches!(e, cellbench::train::TrainEvent::Epoch { .. }) {
            first_metric = Some(submitted.elapsed());
        }
        kinds.push(
            e.to_json_line()
                .split('"')
                .nth(3)
                .unwrap_or_default()
                .to_owned(),
        );
    })
    .unwrap();
    let info = wait_terminal(&c, &id, Duration::from_secs(60));
    assert_eq!(
        info.status,
        JobStatus::Succeeded,
        "{}",
        c.logs(&id).unwrap_or_default()
    );
    println!(
        "package + upload + submit: {uploaded:?}; submit → first live event: {:?}; → first epoch metric: {:?}",
        first_event.unwrap(),
        first_metric.unwrap()
    );
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("started"),
        "{kinds:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, cellbench::train::TrainEvent::Epoch { .. }))
            .count(),
        6
    );
    let Some(cellbench::train::TrainEvent::Finished { metrics, .. }) = events.last() else {
        panic!("the last event is not `finished`: {kinds:?}");
    };
    // 24 images, 20% of each class held out for validation.
    assert_eq!(metrics.n, 4, "validation images");

    // The run folder landed on the shared storage, model included.
    let run = std::fs::read_dir(&shared_runs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(run.join("model.safetensors").is_file());

    // Results come back as a normal run folder that Compare reads.
    let local_runs = tmp.path().join("runs");
    let out = common::cellbench()
        .args([
            "cluster",
            "results",
            &id,
            "--runs",
            common::path_str(&local_runs),
        ])
        .args(head.cli_target())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let summary = cellbench::runs::view::load_summary(&local_runs, &id).unwrap();
    assert_eq!(summary.state, cellbench::runs::RunState::Finished);
    assert_eq!(summary.curves.len(), 6);
    assert!((summary.val.unwrap().accuracy - metrics.accuracy).abs() < 1e-12);
    assert_eq!(summary.config.epochs, 6);
    // The imported run is whole: it records its data (so it can be resumed) and predicts.
    let imported = local_runs.join(&id);
    let recorded = cellbench::runs::DatasetFile::read(&imported).unwrap();
    assert_eq!(recorded.source, std::path::absolute(&data).unwrap());
    let predictions = tmp.path().join("pred.csv");
    let out = common::cellbench()
        .args(["predict", common::path_str(&imported)])
        .arg(data.join("Eosinophil"))
        .args(["--out", common::path_str(&predictions), "--backend", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        std::fs::read_to_string(&predictions)
            .unwrap()
            .lines()
            .count()
            > 1
    );
    // Without the shared folder the job's log alone brings the same run back.
    let mut info = c.status(&id).unwrap();
    info.metadata.remove("cellbench_runs");
    let from_log = cellbench::cluster::results::import_from(
        &info,
        &c.logs(&id).unwrap(),
        &tmp.path().join("from-log"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(from_log.join("model.safetensors")).unwrap(),
        std::fs::read(imported.join("model.safetensors")).unwrap()
    );
    assert_eq!(
        cellbench::runs::DatasetFile::read(&from_log).unwrap(),
        recorded
    );

    // Finished jobs can be deleted.
    c.delete(&id).unwrap();
    assert!(matches!(c.status(&id), Err(ClusterError::NotFound { .. })));
}

#[test]
fn cellbench_training_job_stops_mid_run() {
    let head = RayHead::shared();
    let c = client(&head);
    let tmp = tempfile::tempdir().unwrap();
    let data = common::bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 8);
    let config = run_config(tmp.path(), "scratch", 500);
    let id = submit_cli(&head, &config, &data, &tmp.path().join("runs"));
    // Wait for the first epoch to stream, then stop the job.
    let mut epochs = 0;
    c.tail(&id, &mut |line| {
        if line.contains("\"event\":\"epoch\"") {
            epochs += 1;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(epochs, 1);
    let out = common::cellbench()
        .args(["cluster", "stop", &id])
        .args(head.cli_target())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let info = wait_terminal(&c, &id, Duration::from_secs(60));
    assert_eq!(info.status, JobStatus::Stopped);
    let run = cellbench::cluster::job::import_results(&c, &id, &tmp.path().join("local")).unwrap();
    let status = common::read_json(&run.join("status.json"));
    assert_eq!(status["state"], "cancelled");
    // A stopped job's run comes back with what `--resume` needs.
    assert!(cellbench::runs::DatasetFile::read(&run).is_ok());
    assert!(cellbench::runs::checkpoint::latest(&run).unwrap().is_some());
}

#[test]
fn cellbench_cli_names_the_token_source_on_a_wrong_token() {
    let head = RayHead::shared();
    let out = common::cellbench()
        .args([
            "cluster",
            "list",
            "--address",
            head.address(),
            "--token-env",
            "CELLBENCH_TEST_TOKEN",
        ])
        .env("CELLBENCH_TEST_TOKEN", "definitely-not-the-token-4242")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = common::stderr(&out);
    assert!(err.contains("CELLBENCH_TEST_TOKEN"), "{err}");
    assert!(!err.contains("definitely-not-the-token-4242"), "{err}");
    assert!(!common::stdout(&out).contains("definitely-not-the-token-4242"));
}

/// `cluster featurize --follow`: two shards on the real Ray head, followed until the shared
/// cache is complete; a probe run pointed at that cache then takes every vector from it.
#[test]
fn featurize_shards_are_followed_until_the_cache_is_complete() {
    let head = RayHead::shared();
    let tmp = tempfile::tempdir().unwrap();
    let data = common::bccd_subset(tmp.path(), &["Eosinophil", "Lymphocyte"], 6);
    let cache = tmp.path().join("shared-cache");
    let out = common::cellbench()
        .args(["cluster", "featurize", common::path_str(&data)])
        .args(["--shards", "2", "--cache", common::path_str(&cache)])
        .args(["--image-size", "64", "--follow"])
        .args(head.cli_target())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("shard 0/2") && err.contains("shard 1/2"),
        "{err}"
    );
    assert!(err.contains("SUCCEEDED"), "{err}");
    assert!(
        err.contains("the cache is complete: 12 feature vectors from 2 shards"),
        "{err}"
    );
    let out = common::cellbench()
        .env("CELLBENCH_CACHE", &cache)
        .args(["train", common::path_str(&data), "--image-size", "64"])
        .args([
            "--backend",
            "cpu",
            "--runs",
            common::path_str(&tmp.path().join("runs")),
        ])
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("12 of 12 feature vectors came from the cache"),
        "{err}"
    );
}

/// `cluster featurize` reads a CSV the way `train` does (its columns named, its images folder
/// given relative to the shell's folder), and what it caches serves the single-scale probe as
/// well as the default multi-scale one (one vector holds both).
#[test]
fn featurize_reads_named_csv_columns_and_serves_a_single_scale_probe() {
    let head = RayHead::shared();
    let tmp = tempfile::tempdir().unwrap();
    let scans = tmp.path().join("scans");
    std::fs::create_dir(&scans).unwrap();
    let mut csv = String::from("specimen,finding\n");
    for class in ["Eosinophil", "Lymphocyte"] {
        for f in common::bccd_class_files(class, 6) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            std::fs::copy(&f, scans.join(&name)).unwrap();
            csv.push_str(&format!("{name},{class}\n"));
        }
    }
    let table = tmp.path().join("cells.csv");
    std::fs::write(&table, csv).unwrap();
    let cache = tmp.path().join("shared-cache");
    let columns = [
        "--path-column",
        "specimen",
        "--label-column",
        "finding",
        "--images",
        "scans",
    ];
    let out = common::cellbench()
        .current_dir(tmp.path())
        .args(["cluster", "featurize", "cells.csv", "--shards", "1"])
        .args(["--cache", common::path_str(&cache)])
        .args(columns)
        .args(["--image-size", "64", "--follow"])
        .args(head.cli_target())
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("the cache is complete: 12 feature vectors from 1 shard in"),
        "{err}"
    );
    let out = common::cellbench()
        .current_dir(tmp.path())
        .env("CELLBENCH_CACHE", &cache)
        .args(["train", "cells.csv", "--image-size", "64", "--single-scale"])
        .args(columns)
        .args(["--backend", "cpu", "--runs", "runs"])
        .output()
        .unwrap();
    let err = common::stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("12 of 12 feature vectors came from the cache"),
        "{err}"
    );
}
