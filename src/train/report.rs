//! Metrics as tables, for the CLI and the GUI.

use crate::explore::Table;

use super::metrics::Metrics;

fn f(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "-".into()
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), f)
}

/// Summary, per-class and confusion tables of one evaluation.
pub fn metrics_tables(title: &str, m: &Metrics) -> Vec<Table> {
    let mut out = Vec::new();
    let mut t = Table::new(
        format!("{title}: summary ({} images)", m.n),
        &["metric", "value"],
    );
    let mut row = |k: &str, v: String| t.row(vec![k.to_owned(), v]);
    if let Some(loss) = m.loss {
        row("loss", f(loss));
    }
    row("accuracy", f(m.accuracy));
    row("balanced accuracy", f(m.balanced_accuracy));
    row("macro F1", f(m.macro_f1));
    row("weighted F1", f(m.weighted_f1));
    row("macro precision", f(m.macro_precision));
    row("macro recall", f(m.macro_recall));
    row("macro ROC AUC", opt(m.macro_auc));
    if m.kappa_quadratic.is_some() {
        row("quadratic kappa", opt(m.kappa_quadratic));
    }
    if m.hamming_loss.is_some() {
        row("Hamming loss", opt(m.hamming_loss));
    }
    out.push(t);

    let mut t = Table::new(
        format!("{title}: per class"),
        &["label", "precision", "recall", "F1", "ROC AUC", "support"],
    );
    for c in &m.classes {
        t.row(vec![
            c.label.clone(),
            f(c.precision),
            f(c.recall),
            f(c.f1),
            opt(c.auc),
            c.support.to_string(),
        ]);
    }
    out.push(t);

    if let Some(cm) = &m.confusion {
        let mut headers = vec!["true \\ predicted".to_owned()];
        headers.extend(cm.labels.iter().cloned());
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut t = Table::new(
            format!("{title}: confusion matrix (rows: true, columns: predicted)"),
            &refs,
        );
        for (label, row) in cm.labels.iter().zip(&cm.counts) {
            let mut r = vec![label.clone()];
            r.extend(row.iter().map(u64::to_string));
            t.row(r);
        }
        out.push(t);
    }
    out
}
