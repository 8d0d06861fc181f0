//! Benchmarks behind `cellbench bench …`. Speed targets live here, never in tests.

use std::path::Path;
use std::time::Instant;

/// Timing of `walk + parse + count` over a folder.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanBench {
    pub files: usize,
    pub repeats: usize,
    /// Seconds of the fastest repeat.
    pub best_secs: f64,
    pub median_secs: f64,
    /// Of the walk + parse part alone, fastest repeat.
    pub walk_parse_secs: f64,
    pub files_per_sec: f64,
}

/// Opens the folder as a dataset and computes the explore counts, `repeats` times.
pub fn scan(dir: &Path, repeats: usize) -> anyhow::Result<ScanBench> {
    let repeats = repeats.max(1);
    let mut totals = Vec::with_capacity(repeats);
    let mut walks = Vec::with_capacity(repeats);
    let mut files = 0;
    for _ in 0..repeats {
        let start = Instant::now();
        let manifest = crate::dataset::open(dir, &Default::default())?;
        walks.push(start.elapsed().as_secs_f64());
        let report = crate::explore::explore(&manifest)?;
        totals.push(start.elapsed().as_secs_f64());
        files = report.summary.images as usize;
    }
    totals.sort_by(f64::total_cmp);
    walks.sort_by(f64::total_cmp);
    Ok(ScanBench {
        files,
        repeats,
        best_secs: totals[0],
        median_secs: totals[repeats / 2],
        walk_parse_secs: walks[0],
        files_per_sec: files as f64 / totals[0],
    })
}

/// Throughput of Lite0 feature extraction.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FeaturizeBench {
    pub kind: &'static str,
    pub backbone: &'static str,
    /// Input side, pixels.
    pub size: u32,
    pub device: String,
    pub batch_size: usize,
    pub batches: usize,
    pub warmup_secs: f64,
    pub timed_secs: f64,
    pub images_per_sec: f64,
}

/// Runs feature extraction on real demo images (BCCD crops, preprocessed to the backbone's
/// input size):
/// one warm-up batch (kernel compilation, autotune), then `batches` timed batches.
/// On the CPU this times the fused network cellbench uses; `graph` times the general
/// burn graph (the flex backend) instead, for comparison.
pub fn featurize(
    choice: crate::model::backend::BackendChoice,
    backbone: crate::model::efficientnet::Backbone,
    batch_size: usize,
    batches: usize,
    graph: bool,
    wgsl: bool,
) -> anyhow::Result<FeaturizeBench> {
    use crate::model::extractor::{Extractor, load_backbone};
    if wgsl {
        return featurize_wgsl(backbone, batch_size, batches);
    }
    let compute = crate::model::backend::select(choice)?;
    let threads = rayon::current_num_threads();
    let (extractor, device) = if compute.is_gpu {
        (
            Extractor::bundled(backbone, &compute.device)?,
            compute.description,
        )
    } else if graph {
        let model = load_backbone(backbone, &compute.device)?;
        let device = compute.device;
        (
            Extractor::Burn {
                model: crate::model::folded::FoldedLite::of(&model),
                device,
            },
            format!("cpu, burn flex graph (batch norm folded), {threads} threads"),
        )
    } else {
        (
            Extractor::bundled(backbone, &compute.device)?,
            format!("cpu, fused, {threads} threads"),
        )
    };
    let (batch, side) = demo_batch(backbone, batch_size)?;
    time_featurize(backbone, device, batch_size, batches, || {
        Ok(extractor.features(batch.clone(), batch_size, side))
    })
}

/// `batch_size` demo images preprocessed for `backbone`, `[n, 3, side, side]`, and the side.
fn demo_batch(
    backbone: crate::model::efficientnet::Backbone,
    batch_size: usize,
) -> anyhow::Result<(Vec<f32>, usize)> {
    let pre = crate::dataset::preprocess::Preprocess {
        size: backbone.input_size(),
        ..Default::default()
    };
    let walk = crate::dataset::scan::walk_images(&crate::demo_dataset());
    anyhow::ensure!(!walk.images.is_empty(), "the demo dataset is missing");
    let images: Vec<Vec<f32>> = walk
        .images
        .iter()
        .filter_map(|f| pre.load(&crate::demo_dataset().join(&f.rel)).ok())
        .collect();
    let batch: Vec<f32> = images
        .iter()
        .cycle()
        .take(batch_size)
        .flatten()
        .copied()
        .collect();
    Ok((batch, pre.size as usize))
}

/// One warm-up call of `run` (a batch's features), then `batches` timed ones.
fn time_featurize(
    backbone: crate::model::efficientnet::Backbone,
    device: String,
    batch_size: usize,
    batches: usize,
    run: impl Fn() -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<FeaturizeBench> {
    let check = || -> anyhow::Result<()> {
        let f = run()?;
        anyhow::ensure!(
            f.len() == batch_size * crate::model::efficientnet::FEATURES,
            "feature shape"
        );
        Ok(())
    };
    let start = Instant::now();
    check()?;
    let warmup_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..batches.max(1) {
        check()?;
    }
    let timed_secs = start.elapsed().as_secs_f64();
    Ok(FeaturizeBench {
        kind: "featurize",
        backbone: backbone.short_name(),
        size: backbone.input_size(),
        device,
        batch_size,
        batches: batches.max(1),
        warmup_secs,
        timed_secs,
        images_per_sec: (batch_size * batches.max(1)) as f64 / timed_secs,
    })
}

/// Feature extraction through our own WGSL network ([`crate::model::gpu::GpuLite`], what
/// the browser runs on WebGPU) on this machine's wgpu adapter, waiting for each batch.
fn featurize_wgsl(
    backbone: crate::model::efficientnet::Backbone,
    batch_size: usize,
    batches: usize,
) -> anyhow::Result<FeaturizeBench> {
    let (device, queue, adapter) = crate::render::points::headless_device()?;
    let cpu = burn::tensor::Device::flex();
    let crate::model::extractor::Extractor::Cpu(net) =
        crate::model::extractor::Extractor::bundled(backbone, &cpu)?
    else {
        anyhow::bail!("the folded network");
    };
    let (batch, side) = demo_batch(backbone, batch_size)?;
    let gpu = crate::model::gpu::GpuLite::new(&device, &queue, &net, side, batch_size, &[])?;
    let description = format!(
        "wgpu, our WGSL network, {adapter}, {} images per dispatch",
        gpu.batch()
    );
    time_featurize(backbone, description, batch_size, batches, || {
        gpu.features(&batch)
    })
}
