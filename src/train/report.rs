//! Metrics as tables, for the CLI and the GUI.

use crate::table::Table;

use crate::experiment::metrics::Metrics;

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

/// `0.8000 [0.7100, 0.8800]`: a value and its interval, when there is one.
pub fn with_interval(
    x: Option<f64>,
    ci: Option<crate::experiment::uncertainty::Interval>,
) -> String {
    match (x, ci) {
        (Some(x), Some(ci)) => format!("{} [{}, {}]", f(x), f(ci.low), f(ci.high)),
        (x, _) => opt(x),
    }
}

/// Summary, per-class and confusion tables of one evaluation.
pub fn metrics_tables(title: &str, m: &Metrics) -> Vec<Table> {
    let mut out = Vec::new();
    let title_ci = m.ci.as_ref().map_or_else(String::new, |ci| {
        format!(
            "; {:.0}% bootstrap intervals over {} {}",
            ci.level * 100.0,
            ci.units,
            ci.unit
        )
    });
    let mut t = Table::new(
        format!("{title}: summary ({} images{title_ci})", m.n),
        &["metric", "value"],
    );
    let ci = m.ci.as_ref();
    let mut row = |k: &str, v: String| t.row(vec![k.to_owned(), v]);
    if let Some(loss) = m.loss {
        row("loss", f(loss));
    }
    row(
        "accuracy",
        with_interval(Some(m.accuracy), ci.and_then(|c| c.accuracy)),
    );
    row(
        "balanced accuracy",
        with_interval(
            Some(m.balanced_accuracy),
            ci.and_then(|c| c.balanced_accuracy),
        ),
    );
    row(
        "macro F1",
        with_interval(Some(m.macro_f1), ci.and_then(|c| c.macro_f1)),
    );
    row("weighted F1", f(m.weighted_f1));
    row("macro precision", f(m.macro_precision));
    row("macro recall", f(m.macro_recall));
    row(
        "macro ROC AUC",
        with_interval(m.macro_auc, ci.and_then(|c| c.macro_auc)),
    );
    if m.kappa.is_some() {
        row(
            "Cohen's kappa",
            with_interval(m.kappa, ci.and_then(|c| c.kappa)),
        );
    }
    if m.kappa_quadratic.is_some() {
        row(
            "quadratic kappa",
            with_interval(m.kappa_quadratic, ci.and_then(|c| c.kappa_quadratic)),
        );
    }
    if m.hamming_loss.is_some() {
        row("Hamming loss", opt(m.hamming_loss));
    }
    if let Some(c) = &m.calibration {
        row("expected calibration error", f(c.ece));
    }
    if let Some(t) = &m.temperature {
        row(
            "temperature scaling",
            format!(
                "T = {:.3}, fitted on held-out predictions; calibration error {:.4} before",
                t.temperature, t.ece_before
            ),
        );
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

/// A cross-validation's held-out metrics: mean ± sd over the folds and each fold's value.
pub fn cv_table(summary: &crate::experiment::cv::CvSummary) -> Table {
    let images: Vec<String> = summary.images.iter().map(u64::to_string).collect();
    let mut table = Table::new(
        format!(
            "cross-validation, {} folds (held-out images per fold, each scored once: {})",
            summary.folds,
            images.join(", ")
        ),
        &["metric", "mean ± sd", "per fold"],
    );
    for (name, s) in &summary.metrics {
        let folds: Vec<String> = s.folds.iter().map(|v| format!("{v:.3}")).collect();
        table.row(vec![
            name.replace('_', " "),
            format!("{:.3} ± {:.3}", s.mean, s.sd),
            folds.join("  "),
        ]);
    }
    table
}
