//! Exported charts (PNG and SVG) drawn with plotters. The same specs render to an RGB buffer
//! for display in the GUI.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ExploreReport;

/// What to draw, independent of the output format.
#[derive(Clone, Debug, PartialEq)]
pub enum ChartSpec {
    /// Bars per category; several series are drawn side by side with a legend.
    Bars {
        title: String,
        x_desc: String,
        y_desc: String,
        categories: Vec<String>,
        series: Vec<(String, Vec<f64>)>,
    },
    /// A square matrix of counts with labelled rows and columns.
    Heatmap {
        title: String,
        labels: Vec<String>,
        values: Vec<Vec<f64>>,
    },
}

impl ChartSpec {
    pub fn title(&self) -> &str {
        match self {
            Self::Bars { title, .. } | Self::Heatmap { title, .. } => title,
        }
    }
}

/// The charts of an explore report, each with a file stem.
pub fn report_charts(report: &ExploreReport) -> Vec<(&'static str, ChartSpec)> {
    let mut out = Vec::new();
    let categories: Vec<String> = report.labels.iter().map(|l| l.label.clone()).collect();
    out.push((
        "images_per_label",
        ChartSpec::Bars {
            title: "Images per label".into(),
            x_desc: "label".into(),
            y_desc: "images".into(),
            categories: categories.clone(),
            series: vec![(
                "images".into(),
                report.labels.iter().map(|l| l.images as f64).collect(),
            )],
        },
    ));
    if report.summary.patients.is_some() {
        out.push((
            "patients_per_label",
            ChartSpec::Bars {
                title: "Patients per label".into(),
                x_desc: "label".into(),
                y_desc: "distinct patients".into(),
                categories: categories.clone(),
                series: vec![(
                    "patients".into(),
                    report
                        .labels
                        .iter()
                        .map(|l| l.patients.unwrap_or(0) as f64)
                        .collect(),
                )],
            },
        ));
    }
    if let Some(pp) = &report.images_per_patient {
        // Binned as the workbench draws it: consecutive values, a long tail in one last bar.
        let bins = super::bins::count_bins(&pp.histogram, super::bins::PATIENT_BINS);
        out.push((
            "images_per_patient",
            ChartSpec::Bars {
                title: "Images per patient".into(),
                // The last bar's values are named, as the workbench names them.
                x_desc: match bins.tail {
                    Some(t) => format!("images per patient (last bar: {})", t.describe()),
                    None => "images per patient".into(),
                },
                y_desc: "patients".into(),
                categories: bins.names,
                series: vec![(
                    "patients".into(),
                    bins.counts.iter().map(|&p| p as f64).collect(),
                )],
            },
        ));
    }
    if let Some(cells) = &report.cells {
        out.push((
            "cell_number_per_label",
            ChartSpec::Bars {
                title: "Cell number per label".into(),
                x_desc: "cell number within the microscope image".into(),
                y_desc: "images".into(),
                categories: cells.cell_numbers.iter().map(u32::to_string).collect(),
                series: cells
                    .rows
                    .iter()
                    .map(|(l, counts)| (l.clone(), counts.iter().map(|&c| c as f64).collect()))
                    .collect(),
            },
        ));
    }
    if let Some(co) = &report.cooccurrence {
        out.push((
            "label_cooccurrence",
            ChartSpec::Heatmap {
                title: "Label co-occurrence (images with both)".into(),
                labels: co.labels.clone(),
                values: co
                    .counts
                    .iter()
                    .map(|r| r.iter().map(|&c| c as f64).collect())
                    .collect(),
            },
        ));
    }
    if let Some(split) = &report.split {
        out.push((
            "split_per_label",
            ChartSpec::Bars {
                title: "Images per label and split".into(),
                x_desc: "label".into(),
                y_desc: "images".into(),
                categories: categories.clone(),
                series: split
                    .counts
                    .iter()
                    .map(|c| {
                        (
                            c.split.to_string(),
                            categories
                                .iter()
                                .map(|l| c.labels.get(l).copied().unwrap_or(0) as f64)
                                .collect(),
                        )
                    })
                    .collect(),
            },
        ));
    }
    out
}

