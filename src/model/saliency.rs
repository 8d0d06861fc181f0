//! Saliency: where in an image the model's score for a class comes from.
//!
//! Probes and fine-tuned networks end in global average pooling and one linear layer, so
//! their class activation map (CAM) is exact and needs no gradient: with `A[p][k]` the last
//! feature map (positions `p`, channels `k`), `μ`, `σ` the probe's standardisation (none for a
//! fine-tuned head) and `w` the head's row for the class,
//!
//! ```text
//! logit = Σ_k w_k (mean_p A[p][k] − μ_k) / σ_k + b  =  mean_p CAM[p] + (b − Σ_k w_k μ_k / σ_k)
//! CAM[p] = Σ_k (w_k / σ_k) A[p][k]
//! ```
//!
//! so the map's mean is the class score up to a constant, and it is what Grad-CAM computes
//! for this architecture (the gradient of the score with respect to `A[p][k]` is
//! `w_k / (σ_k P)` at every position; tested against burn's autodiff).

use image::{Rgb, RgbImage};

/// A class activation map over the last feature map's grid (7×7 for a 224² input).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Saliency {
    pub width: usize,
    pub height: usize,
    /// Row-major, `height × width`: each position's contribution to the class score.
    pub values: Vec<f32>,
    /// The output the map explains (a class, or for an ordinal head the grade score).
    pub class: usize,
    /// What that output is, in words.
    pub explains: String,
    /// Side of the network's input the map was computed at, in pixels (each grid cell is 32).
    pub input_side: usize,
}

impl Saliency {
    /// The grid position with the largest value.
    pub fn peak(&self) -> (usize, usize) {
        let i = super::decision::argmax(&self.values);
        (i % self.width.max(1), i / self.width.max(1))
    }

    /// The map as CSV rows (one line per grid row).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for row in self.values.chunks(self.width.max(1)) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// The map smoothed over neighbouring cells (a 3×3 binomial filter): an edge-detecting
    /// feature answers on a ring around a small object, and the smoothed map peaks at its
    /// centre. What overlays and [`Self::upsampled`] show; the raw map is [`Self::values`].
    pub fn smoothed(&self) -> Vec<f32> {
        let (w, h) = (self.width, self.height);
        let mut out = vec![0.0; self.values.len()];
        for y in 0..h {
            for x in 0..w {
                let (mut sum, mut weight) = (0.0, 0.0);
                for dy in -1i32..=1 {
                    for dx in -1i32..=1 {
                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                        if nx < 0 || ny < 0 || nx >= w as i32 || ny >= h as i32 {
                            continue;
                        }
                        let k =
                            [1.0, 2.0, 1.0][(dx + 1) as usize] * [1.0, 2.0, 1.0][(dy + 1) as usize];
                        sum += k * self.values[ny as usize * w + nx as usize];
                        weight += k;
                    }
                }
                out[y * w + x] = sum / weight;
            }
        }
        out
    }

    /// The smoothed map ([`Self::smoothed`]) bilinearly upsampled to `w × h` pixels (each grid
    /// value at the centre of its cell), normalised to 0..1 over its positive part: what an
    /// overlay shows.
    pub fn upsampled(&self, w: u32, h: u32) -> Vec<f32> {
        let (gw, gh) = (self.width as f32, self.height as f32);
        let values = self.smoothed();
        // Grid coordinate of an image pixel's centre, along an axis of `n` pixels and `g` cells.
        let grid =
            |p: u32, n: u32, g: f32| ((p as f32 + 0.5) / n as f32 * g - 0.5).clamp(0.0, g - 1.0);
        let max = values.iter().copied().fold(0.0f32, f32::max);
        let at = |x: usize, y: usize| values[y * self.width + x].max(0.0);
        let mut out = Vec::with_capacity((w * h) as usize);
        for py in 0..h {
            let gy = grid(py, h, gh);
            let (y0, fy) = (gy.floor() as usize, gy.fract());
            let y1 = (y0 + 1).min(self.height - 1);
            for px in 0..w {
                let gx = grid(px, w, gw);
                let (x0, fx) = (gx.floor() as usize, gx.fract());
                let x1 = (x0 + 1).min(self.width - 1);
                let v = (at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx) * (1.0 - fy)
                    + (at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx) * fy;
                out.push(if max > 0.0 { v / max } else { 0.0 });
            }
        }
        out
    }

