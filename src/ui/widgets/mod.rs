//! Reusable widgets: the thumbnail gallery, tables, the confusion heatmap, plots, and the file
//! dialogs. Widgets know nothing of cells.

mod gallery;
mod heatmap;
mod plots;
mod table;

pub use gallery::*;
pub use heatmap::*;
pub use plots::*;
pub use table::*;

/// What a file dialog gave.
pub enum Picked {
    Path(std::path::PathBuf),
    /// The user closed the dialog.
    Cancelled,
    /// No dialog could be shown (no desktop portal or zenity on this system).
    Unavailable,
}

/// File dialogs and exports into folders exist on the desktop; the browser takes dropped files
/// and offers downloads instead.
pub const DESKTOP: bool = cfg!(not(target_arch = "wasm32"));

/// A folder chosen in the system's file dialog (always `None` in the browser).
pub fn folder_dialog() -> Option<std::path::PathBuf> {
    #[cfg(not(target_arch = "wasm32"))]
    let picked = rfd::FileDialog::new().pick_folder();
    #[cfg(target_arch = "wasm32")]
    let picked = None;
    picked
}

/// A CSV file chosen in the system's file dialog (always `None` in the browser).
pub fn csv_dialog() -> Option<std::path::PathBuf> {
    #[cfg(not(target_arch = "wasm32"))]
    let picked = rfd::FileDialog::new()
        .add_filter("CSV", &["csv"])
        .pick_file();
    #[cfg(target_arch = "wasm32")]
    let picked = None;
    picked
}

/// Runs a file dialog. rfd answers "nothing chosen" both when the user cancels and when no
/// dialog can be shown at all; a dialog that closes at once was never shown.
pub fn pick(dialog: impl FnOnce() -> Option<std::path::PathBuf>) -> Picked {
    let started = web_time::Instant::now();
    match dialog() {
        Some(p) => Picked::Path(p),
        None if started.elapsed() < std::time::Duration::from_millis(300) => Picked::Unavailable,
        None => Picked::Cancelled,
    }
}

/// What to tell the user when no file dialog can be shown.
pub const NO_DIALOG: &str = "No file dialog is available on this system (no desktop portal or zenity): type or paste the path into the cell's path field and press Enter, or drop the folder or CSV on the window.";
