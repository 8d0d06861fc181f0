//! Using a trained model: loading a run, batch prediction to CSV, and the HTTP endpoint.

pub mod evaluate;
pub mod serve;

use std::path::{Path, PathBuf};

use crate::fsio::csv_field;
pub use crate::model::Classifier;

/// Outcome of a batch prediction.
#[derive(Debug, serde::Serialize)]
pub struct PredictSummary {
    pub images: usize,
    pub predicted: usize,
    pub failed: Vec<(String, String)>,
    /// Every prediction: the image, its label(s) and probabilities (in the model's label order).
    #[serde(skip)]
    pub rows: Vec<(PathBuf, String, Vec<f32>)>,
}

/// Collects image files: a single image, a folder (recursively) or a dataset manifest CSV.
pub fn collect_inputs(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if input.is_dir() {
        let walk = crate::dataset::scan::walk_images(input);
        return Ok(walk.images.into_iter().map(|f| input.join(f.rel)).collect());
    }
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("csv") {
        let m = crate::dataset::open(input, &Default::default())?;
        return Ok(m.records.iter().map(|r| m.image_path(r)).collect());
    }
    anyhow::ensure!(
        input.exists(),
        "no such file or folder: {}",
        input.display()
    );
    Ok(vec![input.to_owned()])
}

/// Predicts every image and writes `path,predicted,p_<label>…` to `out` (atomically).
/// Unreadable images are listed in the summary and skipped.
pub fn predict_to_csv(
    classifier: &Classifier,
    paths: &[PathBuf],
    out: &Path,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> anyhow::Result<PredictSummary> {
    use rayon::prelude::*;
    let mut text = String::from("path,predicted");
    for l in &classifier.info.labels {
        text.push_str(&format!(",{}", csv_field(&format!("p_{l}"))));
    }
    text.push('\n');
    let mut summary = PredictSummary {
        images: paths.len(),
        predicted: 0,
        failed: Vec::new(),
        rows: Vec::new(),
    };
    for (b, chunk) in paths.chunks(batch_size.max(1)).enumerate() {
        let loaded: Vec<Result<Vec<f32>, String>> = chunk
            .par_iter()
            .map(|p| {
                classifier
                    .info
                    .preprocess
                    .load(p)
                    .map_err(|e| e.to_string())
            })
            .collect();
        let mut ok_paths = Vec::new();
        let mut flat = Vec::new();
        for (p, r) in chunk.iter().zip(loaded) {
            match r {
                Ok(chw) => {
                    ok_paths.push(p);
                    flat.extend(chw);
                }
                Err(e) => summary.failed.push((p.display().to_string(), e)),
            }
        }
        let probs = classifier.probabilities(flat, ok_paths.len());
        for (p, pr) in ok_paths.iter().zip(&probs) {
            let label = classifier.predicted(pr);
            text.push_str(&format!(
                "{},{}",
                csv_field(&p.display().to_string()),
                csv_field(&label)
            ));
            summary.rows.push(((*p).clone(), label, pr.clone()));
            for v in pr {
                text.push_str(&format!(",{v:.6}"));
            }
            text.push('\n');
            summary.predicted += 1;
        }
        progress(((b + 1) * batch_size).min(paths.len()), paths.len());
    }
    crate::fsio::write_atomic_bytes(out, text.as_bytes())?;
    Ok(summary)
}
