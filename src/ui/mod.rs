//! The workbench window: a notebook of cells. It calls the library on background threads and
//! draws the plain results; it never touches polars frames or tensors.

pub mod app;
pub mod cells;
pub mod compute;
pub mod points;
pub mod thumbs;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod widgets;

pub use app::{AppState, WorkbenchApp};

/// Opens the workbench window on a workbook (default: the last one, or a demo workbook on
/// the bundled dataset) and optionally a dataset to open in it.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_native(
    workbook: Option<std::path::PathBuf>,
    dataset: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // `CELLBENCH_WINDOW=1280x3600` sets the window size (screenshots of the whole notebook).
    let size = std::env::var("CELLBENCH_WINDOW")
        .ok()
        .and_then(|s| {
            s.split_once('x')
                .and_then(|(w, h)| Some([w.parse().ok()?, h.parse().ok()?]))
        })
        .unwrap_or([1280.0, 900.0]);
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("cellbench")
            .with_inner_size(size)
            .with_drag_and_drop(true),
        persist_window: std::env::var_os("CELLBENCH_WINDOW").is_none(),
        ..Default::default()
    };
    eframe::run_native(
        "cellbench",
        options,
        Box::new(move |cc| Ok(Box::new(WorkbenchApp::new(cc, workbook, dataset)))),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}
