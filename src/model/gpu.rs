//! The frozen Lite0 backbone on a GPU through our own WGSL (`shaders/lite.wgsl`): the
//! batch-norm-folded network of [`FusedLite`] — the same weights, layouts and padding — as one
//! compute pass per batch of images.
//!
//! It needs nothing but a `wgpu` device, so the same code runs in the browser on WebGPU
//! (where a page cannot block on the GPU: [`GpuLite::submit`] returns at once and
//! [`GpuLite::take`] collects the features on a later frame) and natively on Vulkan, Metal or
//! DirectX 12 ([`GpuLite::features`] waits). A test holds it to [`FusedLite`] on Mesa's
//! software Vulkan.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::fused::{FusedLite, Pointwise, same};

/// The shader's `Params`, sixteen `u32` in declaration order.
#[derive(Clone, Copy, Default)]
struct Params {
    n: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    c_in: u32,
    c_out: u32,
    k: u32,
    stride: u32,
    pad_y: u32,
    pad_x: u32,
    w_off: u32,
    b_off: u32,
    act: u32,
    out_width: u32,
    out_off: u32,
}

impl Params {
    fn bytes(&self) -> Vec<u8> {
        [
            self.n,
            self.h,
            self.w,
            self.oh,
            self.ow,
            self.c_in,
            self.c_out,
            self.k,
            self.stride,
            self.pad_y,
            self.pad_x,
            self.w_off,
            self.b_off,
            self.act,
            self.out_width,
            self.out_off,
        ]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
    }
}

/// The shader's entry points; a kernel's number is its pipeline's index.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Stem,
    Pointwise,
    Depthwise,
    Pool,
}

/// Entry point names, in [`Kernel`] order.
const KERNELS: [&str; 4] = ["stem", "pointwise", "depthwise", "pool"];

/// Where an operation reads or writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Buf {
    Input,
    /// One of the three activation buffers.
    Act(usize),
    Output,
    Weights,
}

/// One dispatch, before buffers exist.
struct Step {
    kernel: Kernel,
    params: Params,
    src: Buf,
    dst: Buf,
    extra: Buf,
    /// Values written (for the activation buffers' size) and the workgroup grid.
    written: usize,
    groups: (u32, u32),
}

/// Invocations per workgroup of the one-dimensional kernels (the shader's `GROUP`).
const GROUP: usize = 64;

/// A grid of workgroups covering `threads` one-dimensional invocations.
fn grid(threads: usize) -> (u32, u32) {
    let groups = threads.div_ceil(GROUP).max(1);
    let x = groups.min(32_768);
    (x as u32, groups.div_ceil(x) as u32)
}

