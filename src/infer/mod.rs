//! Using a trained model: loading a run, batch prediction to CSV, and the HTTP endpoint.

pub mod evaluate;
#[cfg(not(target_arch = "wasm32"))]
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
    collect_inputs_noting(input).map(|(paths, _)| paths)
}

/// Files of a folder that could not be taken as inputs: `(path, why)`.
pub type LeftOut = Vec<(String, String)>;

/// As [`collect_inputs`], with the files of a folder that could not be listed as inputs (a
/// name that is not valid UTF-8, a path the walk could not enter): `(path, why)`.
pub fn collect_inputs_noting(input: &Path) -> anyhow::Result<(Vec<PathBuf>, LeftOut)> {
    use crate::dataset::problem::ProblemKind;
    if crate::fs::is_dir(input) {
        let walk = crate::dataset::scan::walk_images(input);
        let left_out = walk
            .problems
            .into_iter()
            .filter(|p| matches!(p.kind, ProblemKind::NonUtf8Name | ProblemKind::WalkError))
            .map(|p| (p.path, format!("{}: {}", p.kind.description(), p.detail)))
            .collect();
        let paths = walk.images.into_iter().map(|f| input.join(f.rel)).collect();
        return Ok((paths, left_out));
    }
    collect_one(input).map(|paths| (paths, Vec::new()))
}

fn collect_one(input: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let ext = input.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("csv") {
        let m = crate::dataset::open(input, &Default::default())?;
        return Ok(m.records.iter().map(|r| m.image_path(r)).collect());
    }
    anyhow::ensure!(
        crate::fs::exists(input),
        "no such file or folder: {}",
        input.display()
    );
    Ok(vec![input.to_owned()])
}

/// Batch prediction in steps: [`BatchPrediction::step`] predicts the next `batch_size` images,
/// [`BatchPrediction::finish`] writes the CSV. [`predict_to_csv`] runs it to the end; the
/// browser runs one step per frame.
pub struct BatchPrediction {
    paths: Vec<PathBuf>,
    batch_size: usize,
    next: usize,
    text: String,
    summary: PredictSummary,
}

impl BatchPrediction {
    /// A prediction of `paths` by `classifier` (pass the same one to every step).
    pub fn new(classifier: &Classifier, paths: Vec<PathBuf>, batch_size: usize) -> Self {
        let mut text = String::from("path,predicted");
        for l in &classifier.info.labels {
            text.push_str(&format!(",{}", csv_field(&format!("p_{l}"))));
        }
        text.push('\n');
        Self {
            paths,
            batch_size: batch_size.max(1),
            next: 0,
            text,
            summary: PredictSummary {
                images: 0,
                predicted: 0,
                failed: Vec::new(),
                rows: Vec::new(),
            },
        }
    }

    /// Images done so far.
    pub fn done(&self) -> usize {
        self.next
    }

    /// Images in all.
    pub fn total(&self) -> usize {
        self.paths.len()
    }

    /// Predicts the next batch; returns whether images are left.
    pub fn step(&mut self, classifier: &Classifier) -> bool {
        use rayon::prelude::*;
        let end = (self.next + self.batch_size).min(self.paths.len());
        let chunk = &self.paths[self.next..end];
        self.next = end;
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
                Err(e) => self.summary.failed.push((p.display().to_string(), e)),
            }
        }
        let probs = classifier.probabilities(flat, ok_paths.len());
        for (p, pr) in ok_paths.iter().zip(&probs) {
            let label = classifier.predicted(pr);
            self.text.push_str(&format!(
                "{},{}",
                csv_field(&p.display().to_string()),
                csv_field(&label)
            ));
            self.summary.rows.push(((*p).clone(), label, pr.clone()));
            for v in pr {
                self.text.push_str(&format!(",{v:.6}"));
            }
            self.text.push('\n');
            self.summary.predicted += 1;
        }
        self.next < self.paths.len()
    }

    /// Writes the CSV to `out`.
    pub fn finish(mut self, out: &Path) -> anyhow::Result<PredictSummary> {
        crate::fsio::write_atomic_bytes(out, self.text.as_bytes())?;
        self.summary.images = self.paths.len();
        Ok(self.summary)
    }
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
    let mut prediction = BatchPrediction::new(classifier, paths.to_vec(), batch_size);
    if !paths.is_empty() {
        loop {
            let more = prediction.step(classifier);
            progress(prediction.done(), paths.len());
            if !more {
                break;
            }
        }
    }
    prediction.finish(out)
}
