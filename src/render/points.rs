//! The embedding map's points (`shaders/points.wgsl`): one instanced draw of six vertices per
//! point from a buffer uploaded once per point set; panning and zooming rewrite a 32-byte
//! uniform. Also an offscreen benchmark of that draw ([`bench`]).

use std::time::Instant;

/// Bytes per point: two `f32` (position in data units) and one packed sRGB colour.
pub const STRIDE: u64 = 12;

/// The `View` uniform of `shaders/points.wgsl` for a plot `size` pixels wide and high showing
/// the data rectangle `center ± half`, with points `radius` pixels in radius.
pub fn uniform(center: [f32; 2], half: [f32; 2], size: [f32; 2], radius: f32) -> [f32; 8] {
    let (sx, sy) = (1.0 / half[0], 1.0 / half[1]);
    [
        sx,
        sy,
        -center[0] * sx,
        -center[1] * sy,
        2.0 * radius / size[0].max(1.0),
        2.0 * radius / size[1].max(1.0),
        0.0,
        0.0,
    ]
}

fn bytes_of(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The compiled shader and its layout, for one colour target format.
pub struct PointsPipeline {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
}

impl PointsPipeline {
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
        Self { pipeline, layout }
    }
}

/// One point set on the device: its instance buffer and its view uniform.
pub struct UploadedPoints {
    instances: wgpu::Buffer,
    count: u32,
    uniform: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

impl UploadedPoints {
    /// Uploads `(position, packed colour)` pairs.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &PointsPipeline,
        points: impl ExactSizeIterator<Item = ([f32; 2], u32)>,
    ) -> Self {
        let count = points.len() as u32;
        let mut data = Vec::with_capacity(points.len() * STRIDE as usize);
        for (pos, rgba) in points {
            data.extend_from_slice(&pos[0].to_le_bytes());
            data.extend_from_slice(&pos[1].to_le_bytes());
            data.extend_from_slice(&rgba.to_le_bytes());
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
            layout: &pipeline.layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: uniform.as_entire_binding(),
            }],
        });
        Self {
            instances,
            count,
            uniform,
            bind_group,
        }
    }

    /// Sets the view (see [`uniform`]) for the next draw.
    pub fn set_view(&self, queue: &wgpu::Queue, view: [f32; 8]) {
        queue.write_buffer(&self.uniform, 0, &bytes_of(&view));
    }

    /// Records the draw of every point into `pass`.
    pub fn draw(&self, pipeline: &PointsPipeline, pass: &mut wgpu::RenderPass<'_>) {
        if self.count == 0 {
            return;
        }
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_vertex_buffer(0, self.instances.slice(..));
        pass.draw(0..6, 0..self.count);
    }
}

/// A wgpu device without a window: a hardware adapter when there is one, else a software one
/// (Mesa's lavapipe), with the adapter's name.
pub fn headless_device() -> anyhow::Result<(wgpu::Device, wgpu::Queue, String)> {
    // Vulkan, Metal or DirectX 12: the GL probe only adds noise on a headless machine.
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    }))
    .map_err(|e| anyhow::anyhow!("no wgpu adapter: {e}"))?;
    let info = adapter.get_info();
    let name = format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("cellbench render"),
        ..Default::default()
    }))
    .map_err(|e| anyhow::anyhow!("no wgpu device on {name}: {e}"))?;
    Ok((device, queue, name))
}

/// The colour format of offscreen targets (that of a typical window surface).
pub const OFFSCREEN_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8UnormSrgb;

/// An offscreen colour target of `width × height`.
pub fn offscreen_target(device: &wgpu::Device, width: u32, height: u32) -> wgpu::Texture {
    device.create_texture(&wgpu::TextureDescriptor {
        label: Some("cellbench offscreen"),
        size: wgpu::Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: OFFSCREEN_FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    })
}

/// Clears `target` to `background` and draws `points` on it; returns once the device is done.
pub fn draw_frame(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    pipeline: &PointsPipeline,
    points: &UploadedPoints,
    target: &wgpu::Texture,
    background: wgpu::Color,
) -> anyhow::Result<()> {
    let view = target.create_view(&wgpu::TextureViewDescriptor::default());
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("cellbench points frame"),
    });
    {
        let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("cellbench points frame"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                depth_slice: None,
                resolve_target: None,
                ops: wgpu::Operations {
                    load: wgpu::LoadOp::Clear(background),
                    store: wgpu::StoreOp::Store,
                },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        points.draw(pipeline, &mut pass);
    }
    queue.submit([encoder.finish()]);
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
    Ok(())
}

/// Reads an offscreen target back as RGBA8 rows (`width × height × 4` bytes).
pub fn read_target(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    target: &wgpu::Texture,
) -> anyhow::Result<Vec<u8>> {
    let (w, h) = (target.width(), target.height());
    let row =
        (w * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("cellbench readback"),
        size: u64::from(row * h),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row),
                rows_per_image: Some(h),
            },
        },
        target.size(),
    );
    queue.submit([encoder.finish()]);
    let slice = buffer.slice(..);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
    let mapped = slice
        .get_mapped_range()
        .map_err(|e| anyhow::anyhow!("reading the target back: {e:?}"))?;
    let mut out = Vec::with_capacity((w * h * 4) as usize);
    for y in 0..h as usize {
        let start = y * row as usize;
        out.extend_from_slice(&mapped[start..start + (w * 4) as usize]);
    }
    Ok(out)
}