/// A count axis's tick label: whole numbers only (a range of 0 to 1 gets ticks at 0.2, 0.4, …,
/// which would all read as 0 or 1).
fn count_tick(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

/// A bar's value written at its end: whole counts as such, anything else with two decimals.
fn bar_value(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(52, 101, 164),
    RGBColor(230, 126, 34),
    RGBColor(46, 139, 87),
    RGBColor(192, 57, 43),
    RGBColor(142, 68, 173),
    RGBColor(127, 140, 141),
];

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Draws a chart onto any plotters drawing area.
pub fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, spec: &ChartSpec) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    match spec {
        ChartSpec::Bars {
            title,
            x_desc,
            y_desc,
            categories,
            series,
        } => draw_bars(root, title, x_desc, y_desc, categories, series),
        ChartSpec::Heatmap {
            title,
            labels,
            values,
        } => draw_heatmap(root, title, labels, values),
    }?;
    root.present()
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
) -> DrawResult<DB> {
    let n = categories.len().max(1);
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let longest = categories
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(1) as u32;
    // Many or long category names read best down the side: bars become horizontal.
    let horizontal = n > 6 && longest > 3;
    let name_at = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 {
            categories.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    let mut builder = ChartBuilder::on(root);
    builder.caption(title, ("sans-serif", 24)).margin(16);
    if horizontal {
        let mut chart = builder
            .x_label_area_size(50)
            .y_label_area_size(longest * 8 + 20)
            .build_cartesian_2d(0f64..max * 1.12, (n as f64 - 0.5)..-0.5f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(y_desc)
            .y_desc(x_desc)
            .axis_desc_style(("sans-serif", 16))
            .y_labels(n + 1)
            .y_label_style(("sans-serif", 14))
            .y_label_formatter(&name_at)
            .x_label_formatter(&count_tick)
            .draw()?;
        for (s, (name, values)) in series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            let bars = values.iter().enumerate().map(move |(i, &v)| {
                let y0 = i as f64 - 0.4 + s as f64 * width;
                Rectangle::new([(0.0, y0), (v, y0 + width * 0.92)], color.filled())
            });
            let drawn = chart.draw_series(bars)?;
            if series.len() > 1 {
                drawn.label(name.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
            }
        }
        // One series: each bar's value at its end, as the workbench writes it, so a bar too
        // short to see (a long tail's one patient) still reads.
        if let [(_, values)] = series {
            let style = ("sans-serif", 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center));
            chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
                Text::new(format!(" {}", bar_value(v)), (v, i as f64), style.clone())
            }))?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 14))
                .draw()?;
        }
        return Ok(());
    }
    let mut chart = builder
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..max * 1.12)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", 16))
        .x_labels(n + 1)
        .x_label_style(("sans-serif", 14))
        .x_label_formatter(&name_at)
        .y_label_formatter(&count_tick)
        .draw()?;
    for (s, (name, values)) in series.iter().enumerate() {
        let color = PALETTE[s % PALETTE.len()];
        let bars = values.iter().enumerate().map(move |(i, &v)| {
            let x0 = i as f64 - 0.4 + s as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], color.filled())
        });
        let drawn = chart.draw_series(bars)?;
        if series.len() > 1 {
            drawn.label(name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
    }
    if let [(_, values)] = series {
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        chart.draw_series(
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| Text::new(bar_value(v), (i as f64, v), style.clone())),
        )?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    values: &[Vec<f64>],
) -> DrawResult<DB> {
    let n = labels.len().max(1);
    let max = values
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(1.0);
    let longest = labels.iter().map(|c| c.chars().count()).max().unwrap_or(1) as u32;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size((longest * 8 + 40).min(220))
        .build_cartesian_2d(0f64..n as f64, 0f64..n as f64)?;
    // Columns are numbered; rows carry the number and the name.
    let index_at = |v: &f64| {
        let i = v - 0.5;
        ((i - i.round()).abs() < 1e-6 && i >= 0.0 && (i.round() as usize) < labels.len())
            .then(|| i.round() as usize)
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * n + 1)
        .y_labels(2 * n + 1)
        .x_label_style(("sans-serif", 13))
        .y_label_style(("sans-serif", 13))
        .x_label_formatter(&|v: &f64| index_at(v).map_or_else(String::new, |i| (i + 1).to_string()))
        .y_label_formatter(&|v: &f64| {
            index_at(&(n as f64 - v))
                .map_or_else(String::new, |i| format!("{} {}", labels[i], i + 1))
        })
        .draw()?;
    let cells = values.iter().enumerate().flat_map(|(i, row)| {
        row.iter().enumerate().map(move |(j, &v)| {
            // Log scale: co-occurrence counts span orders of magnitude.
            let t = ((1.0 + v).ln() / (1.0 + max).ln()).clamp(0.0, 1.0);
            let color = RGBColor(
                (255.0 - t * 203.0) as u8,
                (255.0 - t * 154.0) as u8,
                (255.0 - t * 91.0) as u8,
            );
            let y = (n - 1 - i) as f64;
            Rectangle::new([(j as f64, y), (j as f64 + 1.0, y + 1.0)], color.filled())
        })
    });
    chart.draw_series(cells)?;
    Ok(())
}

