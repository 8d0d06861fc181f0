//! cellbench: a workbench for classifying microscopy cell images.
//!
//! The library holds everything; the binary's CLI and the GUI are thin layers over it.
//! Domain modules (`dataset`, `explore`, …) never use egui; `ui` never touches polars
//! frames or tensors.

pub mod clock;
pub mod dataset;
pub mod fsio;
#[cfg(not(target_arch = "wasm32"))]
pub mod infer;
#[cfg(not(target_arch = "wasm32"))]
pub mod model;
#[cfg(not(target_arch = "wasm32"))]
pub mod runs;
#[cfg(not(target_arch = "wasm32"))]
pub mod train;

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod cluster;
#[cfg(not(target_arch = "wasm32"))]
pub mod explore;
pub mod ui;
#[cfg(not(target_arch = "wasm32"))]
pub mod workbook;

/// Folder of the bundled assets (weights, demo dataset): `$CELLBENCH_ASSETS`, else `assets/`
/// beside the executable's crate.
pub fn assets_dir() -> std::path::PathBuf {
    std::env::var_os("CELLBENCH_ASSETS")
        .map(Into::into)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets"))
}

/// The bundled real demo dataset (BCCD white-blood-cell crops).
pub fn demo_dataset() -> std::path::PathBuf {
    assets_dir().join("demo").join("bccd")
}
