//! Feature export: the backbone features of a dataset as a CSV, for checking cellbench's probe
//! against other tools on exactly the same features.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context as _;

use crate::dataset::split::assign_folds;
use crate::fsio::csv_field;
use crate::model::backend;
use crate::model::extractor::Extractor;

use super::data::prepare;
use super::engine::TrainJob;
use super::features::featurize;

/// Writes `path,label,patient,fold,f0…` rows (raw, unstandardised features; `fold` is the
/// cross-validation fold `cellbench train --folds <folds>` would give the image, empty
/// without `folds`) for every usable image of `job`'s dataset, through the feature cache.
/// Returns the rows written; unreadable images are left out.
pub fn export_features(job: &TrainJob, folds: Option<usize>, out: &Path) -> anyhow::Result<usize> {
    let config = &job.config;
    let data = prepare(&job.manifest, config)?;
    let fold_of: Vec<Option<usize>> = match folds {
        Some(k) => assign_folds(&job.manifest.records, &job.manifest.copies, k, config.seed)?
            .into_iter()
            .zip(&job.manifest.records)
            .filter(|(_, r)| r.is_usable())
            .map(|(f, _)| f)
            .collect(),
        None => vec![None; data.items.len()],
    };
    let compute = backend::select(config.backend)?;
    let extractor = Extractor::bundled(config.backbone, &compute.device)?;
    let paths: Vec<_> = data.items.iter().map(|i| i.path.clone()).collect();
    let f = featurize(
        &extractor,
        config.feature_kind(),
        &config.preprocess,
        &paths,
        job.cache.as_ref(),
        config.batch_size.clamp(8, 64),
        &mut |_, _| {},
        &AtomicBool::new(false),
    );
    let file =
        crate::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let d = f
        .features
        .iter()
        .flatten()
        .map(Vec::len)
        .next()
        .unwrap_or(0);
    write!(w, "path,label,patient,fold")?;
    for j in 0..d {
        write!(w, ",f{j}")?;
    }
    writeln!(w)?;
    let mut rows = 0;
    for ((item, feats), fold) in data.items.iter().zip(&f.features).zip(&fold_of) {
        let Some(feats) = feats else { continue };
        let label = data.label_string(item);
        write!(
            w,
            "{},{},{},{}",
            csv_field(&item.name),
            csv_field(&label),
            csv_field(item.patient.as_deref().unwrap_or("")),
            fold.map_or_else(String::new, |f| f.to_string())
        )?;
        for v in feats {
            write!(w, ",{v}")?;
        }
        writeln!(w)?;
        rows += 1;
    }
    w.flush()?;
    Ok(rows)
}
