//! Feature extraction a little at a time, for a page with one thread (or the page's GPU):
//! the same features and cache entries as [`super::featurize`], in steps of a time budget.

use std::path::PathBuf;

use super::{FeatureCache, Featurized, cache_key};
use crate::dataset::preprocess::Preprocess;
use crate::model::extractor::{Extractor, FeatureKind};

/// An image in progress: its index, cache key, the passes of its views still running and the
/// features of those done.
type InProgress = (
    usize,
    String,
    Vec<crate::model::fused::ImagePass>,
    Vec<Vec<f32>>,
);

/// Features of `paths` a little at a time, for a page with one thread: [`Self::step`] does
/// about a time budget of work, cutting an image's network pass between its blocks, so no
/// step holds the page for long. The features and cache entries are those of [`super::featurize`].
pub struct FeatureSteps {
    extractor: Extractor,
    /// The kind computed and cached ([`FeatureKind::stored`]).
    kind: FeatureKind,
    /// Values per vector of the kind asked for (a first part of the stored vector).
    wanted: usize,
    preprocess: Preprocess,
    paths: Vec<PathBuf>,
    cache: Option<FeatureCache>,
    /// The next image to start.
    next: usize,
    /// The image in progress.
    current: Option<InProgress>,
    /// Where a GPU computes the features (see [`Self::on_gpu`]).
    gpu: Option<GpuSteps>,
    /// Images to compute again on the CPU (their GPU batch failed).
    redo: std::collections::VecDeque<usize>,
    /// The next GPU batch, read while the one before it is computed: its images
    /// `[views, 3, side, side]` and entries.
    prepared: Option<(Vec<f32>, Vec<Batched>)>,
    result: Featurized,
}

/// An image in a GPU batch: its index, cache key and number of views (rows of the output).
type Batched = (usize, String, usize);

/// The network on a GPU and the batch it is working on.
struct GpuSteps {
    net: std::sync::Arc<crate::model::gpu::GpuLite>,
    in_flight: Option<(crate::model::gpu::Pending, Vec<Batched>)>,
    /// Images whose features the GPU computed.
    images: usize,
}

/// What reading one image gave.
enum Read {
    /// Its features came from the cache, or it failed (both recorded).
    Settled,
    /// Its cache key and preprocessed views, `[views, 3, side, side]`.
    Views(String, Vec<f32>),
}

impl FeatureSteps {
    pub fn new(
        extractor: Extractor,
        kind: FeatureKind,
        preprocess: &Preprocess,
        paths: Vec<PathBuf>,
        cache: Option<FeatureCache>,
    ) -> Self {
        let n = paths.len();
        let wanted = kind.width();
        let kind = kind.stored();
        // In the browser, the page's WebGPU device when it computes there.
        #[cfg(target_arch = "wasm32")]
        let gpu = match &extractor {
            Extractor::Cpu(net) => {
                crate::model::gpu::browser::network(net, preprocess.size as usize, &kind.taps())
                    .map(|net| GpuSteps {
                        net,
                        in_flight: None,
                        images: 0,
                    })
            }
            Extractor::Burn { .. } => None,
        };
        #[cfg(not(target_arch = "wasm32"))]
        let gpu = None;
        Self {
            extractor,
            kind,
            wanted,
            preprocess: preprocess.clone(),
            paths,
            cache,
            next: 0,
            current: None,
            gpu,
            redo: Default::default(),
            prepared: None,
            result: Featurized {
                features: vec![None; n],
                failures: Vec::new(),
                from_cache: 0,
                computed: 0,
            },
        }
    }

    /// Computes the images on `net` (a GPU network for the stored kind of features,
    /// [`FeatureKind::stored`], and this preprocessing) a batch at a time: a step sends a
    /// batch and returns; a later step collects it. A batch the GPU fails is computed again
    /// on the CPU.
    pub fn on_gpu(mut self, net: std::sync::Arc<crate::model::gpu::GpuLite>) -> Self {
        self.gpu = Some(GpuSteps {
            net,
            in_flight: None,
            images: 0,
        });
        self
    }

