//! A scatter of many points (the embedding map): on the desktop drawn by our own WGSL shader
//! (`shaders/points.wgsl`, instanced sprites from one buffer uploaded once per point set)
//! through an egui paint callback; in the browser, whose painter is WebGL, as an egui mesh.
//! Panning and zooming change only a small uniform, so 100,000 points cost one draw call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use eframe::egui;

/// One point: position in data units and its colour (sRGB, unmultiplied, `r` in the low byte).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub pos: [f32; 2],
    pub rgba: u32,
}

impl Point {
    pub fn new(pos: [f32; 2], color: egui::Color32) -> Self {
        let [r, g, b, a] = color.to_srgba_unmultiplied();
        Self {
            pos,
            rgba: u32::from_le_bytes([r, g, b, a]),
        }
    }
}

/// A set of points; `key` names its contents (a new key uploads them again).
#[derive(Clone)]
pub struct PointSet {
    pub key: u64,
    pub points: Arc<Vec<Point>>,
}

/// The part of the data plane shown: its centre and half extents, in data units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    pub center: [f32; 2],
    pub half: [f32; 2],
}

impl View {
    /// A view of every point with a margin (a unit square around the origin when empty).
    pub fn fit(points: &[Point]) -> Self {
        let mut lo = [f32::INFINITY; 2];
        let mut hi = [f32::NEG_INFINITY; 2];
        for p in points {
            for a in 0..2 {
                lo[a] = lo[a].min(p.pos[a]);
                hi[a] = hi[a].max(p.pos[a]);
            }
        }
        if !lo[0].is_finite() {
            return Self {
                center: [0.0; 2],
                half: [1.0; 2],
            };
        }
        let half = |a: usize| ((hi[a] - lo[a]) * 0.55).max(1e-6);
        Self {
            center: [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0],
            half: [half(0), half(1)],
        }
    }

    /// Screen position of a data position inside `rect` (data y points up).
    pub fn to_screen(&self, rect: egui::Rect, p: [f32; 2]) -> egui::Pos2 {
        egui::pos2(
            rect.center().x + (p[0] - self.center[0]) / self.half[0] * rect.width() / 2.0,
            rect.center().y - (p[1] - self.center[1]) / self.half[1] * rect.height() / 2.0,
        )
    }

    /// Data position of a screen position inside `rect`.
    pub fn to_data(&self, rect: egui::Rect, s: egui::Pos2) -> [f32; 2] {
        [
            self.center[0] + (s.x - rect.center().x) / (rect.width() / 2.0) * self.half[0],
            self.center[1] - (s.y - rect.center().y) / (rect.height() / 2.0) * self.half[1],
        ]
    }

    /// Moves the view by a screen drag.
    pub fn pan(&mut self, rect: egui::Rect, delta: egui::Vec2) {
        self.center[0] -= delta.x / (rect.width() / 2.0) * self.half[0];
        self.center[1] += delta.y / (rect.height() / 2.0) * self.half[1];
    }

    /// Zooms by `factor` (> 1: closer) keeping the data under `at` in place.
    pub fn zoom(&mut self, rect: egui::Rect, at: egui::Pos2, factor: f32) {
        let before = self.to_data(rect, at);
        for h in &mut self.half {
            *h = (*h / factor).clamp(1e-9, 1e9);
        }
        let after = self.to_data(rect, at);
        self.center[0] += before[0] - after[0];
        self.center[1] += before[1] - after[1];
    }
}

/// The point nearest to screen position `at` within `max_px` (index into `points`).
pub fn nearest(
    points: &[Point],
    view: &View,
    rect: egui::Rect,
    at: egui::Pos2,
    max_px: f32,
) -> Option<usize> {
    let mut best = (max_px * max_px, None);
    for (i, p) in points.iter().enumerate() {
        let d = view.to_screen(rect, p.pos) - at;
        let d2 = d.length_sq();
        if d2 <= best.0 {
            best = (d2, Some(i));
        }
    }
    best.1
}

/// Set when the window's wgpu renderer holds the points pipeline (see [`install`]).
static ON_GPU: AtomicBool = AtomicBool::new(false);

/// Whether points are drawn by the shader (else as an egui mesh).
pub fn on_gpu() -> bool {
    ON_GPU.load(Ordering::Relaxed)
}

/// Draws `set` in `rect` as disks of `radius` points.
pub fn paint(painter: &egui::Painter, rect: egui::Rect, set: &PointSet, view: View, radius: f32) {
    #[cfg(not(target_arch = "wasm32"))]
    if on_gpu() {
        painter.add(eframe::egui_wgpu::Callback::new_paint_callback(
            rect,
            gpu::PointsCallback {
                set: set.clone(),
                uniform: gpu::uniform(view, rect, radius),
            },
        ));
        return;
    }
    paint_mesh(painter, rect, set, view, radius);
}

/// Up to this many points the mesh path draws disks; beyond it, squares (cheaper to tessellate).
const MESH_DISKS: usize = 5000;

/// The same picture as the shader's, as egui shapes (points outside are skipped).
fn paint_mesh(painter: &egui::Painter, rect: egui::Rect, set: &PointSet, view: View, radius: f32) {
    let painter = painter.with_clip_rect(rect);
    let grown = rect.expand(radius);
    let disks = set.points.len() <= MESH_DISKS;
    let mut mesh = egui::Mesh::default();
    for p in set.points.iter() {
        let c = view.to_screen(rect, p.pos);
        if !grown.contains(c) {
            continue;
        }
        let [r, g, b, a] = p.rgba.to_le_bytes();
        let color = egui::Color32::from_rgba_unmultiplied(r, g, b, a);
        if disks {
            painter.circle_filled(c, radius, color);
        } else {
            mesh.add_colored_rect(
                egui::Rect::from_center_size(c, egui::vec2(2.0 * radius, 2.0 * radius)),
                color,
            );
        }
    }
    if !disks {
        painter.add(mesh);
    }
}

