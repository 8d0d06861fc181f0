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

    /// Point sets kept on the GPU (least recently drawn dropped first).
    const KEEP: usize = 8;
    /// Bytes per point: two `f32` and one packed colour.
    const STRIDE: u64 = 12;

    /// `View` in `shaders/points.wgsl`: scale, offset, radius, padding.
    pub fn uniform(view: View, rect: egui::Rect, radius: f32) -> [f32; 8] {
        let (sx, sy) = (1.0 / view.half[0], 1.0 / view.half[1]);
        [
            sx,
            sy,
            -view.center[0] * sx,
            -view.center[1] * sy,
            2.0 * radius / rect.width().max(1.0),
            2.0 * radius / rect.height().max(1.0),
            0.0,
            0.0,
        ]
    }

    fn bytes_of(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    struct Uploaded {
        instances: wgpu::Buffer,
        count: u32,
        uniform: wgpu::Buffer,
        bind_group: wgpu::BindGroup,
        last_used: u64,
    }

    pub struct Pipeline {
        pipeline: wgpu::RenderPipeline,
        layout: wgpu::BindGroupLayout,
        sets: HashMap<u64, Uploaded>,
        frame: u64,
    }

    impl Pipeline {
        pub fn new(device: &wgpu::Device, format: wgpu::TextureFormat) -> Self {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("cellbench points"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/points.wgsl").into()),
            });
            let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("cellbench points view"),
                entries: &[wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::VERTEX,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }],
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("cellbench points"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
            let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some("cellbench points"),
                layout: Some(&pipeline_layout),
                vertex: wgpu::VertexState {
                    module: &module,
                    entry_point: Some("vs_main"),
                    buffers: &[Some(wgpu::VertexBufferLayout {
                        array_stride: STRIDE,
                        step_mode: wgpu::VertexStepMode::Instance,
                        attributes: &wgpu::vertex_attr_array![0 => Float32x2, 1 => Uint32],
                    })],
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                },
                primitive: wgpu::PrimitiveState::default(),
                depth_stencil: None,
                multisample: wgpu::MultisampleState::default(),
                fragment: Some(wgpu::FragmentState {
                    module: &module,
                    entry_point: Some("fs_main"),
                    targets: &[Some(wgpu::ColorTargetState {
                        format,
                        blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                }),
                multiview_mask: None,
                cache: None,
            });
            Self {
                pipeline,
                layout,
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
                        .min_by_key(|(_, u)| u.last_used)
                        .map(|(k, _)| *k)
                {
                    p.sets.remove(&oldest);
                }
                let mut data = Vec::with_capacity(self.set.points.len() * STRIDE as usize);
                for q in self.set.points.iter() {
                    data.extend_from_slice(&q.pos[0].to_le_bytes());
                    data.extend_from_slice(&q.pos[1].to_le_bytes());
                    data.extend_from_slice(&q.rgba.to_le_bytes());
                }
                let instances = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("cellbench points"),
                    size: (data.len() as u64).max(STRIDE),
                    usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                queue.write_buffer(&instances, 0, &data);
                let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("cellbench points view"),
                    size: 32,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("cellbench points view"),
                    layout: &p.layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    }],
                });
                p.sets.insert(
                    self.set.key,
                    Uploaded {
                        instances,
                        count: self.set.points.len() as u32,
                        uniform,
                        bind_group,
                        last_used: frame,
                    },
                );
            }
            if let Some(u) = p.sets.get_mut(&self.set.key) {
                u.last_used = frame;
                queue.write_buffer(&u.uniform, 0, &bytes_of(&self.uniform));
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
            let Some(u) = p.sets.get(&self.set.key) else {
                return;
            };
            if u.count == 0 {
                return;
            }
            pass.set_pipeline(&p.pipeline);
            pass.set_bind_group(0, &u.bind_group, &[]);
            pass.set_vertex_buffer(0, u.instances.slice(..));
            pass.draw(0..6, 0..u.count);
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
