//! Run folders in `.zip` files: how runs travel between the browser, the desktop and cluster
//! jobs. One implementation for both targets (it goes through [`crate::fs`]).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::fs::files_below;

use anyhow::Context as _;

/// The most a zip may unpack to.
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;

/// Whether `dir` is a run folder: a `config.toml` and a `model.json` or `status.json`.
pub fn is_run_folder(dir: &Path) -> bool {
    crate::fs::is_file(&dir.join("config.toml"))
        && (crate::fs::is_file(&dir.join("model.json"))
            || crate::fs::is_file(&dir.join("status.json")))
}

/// The run folders at or below `dir`.
pub fn run_folders_below(dir: &Path) -> Vec<PathBuf> {
    let mut folders: Vec<PathBuf> = files_below(dir)
        .iter()
        .filter_map(|f| f.parent().map(Path::to_owned))
        .filter(|d| is_run_folder(d))
        .collect();
    folders.dedup();
    folders
}

/// The files that carry a run folder elsewhere, relative to it: everything but its lock and
/// the checkpoint generations other than the one `checkpoint/LATEST` names.
pub fn portable_files(run: &Path) -> Vec<PathBuf> {
    let checkpoint = crate::runs::checkpoint::checkpoint_dir(run);
    let latest = crate::fs::read_to_string(checkpoint.join("LATEST"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default();
    files_below(run)
        .into_iter()
        .filter_map(|f| f.strip_prefix(run).ok().map(Path::to_owned))
        .filter(|rel| rel != Path::new("lock"))
        .filter(|rel| match rel.strip_prefix("checkpoint") {
            // A generation folder's files travel only for the newest generation.
            Ok(inner) if inner.components().count() > 1 => inner.starts_with(&latest),
            _ => true,
        })
        .collect()
}

/// The files `rel` (relative to the run folder `run`) as one zip, entries named
/// `<run-id>/<file>`.
pub fn zip_run(run: &Path, rel: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let id = run
        .file_name()
        .with_context(|| format!("run folder name: {}", run.display()))?;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for r in rel {
        let name = Path::new(id).join(r);
        zip.start_file(name.to_string_lossy().replace('\\', "/"), options)?;
        let f = run.join(r);
        let bytes = crate::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        zip.write_all(&bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Unpacks a zip under `root`. Entries that would land outside `root` (`../x`, absolute
/// names) are skipped; a zip that unpacks to more than [`MAX_UNPACKED_BYTES`] is refused
/// before anything is written.
pub fn unpack_zip(bytes: &[u8], root: &Path) -> anyhow::Result<()> {
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("not a readable zip")?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        total = total.saturating_add(zip.by_index_raw(i)?.size());
    }
    anyhow::ensure!(
        total <= MAX_UNPACKED_BYTES,
        "it unpacks to {} MB, more than {} MB",
        total >> 20,
        MAX_UNPACKED_BYTES >> 20
    );
    for i in 0..zip.len() {
        let mut f = zip.by_index(i)?;
        if f.is_dir() {
            continue;
        }
        let Some(name) = f.enclosed_name() else {
            continue;
        };
        let mut data = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut data)
            .with_context(|| format!("unpacking {}", name.display()))?;
        let to = root.join(&name);
        if let Some(parent) = to.parent() {
            crate::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        crate::fs::write(&to, &data).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}

/// The run folders in `runs` (each `runs/<id>/…`) as one zip, entries named `runs/<id>/…`.
pub fn zip_runs(runs: &Path) -> anyhow::Result<Vec<u8>> {
    let files: Vec<PathBuf> = run_folders_below(runs)
        .iter()
        .flat_map(|d| files_below(d))
        .collect();
    anyhow::ensure!(
        !files.is_empty(),
        "no runs yet in {}: train a model first",
        runs.display()
    );
    let base = runs.parent().unwrap_or(runs);
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for f in files {
        let Some(rel) = crate::dataset::relative_path(&f, base) else {
            continue;
        };
        zip.start_file(rel, options)?;
        let bytes = crate::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        zip.write_all(&bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Imports the run folders of a zip into `runs_dir` (replacing runs of the same id);
/// returns their ids. Fails, writing nothing into `runs_dir`, when the zip holds no run.
pub fn import_zip(bytes: &[u8], runs_dir: &Path) -> anyhow::Result<Vec<String>> {
    let staging = runs_dir.join(format!(".import-{}", crate::fs::process_id()));
    if crate::fs::exists(&staging) {
        crate::fs::remove_dir_all(&staging).ok();
    }
    let result = unpack_zip(bytes, &staging).and_then(|()| import_folders(&staging, runs_dir));
    crate::fs::remove_dir_all(&staging).ok();
    result
}

/// Moves the run folders found at or below `from` into `runs_dir`; returns their ids.
pub fn import_folders(from: &Path, runs_dir: &Path) -> anyhow::Result<Vec<String>> {
    let found = run_folders_below(from);
    anyhow::ensure!(
        !found.is_empty(),
        "no run folder in it (a run folder holds config.toml and model.json)"
    );
    crate::fs::create_dir_all(runs_dir)
        .with_context(|| format!("creating {}", runs_dir.display()))?;
    let mut ids = Vec::new();
    for d in found {
        let Some(id) = d.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let to = runs_dir.join(&id);
        if crate::fs::exists(&to) {
            crate::fs::remove_dir_all(&to)
                .with_context(|| format!("replacing {}", to.display()))?;
        }
        crate::fs::rename(&d, &to)
            .with_context(|| format!("moving {} to {}", d.display(), to.display()))?;
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_run(dir: &Path, id: &str) {
        let run = dir.join(id);
        crate::fs::create_dir_all(run.join("checkpoint")).unwrap();
        crate::fs::write(run.join("config.toml"), "mode = \"probe\"\n").unwrap();
        crate::fs::write(run.join("model.json"), "{}").unwrap();
        crate::fs::write(run.join("checkpoint/LATEST"), "g1").unwrap();
    }

    #[test]
    fn a_run_travels_without_its_lock_and_older_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("r1");
        fake_run(dir.path(), "r1");
        for g in ["epoch-1", "epoch-2"] {
            crate::fs::create_dir_all(run.join("checkpoint").join(g)).unwrap();
            crate::fs::write(run.join("checkpoint").join(g).join("state.json"), g).unwrap();
        }
        crate::fs::write(run.join("checkpoint/LATEST"), "epoch-2\n").unwrap();
        crate::fs::write(run.join("lock"), "1").unwrap();
        let files = portable_files(&run);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.to_string_lossy().replace('\\', "/"))
            .collect();
        assert_eq!(
            names,
            [
                "checkpoint/LATEST",
                "checkpoint/epoch-2/state.json",
                "config.toml",
                "model.json"
            ]
        );
        let other = dir.path().join("other");
        unpack_zip(&zip_run(&run, &files).unwrap(), &other).unwrap();
        assert!(is_run_folder(&other.join("r1")));
        assert_eq!(
            crate::fs::read_to_string(other.join("r1/checkpoint/epoch-2/state.json")).unwrap(),
            "epoch-2"
        );
        assert!(!other.join("r1/lock").exists());
    }

    #[test]
    fn runs_round_trip_through_a_zip_and_nothing_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("book/runs");
        fake_run(&runs, "r1");
        fake_run(&runs, "r2");
        crate::fs::write(runs.join("stray.txt"), "not a run").unwrap();
        let zip = zip_runs(&runs).unwrap();

        let other = dir.path().join("other/runs");
        fake_run(&other, "r1"); // replaced by the imported r1
        crate::fs::write(other.join("r1/old.txt"), "old").unwrap();
        let ids = import_zip(&zip, &other).unwrap();
        assert_eq!(ids, ["r1", "r2"]);
        assert!(is_run_folder(&other.join("r2")));
        assert_eq!(
            crate::fs::read_to_string(other.join("r2/checkpoint/LATEST")).unwrap(),
            "g1"
        );
        assert!(!other.join("r1/old.txt").exists());
        assert!(!other.join("stray.txt").exists());
        let left: Vec<_> = crate::fs::read_dir(&other).unwrap().flatten().collect();
        assert_eq!(left.len(), 2, "no staging folder left behind");

        // A zip without runs changes nothing; one climbing out of its folder writes nothing
        // outside it.
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default();
        w.start_file("../escape.txt", o).unwrap();
        w.write_all(b"x").unwrap();
        w.start_file("images/a.bmp", o).unwrap();
        w.write_all(b"BM").unwrap();
        let bad = w.finish().unwrap().into_inner();
        let err = import_zip(&bad, &other).unwrap_err().to_string();
        assert!(err.contains("no run folder"), "{err}");
        assert!(!dir.path().join("other/escape.txt").exists());
        assert!(!other.join("escape.txt").exists());
        assert_eq!(crate::fs::read_dir(&other).unwrap().count(), 2);
        assert!(import_zip(b"not a zip", &other).is_err());
    }
}
