//! The workbench in the browser: starts [`WorkbenchApp`](crate::ui::WorkbenchApp) on a canvas.
//! Everything the page shows is the same code as the desktop window; what differs lives behind
//! `cfg(target_arch = "wasm32")` in the modules that need it (files, threads, dialogs).
//!
//! The page (`wasm/index.html`) fetches the bundled assets (weights, demo images) and the
//! files a user drops, and hands them to [`mount_file`]; they live in the in-memory file
//! system ([`crate::fs::memory`]) and never leave the machine.

use std::sync::Mutex;

use wasm_bindgen::JsValue;

use crate::ui::cells::NotebookStatus;

/// The page's egui context: a request from the page (dropped files) wakes the app with it,
/// since an idle page draws no frames.
static CONTEXT: std::sync::OnceLock<eframe::egui::Context> = std::sync::OnceLock::new();

/// Starts the workbench on the canvas `canvas_id`.
pub async fn start(canvas_id: &str) -> Result<(), JsValue> {
    eframe::WebLogger::init(log::LevelFilter::Info).ok();
    restore_workbook();
    let compute = url_param("compute").unwrap_or_default();
    let preference = crate::model::gpu::browser::Preference::parse(&compute).unwrap_or_else(|| {
        if !compute.is_empty() {
            log::warn!("?compute={compute}: use auto, webgpu or cpu");
        }
        crate::model::gpu::browser::Preference::Auto
    });
    crate::model::gpu::browser::start(preference);
    // The network's weights are folded once, while the page still says "Starting…", instead
    // of inside the first compute step (a long frame).
    if let Err(e) = crate::model::extractor::Extractor::bundled(
        Default::default(),
        &burn::tensor::Device::flex(),
    ) {
        log::warn!("the feature network is not ready: {e:#}");
    }
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| JsValue::from_str("no document"))?;
    let canvas = document
        .get_element_by_id(canvas_id)
        .ok_or_else(|| JsValue::from_str(&format!("no element #{canvas_id}")))?;
    let canvas: web_sys::HtmlCanvasElement = wasm_bindgen::JsCast::dyn_into(canvas)
        .map_err(|_| JsValue::from_str(&format!("#{canvas_id} is not a canvas")))?;
    eframe::WebRunner::new()
        .start(
            canvas,
            eframe::WebOptions::default(),
            Box::new(|cc| {
                CONTEXT.set(cc.egui_ctx.clone()).ok();
                Ok(Box::new(crate::ui::WorkbenchApp::new(cc, None, None)))
            }),
        )
        .await
}

/// Puts a file into the page's in-memory file system (e.g. `/assets/demo/bccd/…`, or
/// `/dropped/<folder>/…` for files the user dropped).
pub fn mount_file(path: &str, bytes: &[u8]) -> Result<(), JsValue> {
    crate::fs::memory::write(path, bytes).map_err(|e| JsValue::from_str(&format!("{e}")))
}

/// A parameter of the page's address (`?run=all`).
pub fn url_param(name: &str) -> Option<String> {
    let search = web_sys::window()?.location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search)
        .ok()?
        .get(name)
}