    /// `image` with the map laid over it in a colour map (`opacity` 0..1 at the strongest
    /// point; weak parts stay nearly transparent).
    pub fn overlay(&self, image: &RgbImage, opacity: f32) -> RgbImage {
        let (w, h) = image.dimensions();
        let heat = self.upsampled(w, h);
        let mut out = image.clone();
        for (i, px) in out.pixels_mut().enumerate() {
            let v = heat[i];
            let c = colour_map(v);
            let a = opacity.clamp(0.0, 1.0) * v.sqrt();
            for ch in 0..3 {
                px[ch] = (px[ch] as f32 * (1.0 - a) + c[ch] as f32 * a).round() as u8;
            }
        }
        out
    }
}

/// A perceptually ordered colour map (dark blue → red → yellow), `v` in 0..1.
pub fn colour_map(v: f32) -> Rgb<u8> {
    const STOPS: [(f32, [f32; 3]); 5] = [
        (0.0, [20.0, 11.0, 52.0]),
        (0.25, [101.0, 21.0, 110.0]),
        (0.5, [188.0, 55.0, 84.0]),
        (0.75, [246.0, 141.0, 29.0]),
        (1.0, [252.0, 255.0, 164.0]),
    ];
    let v = v.clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|s| s.0 <= v).unwrap_or(0).min(3);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let t = (v - a.0) / (b.0 - a.0);
    let mix = |k: usize| (a.1[k] + (b.1[k] - a.1[k]) * t).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

/// The CAM of one output: `cam[p] = Σ_k (weights[k] / std[k]) · map[p][k]` for a
/// channels-last map `[positions, channels]`.
pub fn class_activation_map(
    map: &[f32],
    channels: usize,
    weights: &[f32],
    std: &[f32],
) -> Vec<f32> {
    let scaled: Vec<f32> = weights
        .iter()
        .enumerate()
        .map(|(k, w)| w / std.get(k).copied().filter(|s| *s > 0.0).unwrap_or(1.0))
        .collect();
    map.chunks_exact(channels)
        .map(|row| row.iter().zip(&scaled).map(|(a, w)| a * w).sum())
        .collect()
}

