//! Computing the map: the features of the dataset's images (batches on the desktop, a few
//! milliseconds of one image's pass at a time in the browser), then PCA and the batch-effect
//! check, on the compute worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use eframe::egui;

use crate::explore::embedding::EmbeddingMap;
use crate::model::backend::BackendChoice;
use crate::ui::cells::{Loading, Notebook, Task as BgTask};
use crate::ui::cells::{cell_name, freshness, loaded};

use super::{EmbeddingResult, EmbeddingRuntime, batch_effect_of};

/// Images per compute step on the desktop.
const STEP: usize = 32;

/// The browser's work per step (a piece of an image's network pass at a time), so a frame
/// stays short.
const BROWSER_STEP: std::time::Duration = std::time::Duration::from_millis(30);

/// The features of the map in progress: batches of [`STEP`] images on the desktop, a few
/// milliseconds of one image's pass at a time in the browser.
// One value per map being computed: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Featurizing {
    Batches {
        extractor: crate::model::extractor::Extractor,
        paths: Vec<std::path::PathBuf>,
        rows: Vec<Option<Vec<f32>>>,
        failures: Vec<(std::path::PathBuf, String)>,
        progress: Arc<AtomicUsize>,
    },
    Pieces {
        steps: crate::train::features::FeatureSteps,
        progress: Arc<AtomicUsize>,
    },
}

/// Starts computing the map of the Dataset cell above.
pub(in crate::ui::cells) fn start_embedding(app: &mut Notebook, ctx: &egui::Context, id: u64) {
    let Some(dataset) = app.workbook.inputs(id).dataset else {
        app.rt
            .note(true, "embedding cell: add a Dataset cell above it");
        return;
    };
    if !freshness(app, dataset).is_fresh() {
        let name = cell_name(app, dataset);
        app.rt.note(
            true,
            format!("embedding cell: {name} is not up to date; run it first"),
        );
        return;
    }
    let Some(data) = loaded(app, dataset) else {
        return;
    };
    let manifest = data.manifest.clone();
    let records: Vec<usize> = (0..manifest.records.len())
        .filter(|&i| manifest.records[i].is_usable())
        .collect();
    let paths: Vec<std::path::PathBuf> = records
        .iter()
        .map(|&i| manifest.image_path(&manifest.records[i]))
        .collect();
    let total = paths.len();
    let progress = Arc::new(AtomicUsize::new(0));
    let counter = progress.clone();
    let dataset_generation = app.rt.dataset(dataset).expect("loaded above").generation;
    let generation = app.rt.next_generation();
    let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let task = BgTask::in_steps_on_worker(
        ctx,
        &app.rt.compute,
        move || {
            let compute =
                crate::model::backend::select(BackendChoice::Auto).map_err(|e| format!("{e:#}"))?;
            let extractor = crate::model::extractor::Extractor::bundled(
                crate::model::efficientnet::Backbone::Lite0,
                &compute.device,
            )
            .map_err(|e| format!("{e:#}"))?;
            let cache = crate::train::features::FeatureCache::default_location();
            Ok(if cfg!(target_arch = "wasm32") {
                Featurizing::Pieces {
                    steps: crate::explore::embedding::map_feature_steps(extractor, paths, cache),
                    progress: counter,
                }
            } else {
                Featurizing::Batches {
                    extractor,
                    rows: Vec::with_capacity(paths.len()),
                    paths,
                    failures: Vec::new(),
                    progress: counter,
                }
            })
        },
        move |s| match s {
            Featurizing::Batches {
                extractor,
                paths,
                rows,
                failures,
                progress,
            } => {
                let start = rows.len();
                if start >= paths.len() {
                    return false;
                }
                let end = (start + STEP).min(paths.len());
                let cache = crate::train::features::FeatureCache::default_location();
                let f = crate::explore::embedding::map_features(
                    extractor,
                    &paths[start..end],
                    Some(&cache),
                    STEP,
                    &never,
                );
                rows.extend(f.features);
                failures.extend(f.failures);
                progress.store(end, Ordering::Relaxed);
                end < paths.len()
            }
            Featurizing::Pieces { steps, progress } => {
                let more = steps.step(BROWSER_STEP);
                progress.store(steps.done(), Ordering::Relaxed);
                more
            }
        },
        move |s| {
            let (rows, failures) = match s {
                Featurizing::Batches { rows, failures, .. } => (rows, failures),
                Featurizing::Pieces { steps, .. } => {
                    let f = steps.finish();
                    (f.features, f.failures)
                }
            };
            let (kept, rows) = crate::explore::embedding::read_rows(records, rows);
            if rows.len() < 2 {
                return Err(format!(
                    "fewer than two readable images ({} unreadable): no map to draw",
                    failures.len()
                ));
            }
            let batch_effect = batch_effect_of(&manifest, &kept, &rows);
            Ok(EmbeddingResult {
                manifest,
                map: EmbeddingMap::new(kept, &rows, failures),
                batch_effect,
            })
        },
    );
    app.rt.set_embedding(
        id,
        EmbeddingRuntime::new(
            (dataset, dataset_generation),
            generation,
            Loading::Busy(task),
            progress,
            total,
        ),
    );
}
