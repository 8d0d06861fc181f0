//! The gallery's scrolling benchmark (`CELLBENCH_BENCH_SCROLL=<frames>`): scroll the first
//! gallery that many frames, then print frame-time percentiles and peak memory and quit.

use eframe::egui;

use super::WorkbenchApp;

/// Frame times of the scrolling benchmark.
pub(super) struct ScrollBench {
    pub(super) frames: usize,
    pub(super) times_ms: Vec<f64>,
}

/// Peak resident memory of this process (Linux), in MiB.
pub(super) fn peak_rss_mib() -> Option<f64> {
    let status = crate::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

impl WorkbenchApp {
    pub(super) fn scrolling(&self) -> bool {
        self.scroll_bench.is_some()
            && self
                .notebook
                .rt
                .datasets()
                .any(|(_, d)| d.data.ready().is_some())
    }

    pub(super) fn finish_scroll_bench(&mut self, ctx: &egui::Context) {
        let Some(b) = &self.scroll_bench else { return };
        if b.times_ms.len() < b.frames {
            return;
        }
        let mut t = b.times_ms.clone();
        t.sort_by(f64::total_cmp);
        let pct = |p: f64| t[((t.len() - 1) as f64 * p).round() as usize];
        let images: usize = self
            .notebook
            .rt
            .datasets()
            .filter_map(|(_, d)| d.data.ready())
            .map(|d| d.manifest.records.len())
            .sum();
        println!(
            "scroll bench: {images} images, {} frames; frame time (UI work) p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms; {} thumbnails cached; peak memory {:.0} MiB",
            t.len(),
            pct(0.5),
            pct(0.95),
            t[t.len() - 1],
            self.notebook.rt.thumbs.len(),
            peak_rss_mib().unwrap_or(f64::NAN)
        );
        self.scroll_bench = None;
        ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }
}
