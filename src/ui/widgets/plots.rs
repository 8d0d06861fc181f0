//! Plots and their colours: refitting bounds, marked series, probability bars, fold spreads.

use eframe::egui;

/// A plot that fits its bounds to its data again whenever the data changes (a new run, a new
/// epoch, a relaunch that restored old bounds); between changes the user's zoom and pan stay.
/// `signature` summarises the data (e.g. run ids and point counts).
pub fn refitting_plot<'a>(ui: &egui::Ui, id: egui::Id, signature: u64) -> egui_plot::Plot<'a> {
    let key = id.with("data-signature");
    let changed = ui.data_mut(|d| {
        let old = d.get_temp::<u64>(key);
        d.insert_temp(key, signature);
        old != Some(signature)
    });
    // The wheel scrolls the notebook, not the plot (zoom stays on Ctrl + wheel).
    let plot = egui_plot::Plot::new(id).id(id).allow_scroll(false);
    if changed { plot.reset() } else { plot }
}

/// A signature of plotted series: their names and lengths, and the last value of each.
pub fn series_signature<'a>(series: impl IntoIterator<Item = (&'a str, &'a [[f64; 2]])>) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, points) in series {
        name.hash(&mut h);
        points.len().hash(&mut h);
        if let Some(p) = points.last() {
            p[0].to_bits().hash(&mut h);
            p[1].to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// One bar per label with its probability, the most probable first (at most `top`; ranked as
/// [`crate::model::decision::top_k`] ranks them).
pub fn probability_bars(ui: &mut egui::Ui, labels: &[String], probs: &[f32], top: usize) {
    let n = labels.len().min(probs.len());
    for (k, _) in crate::model::decision::top_k(&probs[..n], top) {
        ui.horizontal(|ui| {
            ui.add_sized(
                [110.0, 16.0],
                egui::Label::new(egui::RichText::new(&labels[k]).small()).truncate(),
            )
            .on_hover_text(&labels[k]);
            ui.add(
                egui::ProgressBar::new(probs[k].clamp(0.0, 1.0))
                    .desired_width(140.0)
                    .text(format!("{:.3}", probs[k])),
            );
        });
    }
}

/// Ten distinct category colours (matplotlib's `tab10`).
pub const CATEGORY_PALETTE: [egui::Color32; 10] = [
    egui::Color32::from_rgb(31, 119, 180),
    egui::Color32::from_rgb(255, 127, 14),
    egui::Color32::from_rgb(44, 160, 44),
    egui::Color32::from_rgb(214, 39, 40),
    egui::Color32::from_rgb(148, 103, 189),
    egui::Color32::from_rgb(140, 86, 75),
    egui::Color32::from_rgb(227, 119, 194),
    egui::Color32::from_rgb(127, 127, 127),
    egui::Color32::from_rgb(188, 189, 34),
    egui::Color32::from_rgb(23, 190, 207),
];

/// The light partners of [`CATEGORY_PALETTE`] (matplotlib's `tab20`), for series 11 to 20.
const LIGHT_PALETTE: [egui::Color32; 10] = [
    egui::Color32::from_rgb(174, 199, 232),
    egui::Color32::from_rgb(255, 187, 120),
    egui::Color32::from_rgb(152, 223, 138),
    egui::Color32::from_rgb(255, 152, 150),
    egui::Color32::from_rgb(197, 176, 213),
    egui::Color32::from_rgb(196, 156, 148),
    egui::Color32::from_rgb(247, 182, 210),
    egui::Color32::from_rgb(199, 199, 199),
    egui::Color32::from_rgb(219, 219, 141),
    egui::Color32::from_rgb(158, 218, 229),
];

/// A colour for the `k`-th series of a chart (legend and markers agree): the ten category
/// colours, then their light partners, so twenty series never share one; then in turn.
pub fn series_color(k: usize) -> egui::Color32 {
    let k = k % (2 * CATEGORY_PALETTE.len());
    if k < CATEGORY_PALETTE.len() {
        CATEGORY_PALETTE[k]
    } else {
        LIGHT_PALETTE[k - CATEGORY_PALETTE.len()]
    }
}

/// A chart's legend written under the chart, never over its data: the `k`-th name in the
/// `k`-th series colour ([`series_color`]), as entries that wrap within `width` (an entry is
/// never split); hovering one picks out its series (see [`legend_hovered`]).
pub fn legend_below(ui: &mut egui::Ui, id: egui::Id, names: &[String], width: f32) {
    let mut hovered = None;
    let font = egui::TextStyle::Body.resolve(ui.style());
    let text_color = ui.visuals().text_color();
    ui.scope(|ui| {
        ui.set_max_width(width);
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 12.0;
            for (k, name) in names.iter().enumerate() {
                let color = series_color(k);
                // One widget per entry (dot and name), so that a line wraps between entries.
                let galley = ui
                    .painter()
                    .layout_no_wrap(name.clone(), font.clone(), text_color);
                let size = egui::vec2(14.0 + galley.size().x, galley.size().y.max(10.0));
                let (rect, response) = ui.allocate_exact_size(size, egui::Sense::hover());
                response.widget_info(|| {
                    egui::WidgetInfo::labeled(egui::Role::Label, true, name.clone())
                });
                let painter = ui.painter();
                painter.circle_filled(egui::pos2(rect.left() + 5.0, rect.center().y), 4.5, color);
                painter.galley(
                    egui::pos2(rect.left() + 14.0, rect.top()),
                    galley,
                    text_color,
                );
                if response.hovered() {
                    hovered = Some(k);
                }
            }
        });
    });
    ui.data_mut(|d| d.insert_temp(id.with("legend-hovered"), hovered));
}

