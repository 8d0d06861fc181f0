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

use super::fused::FusedLite;
use plan::{Buf, KERNELS, Kernel, Step, plan};

#[cfg(target_arch = "wasm32")]
pub mod browser;
mod plan;

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