/// Renders a chart into a packed RGB8 buffer of `width × height`.
pub fn render_rgb(spec: &ChartSpec, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        draw(&root, spec).map_err(|e| anyhow::anyhow!("drawing {:?}: {e}", spec.title()))?;
    }
    Ok(buf)
}

/// Renders a chart as an SVG document.
pub fn render_svg(spec: &ChartSpec, width: u32, height: u32) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        draw(&root, spec).map_err(|e| anyhow::anyhow!("drawing {:?}: {e}", spec.title()))?;
    }
    Ok(svg)
}

/// Writes `<stem>.png` and `<stem>.svg`.
pub fn write_chart(spec: &ChartSpec, dir: &Path, stem: &str) -> anyhow::Result<Vec<PathBuf>> {
    let (w, h) = match spec {
        ChartSpec::Heatmap { .. } => (900, 860),
        ChartSpec::Bars { categories, .. } => {
            ((200 + categories.len() as u32 * 60).clamp(800, 1600), 560)
        }
    };
    let rgb = render_rgb(spec, w, h)?;
    let img =
        image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| anyhow::anyhow!("chart buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let png_path = dir.join(format!("{stem}.png"));
    crate::fsio::write_atomic_bytes(&png_path, &png)?;
    let svg_path = dir.join(format!("{stem}.svg"));
    crate::fsio::write_atomic_bytes(&svg_path, render_svg(spec, w, h)?.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// A scatter plot of points in categories (one colour each, with a legend and the count of
/// each), written as PNG or SVG by the file's extension.
pub struct Scatter<'a> {
    pub title: &'a str,
    /// The x and y axis descriptions.
    pub axes: (&'a str, &'a str),
    /// `(x, y, category index)`.
    pub points: &'a [(f32, f32, usize)],
    /// Each category's name and colour.
    pub categories: &'a [(String, [u8; 3])],
}

impl Scatter<'_> {
    /// Writes the plot to `path` (`.png` or `.svg`).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::fs::create_dir_all(dir)?;
        }
        let (width, height) = (1000u32, 800u32);
        match ext.as_deref() {
            Some("png") => {
                let mut buf = vec![0u8; (width * height * 3) as usize];
                {
                    let root =
                        BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
                    self.draw(&root)
                        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
                }
                image::RgbImage::from_raw(width, height, buf)
                    .context("the chart buffer")?
                    .save(path)
                    .with_context(|| format!("writing {}", path.display()))
            }
            Some("svg") => {
                let mut svg = String::new();
                {
                    let root =
                        SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
                    self.draw(&root)
                        .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
                }
                crate::fsio::write_atomic_bytes(path, svg.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))
            }
            _ => anyhow::bail!("a plot is written as .png or .svg, not {}", path.display()),
        }
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let range = |f: fn(&(f32, f32, usize)) -> f32| {
            let (lo, hi) = self
                .points
                .iter()
                .map(f)
                .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
            let (lo, hi) = if lo > hi { (0.0, 1.0) } else { (lo, hi) };
            let pad = ((hi - lo) * 0.05).max(1e-3);
            (lo - pad)..(hi + pad)
        };
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(self.title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(50)
            .y_label_area_size(60)
            .build_cartesian_2d(range(|p| p.0), range(|p| p.1))?;
        chart
            .configure_mesh()
            .x_desc(self.axes.0)
            .y_desc(self.axes.1)
            .axis_desc_style(("sans-serif", 16))
            .draw()?;
        for (k, (name, [r, g, b])) in self.categories.iter().enumerate() {
            let color = RGBColor(*r, *g, *b);
            let count = self.points.iter().filter(|p| p.2 == k).count();
            chart
                .draw_series(
                    self.points
                        .iter()
                        .filter(|p| p.2 == k)
                        .map(|p| Circle::new((p.0, p.1), 4, color.mix(0.75).filled())),
                )?
                .label(format!("{name} ({count})"))
                .legend(move |(x, y)| Circle::new((x + 8, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 15))
            .draw()?;
        root.present()
    }
}

/// A scatter plot of labelled points, one palette colour per label (sorted), as PNG or SVG.
pub fn write_scatter(
    path: &Path,
    title: &str,
    axes: &(String, String),
    points: &[(f32, f32, String)],
) -> anyhow::Result<()> {
    let mut labels: Vec<&str> = points.iter().map(|p| p.2.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    let categories: Vec<(String, [u8; 3])> = labels
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let c = PALETTE[k % PALETTE.len()];
            ((*l).to_owned(), [c.0, c.1, c.2])
        })
        .collect();
    let indexed: Vec<(f32, f32, usize)> = points
        .iter()
        .map(|p| (p.0, p.1, labels.binary_search(&p.2.as_str()).unwrap_or(0)))
        .collect();
    Scatter {
        title,
        axes: (&axes.0, &axes.1),
        points: &indexed,
        categories: &categories,
    }
    .write(path)
}

