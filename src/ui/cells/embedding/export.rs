//! The map exported as shown: PNG and SVG with the legend, and every point as CSV.

use super::{Colored, EmbeddingResult};

/// Writes the map as shown (points coloured as in the cell, with the legend) to
/// `embedding.png` and `embedding.svg` in `dir`, and every point to `embedding.csv`
/// (coordinates, colour category, image, label, patient, split).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn export_map(
    dir: &std::path::Path,
    result: &EmbeddingResult,
    colored: &Colored,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use crate::fsio::csv_field;
    let map = &result.map;
    let points: Vec<(f32, f32, usize)> = map
        .coords
        .iter()
        .zip(colored.category.iter())
        .map(|(c, &k)| (c[0], c[1], k))
        .collect();
    let categories: Vec<(String, [u8; 3])> = colored
        .legend
        .iter()
        .map(|(name, c, _)| (name.clone(), [c.r(), c.g(), c.b()]))
        .collect();
    let title = format!(
        "{} images: PCA of EfficientNet-Lite0 features, coloured by {}",
        map.records.len(),
        colored.by.name()
    );
    let axes = (
        format!("PC 1 ({:.1}% of variance)", map.explained[0] * 100.0),
        format!("PC 2 ({:.1}% of variance)", map.explained[1] * 100.0),
    );
    let scatter = crate::explore::charts::Scatter {
        title: &title,
        axes: (&axes.0, &axes.1),
        points: &points,
        categories: &categories,
    };
    crate::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for ext in ["png", "svg"] {
        let path = dir.join(format!("embedding.{ext}"));
        scatter.write(&path)?;
        written.push(path);
    }
    let mut csv = format!("pc1,pc2,{},path,label,patient,split\n", colored.by.name());
    let records = &result.manifest.records;
    for ((c, &k), &i) in map
        .coords
        .iter()
        .zip(colored.category.iter())
        .zip(&map.records)
    {
        let r = &records[i];
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            c[0],
            c[1],
            csv_field(&colored.legend[k].0),
            csv_field(&r.path),
            csv_field(&r.label_string()),
            csv_field(r.patient.as_deref().unwrap_or("")),
            r.split.map_or("", |s| s.name())
        ));
    }
    let path = dir.join("embedding.csv");
    crate::fsio::write_atomic_bytes(&path, csv.as_bytes())?;
    written.push(path);
    Ok(written)
}

/// The browser draws no chart files (plotters is desktop-only); the page has no button for it.
#[cfg(target_arch = "wasm32")]
pub(super) fn export_map(
    _: &std::path::Path,
    _: &EmbeddingResult,
    _: &Colored,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    anyhow::bail!("maps are exported from the desktop app")
}