    /// Images finished (read from the cache, computed or failed).
    pub fn done(&self) -> usize {
        let on_gpu = self
            .gpu
            .as_ref()
            .and_then(|g| g.in_flight.as_ref())
            .map_or(0, |(_, items)| items.len());
        let prepared = self.prepared.as_ref().map_or(0, |(_, items)| items.len());
        self.next - usize::from(self.current.is_some()) - on_gpu - prepared - self.redo.len()
    }

    pub fn total(&self) -> usize {
        self.paths.len()
    }

    /// Works for about `budget` (at least one piece); false once every image is done.
    pub fn step(&mut self, budget: std::time::Duration) -> bool {
        let start = web_time::Instant::now();
        if self.gpu.is_some() {
            return self.step_gpu(start, budget);
        }
        loop {
            if self.current.is_none() && !self.start_next() {
                return false;
            }
            self.advance();
            if start.elapsed() >= budget {
                return self.current.is_some()
                    || self.next < self.paths.len()
                    || !self.redo.is_empty();
            }
        }
    }

    /// What was computed.
    pub fn finish(self) -> Featurized {
        if let Some(gpu) = self.gpu.as_ref().filter(|g| g.images > 0) {
            log::info!("features of {} image(s) computed on the GPU", gpu.images);
        }
        self.result
    }

    /// The next image to read: one whose GPU batch failed, else the next path.
    fn take_next(&mut self) -> Option<usize> {
        if let Some(i) = self.redo.pop_front() {
            return Some(i);
        }
        (self.next < self.paths.len()).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Reads image `i`: its features from the cache, or its preprocessed views (every
    /// orientation when the features average them).
    fn read(&mut self, i: usize) -> Read {
        let path = &self.paths[i];
        let bytes = match crate::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                self.result.failures.push((path.clone(), e.to_string()));
                return Read::Settled;
            }
        };
        let key = cache_key(&self.kind.cache_name(), &self.preprocess, &bytes);
        if let Some(f) = self
            .cache
            .as_ref()
            .and_then(|c| c.get(&key, self.kind.width(), self.wanted))
        {
            self.result.features[i] = Some(f);
            self.result.from_cache += 1;
            return Read::Settled;
        }
        let chw = match crate::dataset::image_io::decode_bytes_complete(&bytes) {
            Ok(img) => self.preprocess.apply(&img),
            Err(e) => {
                self.result.failures.push((path.clone(), e.to_string()));
                return Read::Settled;
            }
        };
        let views = if self.kind.orientation_mean {
            crate::dataset::preprocess::orientations(&chw, self.preprocess.size as usize)
        } else {
            chw
        };
        Read::Views(key, views)
    }

    /// Reads the next image: its features from the cache, or its passes started. False when
    /// no image is left.
    fn start_next(&mut self) -> bool {
        let Some(i) = self.take_next() else {
            return false;
        };
        let Read::Views(key, views) = self.read(i) else {
            return true;
        };
        let side = self.preprocess.size as usize;
        match &self.extractor {
            Extractor::Cpu(net) => {
                let taps = self.kind.taps();
                let passes = views
                    .chunks_exact(3 * side * side)
                    .map(|v| net.begin_pooled(v.to_vec(), side, side, &taps))
                    .collect();
                self.current = Some((i, key, passes, Vec::new()));
            }
            // A GPU computes an image at once.
            Extractor::Burn { .. } => {
                let chw = views[..3 * side * side].to_vec();
                let f = self.extractor.features_of(&self.kind, chw, 1, side);
                self.store(i, &key, f);
            }
        }
        true
    }

