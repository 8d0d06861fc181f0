//! cellbench: a workbench for classifying microscopy cell images.
//!
//! The library holds everything; the binary's CLI and the GUI are thin layers over it.
//! Domain modules (`dataset`, `explore`, …) never use egui; `ui` never touches polars
//! frames or tensors.

/// `eprintln!` that never panics: when stderr is a pipe whose reader has gone (`… 2>&1 | head`),
/// the line is lost instead of the process (std's `eprintln!` panics on a failed write).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod clock;
pub mod dataset;
pub mod experiment;
pub mod fs;
pub mod fsio;
pub mod infer;
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod render;
pub mod runs;
pub mod table;
pub mod train;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod cluster;
pub mod explore;
#[cfg(feature = "gui")]
pub mod ui;
/// The browser page's side of the workbench (see [`ui::web`]).
#[cfg(all(target_arch = "wasm32", feature = "gui"))]
pub use ui::web;
pub mod workbook;

/// Folder of the bundled assets (weights, demo dataset): `$CELLBENCH_ASSETS`, else the source
/// tree's `assets/`, else `assets/` beside the binary.
pub fn assets_dir() -> std::path::PathBuf {
    // In the browser the page fetches the assets into the in-memory file system.
    if cfg!(target_arch = "wasm32") {
        return std::path::PathBuf::from("/assets");
    }
    if let Some(dir) = std::env::var_os("CELLBENCH_ASSETS") {
        return dir.into();
    }
    // The source tree it was built from, else beside the binary (a copied or installed
    // binary: `<dir>/assets` or `<prefix>/share/cellbench/assets`).
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    if built.is_dir() {
        return built;
    }
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(std::path::Path::to_path_buf));
    exe_dir
        .into_iter()
        .flat_map(|d| [d.join("assets"), d.join("../share/cellbench/assets")])
        .find(|d| d.is_dir())
        .unwrap_or(built)
}

/// The bundled real demo dataset (BCCD white-blood-cell crops).
pub fn demo_dataset() -> std::path::PathBuf {
    assets_dir().join("demo").join("bccd")
}