/// Writes every chart of a report into `dir`; returns the files written.
pub fn write_report_charts(report: &ExploreReport, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    crate::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (stem, spec) in report_charts(report) {
        files.extend(write_chart(&spec, dir, stem)?);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scatter is written as SVG or PNG by the extension, with each category's count in the
    /// legend; any other extension is refused.
    #[test]
    fn scatter_writes_svg_and_png_with_a_counted_legend() {
        let dir = tempfile::tempdir().unwrap();
        let points = [(0.0, 1.0, 0), (1.0, 0.5, 0), (0.5, -1.0, 1)];
        let categories = [
            ("right".to_owned(), [44, 160, 44]),
            ("wrong".to_owned(), [214, 39, 40]),
        ];
        let scatter = Scatter {
            title: "map",
            axes: ("PC 1", "PC 2"),
            points: &points,
            categories: &categories,
        };
        let svg = dir.path().join("m.svg");
        scatter.write(&svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.contains("right (2)") && text.contains("wrong (1)"),
            "{text}"
        );
        // The category's own colour, not a palette colour.
        assert!(text.to_ascii_uppercase().contains("#D62728"), "{text}");
        let png = dir.path().join("m.png");
        scatter.write(&png).unwrap();
        assert_eq!(
            image::open(&png).unwrap().to_rgb8().dimensions(),
            (1000, 800)
        );
        let err = scatter.write(&dir.path().join("m.jpg")).unwrap_err();
        assert!(err.to_string().contains(".png or .svg"), "{err}");
    }
}
