//! Backbone features for the linear probe, cached on disk by backbone, preprocessing and
//! file content, so a second run with other head settings starts at once.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;
use sha2::Digest as _;

use crate::dataset::preprocess::Preprocess;
use crate::model::efficientnet::FEATURES;
use crate::model::extractor::Extractor;

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

    fn get(&self, key: &str) -> Option<Vec<f32>> {
        let bytes = crate::fs::read(self.path(key)).ok()?;
        (bytes.len() == FEATURES * 4).then(|| {
            bytes
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
    /// One vector of [`FEATURES`] per input, `None` where the image failed.
    pub features: Vec<Option<Vec<f32>>>,
    /// `(path, reason)` of each image that failed to read or decode.
    pub failures: Vec<(PathBuf, String)>,
    pub from_cache: usize,
    pub computed: usize,
}

/// Extracts pooled Lite0 features (averaged over orientations with `orientation_mean`) for
/// `paths` in batches. Reads and decodes in parallel,
/// runs the network (call from the thread that owns burn work).
/// `progress(done, total)` is called after each batch; `cancel` stops between batches
/// (the result then holds `None` for the rest).
#[allow(clippy::too_many_arguments)]
pub fn featurize(
    extractor: &Extractor,
    backbone: &str,
    orientation_mean: bool,
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
    // Averaged features are other features: they get their own cache entries.
    let backbone = if orientation_mean {
        format!("{backbone}+orientation-mean")
    } else {
        backbone.to_owned()
    };
    let backbone = backbone.as_str();
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
                let key = cache_key(backbone, preprocess, &bytes);
                if let Some(f) = cache.and_then(|c| c.get(&key)) {
                    return Loaded::Cached(f);
                }
                match crate::dataset::image_io::decode_bytes(&bytes) {
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
            let feats = if orientation_mean {
                extractor.features_orientation_mean(inputs, slots.len(), side)
            } else {
                extractor.features(inputs, slots.len(), side)
            };
            for (j, (slot, key)) in slots.into_iter().enumerate() {
                let f = feats
                    .get(j * FEATURES..(j + 1) * FEATURES)
                    .map(<[f32]>::to_vec);
                if let (Some(f), Some(c)) = (&f, cache) {
                    c.put(&key, f);
                }
                out.features[slot] = f;
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

    /// Orientation-averaged features do not change when the cell is turned or flipped;
    /// plain features do.
    #[test]
    fn orientation_mean_is_the_same_for_every_orientation() {
        let extractor = Extractor::bundled(&burn::tensor::Device::flex()).unwrap();
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
        let img = pre.load(&file).unwrap();
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
        let mean = extractor.features_orientation_mean(both, 2, 64);
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
}
