//! Checkpoints that are all-or-nothing: each epoch's files are written into a generation
//! folder (`checkpoint/epoch-N.partial/`), which is renamed to `checkpoint/epoch-N/` when
//! complete; then the pointer `checkpoint/LATEST` is replaced atomically and older generations
//! are removed. A kill at any instant leaves the last complete generation loadable, and a
//! half-written one is never read.
//!
//! Each generation lists its files with their sizes and checksums (`files.json`, written
//! before the generation is completed); [`latest`] checks them, so a file damaged or lost
//! after it was written stops a resume with the file named, instead of being taken for a
//! file that an older version did not write.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The pointer file naming the newest complete generation.
const LATEST: &str = "LATEST";
/// The list of a generation's files with their sizes and checksums.
const FILES: &str = "files.json";

/// What `files.json` holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct FileList {
    format_version: u32,
    /// File name → what it was when written.
    files: std::collections::BTreeMap<String, FileEntry>,
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct FileEntry {
    bytes: u64,
    /// [`checksum`] of the contents, in hexadecimal.
    checksum: String,
}

impl FileEntry {
    fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len() as u64,
            checksum: format!("{:016x}", checksum(bytes)),
        }
    }
}

/// A 64-bit checksum for noticing damage (not tampering): any change to one aligned 8-byte
/// word changes it, and other changes do with near certainty.
fn checksum(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(K).rotate_left(29);
    let mut h = (bytes.len() as u64) ^ K;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        h = mix(h, u64::from_le_bytes(w.try_into().unwrap_or_default()));
    }
    let mut tail = [0u8; 8];
    tail[..words.remainder().len()].copy_from_slice(words.remainder());
    h = mix(h, u64::from_le_bytes(tail));
    h ^ (h >> 32)
}

/// Checks a generation's files against its `files.json` (generations written before the list
/// existed have none and are not checked).
fn verify(generation: &Path) -> anyhow::Result<()> {
    let list_path = generation.join(FILES);
    let list: FileList = match crate::fs::read(&list_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the checkpoint's list of files is damaged: {}",
                list_path.display()
            )
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "cannot read the checkpoint's list of files {}",
                    list_path.display()
                )
            });
        }
    };
    crate::fsio::check_format_version(list.format_version, &list_path)?;
    for (name, expected) in &list.files {
        let path = generation.join(name);
        let bytes = match crate::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!(
                    "the checkpoint file is missing (it was written with the checkpoint): {}",
                    path.display()
                );
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the checkpoint file {}", path.display())
                });
            }
        };
        let found = FileEntry::of(&bytes);
        anyhow::ensure!(
            found.bytes == expected.bytes && found.checksum == expected.checksum,
            "the checkpoint file is damaged ({} bytes, {} when written; its contents changed): {}",
            found.bytes,
            expected.bytes,
            path.display()
        );
    }
    Ok(())
}

/// Folder of a run's checkpoints.
pub fn checkpoint_dir(run: &Path) -> PathBuf {
    run.join("checkpoint")
}

/// The newest complete checkpoint generation of a run, or `None` when it has none.
/// Checkpoints written before generations existed (files directly in `checkpoint/`) are read
/// as one generation. A generation whose files were damaged or lost is an error naming the
/// file.
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
            verify(&generation)?;
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
    /// The files written so far.
    written: std::cell::RefCell<std::collections::BTreeMap<String, FileEntry>>,
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
            written: Default::default(),
        })
    }

    /// Writes one file of the generation (flushed to disk).
    pub fn write(&self, file: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.partial.join(file);
        crate::fsio::write_atomic_bytes(&path, bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        self.written
            .borrow_mut()
            .insert(file.to_owned(), FileEntry::of(bytes));
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
        let list = FileList {
            format_version: crate::fsio::FORMAT_VERSION,
            files: self.written.take(),
        };
        let list_path = self.partial.join(FILES);
        crate::fsio::write_atomic_bytes(&list_path, &serde_json::to_vec_pretty(&list)?)
            .with_context(|| format!("writing {}", list_path.display()))?;
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

    #[test]
    fn a_damaged_or_lost_file_stops_the_resume_and_is_named() {
        let run = tempfile::tempdir().unwrap();
        let g = Generation::begin(run.path(), 1).unwrap();
        g.write("optimizer-0.bpk", &[7u8; 1000]).unwrap();
        g.write("state.json", b"{\"epoch\":1}").unwrap();
        let generation = g.commit().unwrap();
        assert_eq!(latest(run.path()).unwrap(), Some(generation.clone()));
        let optimizer = generation.join("optimizer-0.bpk");

        // One byte changed, the size kept.
        let mut bytes = crate::fs::read(&optimizer).unwrap();
        bytes[500] ^= 1;
        crate::fs::write(&optimizer, &bytes).unwrap();
        let err = format!("{:#}", latest(run.path()).unwrap_err());
        assert!(
            err.contains("damaged") && err.contains("optimizer-0.bpk"),
            "{err}"
        );

        // Cut short.
        crate::fs::write(&optimizer, [7u8; 10]).unwrap();
        let err = format!("{:#}", latest(run.path()).unwrap_err());
        assert!(
            err.contains("damaged") && err.contains("optimizer-0.bpk"),
            "{err}"
        );

        // Unreadable (a folder in its place): not taken for a file never written.
        crate::fs::remove_file(&optimizer).unwrap();
        crate::fs::create_dir_all(&optimizer).unwrap();
        let err = format!("{:#}", latest(run.path()).unwrap_err());
        assert!(err.contains("optimizer-0.bpk"), "{err}");

        // Gone.
        crate::fs::remove_dir_all(&optimizer).unwrap();
        let err = format!("{:#}", latest(run.path()).unwrap_err());
        assert!(
            err.contains("missing") && err.contains("optimizer-0.bpk"),
            "{err}"
        );

        // A damaged list of files is named too.
        crate::fs::write(generation.join(FILES), b"{not json").unwrap();
        let err = format!("{:#}", latest(run.path()).unwrap_err());
        assert!(err.contains("files.json"), "{err}");
    }

    #[test]
    fn the_checksum_sees_any_one_changed_byte() {
        let bytes: Vec<u8> = (0..1003u32).map(|i| (i * 31 % 251) as u8).collect();
        let reference = checksum(&bytes);
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0x10;
            assert_ne!(checksum(&changed), reference, "byte {i}");
        }
        assert_ne!(checksum(&bytes[..1002]), reference);
    }
}