    /// One step on the GPU: collects the batch in flight when it is back (while it is not,
    /// reads and preprocesses the next batch's images, within `budget`, and returns, leaving
    /// the page to the browser, which completes GPU work between frames), then sends the next
    /// batch.
    fn step_gpu(&mut self, start: web_time::Instant, budget: std::time::Duration) -> bool {
        let Some(gpu) = self.gpu.as_mut() else {
            return false;
        };
        if let Some((pending, items)) = &gpu.in_flight {
            let Some(result) = gpu.net.take(pending) else {
                self.prepare(start, budget);
                return true;
            };
            let items = items.clone();
            gpu.in_flight = None;
            match result {
                Ok(rows) => {
                    gpu.images += items.len();
                    self.store_rows(&items, &rows);
                }
                Err(e) => self.fall_back(&e, items.iter().map(|item| item.0)),
            }
        }
        let Some(gpu) = self.gpu.as_ref() else {
            // Back on the CPU.
            return self.step(budget.saturating_sub(start.elapsed()));
        };
        if !gpu.net.ready() {
            // A stopped job's batch is still on its way back.
            return true;
        }
        let net = gpu.net.clone();
        self.prepare(start, budget);
        let Some((images, items)) = self.prepared.take() else {
            return self.gpu.is_none() || self.next < self.paths.len() || !self.redo.is_empty();
        };
        match net.submit(&images) {
            Ok(pending) => {
                if let Some(g) = self.gpu.as_mut() {
                    g.in_flight = Some((pending, items));
                }
            }
            Err(e) => self.fall_back(&e, items.iter().map(|item| item.0)),
        }
        true
    }

    /// Reads and preprocesses the next batch's images (as many as the batch holds, within
    /// `budget`), unless one is ready.
    fn prepare(&mut self, start: web_time::Instant, budget: std::time::Duration) {
        let Some(gpu) = self.gpu.as_ref() else {
            return;
        };
        if self.prepared.is_some() {
            return;
        }
        let batch = gpu.net.batch();
        let per_image = if self.kind.orientation_mean {
            crate::dataset::preprocess::ORIENTATIONS
        } else {
            1
        };
        if batch < per_image {
            let e = anyhow::anyhow!("a batch of {batch} cannot hold an image's {per_image} views");
            self.fall_back(&e, std::iter::empty());
            return;
        }
        let mut images = Vec::new();
        let mut items = Vec::new();
        let mut rows = 0;
        while rows + per_image <= batch {
            let Some(i) = self.take_next() else { break };
            if let Read::Views(key, views) = self.read(i) {
                items.push((i, key, per_image));
                images.extend_from_slice(&views);
                rows += per_image;
            }
            if start.elapsed() >= budget {
                break;
            }
        }
        if !items.is_empty() {
            self.prepared = Some((images, items));
        }
    }

    /// Stores a GPU batch's rows: each image's views averaged.
    fn store_rows(&mut self, items: &[Batched], rows: &[f32]) {
        let width = self.kind.width();
        let mut row = 0;
        for (i, key, views) in items {
            let mut mean = vec![0.0f32; width];
            crate::model::fused::mean_rows(
                &rows[row * width..(row + views) * width],
                width,
                &mut mean,
            );
            row += views;
            self.store(*i, key, mean);
        }
    }

    /// The GPU failed: these images, those read for its next batch, and every later one are
    /// computed on the CPU.
    fn fall_back(&mut self, e: &anyhow::Error, images: impl Iterator<Item = usize>) {
        log::warn!("the GPU failed ({e:#}); features continue on the CPU");
        if let Some((_, items)) = self.gpu.take().and_then(|g| g.in_flight) {
            self.redo.extend(items.iter().map(|item| item.0));
        }
        self.redo.extend(images);
        if let Some((_, items)) = self.prepared.take() {
            self.redo.extend(items.iter().map(|item| item.0));
        }
    }

    /// One piece of the image in progress; stores its features when its last view is done.
    fn advance(&mut self) {
        let Some((_, _, passes, done)) = self.current.as_mut() else {
            return;
        };
        let Extractor::Cpu(net) = &self.extractor else {
            return;
        };
        if let Some(pass) = passes.last_mut()
            && let Some(f) = net.advance(pass, 1)
        {
            passes.pop();
            done.push(f);
        }
        if passes.is_empty() {
            let (i, key, _, done) = self.current.take().expect("in progress");
            let width = self.kind.width();
            let mut mean = vec![0.0f32; width];
            crate::model::fused::mean_rows(&done.concat(), width, &mut mean);
            self.store(i, &key, mean);
        }
    }

    fn store(&mut self, i: usize, key: &str, mut f: Vec<f32>) {
        if f.len() != self.kind.width() {
            return;
        }
        if let Some(c) = &self.cache {
            c.put(key, &f);
        }
        f.truncate(self.wanted);
        f.shrink_to_fit();
        self.result.features[i] = Some(f);
        self.result.computed += 1;
    }
}
