//! The browser entry point: `wasm-bindgen` exports that start the workbench on a canvas and
//! hand it files. Everything else is the `cellbench` library, the same code as the desktop app.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen::prelude::*;

/// Starts the workbench on the canvas with id `canvas_id`. Resolves once the first frame
/// is running; a failure rejects with a message the page shows.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    cellbench::web::start(&canvas_id).await
}

/// Puts a file into the page's in-memory file system (see `cellbench::web::mount_file`).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn mount_file(path: &str, bytes: &[u8]) -> Result<(), JsValue> {
    cellbench::web::mount_file(path, bytes)
}

/// Takes one dropped or picked file (see `cellbench::web::add_file`).
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn add_file(path: &str, bytes: &[u8]) -> Result<(), JsValue> {
    cellbench::web::add_file(path, bytes).map_err(|e| JsValue::from_str(&e))
}

/// Ends a drop of `count` files; `problems` lists refused files, one per line.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn files_added(count: usize, problems: &str) {
    cellbench::web::files_added(count, problems);
}

/// The notebook as `.cellbook.toml` text, for a download.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn workbook_toml() -> Result<String, JsValue> {
    cellbench::web::workbook_toml()
}

/// Every run of the page as one zip of run folders, for a download.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen]
pub fn runs_zip() -> Result<Vec<u8>, JsValue> {
    cellbench::web::runs_zip()
}
