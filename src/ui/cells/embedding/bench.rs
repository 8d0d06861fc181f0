//! The map's benchmark: a synthetic map panned and zoomed every frame, frame times printed.

use std::sync::Arc;

use eframe::egui;

use crate::explore::embedding::EmbeddingMap;
use crate::ui::cells::{Loading, Notebook};

use super::*;

/// `CELLBENCH_BENCH_MAP=N` (see `scripts/bench-map.sh`): the first Embedding cell shows a
/// synthetic map of `N` points in ten clusters, panned and zoomed every frame with the pointer
/// over it, and the frame times are printed.
pub struct MapBench {
    points: usize,
    frames: usize,
    work_ms: Vec<f64>,
    interval_ms: Vec<f64>,
    last: Option<web_time::Instant>,
    installed: Option<u64>,
}

impl MapBench {
    pub fn from_env() -> Option<Self> {
        let points = std::env::var("CELLBENCH_BENCH_MAP").ok()?.parse().ok()?;
        Some(Self {
            points,
            frames: std::env::var("CELLBENCH_BENCH_FRAMES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(600),
            work_ms: Vec::new(),
            interval_ms: Vec::new(),
            last: None,
            installed: None,
        })
    }

    /// Before a frame: installs the synthetic map once the Embedding cell's Dataset cell is
    /// loaded, then moves the view. True while the benchmark runs.
    pub fn before_frame(&mut self, app: &mut Notebook) -> bool {
        let id = match self.installed {
            Some(id) => id,
            None => {
                let Some(id) = app
                    .workbook
                    .cells
                    .iter()
                    .find(|c| matches!(c.kind, CellKind::Embedding { .. }))
                    .map(|c| c.id)
                else {
                    return false;
                };
                let Some(dataset) = app.workbook.inputs(id).dataset else {
                    return false;
                };
                let Some(generation) = app
                    .rt
                    .dataset(dataset)
                    .filter(|d| d.data.ready().is_some())
                    .map(|d| d.generation)
                else {
                    return false;
                };
                let result = synthetic_map(self.points);
                let map_generation = app.rt.next_generation();
                app.rt.set_embedding(
                    id,
                    EmbeddingRuntime::new(
                        (dataset, generation),
                        map_generation,
                        Loading::Ready(result),
                        Arc::new(AtomicUsize::new(0)),
                        self.points,
                    ),
                );
                self.installed = Some(id);
                id
            }
        };
        let now = web_time::Instant::now();
        if let Some(last) = self.last {
            self.interval_ms
                .push(now.duration_since(last).as_secs_f64() * 1e3);
        }
        self.last = Some(now);
        if let Some(rt) = app.rt.embedding_mut(id)
            && let Some(colored) = &rt.colored
        {
            let base = View::fit(&colored.set.points);
            let t = self.work_ms.len() as f32 / 30.0;
            let zoom = 1.0 + 0.6 * t.sin();
            rt.view = Some(View {
                center: [
                    base.center[0] + 0.3 * base.half[0] * t.cos(),
                    base.center[1] + 0.3 * base.half[1] * (0.7 * t).sin(),
                ],
                half: [base.half[0] / zoom, base.half[1] / zoom],
            });
        }
        true
    }

    /// Where the pointer should be (over the map, moving), once the map has been drawn.
    pub fn pointer(&self, app: &Notebook) -> Option<egui::Pos2> {
        let rect = app.rt.embedding(self.installed?)?.last_rect?;
        let t = self.work_ms.len() as f32 / 7.0;
        Some(
            rect.center() + egui::vec2(0.3 * rect.width() * t.cos(), 0.3 * rect.height() * t.sin()),
        )
    }

    /// After a frame that took `work_ms` of UI work; the report once every frame is measured.
    pub fn after_frame(&mut self, work_ms: f64, peak_mib: Option<f64>) -> Option<String> {
        self.installed?;
        self.work_ms.push(work_ms);
        if self.work_ms.len() < self.frames {
            return None;
        }
        let pct = |v: &[f64], p: f64| {
            let mut t = v.to_vec();
            t.sort_by(f64::total_cmp);
            t.get(((t.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        Some(format!(
            "map bench: {} points, {} frames (panned and zoomed every frame, pointer over the map); \
             UI work p50 {:.2} ms, p95 {:.2} ms; frame interval p50 {:.2} ms, p95 {:.2} ms; \
             points drawn by {}; peak memory {:.0} MiB",
            self.points,
            self.work_ms.len(),
            pct(&self.work_ms, 0.5),
            pct(&self.work_ms, 0.95),
            pct(&self.interval_ms, 0.5),
            pct(&self.interval_ms, 0.95),
            if points::on_gpu() {
                "the WGSL shader"
            } else {
                "an egui mesh"
            },
            peak_mib.unwrap_or(f64::NAN)
        ))
    }
}

/// `n` points in ten Gaussian clusters, each point an in-memory record labelled by cluster.
fn synthetic_map(n: usize) -> EmbeddingResult {
    let mut rng = crate::dataset::split::SplitMix64::new(9);
    let mut gauss = move || {
        let (u, v) = (rng.unit().max(1e-12), rng.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let mut records = Vec::with_capacity(n);
    let mut coords = Vec::with_capacity(n);
    for i in 0..n {
        let k = i % 10;
        let a = k as f32 * std::f32::consts::TAU / 10.0;
        coords.push([6.0 * a.cos() + gauss(), 6.0 * a.sin() + gauss()]);
        records.push(crate::dataset::Record {
            path: format!("synthetic/{i}.png"),
            labels: vec![format!("cluster {k}")],
            ..Default::default()
        });
    }
    let manifest = Manifest {
        root: "/synthetic".into(),
        source: "/synthetic".into(),
        format: crate::dataset::DatasetFormat::ClassFolders,
        records,
        problems: Vec::new(),
        copies: Vec::new(),
    };
    EmbeddingResult {
        manifest: Arc::new(manifest),
        map: EmbeddingMap {
            records: (0..n).collect(),
            coords,
            explained: [0.0, 0.0],
            skipped: Vec::new(),
        },
        batch_effect: None,
    }
}
