//! Backbone features for the linear probe, cached on disk by backbone, preprocessing and
//! file content, so a second run with other head settings starts at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use sha2::Digest as _;

use crate::dataset::preprocess::Preprocess;
use crate::model::extractor::{Extractor, FeatureKind};

pub use steps::FeatureSteps;

mod steps;

/// A folder of cached feature vectors, one small file per (backbone, preprocessing, image).
#[derive(Clone, Debug)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    /// `$CELLBENCH_CACHE/features`, else `$XDG_CACHE_HOME/cellbench/features`, else
    /// `~/.cache/cellbench/features`.
    pub fn default_location() -> Self {
        let base = std::env::var_os("CELLBENCH_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("cellbench"))
            })
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/cellbench")))
            .unwrap_or_else(|| PathBuf::from(".cellbench-cache"));
        Self {
            dir: base.join("features"),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.f32"))
    }

    /// The first `keep` values of the cached vector of `key`, if it holds `width` values (a
    /// stored multi-scale vector serves a plain request with its first part).
    fn get(&self, key: &str, width: usize, keep: usize) -> Option<Vec<f32>> {
        let bytes = crate::fs::read(self.path(key)).ok()?;
        (bytes.len() == width * 4).then(|| {
            bytes[..keep.min(width) * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        })
    }

    fn put(&self, key: &str, features: &[f32]) {
        let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
        // A cache that cannot be written only costs time.
        if let Err(e) = crate::fsio::write_atomic_bytes(&self.path(key), &bytes) {
            log::warn!("feature cache not written ({e}): {}", self.dir.display());
        }
    }
}

