//! Running a workbook headless: the same library calls the GUI makes, in cell order.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;

use crate::dataset::Manifest;
use crate::dataset::split::apply_split;
use crate::train::TrainEvent;

use super::{CellKind, Workbook, resolve_path};

/// What the runner tells its caller.
pub enum Output<'a> {
    /// A heading and text to print.
    Text(&'a str, String),
    Table(&'a crate::explore::Table),
    Event(&'a TrainEvent),
}

/// Runs every cell of the workbook at `path` in order and saves the run ids it produced back
/// into the workbook. Stops at the first failing cell.
pub fn run_workbook(
    path: &Path,
    out: &mut dyn FnMut(Output<'_>),
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut book = Workbook::load(path)?;
    let mut runs: HashMap<u64, String> = HashMap::new();
    let result = run_cells(&mut book, path, &mut runs, out, cancel);
    if result.is_err() && !runs.is_empty() {
        // The runs trained before the failing cell stay the workbook's: their ids are saved
        // as a run that finishes saves them, never lost with the error.
        if let Err(e) = book.save(path) {
            crate::errln!("warning: could not save the run ids back: {e:#}");
        }
    }
    result?;
    book.save(path)
}

/// The cells of `book` in order; each Train cell's run id lands in `runs` (and the cell) as
/// soon as it finishes.
fn run_cells(
    book: &mut Workbook,
    path: &Path,
    runs: &mut HashMap<u64, String>,
    out: &mut dyn FnMut(Output<'_>),
    cancel: &Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let base = Workbook::base_dir(path);
    let runs_root = resolve_path(&book.runs, &base);
    // Results by cell id; a cell reads the cells the notebook rules give it (graph.rs).
    let mut manifests: HashMap<u64, Manifest> = HashMap::new();
    for i in 0..book.cells.len() {
        let title = book.cells[i].kind.title();
        let id = book.cells[i].id;
        let inputs = book.inputs(id);
        let ctx = || format!("cell {} ({title})", i + 1);
        let dataset = inputs.dataset.and_then(|d| manifests.get(&d));
        let last_run = inputs.train.and_then(|t| runs.get(&t)).cloned();
        match book.cells[i].kind.clone() {
            CellKind::Note { text } => out(Output::Text(title, text)),
            CellKind::Dataset { path: p, options } => {
                let m = crate::dataset::open(
                    &resolve_path(&p, &base),
                    &super::resolve_options(&options, &base),
                )
                .with_context(ctx)?;
                out(Output::Text(
                    title,
                    format!("{} images from {}", m.records.len(), m.source.display()),
                ));
                manifests.insert(id, m);
            }
            CellKind::Embedding { .. } => {
                let m = dataset.with_context(|| format!("{}: no Dataset cell above", ctx()))?;
                let records: Vec<usize> = (0..m.records.len())
                    .filter(|&i| m.records[i].is_usable())
                    .collect();
                let paths: Vec<std::path::PathBuf> = records
                    .iter()
                    .map(|&i| m.image_path(&m.records[i]))
                    .collect();
                let compute = crate::model::backend::select(Default::default())?;
                let extractor = crate::model::extractor::Extractor::bundled(
                    crate::model::efficientnet::Backbone::Lite0,
                    &compute.device,
                )?;
                let f = crate::explore::embedding::map_features(
                    &extractor,
                    &paths,
                    Some(&crate::train::features::FeatureCache::default_location()),
                    32,
                    cancel,
                );
                let (kept, rows) = crate::explore::embedding::read_rows(records, f.features);
                anyhow::ensure!(
                    rows.len() >= 2,
                    "{}: fewer than two readable images, no map to draw",
                    ctx()
                );
                let map = crate::explore::embedding::EmbeddingMap::new(kept, &rows, f.failures);
                out(Output::Text(
                    title,
                    format!(
                        "{} images mapped; PC 1 explains {:.1}% of the features' variance, PC 2 {:.1}% ({} unreadable)",
                        map.coords.len(),
                        map.explained[0] * 100.0,
                        map.explained[1] * 100.0,
                        map.skipped.len()
                    ),
                ));
            }
            CellKind::Explore {} => {
                let m = dataset.with_context(|| format!("{}: no Dataset cell above", ctx()))?;
                let report = crate::explore::explore(m).with_context(ctx)?;
                for t in report.tables() {
                    out(Output::Table(&t));
                }
            }
            CellKind::Split { config } => {
                let m = dataset.with_context(|| format!("{}: no Dataset cell above", ctx()))?;
                let (s, report) = apply_split(m, &config).with_context(ctx)?;
                out(Output::Table(&crate::explore::table::split_table(&report)));
                // Sides asked for but left empty are said here, not first by a Train cell.
                for warning in report.empty_sides(&config, !m.copies.is_empty()) {
                    out(Output::Text(title, format!("warning: {warning}")));
                }
                report
                    .check_trainable(config.by_image)
                    .map_err(|why| anyhow::anyhow!("{}: {why}", ctx()))?;
                manifests.insert(id, s);
            }
            CellKind::Train { config, folds, .. } => {
                let m = inputs
                    .split
                    .and_then(|s| manifests.get(&s))
                    .or(dataset)
                    .cloned()
                    .with_context(|| format!("{}: no Dataset cell above", ctx()))?;
                let options = match inputs
                    .dataset
                    .and_then(|d| book.position(d))
                    .map(|p| &book.cells[p].kind)
                {
                    Some(CellKind::Dataset { options, .. }) => {
                        super::resolve_options(options, &base)
                    }
                    _ => Default::default(),
                };
                let job = crate::train::engine::TrainJob {
                    config,
                    manifest: m,
                    options,
                    runs_root: runs_root.clone(),
                    resume: None,
                    cache: Some(crate::train::features::FeatureCache::default_location()),
                };
                let outcome = if folds >= 2 {
                    // Cross-validation: the cell's run is the last fold's; the table is all
                    // folds'.
                    let cv = crate::train::cv::cross_validate(
                        job,
                        folds as usize,
                        &mut |e| out(Output::Event(e)),
                        cancel,
                    )
                    .with_context(ctx)?;
                    let summary = cv.summary.with_context(|| {
                        format!(
                            "{}: cross-validation stopped after {} of {folds} folds",
                            ctx(),
                            cv.outcomes.len()
                        )
                    })?;
                    out(Output::Table(&crate::train::report::cv_table(&summary)));
                    cv.outcomes.into_iter().last().with_context(ctx)?
                } else {
                    crate::train::engine::train(job, &mut |e| out(Output::Event(e)), cancel)
                        .with_context(ctx)?
                };
                if let CellKind::Train { run, .. } = &mut book.cells[i].kind {
                    *run = Some(outcome.run_id.clone());
                }
                runs.insert(id, outcome.run_id);
            }
            CellKind::Evaluate { run } => {
                let id = run
                    .or_else(|| last_run.clone())
                    .with_context(|| format!("{}: no run to evaluate", ctx()))?;
                let ev = crate::runs::view::load_evaluation(&runs_root, &id).with_context(ctx)?;
                for t in
                    crate::train::report::metrics_tables(&format!("{id} (validation)"), &ev.metrics)
                {
                    out(Output::Table(&t));
                }
            }
            CellKind::Compare { runs } => {
                let mut t = crate::explore::Table::new(
                    "Compare",
                    &[
                        "run",
                        "accuracy",
                        "balanced accuracy",
                        "macro F1",
                        "macro AUC",
                    ],
                );
                for r in runs {
                    let s = crate::runs::view::load_summary(&runs_root, &r).with_context(ctx)?;
                    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.4}"));
                    t.row(vec![
                        r,
                        f(s.val.as_ref().map(|m| m.accuracy)),
                        f(s.val.as_ref().map(|m| m.balanced_accuracy)),
                        f(s.val.as_ref().map(|m| m.macro_f1)),
                        f(s.val.as_ref().and_then(|m| m.macro_auc)),
                    ]);
                }
                out(Output::Table(&t));
            }
            CellKind::Cluster { job, .. } => {
                out(Output::Text(
                    title,
                    job.map_or_else(
                        || "not submitted (cluster jobs are submitted from the workbench or `cellbench cluster submit`)".into(),
                        |j| format!("job {j} (follow it with `cellbench cluster follow {j}`)"),
                    ),
                ));
            }
            CellKind::Predict {
                run,
                input,
                output,
                tta,
            } => {
                let id = run
                    .or_else(|| last_run.clone())
                    .with_context(|| format!("{}: no run to predict with", ctx()))?;
                let compute = crate::model::backend::select(Default::default())?;
                let classifier =
                    crate::infer::Classifier::load(&runs_root.join(&id), &compute.device)
                        .with_context(ctx)?
                        .with_orientation_tta(tta);
                let (paths, left_out) =
                    crate::infer::collect_inputs_noting(&resolve_path(&input, &base))
                        .with_context(ctx)?;
                let out_path = resolve_path(&output, &base);
                let s = crate::infer::predict_to_csv(
                    &classifier,
                    &paths,
                    &out_path,
                    32,
                    &mut |_, _| {},
                )
                .with_context(ctx)?;
                // What was not predicted is named, never dropped without a word.
                let mut text = format!(
                    "{} predictions written to {}",
                    s.predicted,
                    out_path.display()
                );
                let skipped: Vec<String> = left_out
                    .iter()
                    .map(|(p, why)| format!("{p} ({why})"))
                    .chain(
                        s.failed
                            .iter()
                            .map(|(p, why)| format!("{p} (unreadable: {why})")),
                    )
                    .collect();
                if !skipped.is_empty() {
                    text.push_str(&format!("; {} not predicted:", skipped.len()));
                    for line in skipped.iter().take(20) {
                        text.push_str(&format!("\n  {line}"));
                    }
                    if skipped.len() > 20 {
                        text.push_str(&format!("\n  and {} more", skipped.len() - 20));
                    }
                }
                out(Output::Text(title, text));
            }
        }
    }
    Ok(())
}
