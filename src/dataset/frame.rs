//! The manifest as polars frames, and the manifest CSV that cellbench reads and writes.

use std::path::Path;

use polars::prelude::*;

use super::{Manifest, Record};

/// One row per image: `path, label, patient, image_no, cell_no, split, bytes, width, height,
/// format, problem` (labels joined with `|`).
pub fn images_frame(records: &[Record]) -> PolarsResult<DataFrame> {
    let col_str = |name: &str, f: &dyn Fn(&Record) -> Option<String>| {
        Column::new(
            name.into(),
            records.iter().map(f).collect::<Vec<Option<String>>>(),
        )
    };
    let col_u32 = |name: &str, f: &dyn Fn(&Record) -> Option<u32>| {
        Column::new(
            name.into(),
            records.iter().map(f).collect::<Vec<Option<u32>>>(),
        )
    };
    DataFrame::new(
        records.len(),
        vec![
            col_str("path", &|r| Some(r.path.clone())),
            col_str("label", &|r| Some(r.label_string())),
            col_str("patient", &|r| r.patient.clone()),
            col_u32("image_no", &|r| r.image_no),
            col_u32("cell_no", &|r| r.cell_no),
            col_str("split", &|r| r.split.map(|s| s.name().to_owned())),
            Column::new(
                "bytes".into(),
                records
                    .iter()
                    .map(|r| r.bytes)
                    .collect::<Vec<Option<u64>>>(),
            ),
            col_u32("width", &|r| r.width),
            col_u32("height", &|r| r.height),
            col_str("format", &|r| r.format.clone()),
            col_str("problem", &|r| r.problem.clone()),
        ],
    )
}

/// One row per (image, label): `image, label, patient, cell_no, split, usable`. For
/// single-label data this is one row per image.
pub fn labels_frame(records: &[Record]) -> PolarsResult<DataFrame> {
    let n: usize = records.iter().map(|r| r.labels.len()).sum();
    let mut image = Vec::with_capacity(n);
    let mut label = Vec::with_capacity(n);
    let mut patient = Vec::with_capacity(n);
    let mut cell = Vec::with_capacity(n);
    let mut split = Vec::with_capacity(n);
    for (i, r) in records.iter().enumerate() {
        for l in &r.labels {
            image.push(i as u32);
            label.push(l.as_str());
            patient.push(r.patient.as_deref());
            cell.push(r.cell_no);
            split.push(r.split.map(|s| s.name()));
        }
    }
    DataFrame::new(
        n,
        vec![
            Column::new("image".into(), image),
            Column::new("label".into(), label),
            Column::new("patient".into(), patient),
            Column::new("cell_no".into(), cell),
            Column::new("split".into(), split),
        ],
    )
}

/// Writes the manifest as CSV (atomically). Paths are written relative to the CSV's folder
/// when the images lie under it, else absolute, so the file can be read back from anywhere.
pub fn write_manifest_csv(manifest: &Manifest, out: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let root = std::path::absolute(&manifest.root).unwrap_or_else(|_| manifest.root.clone());
    let out_dir_abs = std::path::absolute(out_dir).unwrap_or_else(|_| out_dir.to_owned());
    let prefix = match super::relative_path(&root, &out_dir_abs) {
        Some(rel) if rel.is_empty() => String::new(),
        Some(rel) => format!("{rel}/"),
        None => format!("{}/", root.display()),
    };
    let records: Vec<Record> = manifest
        .records
        .iter()
        .map(|r| Record {
            path: format!("{prefix}{}", r.path),
            ..r.clone()
        })
        .collect();
    let mut df = images_frame(&records)?;
    crate::fsio::write_atomic(out, |w| {
        CsvWriter::new(w)
            .include_header(true)
            .finish(&mut df)
            .map_err(std::io::Error::other)
    })
    .with_context(|| format!("writing {}", out.display()))
}