/// Cache key of one image: backbone, preprocessing and the file's bytes.
pub fn cache_key(backbone: &str, preprocess: &Preprocess, file_bytes: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(backbone.as_bytes());
    h.update([0]);
    h.update(preprocess.key().as_bytes());
    h.update([0]);
    h.update(file_bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What feature extraction produced.
pub struct Featurized {
    /// One vector (of the kind's width) per input, `None` where the image failed.
    pub features: Vec<Option<Vec<f32>>>,
    /// `(path, reason)` of each image that failed to read or decode.
    pub failures: Vec<(PathBuf, String)>,
    pub from_cache: usize,
    pub computed: usize,
}

/// Extracts backbone features of `kind` for `paths` in batches. Reads and decodes in parallel,
/// runs the network (call from the thread that owns burn work).
/// `progress(done, total)` is called after each batch; `cancel` stops between batches
/// (the result then holds `None` for the rest).
#[allow(clippy::too_many_arguments)]
pub fn featurize(
    extractor: &Extractor,
    kind: FeatureKind,
    preprocess: &Preprocess,
    paths: &[PathBuf],
    cache: Option<&FeatureCache>,
    batch_size: usize,
    progress: &mut dyn FnMut(usize, usize),
    cancel: &AtomicBool,
) -> Featurized {
    let mut out = Featurized {
        features: vec![None; paths.len()],
        failures: Vec::new(),
        from_cache: 0,
        computed: 0,
    };
    let side = preprocess.size as usize;
    let batch_size = batch_size.max(1);
    // Averaged features are other features, with cache entries of their own; plain ones are
    // the first part of the multi-scale vector, computed and cached whole.
    let wanted = kind.width();
    let kind = kind.stored();
    let name = kind.cache_name();
    let width = kind.width();
    for (chunk_no, chunk) in paths.chunks(batch_size).enumerate() {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let base = chunk_no * batch_size;
        // Read, hash, look up, decode: in parallel.
        enum Loaded {
            Cached(Vec<f32>),
            Input(String, Vec<f32>),
            Failed(String),
        }
        let loaded: Vec<Loaded> = chunk
            .par_iter()
            .map(|path| {
                let bytes = match crate::fs::read(path) {
                    Ok(b) => b,
                    Err(e) => return Loaded::Failed(e.to_string()),
                };
                let key = cache_key(&name, preprocess, &bytes);
                if let Some(f) = cache.and_then(|c| c.get(&key, width, wanted)) {
                    return Loaded::Cached(f);
                }
                match crate::dataset::image_io::decode_bytes_complete(&bytes) {
                    Ok(img) => Loaded::Input(key, preprocess.apply(&img)),
                    Err(e) => Loaded::Failed(e.to_string()),
                }
            })
            .collect();
        let mut inputs = Vec::new();
        let mut slots = Vec::new();
        for (i, l) in loaded.into_iter().enumerate() {
            match l {
                Loaded::Cached(f) => {
                    out.features[base + i] = Some(f);
                    out.from_cache += 1;
                }
                Loaded::Input(key, chw) => {
                    inputs.extend(chw);
                    slots.push((base + i, key));
                }
                Loaded::Failed(reason) => out.failures.push((chunk[i].clone(), reason)),
            }
        }
        if !slots.is_empty() {
            let feats = extractor.features_of(&kind, inputs, slots.len(), side);
            for (j, (slot, key)) in slots.into_iter().enumerate() {
                let row = feats.get(j * width..(j + 1) * width);
                if let (Some(row), Some(c)) = (row, cache) {
                    c.put(&key, row);
                }
                out.features[slot] = row.map(|r| r[..wanted].to_vec());
                out.computed += 1;
            }
        }
        progress((base + chunk.len()).min(paths.len()), paths.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::efficientnet::FEATURES;

    /// The first demo Neutrophil, preprocessed at 64².
    fn demo_cell() -> Vec<f32> {
        let pre = Preprocess {
            size: 64,
            ..Preprocess::default()
        };
        let dir = crate::demo_dataset().join("Neutrophil");
        let file = crate::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        pre.load(&file).unwrap()
    }

    /// Orientation-averaged features do not change when the cell is turned or flipped;
    /// plain features do.
    #[test]
    fn orientation_mean_is_the_same_for_every_orientation() {
        let extractor =
            Extractor::bundled(Default::default(), &burn::tensor::Device::flex()).unwrap();
        let img = demo_cell();
        let mut turned = img.clone();
        // Transpose + flip: a 90° turn.
        crate::dataset::preprocess::dihedral(&mut turned, 64, 5);
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        let both = [img.clone(), turned.clone()].concat();
        let plain = extractor.features(both.clone(), 2, 64);
        let kind = FeatureKind {
            orientation_mean: true,
            ..FeatureKind::plain(Default::default())
        };
        let mean = extractor.features_of(&kind, both, 2, 64);
        assert_eq!(mean.len(), 2 * FEATURES);
        let (p0, p1) = plain.split_at(FEATURES);
        let (m0, m1) = mean.split_at(FEATURES);
        assert!(
            max_diff(p0, p1) > 0.05,
            "plain features should see the turn"
        );
        assert!(max_diff(m0, m1) < 1e-4, "averaged: {}", max_diff(m0, m1));
        // The mean of the 8 views, not of one.
        assert!(max_diff(m0, p0) > 0.01);
    }

    /// `good` demo Neutrophil crops with a file that only claims to be an image at `bad_at`.
    fn crops_and_a_fake(tmp: &std::path::Path, good: usize, bad_at: usize) -> Vec<PathBuf> {
        let dir = crate::demo_dataset().join("Neutrophil");
        let mut paths: Vec<PathBuf> = crate::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .take(good)
            .collect();
        let bad = tmp.join("not-an-image.png");
        std::fs::write(&bad, b"not a png").unwrap();
        paths.insert(bad_at, bad);
        paths
    }

    /// Plain, orientation-averaged and multi-scale features of the default backbone.
    fn every_kind() -> [FeatureKind; 3] {
        let plain = FeatureKind::plain(Default::default());
        [
            plain,
            FeatureKind {
                orientation_mean: true,
                ..plain
            },
            FeatureKind {
                multiscale: true,
                ..plain
            },
        ]
    }

    /// Each image's features agree (relative to their size), and fail for the same images.
    fn assert_same_features(got: &Featurized, want: &Featurized, kind: FeatureKind) {
        for (g, w) in got.features.iter().zip(&want.features) {
            match (g, w) {
                (Some(g), Some(w)) => {
                    assert_eq!((g.len(), w.len()), (kind.width(), kind.width()));
                    let err = g
                        .iter()
                        .zip(w)
                        .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                        .fold(0.0, f32::max);
                    assert!(err < 1e-4, "{kind:?}: max difference {err}");
                }
                (None, None) => {}
                _ => panic!("one path failed where the other did not"),
            }
        }
    }

    fn small() -> Preprocess {
        Preprocess {
            size: 64,
            ..Preprocess::default()
        }
    }

    /// Features computed in steps (pieces of an image's pass, a small time budget each) are
    /// those of the batch path, for plain, orientation-averaged and multi-scale features, and
    /// fill the same cache entries; a file that is not an image fails alone.
    #[test]
    fn features_in_steps_match_the_batch_path_and_its_cache() {
        let cpu = burn::tensor::Device::flex();
        let extractor = Extractor::bundled(Default::default(), &cpu).unwrap();
        let pre = small();
        let tmp = tempfile::tempdir().unwrap();
        let paths = crops_and_a_fake(tmp.path(), 2, 2);
        let never = AtomicBool::new(false);
        for (k, kind) in every_kind().into_iter().enumerate() {
            let batch = |cache: Option<&FeatureCache>| {
                featurize(
                    &extractor,
                    kind,
                    &pre,
                    &paths,
                    cache,
                    8,
                    &mut |_, _| {},
                    &never,
                )
            };
            let want = batch(None);
            let cache = FeatureCache {
                dir: tmp.path().join(format!("cache-{k}")),
            };
            let mut steps = FeatureSteps::new(
                Extractor::bundled(Default::default(), &cpu).unwrap(),
                kind,
                &pre,
                paths.clone(),
                Some(cache.clone()),
            );
            let mut calls = 0;
            while steps.step(std::time::Duration::ZERO) {
                calls += 1;
            }
            assert!(
                calls > 18,
                "one piece per step with no budget: {calls} steps"
            );
            assert_eq!(steps.done(), 3);
            let got = steps.finish();
            assert_eq!(got.computed, 2);
            assert_eq!(got.failures.len(), 1);
            assert_same_features(&got, &want, kind);
            // The cache now answers the batch path.
            let cached = batch(Some(&cache));
            assert_eq!((cached.from_cache, cached.computed), (2, 0));
        }
    }

    /// Plain features (an embedding map's) and multi-scale ones (the default probe's) are one
    /// computation: whichever is asked for first, the other comes from the cache, the plain
    /// vector being the first part of the multi-scale one. Orientation-averaged features are
    /// computed apart.
    #[test]
    fn plain_and_multiscale_features_share_one_computation() {
        let extractor =
            Extractor::bundled(Default::default(), &burn::tensor::Device::flex()).unwrap();
        let pre = small();
        let tmp = tempfile::tempdir().unwrap();
        let paths = crops_and_a_fake(tmp.path(), 2, 0);
        let never = AtomicBool::new(false);
        let [plain, averaged, multi] = every_kind();
        for (k, order) in [[plain, multi], [multi, plain]].into_iter().enumerate() {
            let cache = FeatureCache {
                dir: tmp.path().join(format!("cache-{k}")),
            };
            let run = |kind| {
                featurize(
                    &extractor,
                    kind,
                    &pre,
                    &paths,
                    Some(&cache),
                    8,
                    &mut |_, _| {},
                    &never,
                )
            };
            let first = run(order[0]);
            assert_eq!((first.from_cache, first.computed), (0, 2));
            let second = run(order[1]);
            assert_eq!((second.from_cache, second.computed), (2, 0), "{order:?}");
            assert_eq!(second.failures.len(), 1);
            let (p, m) = if order[0] == plain {
                (first, second)
            } else {
                (second, first)
            };
            for (p, m) in p.features.iter().zip(&m.features) {
                match (p, m) {
                    (Some(p), Some(m)) => {
                        assert_eq!((p.len(), m.len()), (plain.width(), multi.width()));
                        assert_eq!(p[..], m[..plain.width()]);
                    }
                    (None, None) => {}
                    _ => panic!("one kind failed where the other did not"),
                }
            }
            let apart = run(averaged);
            assert_eq!((apart.from_cache, apart.computed), (0, 2));
        }
    }

    /// On a GPU (Mesa's software Vulkan under the tests) the steps send a batch and collect
    /// it on a later step; the features are the CPU network's for every kind (orientation
    /// means fill a batch per image), and an unreadable image is listed as on the CPU.
    #[test]
    fn features_in_gpu_batches_match_the_cpu() {
        let (device, queue, _) = crate::render::points::headless_device()
            .expect("a wgpu adapter (the test command installs Mesa's software Vulkan)");
        let cpu = burn::tensor::Device::flex();
        let Extractor::Cpu(net) = Extractor::bundled(Default::default(), &cpu).unwrap() else {
            panic!("the CPU extractor");
        };
        let pre = small();
        let tmp = tempfile::tempdir().unwrap();
        let paths = crops_and_a_fake(tmp.path(), 3, 1);
        let never = AtomicBool::new(false);
        for kind in every_kind() {
            let extractor = Extractor::bundled(Default::default(), &cpu).unwrap();
            let want = featurize(
                &extractor,
                kind,
                &pre,
                &paths,
                None,
                8,
                &mut |_, _| {},
                &never,
            );
            let taps = kind.stored().taps();
            let gpu = crate::model::gpu::GpuLite::new(&device, &queue, &net, 64, 8, &taps).unwrap();
            let mut steps = FeatureSteps::new(extractor, kind, &pre, paths.clone(), None)
                .on_gpu(std::sync::Arc::new(gpu));
            // Every other step finds its batch still on the GPU (the device is polled only
            // then) and reads the next batch meanwhile.
            let mut sent = 0;
            while steps.step(std::time::Duration::from_secs(1)) {
                sent += 1;
                if sent % 2 == 0 {
                    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
                }
            }
            assert_eq!(steps.done(), 4);
            let got = steps.finish();
            assert_eq!((got.computed, got.failures.len()), (3, 1), "{kind:?}");
            assert_eq!(got.failures[0].0, paths[1]);
            // One batch of three, or one image per batch of eight views.
            let batches = if kind.orientation_mean { 3 } else { 1 };
            assert!(sent >= batches, "{sent} steps for {batches} batches");
            assert_same_features(&got, &want, kind);
        }
    }

    /// Multi-scale features are the plain features followed by the pools of the two tapped
    /// stages (112 + 192 channels on Lite0), which match pooling the burn model's activations
    /// after the same blocks.
    #[test]
    fn multiscale_features_extend_the_plain_ones_with_earlier_pools() {
        use burn::tensor::{Tensor, TensorData};
        let device = burn::tensor::Device::flex();
        let backbone = crate::model::efficientnet::Backbone::Lite0;
        let extractor = Extractor::bundled(backbone, &device).unwrap();
        let kind = FeatureKind {
            multiscale: true,
            ..FeatureKind::plain(backbone)
        };
        assert_eq!(backbone.taps(), [(11, 112), (15, 192)]);
        assert_eq!(kind.width(), FEATURES + 112 + 192);
        let img = demo_cell();
        let plain = extractor.features(img.clone(), 1, 64);
        let multi = extractor.features_of(&kind, img.clone(), 1, 64);
        assert_eq!(multi.len(), kind.width());
        let close = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max)
        };
        assert!(close(&multi[..FEATURES], &plain) < 1e-5);
        let model = crate::model::extractor::load_backbone(backbone, &device).unwrap();
        let x = Tensor::<4>::from_data(TensorData::new(img, [1, 3, 64, 64]), &device);
        for (part, (blocks, _)) in kind.parts()[1..].iter().zip(backbone.taps()) {
            let want: Vec<f32> = model
                .forward_prefix(x.clone(), blocks)
                .mean_dims(&[2, 3])
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .unwrap();
            assert_eq!(want.len(), part.len());
            let err = close(&multi[part.clone()], &want);
            assert!(
                err < 1e-3,
                "tap after {blocks} blocks: max difference {err}"
            );
        }
    }
}
