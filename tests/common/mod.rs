//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod ray;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The real data shared with the project (`../shared/data`), or `$CELLBENCH_SHARED_DATA`.
/// Panics with a clear message when it is missing: these tests must not pass vacuously.
pub fn shared_data() -> PathBuf {
    let candidates = [
        std::env::var_os("CELLBENCH_SHARED_DATA").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")),
        Some(PathBuf::from("/work/shared/data")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.join("bccd").is_dir())
        .expect("the shared real data is missing: set CELLBENCH_SHARED_DATA to the folder holding bccd/, cnmc-samples/, nih-cxr14/")
}

/// The first `n` (by file name) real BCCD crops of one class.
pub fn bccd_class_files(class: &str, n: usize) -> Vec<PathBuf> {
    let dir = shared_data().join("bccd/BCCD_cropped").join(class);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

/// A class-folder copy of part of BCCD under `dir/bccd`: `n` real images of each class.
pub fn bccd_subset(dir: &Path, classes: &[&str], n: usize) -> PathBuf {
    let dst = dir.join("bccd");
    for class in classes {
        std::fs::create_dir_all(dst.join(class)).unwrap();
        for f in bccd_class_files(class, n) {
            std::fs::copy(&f, dst.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    dst
}

pub fn cellbench() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cellbench"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    cellbench().args(args).output().expect("running cellbench")
}

/// A JSON file the run wrote (`metrics.json`, `status.json`, `model.json`, …), parsed.
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs and parses stdout as JSON, asserting success.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "cellbench {args:?} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{}", stdout(&out)))
}

/// Label → images from an explore report.
pub fn label_images(report: &serde_json::Value) -> Vec<(String, u64)> {
    report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["label"].as_str().unwrap().to_owned(),
                l["images"].as_u64().unwrap(),
            )
        })
        .collect()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
