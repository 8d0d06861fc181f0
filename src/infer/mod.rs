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

/// As [`collect_inputs`], with what could not be taken as an input and why: files of a folder
/// that could not be listed (a name that is not valid UTF-8, a path the walk could not enter),
/// rows of a manifest CSV whose image is missing, empty or ambiguous.
pub fn collect_inputs_noting(input: &Path) -> anyhow::Result<(Vec<PathBuf>, LeftOut)> {
    gather_inputs(input, None).map(|i| (i.paths, i.left_out))
}

/// The images a prediction reads, with what was left out.
#[derive(Debug, Default)]
pub struct Inputs {
    pub paths: Vec<PathBuf>,
    /// `(path, why)` of each file or manifest row not taken.
    pub left_out: LeftOut,
    /// What else opening a manifest found (duplicate rows, unused columns…), said once.
    pub notes: Vec<String>,
}

/// The images of `input`: one image, a folder (recursively) or a manifest CSV, whose ids are
/// resolved as `train` resolves them (ids without an extension, zero-padded numbers,
/// `image_pattern`); rows whose image is missing, empty or matches several files are left out
/// with the reason, never predicted as if they were there.
pub fn gather_inputs(input: &Path, image_pattern: Option<String>) -> anyhow::Result<Inputs> {
    use crate::dataset::problem::ProblemKind;
    let is_csv = input
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    anyhow::ensure!(
        is_csv || image_pattern.is_none(),
        "an image pattern names the images of a manifest CSV; {} is not one",
        input.display()
    );
    if is_csv {
        anyhow::ensure!(
            crate::fs::exists(input),
            "no such file or folder: {}",
            input.display()
        );
        // Images to predict need no labels: a CSV of paths alone is read.
        let manifest = crate::dataset::csv_manifest::read_csv_images(
            input,
            &crate::dataset::OpenOptions {
                image_pattern,
                ..Default::default()
            },
        )?;
        let mut inputs = Inputs::default();
        for record in &manifest.records {
            match &record.problem {
                Some(why) => inputs.left_out.push((record.path.clone(), why.clone())),
                None => inputs.paths.push(manifest.image_path(record)),
            }
        }
        // The rows left out above carry their own reason; the rest is said once.
        inputs.notes = manifest
            .problems
            .iter()
            .filter(|p| {
                !matches!(
                    p.kind,
                    ProblemKind::AmbiguousId | ProblemKind::MissingImage | ProblemKind::EmptyFile
                )
            })
            .map(|p| format!("{}: {}: {}", p.kind.description(), p.detail, p.path))
            .collect();
        return Ok(inputs);
    }
    if crate::fs::is_dir(input) {
        let walk = crate::dataset::scan::walk_images(input);
        let left_out = walk
            .problems
            .into_iter()
            .filter(|p| matches!(p.kind, ProblemKind::NonUtf8Name | ProblemKind::WalkError))
            .map(|p| (p.path, format!("{}: {}", p.kind.description(), p.detail)))
            .collect();
        let paths = walk.images.into_iter().map(|f| input.join(f.rel)).collect();
        return Ok(Inputs {
            paths,
            left_out,
            notes: Vec::new(),
        });
    }
    anyhow::ensure!(
        crate::fs::exists(input),
        "no such file or folder: {}",
        input.display()
    );
    Ok(Inputs {
        paths: vec![input.to_owned()],
        ..Default::default()
    })
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
