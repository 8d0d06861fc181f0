//! The file system the library reads and writes through: the operating system's on the
//! desktop, and in the browser an in-memory one ([`memory`]) holding the dropped images, the
//! bundled demo, run folders and feature caches. Library code says `crate::fs::read(..)`
//! instead of `std::fs::read(..)` and the same code serves both targets.
//!
//! `Path::exists()`/`is_dir()`/`is_file()` ask the operating system directly, so library code
//! uses [`exists`], [`is_dir`] and [`is_file`] instead.

pub mod memory;

#[cfg(not(target_arch = "wasm32"))]
pub use std::fs::*;

#[cfg(target_arch = "wasm32")]
pub use memory::*;

use std::path::Path;

/// Whether `path` names a file or folder.
pub fn exists(path: &Path) -> bool {
    metadata(path).is_ok()
}

/// Whether `path` names a folder.
pub fn is_dir(path: &Path) -> bool {
    metadata(path).is_ok_and(|m| m.is_dir())
}

/// Whether `path` names a file.
pub fn is_file(path: &Path) -> bool {
    metadata(path).is_ok_and(|m| m.is_file())
}

/// Every file below `dir`, recursively, sorted (unreadable folders are skipped).
pub fn files_below(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// This process's id on the desktop; a fixed id in the browser, where one page is one process.
pub fn process_id() -> u32 {
    #[cfg(not(target_arch = "wasm32"))]
    let id = std::process::id();
    #[cfg(target_arch = "wasm32")]
    let id = 1;
    id
}