/// A map `[h · w]` resampled onto a coarser `[oh · ow]` grid covering the same image: each
/// coarse cell is the mean of the fine cells whose centres fall in it (a grid twice as fine
/// keeps its mean exactly).
pub fn to_grid(map: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let mut sum = vec![0.0f32; oh * ow];
    let mut count = vec![0u32; oh * ow];
    for y in 0..h {
        let cy = ((y * 2 + 1) * oh / (2 * h)).min(oh - 1);
        for x in 0..w {
            let cx = ((x * 2 + 1) * ow / (2 * w)).min(ow - 1);
            sum[cy * ow + cx] += map[y * w + x];
            count[cy * ow + cx] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, &c)| if c > 0 { s / c as f32 } else { 0.0 })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as f32 / u32::MAX as f32
            })
            .collect()
    }

    /// A map on a grid twice as fine keeps its mean on the coarse grid, and each coarse cell
    /// is the mean of the four fine cells over it.
    #[test]
    fn a_finer_map_moved_to_the_coarse_grid_keeps_its_mean() {
        let fine = noise(8 * 6, 3);
        let coarse = to_grid(&fine, (8, 6), (4, 3));
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean(&fine) - mean(&coarse)).abs() < 1e-6);
        let want = (fine[0] + fine[1] + fine[6] + fine[7]) / 4.0;
        assert!((coarse[0] - want).abs() < 1e-6);
        // The same grid is unchanged.
        assert_eq!(to_grid(&fine, (8, 6), (8, 6)), fine);
    }

    /// The CAM is exact: its mean is the class score up to the head's constant, and it is
    /// the gradient-based map (Grad-CAM) computed by burn's autodiff through the same
    /// standardisation and head.
    #[test]
    fn cam_is_the_gradient_based_map_of_the_same_head() {
        use burn::tensor::{Device, Tensor, TensorData};
        let (p, k, classes, class) = (49, 24, 3, 1);
        let map: Vec<f32> = noise(p * k, 7).iter().map(|v| v * 6.0).collect();
        let weight: Vec<f32> = noise(k * classes, 11).iter().map(|v| v - 0.5).collect();
        let bias = [0.1f32, -0.3, 0.2];
        let mean: Vec<f32> = noise(k, 13).iter().map(|v| v * 3.0).collect();
        let std: Vec<f32> = noise(k, 17).iter().map(|v| 0.5 + v).collect();

        let device = Device::flex().autodiff();
        let a =
            Tensor::<2>::from_data(TensorData::new(map.clone(), [p, k]), &device).require_grad();
        let mean_t = Tensor::<2>::from_data(TensorData::new(mean.clone(), [1, k]), &device);
        let std_t = Tensor::<2>::from_data(TensorData::new(std.clone(), [1, k]), &device);
        let w_t = Tensor::<2>::from_data(TensorData::new(weight.clone(), [k, classes]), &device);
        let b_t = Tensor::<2>::from_data(TensorData::new(bias.to_vec(), [1, classes]), &device);
        let logits = ((a.clone().mean_dim(0) - mean_t) / std_t).matmul(w_t) + b_t;
        let score = logits.slice([0..1, class..class + 1]).sum();
        let logit = score
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap()[0];
        let grads = score.backward();
        let g = a
            .grad(&grads)
            .expect("a gradient for the map")
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        // Grad-CAM: channel weights are the gradients summed over positions.
        let alpha: Vec<f32> = (0..k).map(|c| (0..p).map(|i| g[i * k + c]).sum()).collect();
        let grad_cam: Vec<f32> = map
            .chunks_exact(k)
            .map(|row| row.iter().zip(&alpha).map(|(x, w)| x * w).sum())
            .collect();

        let column: Vec<f32> = weight.chunks_exact(classes).map(|w| w[class]).collect();
        let cam = class_activation_map(&map, k, &column, &std);
        let scale = cam.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        for (x, y) in cam.iter().zip(&grad_cam) {
            assert!((x - y).abs() <= 1e-4 * scale.max(1.0), "{x} vs {y}");
        }
        let constant: f32 = bias[class] - (0..k).map(|c| column[c] * mean[c] / std[c]).sum::<f32>();
        let mean_cam = cam.iter().sum::<f32>() / p as f32;
        assert!(
            (mean_cam + constant - logit).abs() < 1e-3,
            "{mean_cam} + {constant} vs {logit}"
        );
    }

    #[test]
    fn upsampling_keeps_the_peak_where_the_grid_has_it() {
        let mut values = vec![0.0; 49];
        values[2 * 7 + 5] = 3.0; // column 5, row 2
        let s = Saliency {
            width: 7,
            height: 7,
            values,
            class: 0,
            explains: String::new(),
            input_side: 224,
        };
        assert_eq!(s.peak(), (5, 2));
        let up = s.upsampled(224, 224);
        let i = crate::model::decision::argmax(&up);
        let (x, y) = (i % 224, i / 224);
        // Cell (5, 2) covers pixels 160..192 × 64..96.
        assert!((160..192).contains(&x) && (64..96).contains(&y), "{x},{y}");
        assert!(up[i] > 0.95, "{}", up[i]);
        assert_eq!(s.to_csv().lines().count(), 7);
        assert_eq!(colour_map(0.0), Rgb([20, 11, 52]));
        assert_eq!(colour_map(1.0), Rgb([252, 255, 164]));
    }
}