/// Creates the points pipeline in the window's renderer (desktop, wgpu). Without it points
/// are drawn as a mesh.
#[cfg(not(target_arch = "wasm32"))]
pub fn install(render_state: &eframe::egui_wgpu::RenderState) {
    let pipeline = gpu::Pipeline::new(&render_state.device, render_state.target_format);
    render_state
        .renderer
        .write()
        .callback_resources
        .insert(pipeline);
    ON_GPU.store(true, Ordering::Relaxed);
}

#[cfg(not(target_arch = "wasm32"))]
mod gpu {
    use std::collections::HashMap;

    use eframe::egui;
    use eframe::egui_wgpu::{self, wgpu};

    use super::{PointSet, View};
    use crate::render::points::{PointsPipeline, UploadedPoints};

    /// Point sets kept on the GPU (least recently drawn dropped first).
    const KEEP: usize = 8;

    /// `View` in `shaders/points.wgsl` for `view` shown in `rect`.
    pub fn uniform(view: View, rect: egui::Rect, radius: f32) -> [f32; 8] {
        crate::render::points::uniform(
            view.center,
            view.half,
            [rect.width(), rect.height()],
            radius,
        )
    }

    /// The shared pipeline and the point sets on the device, in egui's callback resources.
    pub struct Pipeline {
        points: PointsPipeline,
        sets: HashMap<u64, (UploadedPoints, u64)>,
        frame: u64,
    }

    impl Pipeline {
        pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
            Self {
                points: PointsPipeline::new(device, format),
                sets: HashMap::new(),
                frame: 0,
            }
        }
    }

    pub struct PointsCallback {
        pub set: PointSet,
        pub uniform: [f32; 8],
    }

    impl egui_wgpu::CallbackTrait for PointsCallback {
        fn prepare(
            &self,
            device: &wgpu::Device,
            queue: &wgpu::Queue,
            _screen: &egui_wgpu::ScreenDescriptor,
            _encoder: &mut wgpu::CommandEncoder,
            resources: &mut egui_wgpu::CallbackResources,
        ) -> Vec<wgpu::CommandBuffer> {
            let Some(p) = resources.get_mut::<Pipeline>() else {
                return Vec::new();
            };
            p.frame += 1;
            let frame = p.frame;
            if !p.sets.contains_key(&self.set.key) {
                if p.sets.len() >= KEEP
                    && let Some(oldest) = p
                        .sets
                        .iter()
                        .min_by_key(|(_, (_, last_used))| *last_used)
                        .map(|(k, _)| *k)
                {
                    p.sets.remove(&oldest);
                }
                let uploaded = UploadedPoints::new(
                    device,
                    queue,
                    &p.points,
                    self.set.points.iter().map(|q| (q.pos, q.rgba)),
                );
                p.sets.insert(self.set.key, (uploaded, frame));
            }
            if let Some((u, last_used)) = p.sets.get_mut(&self.set.key) {
                *last_used = frame;
                u.set_view(queue, self.uniform);
            }
            Vec::new()
        }

        fn paint(
            &self,
            _info: egui::PaintCallbackInfo,
            pass: &mut wgpu::RenderPass<'static>,
            resources: &egui_wgpu::CallbackResources,
        ) {
            let Some(p) = resources.get::<Pipeline>() else {
                return;
            };
            if let Some((u, _)) = p.sets.get(&self.set.key) {
                u.draw(&p.points, pass);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_maps_data_to_screen_and_back_and_zooms_about_the_cursor() {
        let pts = [
            Point::new([-2.0, 1.0], egui::Color32::RED),
            Point::new([4.0, 3.0], egui::Color32::RED),
        ];
        let mut view = View::fit(&pts);
        let rect = egui::Rect::from_min_size(egui::pos2(10.0, 20.0), egui::vec2(400.0, 200.0));
        for p in &pts {
            let s = view.to_screen(rect, p.pos);
            assert!(rect.contains(s), "{s:?}");
            let back = view.to_data(rect, s);
            assert!((back[0] - p.pos[0]).abs() < 1e-4 && (back[1] - p.pos[1]).abs() < 1e-4);
        }
        // Higher data y is higher on screen (smaller screen y).
        assert!(view.to_screen(rect, [0.0, 3.0]).y < view.to_screen(rect, [0.0, 1.0]).y);
        let at = view.to_screen(rect, pts[1].pos);
        view.zoom(rect, at, 4.0);
        let still = view.to_screen(rect, pts[1].pos);
        assert!((still - at).length() < 1e-3, "{still:?} vs {at:?}");
        assert_eq!(
            nearest(&pts, &view, rect, at + egui::vec2(3.0, 0.0), 6.0),
            Some(1)
        );
        assert_eq!(
            nearest(&pts, &view, rect, at + egui::vec2(30.0, 0.0), 6.0),
            None
        );
    }

    #[test]
    fn colours_pack_as_the_shader_unpacks_them() {
        let p = Point::new([0.0, 0.0], egui::Color32::from_rgb(10, 20, 30));
        // unpack4x8unorm reads the low byte as the first component.
        assert_eq!(p.rgba.to_le_bytes(), [10, 20, 30, 255]);
    }
}