/// Timing of the map's draw offscreen.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MapBench {
    pub adapter: String,
    pub points: usize,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    /// Uploading the point set (once).
    pub upload_ms: f64,
    /// Per frame: a new view (pan and zoom), the draw of every point, and waiting for the
    /// device to finish it.
    pub frame_p50_ms: f64,
    pub frame_p95_ms: f64,
    pub frame_max_ms: f64,
}

/// Draws `points` points (five Gaussian clusters, like an embedding of five classes) on a
/// `width × height` offscreen target `frames` times, panning and zooming every frame, and
/// times each frame from recording to the device finishing it. The first frame (pipeline
/// warm-up) is not counted.
pub fn bench(points: usize, width: u32, height: u32, frames: usize) -> anyhow::Result<MapBench> {
    anyhow::ensure!(frames >= 1, "--frames must be at least 1");
    anyhow::ensure!(
        width >= 1 && height >= 1,
        "--width and --height must be at least 1 pixel"
    );
    let (device, queue, adapter) = headless_device()?;
    let limits = device.limits();
    anyhow::ensure!(
        width.max(height) <= limits.max_texture_dimension_2d,
        "{adapter} draws at most {} pixels a side; asked for {width}x{height}",
        limits.max_texture_dimension_2d
    );
    let most = limits.max_buffer_size / STRIDE;
    anyhow::ensure!(
        points as u64 <= most,
        "{adapter} holds at most {most} points in one buffer; asked for {points}"
    );
    let pipeline = PointsPipeline::new(&device, OFFSCREEN_FORMAT);
    let target = offscreen_target(&device, width, height);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform01 = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32
    };
    let colours = [
        0xff4e79a7u32,
        0xfff28e2b,
        0xffe15759,
        0xff76b7b2,
        0xff59a14f,
    ];
    let data: Vec<([f32; 2], u32)> = (0..points)
        .map(|i| {
            let c = i % colours.len();
            let angle = c as f32 * std::f32::consts::TAU / colours.len() as f32;
            // Box–Muller.
            let (u, v) = (uniform01().max(1e-7), uniform01());
            let r = (-2.0 * u.ln()).sqrt() * 0.6;
            let t = std::f32::consts::TAU * v;
            (
                [
                    3.0 * angle.cos() + r * t.cos(),
                    3.0 * angle.sin() + r * t.sin(),
                ],
                colours[c],
            )
        })
        .collect();
    let start = Instant::now();
    let uploaded = UploadedPoints::new(&device, &queue, &pipeline, data.into_iter());
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
    let upload_ms = start.elapsed().as_secs_f64() * 1e3;
    let background = wgpu::Color {
        r: 0.1,
        g: 0.1,
        b: 0.1,
        a: 1.0,
    };
    let size = [width as f32, height as f32];
    let mut times = Vec::with_capacity(frames);
    for f in 0..=frames {
        // Pan in a circle and zoom in and out, as a user exploring the map would.
        let t = f as f32 / frames as f32 * std::f32::consts::TAU;
        let zoom = 1.0 + 0.5 * (2.0 * t).sin();
        let center = [0.8 * t.cos(), 0.8 * t.sin()];
        let start = Instant::now();
        uploaded.set_view(&queue, uniform(center, [5.0 * zoom, 5.0 * zoom], size, 2.5));
        draw_frame(&device, &queue, &pipeline, &uploaded, &target, background)?;
        if f > 0 {
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    Ok(MapBench {
        adapter,
        points,
        width,
        height,
        frames,
        upload_ms,
        frame_p50_ms: at(0.5),
        frame_p95_ms: at(0.95),
        frame_max_ms: at(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drawn offscreen (on Mesa's software Vulkan in the test suite), a point lands where the
    /// view puts it, in its colour, and nothing is drawn elsewhere.
    #[test]
    fn a_point_is_drawn_where_the_view_puts_it_in_its_colour() {
        let (device, queue, _) = headless_device()
            .expect("a wgpu adapter (the test command installs Mesa's software Vulkan)");
        let pipeline = PointsPipeline::new(&device, OFFSCREEN_FORMAT);
        let (w, h) = (64u32, 48u32);
        let target = offscreen_target(&device, w, h);
        // Red at data (2, 1); the view shows x in [0, 4] and y in [-1, 3]: the point is at
        // the horizontal centre, a quarter of the height from the top.
        let red = u32::from_le_bytes([255, 0, 0, 255]);
        let points =
            UploadedPoints::new(&device, &queue, &pipeline, [([2.0, 1.0], red)].into_iter());
        points.set_view(
            &queue,
            uniform([2.0, 0.0], [2.0, 2.0], [w as f32, h as f32], 4.0),
        );
        let black = wgpu::Color {
            r: 0.0,
            g: 0.0,
            b: 0.0,
            a: 1.0,
        };
        draw_frame(&device, &queue, &pipeline, &points, &target, black).unwrap();
        let pixels = read_target(&device, &queue, &target).unwrap();
        let at = |x: u32, y: u32| {
            let i = ((y * w + x) * 4) as usize;
            [pixels[i], pixels[i + 1], pixels[i + 2]]
        };
        assert_eq!(at(32, 12), [255, 0, 0], "the point's centre");
        assert_eq!(at(32, 36), [0, 0, 0], "below it");
        assert_eq!(at(5, 12), [0, 0, 0], "beside it");
        let lit = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .filter(|&(x, y)| at(x, y)[0] > 0)
            .count();
        // A disk of radius 4 px: about 50 pixels.
        assert!((30..=80).contains(&lit), "{lit} pixels lit");
    }
}