/// The network as a list of dispatches for a batch of `n` images of `side × side`, with the
/// packed weights. Pools the final activation at 0 of each image's output and the outputs of
/// the first `t` blocks for each `t` of `taps` after it.
fn plan(net: &FusedLite, n: usize, side: usize, taps: &[usize]) -> (Vec<Step>, Vec<f32>, usize) {
    let mut weights = Vec::new();
    let mut pack = |w: &[f32], b: &[f32]| {
        let w_off = weights.len() as u32;
        weights.extend_from_slice(w);
        let b_off = weights.len() as u32;
        weights.extend_from_slice(b);
        (w_off, b_off)
    };
    let width = net.pooled_width(taps);
    let mut steps = Vec::new();
    let u = |v: usize| v as u32;

    let (oh, pad_y) = same(side, 3, 2);
    let (ow, pad_x) = same(side, 3, 2);
    let (w_off, b_off) = pack(&net.stem.w, &net.stem.b);
    let c = net.stem.c_out;
    steps.push(Step {
        kernel: Kernel::Stem,
        params: Params {
            n: u(n),
            h: u(side),
            w: u(side),
            oh: u(oh),
            ow: u(ow),
            c_in: 3,
            c_out: u(c),
            pad_y: u(pad_y),
            pad_x: u(pad_x),
            w_off,
            b_off,
            act: 1,
            ..Params::default()
        },
        src: Buf::Input,
        dst: Buf::Act(0),
        extra: Buf::Weights,
        written: n * oh * ow * c,
        groups: grid(n * oh * ow * c),
    });

    let pointwise = |pw: &Pointwise,
                     (w_off, b_off): (u32, u32),
                     (h, w): (usize, usize),
                     src: Buf,
                     dst: Buf,
                     residual: Option<Buf>| Step {
        kernel: Kernel::Pointwise,
        params: Params {
            n: u(n),
            h: u(h),
            w: u(w),
            oh: u(h),
            ow: u(w),
            c_in: u(pw.c_in),
            c_out: u(pw.c_out),
            w_off,
            b_off,
            act: if residual.is_some() {
                2
            } else {
                u32::from(pw.relu6)
            },
            ..Params::default()
        },
        src,
        dst,
        extra: residual.unwrap_or(Buf::Weights),
        written: n * h * w * pw.c_out,
        groups: (u(pw.c_out.div_ceil(64)), u((n * h * w).div_ceil(64)).max(1)),
    };
    let pool = |(h, w, c): (usize, usize, usize), src: Buf, out_off: usize| Step {
        kernel: Kernel::Pool,
        params: Params {
            n: u(n),
            h: u(h),
            w: u(w),
            c_in: u(c),
            out_width: u(width),
            out_off: u(out_off),
            ..Params::default()
        },
        src,
        dst: Buf::Output,
        extra: Buf::Weights,
        written: 0,
        groups: grid(n * c),
    };

    // The activation in `x`, scratch in `t1` and `t2`, as the CPU network does.
    let (mut x, mut t1, t2) = (0, 1, 2);
    let (mut h, mut w) = (oh, ow);
    let mut tap_off = super::efficientnet::FEATURES;
    for (i, block) in net.blocks.iter().enumerate() {
        let input = match &block.expand {
            Some(e) => {
                let offs = pack(&e.w, &e.b);
                steps.push(pointwise(e, offs, (h, w), Buf::Act(x), Buf::Act(t1), None));
                t1
            }
            None => x,
        };
        let d = &block.depthwise;
        let (oh, pad_y) = same(h, d.k, d.stride);
        let (ow, pad_x) = same(w, d.k, d.stride);
        let (w_off, b_off) = pack(&d.w, &d.b);
        steps.push(Step {
            kernel: Kernel::Depthwise,
            params: Params {
                n: u(n),
                h: u(h),
                w: u(w),
                oh: u(oh),
                ow: u(ow),
                c_in: u(d.c),
                c_out: u(d.c),
                k: u(d.k),
                stride: u(d.stride),
                pad_y: u(pad_y),
                pad_x: u(pad_x),
                w_off,
                b_off,
                act: 1,
                ..Params::default()
            },
            src: Buf::Act(input),
            dst: Buf::Act(t2),
            extra: Buf::Weights,
            written: n * oh * ow * d.c,
            groups: grid(n * oh * ow * d.c),
        });
        (h, w) = (oh, ow);
        let offs = pack(&block.project.w, &block.project.b);
        let residual = block.residual.then_some(Buf::Act(x));
        steps.push(pointwise(
            &block.project,
            offs,
            (h, w),
            Buf::Act(t2),
            Buf::Act(t1),
            residual,
        ));
        std::mem::swap(&mut x, &mut t1);
        if taps.contains(&(i + 1)) {
            let c = block.project.c_out;
            steps.push(pool((h, w, c), Buf::Act(x), tap_off));
            tap_off += c;
        }
    }
    let offs = pack(&net.head.w, &net.head.b);
    steps.push(pointwise(
        &net.head,
        offs,
        (h, w),
        Buf::Act(x),
        Buf::Act(t1),
        None,
    ));
    steps.push(pool((h, w, net.head.c_out), Buf::Act(t1), 0));
    (steps, weights, width)
}

/// The outcome of GPU work known only later: 0 not yet, 1 done, 2 failed (with a message).
#[derive(Default)]
struct Outcome {
    state: AtomicU8,
    message: std::sync::Mutex<String>,
}

impl Outcome {
    fn set(&self, error: Option<String>) {
        if let Some(e) = error {
            *self.message.lock().unwrap_or_else(|p| p.into_inner()) = e;
            self.state.store(2, Ordering::SeqCst);
        } else {
            self.state
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .ok();
        }
    }

    /// `None` while unknown, else whether it succeeded (the error's message if not).
    fn get(&self) -> Option<Result<(), String>> {
        match self.state.load(Ordering::SeqCst) {
            0 => None,
            1 => Some(Ok(())),
            _ => Some(Err(self
                .message
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone())),
        }
    }
}