/// Publishes the notebook's state as JSON in `window.cellbenchStatus` when it changes, for
/// scripts that drive the page (the end-to-end test).
pub fn publish_status(status: &NotebookStatus) {
    static LAST: Mutex<Option<String>> = Mutex::new(None);
    let Ok(json) = serde_json::to_string(status) else {
        return;
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.as_deref() == Some(json.as_str()) {
        return;
    }
    if let Some(window) = web_sys::window() {
        js_sys::Reflect::set(
            &window,
            &JsValue::from_str("cellbenchStatus"),
            &JsValue::from_str(&json),
        )
        .ok();
        log::info!("cellbench status: {json}");
    }
    *last = Some(json);
}

/// What the page asks of the workbench; the app takes these in once per frame.
#[derive(Clone, Debug, PartialEq)]
pub enum PageRequest {
    /// Open this folder of dropped images in the Dataset cell.
    OpenDataset(std::path::PathBuf),
    /// Dropped files holding run folders (unpacked from a `.zip`, or a dropped folder), to
    /// move into the notebook's runs folder.
    ImportRuns(std::path::PathBuf),
    /// A dropped `.cellbook.toml`, to open as the notebook.
    OpenWorkbook(std::path::PathBuf),
    /// A message for the log (`true`: an error, also shown as a notification).
    Note(bool, String),
}

static REQUESTS: Mutex<Vec<PageRequest>> = Mutex::new(Vec::new());
/// Dataset folders and run folders of the files added since the last [`files_added`].
static ADDED: Mutex<Vec<Added>> = Mutex::new(Vec::new());

#[derive(Clone, Debug, PartialEq)]
enum Added {
    /// A folder of dropped files (a dataset, or run folders).
    Folder(std::path::PathBuf),
    Workbook(std::path::PathBuf),
}

/// Requests queued by the page since the last call.
pub fn take_requests() -> Vec<PageRequest> {
    std::mem::take(&mut *REQUESTS.lock().unwrap_or_else(|e| e.into_inner()))
}

fn request(r: PageRequest) {
    REQUESTS.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    if let Some(ctx) = CONTEXT.get() {
        ctx.request_repaint();
    }
}

/// Where the page keeps its notebook (and, beside it, `runs/`).
pub const WORKBOOK: &str = "/cellbench/notebook.cellbook.toml";
/// Where dropped files go.
pub const DROPPED: &str = "/dropped";

/// Takes one dropped or picked file. `path` is relative (`folder/sub/x.bmp` keeps its
/// folders; a lone `x.bmp` goes to `files/`). A `.zip` is unpacked: run folders in it become
/// runs of the notebook, anything else a dataset folder. A `.cellbook.toml` is a notebook.
pub fn add_file(path: &str, bytes: &[u8]) -> Result<(), String> {
    use std::path::{Component, Path, PathBuf};
    let rel: PathBuf = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{path}: not a file name"))?;
    let lower = name.to_ascii_lowercase();
    let mut added = ADDED.lock().unwrap_or_else(|e| e.into_inner());
    if lower.ends_with(".cellbook.toml") {
        let to = Path::new(DROPPED).join(&name);
        crate::fs::memory::write(&to, bytes).map_err(|e| e.to_string())?;
        added.push(Added::Workbook(to));
        return Ok(());
    }
    if lower.ends_with(".zip") {
        let stem = name[..name.len() - 4].to_owned();
        let root = Path::new(DROPPED).join(&stem);
        crate::runs::archive::unpack_zip(bytes, &root).map_err(|e| format!("{path}: {e:#}"))?;
        added.push(Added::Folder(root));
        return Ok(());
    }
    let (root, to) = if rel.components().count() > 1 {
        let first = rel.iter().next().map(PathBuf::from).unwrap_or_default();
        (
            Path::new(DROPPED).join(first),
            Path::new(DROPPED).join(&rel),
        )
    } else {
        let root = Path::new(DROPPED).join("files");
        (root.clone(), root.join(&rel))
    };
    crate::fs::memory::write(&to, bytes).map_err(|e| e.to_string())?;
    if !added.contains(&Added::Folder(root.clone())) {
        added.push(Added::Folder(root));
    }
    Ok(())
}

/// A folder holding exactly one folder and no files stands for that folder (a zip of
/// `bccd/` unpacks to `bccd/bccd/…`).
fn single_folder(root: &std::path::Path) -> std::path::PathBuf {
    let entries: Vec<_> = crate::fs::memory::read_dir(root)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    match entries.as_slice() {
        [only] if only.file_type().is_ok_and(|t| t.is_dir()) => single_folder(&only.path()),
        _ => root.to_owned(),
    }
}

/// Ends a drop: opens what was added (the last dataset folder, every run) and reports the
/// files that were refused.
pub fn files_added(count: usize, problems: &str) {
    let added = std::mem::take(&mut *ADDED.lock().unwrap_or_else(|e| e.into_inner()));
    for line in problems.lines().filter(|l| !l.is_empty()) {
        request(PageRequest::Note(true, line.to_owned()));
    }
    let mut dataset = None;
    for a in added {
        match a {
            Added::Folder(d) if !crate::runs::archive::run_folders_below(&d).is_empty() => {
                request(PageRequest::ImportRuns(d));
            }
            Added::Folder(d) => dataset = Some(single_folder(&d)),
            Added::Workbook(w) => request(PageRequest::OpenWorkbook(w)),
        }
    }
    if let Some(d) = dataset {
        request(PageRequest::Note(
            false,
            format!(
                "{count} files added in the page's memory under {}",
                d.display()
            ),
        ));
        request(PageRequest::OpenDataset(d));
    }
}

/// The notebook as saved (`.cellbook.toml` text).
pub fn workbook_toml() -> Result<String, JsValue> {
    crate::fs::memory::read_to_string(WORKBOOK)
        .map_err(|_| JsValue::from_str("the notebook has not been saved yet"))
}

static RUNS_DIR: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// The notebook's runs folder, as the app resolves it (told once per frame).
pub fn set_runs_dir(dir: std::path::PathBuf) {
    *RUNS_DIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir);
}

/// Every run of the page as one zip of run folders (`runs/<id>/…`).
pub fn runs_zip() -> Result<Vec<u8>, JsValue> {
    let runs = RUNS_DIR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| JsValue::from_str("the notebook is not open yet"))?;
    crate::runs::archive::zip_runs(&runs).map_err(|e| JsValue::from_str(&format!("{e:#}")))
}

const STORAGE_KEY: &str = "cellbench-notebook";

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

/// Puts the notebook kept in the browser's storage back in place (before the app starts).
pub fn restore_workbook() {
    if let Some(text) = local_storage().and_then(|s| s.get_item(STORAGE_KEY).ok().flatten()) {
        crate::fs::memory::write(WORKBOOK, text.as_bytes()).ok();
    }
}

/// Keeps the saved notebook in the browser's storage (checked once per frame; written when
/// the file changed).
pub fn persist_workbook() {
    static LAST: Mutex<Option<web_time::SystemTime>> = Mutex::new(None);
    let Ok(modified) = crate::fs::memory::metadata(WORKBOOK).and_then(|m| m.modified()) else {
        return;
    };
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if *last == Some(modified) {
        return;
    }
    if let (Some(storage), Ok(text)) =
        (local_storage(), crate::fs::memory::read_to_string(WORKBOOK))
    {
        storage.set_item(STORAGE_KEY, &text).ok();
    }
    *last = Some(modified);
}
