//! Checkpoints that are all-or-nothing: each epoch's files are written into a generation
//! folder (`checkpoint/epoch-N.partial/`), which is renamed to `checkpoint/epoch-N/` when
//! complete; then the pointer `checkpoint/LATEST` is replaced atomically and older generations
//! are removed. A kill at any instant leaves the last complete generation loadable, and a
//! half-written one is never read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The pointer file naming the newest complete generation.
const LATEST: &str = "LATEST";

/// Folder of a run's checkpoints.
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// The newest complete checkpoint generation of a run, or `None` when it has none.
/// Checkpoints written before generations existed (files directly in `checkpoint/`) are read
/// as one generation.
pub fn latest(run: &Path) -> anyhow::Result<Option<PathBuf>> {
    let dir = checkpoint_dir(run);
    let pointer = dir.join(LATEST);
    match crate::fs::read_to_string(&pointer) {
        Ok(name) => {
            let name = name.trim();
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['/', '\\']) && name != "..",
                "the checkpoint pointer is damaged ({name:?}): {}",
                pointer.display()
            );
            let generation = dir.join(name);
            anyhow::ensure!(
                crate::fs::is_dir(&generation),
                "the checkpoint pointer names a missing generation {name}: {}",
                pointer.display()
            );
            Ok(Some(generation))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(crate::fs::is_file(&dir.join("state.json")).then_some(dir))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", pointer.display())),
    }
}

/// A generation being written. Nothing of it is visible to [`latest`] until [`Self::commit`].
pub struct Generation {
    run: PathBuf,
    name: String,
    partial: PathBuf,
}

impl Generation {
    /// Starts the generation of `epoch` (a stale partial folder of a killed writer is removed).
    pub fn begin(run: &Path, epoch: u32) -> anyhow::Result<Self> {
        let name = format!("epoch-{epoch}");
        let partial = checkpoint_dir(run).join(format!("{name}.partial"));
        if crate::fs::exists(&partial) {
            crate::fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        crate::fs::create_dir_all(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        Ok(Self {
            run: run.to_owned(),
            name,
            partial,
        })
    }

    /// Writes one file of the generation (flushed to disk).
    pub fn write(&self, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.partial.join(file);
        crate::fsio::write_atomic_bytes(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        // Fault injection for the kill tests: a pause between the files of a generation.
        if let Some(ms) = std::env::var("CELLBENCH_CHECKPOINT_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        Ok(())
    }

    /// Makes the generation the latest: rename, pointer, then removal of older generations.
    pub fn commit(self) -> anyhow::Result<PathBuf> {
        let dir = checkpoint_dir(&self.run);
        let done = dir.join(&self.name);
        if crate::fs::exists(&done) {
            // The same epoch written again (a resumed run repeating it).
            crate::fs::remove_dir_all(&done)
                .with_context(|| format!("removing {}", done.display()))?;
        }
        crate::fs::rename(&self.partial, &done)
            .with_context(|| format!("completing {}", done.display()))?;
        crate::fsio::write_atomic_bytes(&dir.join(LATEST), self.name.as_bytes())
            .with_context(|| format!("writing {}", dir.join(LATEST).display()))?;
        // Older generations and files of the layout before generations: no longer needed.
        for entry in crate::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == self.name || name == LATEST {
                continue;
            }
            let path = entry.path();
            let removed = if crate::fs::is_dir(&path) {
                crate::fs::remove_dir_all(&path)
            } else {
                crate::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                log::warn!("old checkpoint not removed ({e}): {}", path.display());
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_generation_is_never_the_latest() {
        let run = tempfile::tempdir().unwrap();
        assert_eq!(latest(run.path()).unwrap(), None);
        let g = Generation::begin(run.path(), 1).unwrap();
        g.write("state.json", b"{\"epoch\":1}").unwrap();
        let first = g.commit().unwrap();
        assert_eq!(latest(run.path()).unwrap(), Some(first.clone()));
        // Epoch 2 is killed half-way: epoch 1 stays the latest, whole.
        let g = Generation::begin(run.path(), 2).unwrap();
        g.write("model.safetensors", b"new weights").unwrap();
        drop(g);
        assert_eq!(latest(run.path()).unwrap(), Some(first.clone()));
        assert_eq!(
            crate::fs::read(first.join("state.json")).unwrap(),
            b"{\"epoch\":1}"
        );
        // The next writer of epoch 2 starts clean and, once committed, replaces epoch 1.
        let g = Generation::begin(run.path(), 2).unwrap();
        g.write("state.json", b"{\"epoch\":2}").unwrap();
        let second = g.commit().unwrap();
        assert_eq!(latest(run.path()).unwrap(), Some(second.clone()));
        assert!(!first.exists());
        assert!(!second.join("model.safetensors").exists());
    }

    #[test]
    fn the_layout_before_generations_still_resumes_and_a_bad_pointer_is_an_error() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        crate::fs::create_dir_all(&dir).unwrap();
        crate::fs::write(dir.join("state.json"), b"{}").unwrap();
        assert_eq!(latest(run.path()).unwrap(), Some(dir.clone()));
        crate::fs::write(dir.join(LATEST), b"epoch-9").unwrap();
        let err = latest(run.path()).unwrap_err().to_string();
        assert!(err.contains("missing generation epoch-9"), "{err}");
    }
}