/// Captures the device's validation and out-of-memory errors of the work `f` does into
/// `outcome`: at once where the device answers at once (native), when the browser answers on
/// a page. A WebGPU error arrives after the call that caused it, so work is trusted only once
/// its outcome is known.
fn checked<T>(device: &wgpu::Device, outcome: &Arc<Outcome>, f: impl FnOnce() -> T) -> T {
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let out = f();
    let (memory, validation) = (memory.pop(), validation.pop());
    let outcome = outcome.clone();
    let settle = async move {
        let error = memory.await.or(validation.await);
        outcome.set(error.map(|e| e.to_string()));
    };
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_futures::spawn_local(settle);
    #[cfg(not(target_arch = "wasm32"))]
    pollster::block_on(settle);
    out
}

/// One batch on its way back from the GPU (see [`GpuLite::submit`]).
pub struct Pending {
    /// The copy back to readable memory.
    mapped: Arc<Outcome>,
    /// The device's errors for the batch's commands.
    errors: Arc<Outcome>,
    images: usize,
}

/// The compiled network on one device, for batches of up to [`Self::batch`] images.
pub struct GpuLite {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Vec<wgpu::ComputePipeline>,
    /// Each dispatch: its kernel, bindings and grid.
    ops: Vec<(Kernel, wgpu::BindGroup, (u32, u32))>,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    staging: wgpu::Buffer,
    batch: usize,
    side: usize,
    width: usize,
    /// The bind groups' buffers, kept for as long as they are.
    _buffers: Vec<wgpu::Buffer>,
    /// The device's errors while the network was compiled and its weights uploaded.
    built: Arc<Outcome>,
    /// The copy back of the batch submitted last, until [`Self::take`] collects it (a batch
    /// whose caller stopped waiting is released by the next [`Self::ready`]).
    outstanding: std::sync::Mutex<Option<Arc<Outcome>>>,
}

impl GpuLite {
    /// Compiles `net` for batches of at most `batch` images of `side × side` (fewer where an
    /// activation would pass the device's storage-buffer limit), pooling the blocks in `taps`
    /// as [`FusedLite::pooled`] does.
    pub fn new(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        net: &FusedLite,
        side: usize,
        batch: usize,
        taps: &[usize],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(side >= 8, "images of {side} pixels are too small");
        let asked = batch.max(1);
        let (mut steps, mut weights, width) = plan(net, asked, side, taps);
        // The largest activation sizes the batch (every activation holds `n` images).
        let per_image = steps.iter().map(|s| s.written).max().unwrap_or(asked) / asked * 4;
        let limit = device.limits().max_storage_buffer_binding_size as usize;
        anyhow::ensure!(
            per_image <= limit,
            "one {side}×{side} image needs {per_image} bytes of activations, more than the \
             device's storage limit of {limit}"
        );
        let batch = asked.min(limit / per_image);
        if batch < asked {
            (steps, weights, _) = plan(net, batch, side, taps);
        }
        let built = Arc::new(Outcome::default());
        let this = checked(device, &built, || {
            Self::build(device, queue, &steps, &weights, batch, side, width)
        });
        Ok(Self { built, ..this })
    }

    /// Whether a batch can be submitted: none is on its way back. A batch nobody collected
    /// (its job was stopped) is released here once its copy is done.
    pub fn ready(&self) -> bool {
        self.release(None)
    }

