//! The workbench window. It calls the library on background threads and draws the plain
//! results; it never touches polars frames or tensors.

#[cfg(not(target_arch = "wasm32"))]
mod app;

#[cfg(not(target_arch = "wasm32"))]
pub use app::WorkbenchApp;

/// Opens the workbench window on `dataset` (default: the bundled demo dataset).
#[cfg(not(target_arch = "wasm32"))]
pub fn run_native(dataset: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let options = eframe::NativeOptions {
        renderer: eframe::Renderer::Wgpu,
        viewport: eframe::egui::ViewportBuilder::default()
            .with_title("cellbench")
            .with_inner_size([1180.0, 780.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let dataset = dataset.unwrap_or_else(crate::demo_dataset);
    eframe::run_native(
        "cellbench",
        options,
        Box::new(move |cc| Ok(Box::new(WorkbenchApp::new(cc, dataset)))),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}
