//! The exploration report and split report as tables.

use super::ExploreReport;
pub use crate::table::{Table, clip_cell, clip_chars};

fn fmt_f(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

impl ExploreReport {
    /// The report as tables, in reading order.
    pub fn tables(&self) -> Vec<Table> {
        let mut tables = Vec::new();
        let s = &self.summary;
        let mut t = Table::new("Dataset", &["", ""]);
        t.row(vec!["source".into(), s.source.clone()]);
        t.row(vec!["format".into(), s.format.description().into()]);
        t.row(vec!["images".into(), s.images.to_string()]);
        t.row(vec!["usable images".into(), s.usable_images.to_string()]);
        t.row(vec!["labels".into(), s.labels.to_string()]);
        t.row(vec![
            "patients".into(),
            s.patients
                .map_or_else(|| "no patient ids".into(), |p| p.to_string()),
        ]);
        t.row(vec![
            "multi-label".into(),
            if s.multi_label { "yes" } else { "no" }.into(),
        ]);
        tables.push(t);

        let has_patients = s.patients.is_some();
        let mut headers = vec!["label", "images", "share"];
        if has_patients {
            headers.push("patients");
        }
        let mut t = Table::new("Images and patients per label", &headers);
        for l in &self.labels {
            let mut row = vec![
                l.label.clone(),
                l.images.to_string(),
                format!("{:.1}%", l.share * 100.0),
            ];
            if let Some(p) = l.patients {
                row.push(p.to_string());
            }
            t.row(row);
        }
        tables.push(t);

        if let Some(cells) = &self.cells {
            let mut headers: Vec<String> = vec!["label".into()];
            headers.extend(cells.cell_numbers.iter().map(|c| format!("cell {c}")));
            let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
            let mut t = Table::new("Cell number per label (images)", &refs);
            for (label, counts) in &cells.rows {
                let mut row = vec![label.clone()];
                row.extend(counts.iter().map(u64::to_string));
                t.row(row);
            }
            tables.push(t);
        }

        if let Some(pp) = &self.images_per_patient {
            let mut t = Table::new(
                "Images per patient",
                &["label", "patients", "min", "median", "mean", "max"],
            );
            let mut push = |name: &str, d: &super::Distribution| {
                t.row(vec![
                    name.to_owned(),
                    d.patients.to_string(),
                    d.min.to_string(),
                    fmt_f(d.median),
                    format!("{:.1}", d.mean),
                    d.max.to_string(),
                ]);
            };
            push("(all)", &pp.all);
            for (label, d) in &pp.by_label {
                push(label, d);
            }
            tables.push(t);
        }

        if let Some(co) = &self.cooccurrence {
            let mut t = Table::new(
                "Most frequent label pairs (images with both)",
                &["label", "label", "images"],
            );
            for (a, b, n) in co.top_pairs(15) {
                t.row(vec![a, b, n.to_string()]);
            }
            tables.push(t);
        }

        if let Some(im) = &self.imbalance {
            let mut t = Table::new("Imbalance", &["majority", "minority", "ratio"]);
            t.row(vec![
                im.majority.clone(),
                im.minority.clone(),
                format!("{:.2}", im.ratio),
            ]);
            tables.push(t);
        }

        if let Some(split) = &self.split {
            tables.push(split_table(split));
        }

        let mut t = Table::new("Problems", &["problem", "count", "examples"]);
        for p in &self.problems {
            t.row(vec![
                p.description.clone(),
                p.count.to_string(),
                p.examples.join("; "),
            ]);
        }
        if self.problems.is_empty() {
            t.row(vec!["none".into(), "0".into(), String::new()]);
        }
        tables.push(t);
        tables
    }
}

/// Per-split counts with one column per label.
pub fn split_table(report: &crate::dataset::split::SplitReport) -> Table {
    let labels: std::collections::BTreeSet<&String> =
        report.counts.iter().flat_map(|c| c.labels.keys()).collect();
    let mut headers: Vec<String> = vec!["split".into(), "images".into(), "patients".into()];
    headers.extend(labels.iter().map(|l| (*l).clone()));
    let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut t = Table::new(
        format!("Split (grouped by {:?})", report.group_by).to_lowercase(),
        &refs,
    );
    for c in &report.counts {
        let mut row = vec![
            c.split.to_string(),
            c.images.to_string(),
            c.patients.to_string(),
        ];
        row.extend(
            labels
                .iter()
                .map(|l| c.labels.get(*l).copied().unwrap_or(0).to_string()),
        );
        t.row(row);
    }
    t
}