    /// Releases the readback of the batch submitted last once its copy is known (unmapping
    /// it), when that batch is `of` (any with `None`). True when no batch is outstanding.
    fn release(&self, of: Option<&Arc<Outcome>>) -> bool {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mapped) = outstanding.as_ref() else {
            return true;
        };
        if of.is_some_and(|p| !Arc::ptr_eq(p, mapped)) {
            return false;
        }
        match mapped.get() {
            None => false,
            Some(result) => {
                if result.is_ok() {
                    self.staging.unmap();
                }
                *outstanding = None;
                true
            }
        }
    }

    fn build(
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        steps: &[Step],
        weights: &[f32],
        batch: usize,
        side: usize,
        width: usize,
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("cellbench lite"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/lite.wgsl").into()),
        });
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("cellbench lite"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, false),
                storage(4, true),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("cellbench lite"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = KERNELS
            .iter()
            .map(|entry| {
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
            })
            .collect();

        let buffer = |label: &str, floats: usize, usage: wgpu::BufferUsages| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (floats.max(1) * 4) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let store = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        let weights_buf = buffer("cellbench lite weights", weights.len(), store);
        queue.write_buffer(&weights_buf, 0, &f32_bytes(weights));
        let input = buffer("cellbench lite input", batch * 3 * side * side, store);
        let act_len = steps.iter().map(|s| s.written).max().unwrap_or(1);
        let acts: Vec<wgpu::Buffer> = (0..3)
            .map(|_| {
                buffer(
                    "cellbench lite activation",
                    act_len,
                    wgpu::BufferUsages::STORAGE,
                )
            })
            .collect();
        let output = buffer(
            "cellbench lite features",
            batch * width,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let staging = buffer(
            "cellbench lite readback",
            batch * width,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );

        let mut uniforms = Vec::with_capacity(steps.len());
        let mut ops = Vec::with_capacity(steps.len());
        for step in steps {
            let uniform = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("cellbench lite params"),
                size: 64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            queue.write_buffer(&uniform, 0, &step.params.bytes());
            let pick = |b: Buf| match b {
                Buf::Input => &input,
                Buf::Act(i) => &acts[i],
                Buf::Output => &output,
                Buf::Weights => &weights_buf,
            };
            let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("cellbench lite"),
                layout: &layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniform.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: weights_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: pick(step.src).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: pick(step.dst).as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 4,
                        resource: pick(step.extra).as_entire_binding(),
                    },
                ],
            });
            uniforms.push(uniform);
            ops.push((step.kernel, bind, step.groups));
        }
        let mut kept = uniforms;
        kept.push(weights_buf);
        kept.extend(acts);
        Self {
            device: device.clone(),
            queue: queue.clone(),
            pipelines,
            ops,
            input,
            output,
            staging,
            batch,
            side,
            width,
            _buffers: kept,
            built: Arc::default(),
            outstanding: Default::default(),
        }
    }

    /// Images per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Values per image's features.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Starts the features of up to [`Self::batch`] channels-first images `[n, 3, side,
    /// side]`; returns at once. One batch is in flight at a time: collect it with
    /// [`Self::take`] before submitting the next.
    pub fn submit(&self, images: &[f32]) -> anyhow::Result<Pending> {
        let per_image = 3 * self.side * self.side;
        anyhow::ensure!(
            !images.is_empty() && images.len().is_multiple_of(per_image),
            "input is not [n, 3, {0}, {0}]",
            self.side
        );
        let n = images.len() / per_image;
        anyhow::ensure!(n <= self.batch, "{n} images in a batch of {}", self.batch);
        anyhow::ensure!(self.ready(), "a batch is still on its way back");
        // Zeros after the last image: the network runs the whole batch.
        let mut padded = f32_bytes(images);
        padded.resize(self.batch * per_image * 4, 0);
        let errors = Arc::new(Outcome::default());
        let mapped = Arc::new(Outcome::default());
        checked(&self.device, &errors, || self.encode(&padded, n, &mapped));
        *self.outstanding.lock().unwrap_or_else(|p| p.into_inner()) = Some(mapped.clone());
        Ok(Pending {
            mapped,
            errors,
            images: n,
        })
    }

    /// Writes the input, runs the network and starts the copy of `n` images' features back.
    fn encode(&self, padded: &[u8], n: usize, mapped: &Arc<Outcome>) {
        self.queue.write_buffer(&self.input, 0, padded);
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("cellbench lite"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("cellbench lite"),
                timestamp_writes: None,
            });
            for (kernel, bind, (x, y)) in &self.ops {
                pass.set_pipeline(&self.pipelines[*kernel as usize]);
                pass.set_bind_group(0, bind, &[]);
                pass.dispatch_workgroups(*x, *y, 1);
            }
        }
        let bytes = (n * self.width * 4) as u64;
        encoder.copy_buffer_to_buffer(&self.output, 0, &self.staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let done = mapped.clone();
        self.staging
            .slice(..bytes)
            .map_async(wgpu::MapMode::Read, move |r| {
                done.set(r.err().map(|e| e.to_string()));
            });
    }

    /// The features `[n, width]` of a submitted batch once the GPU has them and has reported
    /// no error for the network or the batch; `None` while either is unknown.
    pub fn take(&self, pending: &Pending) -> Option<anyhow::Result<Vec<f32>>> {
        let (built, errors, mapped) = (
            self.built.get()?,
            pending.errors.get()?,
            pending.mapped.get()?,
        );
        let failed = |what: &str, e: String| Some(Err(anyhow::anyhow!("{what}: {e}")));
        if let Err(e) = built {
            return failed("compiling the feature network on the GPU", e);
        }
        let out = match (errors, mapped) {
            (Err(e), _) => failed("computing features on the GPU", e),
            (_, Err(e)) => failed("reading features back from the GPU", e),
            (Ok(()), Ok(())) => {
                let bytes = (pending.images * self.width * 4) as u64;
                let out = self
                    .staging
                    .slice(..bytes)
                    .get_mapped_range()
                    .map(|view| {
                        view.chunks_exact(4)
                            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                            .collect::<Vec<f32>>()
                    })
                    .map_err(|e| anyhow::anyhow!("reading features back from the GPU: {e:?}"));
                Some(out)
            }
        };
        self.release(Some(&pending.mapped));
        out
    }

    /// Features `[n, width]` of any number of channels-first images, waiting for the device
    /// (not in a browser page, which cannot wait).
    pub fn features(&self, images: &[f32]) -> anyhow::Result<Vec<f32>> {
        let per_image = 3 * self.side * self.side;
        let mut out = Vec::with_capacity(images.len() / per_image.max(1) * self.width);
        for chunk in images.chunks(self.batch * per_image) {
            while !self.ready() {
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
            }
            let pending = self.submit(chunk)?;
            loop {
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .map_err(|e| anyhow::anyhow!("waiting for the device: {e}"))?;
                if let Some(f) = self.take(&pending) {
                    out.extend(f?);
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::model::efficientnet::{Backbone, FEATURES};

    /// The WGSL network computes what the CPU network computes, with the pretrained weights,
    /// on whatever adapter the machine has (Mesa's software Vulkan under the tests), for a
    /// batch that does not fill the compiled one and with multi-scale pools.
    #[test]
    fn gpu_features_equal_the_cpu_network() {
        let (device, queue, name) = crate::render::points::headless_device()
            .expect("a wgpu adapter (the test command installs Mesa's software Vulkan)");
        let cpu = burn::tensor::Device::flex();
        let model =
            crate::model::extractor::load_backbone(Backbone::Lite0, &cpu).expect("bundled Lite0");
        let net = FusedLite::from_model(&model);
        let side = 64;
        let mut rng = 7u64;
        let images: Vec<f32> = (0..3 * 3 * side * side)
            .map(|_| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((rng >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        let taps = [11, 15];
        let gpu = GpuLite::new(&device, &queue, &net, side, 4, &taps).expect("compiles");
        assert_eq!(gpu.width(), net.pooled_width(&taps));
        // A batch whose caller stopped waiting holds nothing up.
        let abandoned = gpu.submit(&images[..3 * side * side]).expect("submits");
        assert!(
            !gpu.ready(),
            "natively the copy completes when the device is polled"
        );
        drop(abandoned);
        let got = gpu.features(&images).expect("runs");
        let want = net.pooled(&images, side, side, &taps);
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{name}: largest difference {worst}");
        // Not all zeros: the comparison means something.
        assert!(want[..FEATURES].iter().any(|v| v.abs() > 1e-3));
    }
}

/// The page's WebGPU device, asked for once when the page starts. Features are computed on
/// it when the browser has a GPU; on a software adapter (the browser's fallback) only when
/// the page is opened with `?compute=webgpu`, since WebAssembly on the CPU is then as fast.
#[cfg(target_arch = "wasm32")]
pub mod browser {
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;

    use super::GpuLite;
    use crate::model::fused::FusedLite;

    /// Where the page computes features (the `compute` parameter of its address).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Preference {
        /// WebGPU on a hardware adapter, else the CPU.
        Auto,
        /// WebGPU on any adapter the browser offers, software ones included.
        WebGpu,
        Cpu,
    }

    impl Preference {
        /// `auto`, `webgpu` or `cpu`.
        pub fn parse(s: &str) -> Option<Self> {
            match s {
                "auto" => Some(Self::Auto),
                "webgpu" | "gpu" => Some(Self::WebGpu),
                "cpu" => Some(Self::Cpu),
                _ => None,
            }
        }
    }

    enum State {
        Asking,
        Ready {
            device: wgpu::Device,
            queue: wgpu::Queue,
            /// The adapter's description (browsers may leave it empty).
            adapter: String,
            software: bool,
        },
        Unavailable(String),
    }

    /// The network compiled on the device last, by image side and multi-scale taps.
    type Compiled = Vec<((usize, Vec<usize>), Arc<GpuLite>)>;

    thread_local! {
        static STATE: RefCell<State> = const { RefCell::new(State::Unavailable(String::new())) };
        static PREFERENCE: Cell<Preference> = const { Cell::new(Preference::Auto) };
        static NETWORKS: RefCell<Compiled> = const { RefCell::new(Vec::new()) };
    }

    /// Asks the browser for a WebGPU device; the answer arrives a few frames later (until
    /// then features are computed on the CPU).
    pub fn start(preference: Preference) {
        PREFERENCE.set(preference);
        if preference == Preference::Cpu {
            STATE.replace(State::Unavailable(
                "the page was opened with ?compute=cpu".into(),
            ));
            return;
        }
        STATE.replace(State::Asking);
        wasm_bindgen_futures::spawn_local(async {
            let state = acquire().await.unwrap_or_else(State::Unavailable);
            STATE.replace(state);
            log::info!("features compute on: {}", describe());
        });
    }

    async fn acquire() -> Result<State, String> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::BROWSER_WEBGPU,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                log::info!("no WebGPU adapter: {e}");
                "this browser offers no WebGPU adapter".to_owned()
            })?;
        let info = adapter.get_info();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("cellbench"),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("WebGPU gave no device: {e}"))?;
        // Errors are captured per batch (see `checked`); anything else is logged, never a
        // panic of the page. A lost device (a GPU reset, a driver update) sends features back
        // to the CPU for the rest of the page's life.
        device.on_uncaptured_error(Arc::new(|e| log::error!("WebGPU: {e}")));
        device.set_device_lost_callback(|_, message| {
            log::warn!("the WebGPU device was lost ({message}); features continue on the CPU");
            STATE.replace(State::Unavailable(format!(
                "the WebGPU device was lost ({message})"
            )));
            NETWORKS.replace(Vec::new());
        });
        Ok(State::Ready {
            device,
            queue,
            adapter: info.name,
            software: info.device_type == wgpu::DeviceType::Cpu,
        })
    }

    /// Whether the browser has answered (a device, or none).
    pub fn answered() -> bool {
        STATE.with_borrow(|s| !matches!(s, State::Asking))
    }

    fn used(software: bool) -> bool {
        match PREFERENCE.get() {
            Preference::Auto => !software,
            Preference::WebGpu => true,
            Preference::Cpu => false,
        }
    }

    /// Where features are computed, for the page: `WebGPU (adapter)` or `CPU (why)`.
    pub fn describe() -> String {
        STATE.with_borrow(|s| match s {
            State::Asking => "CPU (WebAssembly) until the browser answers for WebGPU".into(),
            State::Ready {
                adapter, software, ..
            } if used(*software) => {
                let kind = if *software {
                    "a software adapter"
                } else {
                    "the GPU"
                };
                if adapter.is_empty() {
                    format!("WebGPU ({kind})")
                } else {
                    format!("WebGPU ({kind}: {adapter})")
                }
            }
            State::Ready { .. } => "CPU (WebAssembly): this browser's WebGPU is a software \
                 adapter, slower than the CPU; open the page with ?compute=webgpu to use it anyway"
                .into(),
            State::Unavailable(why) if why.is_empty() => "CPU (WebAssembly)".into(),
            State::Unavailable(why) => format!("CPU (WebAssembly): {why}"),
        })
    }

    /// `net` compiled on the page's WebGPU device for `side × side` images with `taps`, when
    /// the page computes there (once per side and taps).
    pub fn network(net: &FusedLite, side: usize, taps: &[usize]) -> Option<Arc<GpuLite>> {
        let (device, queue) = STATE.with_borrow(|s| match s {
            State::Ready {
                device,
                queue,
                software,
                ..
            } if used(*software) => Some((device.clone(), queue.clone())),
            _ => None,
        })?;
        let key = (side, taps.to_vec());
        if let Some(n) =
            NETWORKS.with_borrow(|c| c.iter().find(|(k, _)| *k == key).map(|e| e.1.clone()))
        {
            return Some(n);
        }
        // Eight images (or one image's eight orientations) per batch. One network is kept
        // (its activations take about 40 MB of GPU memory at 224 pixels).
        match GpuLite::new(&device, &queue, net, side, 8, taps) {
            Ok(n) => {
                let n = Arc::new(n);
                NETWORKS.replace(vec![(key, n.clone())]);
                Some(n)
            }
            Err(e) => {
                log::warn!("the feature network does not fit this GPU ({e:#}); using the CPU");
                None
            }
        }
    }
}
