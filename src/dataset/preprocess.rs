//! Turning an image file into a normalised tensor: border crop of the black background,
//! square resize, per-channel normalisation; and the seeded augmentations used in training.

use std::path::Path;

use super::split::SplitMix64;

/// How images become network inputs. Part of the feature-cache key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Preprocess {
    /// Side of the square input, in pixels.
    pub size: u32,
    /// Crop to the bounding box of non-black pixels first (cells imaged on black).
    pub border_crop: bool,
    /// After the optional border crop, crop the central square (else squash to a square).
    pub center_crop: bool,
}

impl Default for Preprocess {
    fn default() -> Self {
        Self {
            size: 224,
            border_crop: true,
            center_crop: false,
        }
    }
}

/// Channel values below this (0–255) count as background for the border crop.
const BACKGROUND_MAX: u8 = 24;

impl Preprocess {
    /// A stable text identifying this preprocessing, for cache keys.
    pub fn key(&self) -> String {
        format!(
            "size={};border_crop={};center_crop={};norm=half",
            self.size, self.border_crop, self.center_crop
        )
    }

    /// Decodes (with limits; a truncated file is refused, see
    /// [`super::image_io::decode_file_complete`]) and preprocesses a file into CHW `f32`,
    /// `3 × size × size`.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>, super::image_io::DecodeFailure> {
        Ok(self.apply(&super::image_io::decode_file_complete(path)?))
    }

    /// Preprocesses a decoded image into CHW `f32`.
    pub fn apply(&self, img: &image::DynamicImage) -> Vec<f32> {
        let mut rgb = img.to_rgb8();
        if self.border_crop
            && let Some((x, y, w, h)) = foreground_box(&rgb)
        {
            rgb = image::imageops::crop_imm(&rgb, x, y, w, h).to_image();
        }
        if self.center_crop {
            let side = rgb.width().min(rgb.height());
            let (x, y) = ((rgb.width() - side) / 2, (rgb.height() - side) / 2);
            rgb = image::imageops::crop_imm(&rgb, x, y, side, side).to_image();
        }
        let resized = if rgb.dimensions() == (self.size, self.size) {
            rgb
        } else {
            image::imageops::resize(
                &rgb,
                self.size,
                self.size,
                image::imageops::FilterType::Triangle,
            )
        };
        to_chw_normalised(&resized)
    }
}

/// `[3, H, W]` with `(x / 255 - 0.5) / 0.5`, the normalisation of EfficientNet-Lite.
pub fn to_chw_normalised(img: &image::RgbImage) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0.0; 3 * plane];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = f32::from(p.0[c]) / 127.5 - 1.0;
        }
    }
    out
}