/// The entry of [`legend_below`] under the pointer (as of the last frame it was drawn).
pub fn legend_hovered(ui: &egui::Ui, id: egui::Id) -> Option<usize> {
    ui.data(|d| d.get_temp::<Option<usize>>(id.with("legend-hovered")))
        .flatten()
}

/// Draws each series as a line with a marker on every point, both in the series' palette
/// colour: a series of one point (a one-epoch run, or one fit) still shows.
pub fn marked_series<'a>(
    p: &mut egui_plot::PlotUi<'_>,
    series: impl IntoIterator<Item = (&'a str, &'a [[f64; 2]])>,
) {
    marked_series_picking(p, series, None);
}

/// [`marked_series`] with one series picked out (e.g. its legend entry hovered): drawn
/// thicker, the others faded.
pub fn marked_series_picking<'a>(
    p: &mut egui_plot::PlotUi<'_>,
    series: impl IntoIterator<Item = (&'a str, &'a [[f64; 2]])>,
    picked: Option<usize>,
) {
    for (k, (name, pts)) in series.into_iter().enumerate() {
        let (color, width) = match picked {
            Some(j) if j == k => (series_color(k), 3.0),
            Some(_) => (series_color(k).gamma_multiply(0.25), 1.5),
            None => (series_color(k), 1.5),
        };
        p.line(
            egui_plot::Line::new(name, egui_plot::PlotPoints::from(pts.to_vec()))
                .color(color)
                .width(width),
        );
        p.points(
            egui_plot::Points::new(name, egui_plot::PlotPoints::from(pts.to_vec()))
                .radius(3.0)
                .color(color),
        );
    }
}

/// A metric's name as the tables print it.
pub fn metric_title(key: &str) -> String {
    match key {
        "balanced_accuracy" => "balanced accuracy".into(),
        "macro_f1" => "macro F1".into(),
        "macro_auc" => "macro AUC".into(),
        "kappa_quadratic" => "quadratic kappa".into(),
        other => other.replace('_', " "),
    }
}

/// Cross-validations side by side: per metric (the loss left out: another scale), each
/// one's folds as dots and its mean as a bar ± one standard deviation, in its own colour, so
/// the spread shows how big a difference between them really is.
pub fn fold_spread_plot(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug,
    cvs: &[(String, &crate::experiment::cv::CvSummary)],
) {
    use egui_plot::{Line, Plot, PlotPoints, Points};
    let mut keys: Vec<&String> = cvs
        .iter()
        .flat_map(|(_, s)| s.metrics.keys())
        .filter(|k| k.as_str() != "loss")
        .collect();
    keys.sort();
    keys.dedup();
    if keys.is_empty() {
        return;
    }
    let names: Vec<String> = keys.iter().map(|k| metric_title(k)).collect();
    let n = cvs.len().max(1) as f64;
    let width = 0.6 / n;
    let legend_id = egui::Id::unique(("fold-spread-legend", &id));
    Plot::new(id)
        .height(220.0)
        .include_y(0.0)
        .include_y(1.0)
        .include_x(-0.5)
        .include_x(keys.len() as f64 - 0.5)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .y_axis_label("held-out score per fold")
        .x_axis_formatter(move |mark, _| {
            let i = mark.value.round();
            if (mark.value - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .show(ui, |p| {
            for (c, (name, summary)) in cvs.iter().enumerate() {
                let color = series_color(c);
                for (j, key) in keys.iter().enumerate() {
                    let Some(spread) = summary.metrics.get(*key) else {
                        continue;
                    };
                    let x = j as f64 - 0.3 + width * (c as f64 + 0.5);
                    let k = spread.folds.len().max(1) as f64;
                    let dots: Vec<[f64; 2]> = spread
                        .folds
                        .iter()
                        .enumerate()
                        .map(|(f, v)| [x - width * 0.3 + width * 0.6 * f as f64 / k, *v])
                        .collect();
                    p.points(Points::new(name.clone(), dots).radius(2.5).color(color));
                    let (lo, hi) = (spread.mean - spread.sd, spread.mean + spread.sd);
                    p.line(
                        Line::new(name.clone(), PlotPoints::from(vec![[x, lo], [x, hi]]))
                            .color(color)
                            .width(2.0),
                    );
                    p.line(
                        Line::new(
                            name.clone(),
                            PlotPoints::from(vec![
                                [x - width * 0.4, spread.mean],
                                [x + width * 0.4, spread.mean],
                            ]),
                        )
                        .color(color)
                        .width(2.5),
                    );
                }
            }
        });
    // The legend under the chart, never over the bars.
    let names: Vec<String> = cvs.iter().map(|(name, _)| name.clone()).collect();
    let width = ui.available_width();
    legend_below(ui, legend_id, &names, width);
}

#[cfg(test)]
mod tests {
    /// Fifteen classes (a ROC chart's curves) get fifteen different colours.
    #[test]
    fn twenty_series_never_share_a_colour() {
        let colors: std::collections::HashSet<_> = (0..20).map(super::series_color).collect();
        assert_eq!(colors.len(), 20);
        assert_eq!(super::series_color(20), super::series_color(0));
    }
}