/// Bounding box `(x, y, w, h)` of non-background pixels, grown to a square with a small
/// margin and clamped to the image; `None` when the image is (nearly) all background.
fn foreground_box(img: &image::RgbImage) -> Option<(u32, u32, u32, u32)> {
    let (w, h) = img.dimensions();
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in img.enumerate_pixels() {
        if p.0.iter().any(|&v| v > BACKGROUND_MAX) {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    if x1 < x0 || x1 - x0 < 8 || y1 - y0 < 8 {
        return None;
    }
    let side = ((x1 - x0).max(y1 - y0) as f32 * 1.08) as u32 + 1;
    let side = side.min(w).min(h);
    let cx = (x0 + x1) / 2;
    let cy = (y0 + y1) / 2;
    let x = cx.saturating_sub(side / 2).min(w - side);
    let y = cy.saturating_sub(side / 2).min(h - side);
    Some((x, y, side, side))
}

/// Training-time augmentation, applied to a preprocessed CHW tensor.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Random flips and 90° rotations (the 8 symmetries of the square). Cells have no
    /// orientation, so this is almost always right for microscopy.
    pub dihedral: bool,
    /// Brightness jitter: add a uniform value in `[-b, b]` (in normalised units, 1.0 = half range).
    pub brightness: f32,
    /// Contrast jitter: scale around the mean by a factor in `[1 - c, 1 + c]`.
    pub contrast: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            dihedral: true,
            brightness: 0.1,
            contrast: 0.1,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Self {
        Self {
            dihedral: false,
            brightness: 0.0,
            contrast: 0.0,
        }
    }

    pub fn is_identity(&self) -> bool {
        !self.dihedral && self.brightness == 0.0 && self.contrast == 0.0
    }

    /// Augments `chw` (3 × `side` × `side`) in place with randomness from `rng`.
    pub fn apply(&self, chw: &mut [f32], side: usize, rng: &mut SplitMix64) {
        if self.dihedral {
            dihedral(chw, side, rng.below(8) as u8);
        }
        if self.contrast > 0.0 || self.brightness > 0.0 {
            let c = 1.0 + self.contrast * (2.0 * rng.unit() as f32 - 1.0);
            let b = self.brightness * (2.0 * rng.unit() as f32 - 1.0);
            let mean = chw.iter().sum::<f32>() / chw.len().max(1) as f32;
            for v in chw.iter_mut() {
                *v = ((*v - mean) * c + mean + b).clamp(-1.0, 1.0);
            }
        }
    }
}

/// The symmetries of the square: [`dihedral`]'s `k` runs over `0..ORIENTATIONS`.
pub const ORIENTATIONS: usize = 8;

/// Each channels-first image of `chw` (`[n, 3, side, side]`) in its [`ORIENTATIONS`]
/// orientations, image by image and identity first: `[n * ORIENTATIONS, 3, side, side]`.
pub fn orientations(chw: &[f32], side: usize) -> Vec<f32> {
    let per_image = 3 * side * side;
    let mut views = Vec::with_capacity(chw.len() * ORIENTATIONS);
    for img in chw.chunks_exact(per_image) {
        for k in 0..ORIENTATIONS as u8 {
            let start = views.len();
            views.extend_from_slice(img);
            dihedral(&mut views[start..], side, k);
        }
    }
    views
}

/// Applies symmetry `k` of the square (0 = identity; bit 2 = transpose, bits 0–1 = flips).
pub fn dihedral(chw: &mut [f32], side: usize, k: u8) {
    if k == 0 {
        return;
    }
    let plane = side * side;
    let mut tmp = vec![0.0f32; plane];
    for c in 0..chw.len() / plane {
        let src = &mut chw[c * plane..(c + 1) * plane];
        for y in 0..side {
            for x in 0..side {
                let (mut sx, mut sy) = if k & 4 != 0 { (y, x) } else { (x, y) };
                if k & 1 != 0 {
                    sx = side - 1 - sx;
                }
                if k & 2 != 0 {
                    sy = side - 1 - sy;
                }
                tmp[y * side + x] = src[sy * side + sx];
            }
        }
        src.copy_from_slice(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn border_crop_finds_the_cell_on_black() {
        let mut img = image::RgbImage::new(100, 100);
        for y in 30..50 {
            for x in 40..70 {
                img.put_pixel(x, y, image::Rgb([200, 100, 150]));
            }
        }
        let (x, y, w, h) = foreground_box(&img).unwrap();
        assert_eq!(w, h);
        assert!(
            x <= 40 && x + w >= 69 && y <= 30 && y + h >= 49,
            "{x} {y} {w} {h}"
        );
        assert!(w < 40);
        assert_eq!(foreground_box(&image::RgbImage::new(50, 50)), None);
    }

    #[test]
    fn normalisation_maps_0_255_to_minus1_1() {
        let img = image::RgbImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgb([0, 255, 0])
            } else {
                image::Rgb([255, 0, 255])
            }
        });
        let chw = to_chw_normalised(&img);
        assert_eq!(chw, [-1.0, 1.0, 1.0, -1.0, -1.0, 1.0]);
    }

    #[test]
    fn the_eight_symmetries_are_distinct_and_invertible() {
        let side = 3;
        let base: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let mut seen = std::collections::HashSet::new();
        for k in 0..8u8 {
            let mut t = base.clone();
            dihedral(&mut t, side, k);
            let mut sorted = t.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, base, "a permutation");
            seen.insert(t.iter().map(|v| *v as u8).collect::<Vec<_>>());
        }
        assert_eq!(seen.len(), 8);
        let mut t = base.clone();
        dihedral(&mut t, side, 1); // horizontal flip
        assert_eq!(t, [2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0]);
    }

    #[test]
    fn augmentation_is_seeded() {
        let aug = Augment::default();
        let base: Vec<f32> = (0..3 * 16).map(|v| (v as f32 / 48.0) - 0.5).collect();
        let run = |seed| {
            let mut t = base.clone();
            aug.apply(&mut t, 4, &mut SplitMix64::new(seed));
            t
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
