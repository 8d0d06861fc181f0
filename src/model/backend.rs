//! Choosing where tensors live: a GPU through wgpu when one exists, else the CPU backend.

use std::sync::OnceLock;

use burn::tensor::Device;

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A real GPU through wgpu if the machine has one, else the CPU.
    #[default]
    Auto,
    /// wgpu on whatever adapter exists (also software Vulkan such as lavapipe).
    Wgpu,
    /// The CPU backend.
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            "cpu" | "flex" => Ok(Self::Cpu),
            other => Err(format!(
                "unknown backend {other:?} (expected auto, wgpu or cpu)"
            )),
        }
    }
}

/// A device ready for work, with a description to show the user.
#[derive(Clone, Debug)]
pub struct Compute {
    pub device: Device,
    /// e.g. `wgpu: NVIDIA H100 (Vulkan)` or `cpu (flex, 2 threads)`.
    pub description: String,
    pub is_gpu: bool,
}

/// An adapter wgpu can see.
#[derive(Clone, Debug)]
pub struct Adapter {
    pub name: String,
    pub backend: String,
    /// Software rasterisers (lavapipe, llvmpipe) report as CPU.
    pub is_cpu: bool,
}

/// Lists wgpu adapters of the primary APIs (Vulkan, Metal, DX12, WebGPU) without creating a
/// device. Never panics. OpenGL is left out: probing it through EGL prints driver errors on
/// headless machines.
pub fn adapters() -> Vec<Adapter> {
    // Probed once per process: each probe loads the Vulkan drivers again.
    static ADAPTERS: OnceLock<Vec<Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(probe_adapters).clone()
}

/// In the browser this build computes on the CPU path (WebAssembly SIMD); no adapter is probed.
#[cfg(target_arch = "wasm32")]
fn probe_adapters() -> Vec<Adapter> {
    Vec::new()
}

#[cfg(not(target_arch = "wasm32"))]
fn probe_adapters() -> Vec<Adapter> {
    use burn::tensor::wgpu::wgpu;
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY))
    }))
    .unwrap_or_default();
    found
        .iter()
        .map(|a| {
            let info = a.get_info();
            Adapter {
                name: info.name,
                backend: format!("{:?}", info.backend),
                is_cpu: info.device_type == wgpu::DeviceType::Cpu,
            }
        })
        .collect()
}

#[cfg(target_arch = "wasm32")]
fn wgpu_device() -> Result<Compute, String> {
    Err("the browser build computes on the CPU (WebAssembly); wgpu is for the desktop".into())
}

#[cfg(not(target_arch = "wasm32"))]
fn wgpu_device() -> Result<Compute, String> {
    static WGPU: OnceLock<Result<Compute, String>> = OnceLock::new();
    WGPU.get_or_init(|| {
        let device = Device::wgpu_options()
            .init()
            .map_err(|e| format!("no usable wgpu adapter: {e}"))?;
        let name = device
            .identity()
            .map_or_else(|| "unknown adapter".to_owned(), |i| i.name);
        Ok(Compute {
            device,
            description: format!("wgpu: {name}"),
            is_gpu: true,
        })
    })
    .clone()
}

/// True for the CPU backend's device.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

fn cpu_device() -> Compute {
    Compute {
        device: Device::flex(),
        description: match rayon::current_num_threads() {
            1 => "cpu (flex, 1 thread)".to_owned(),
            n => format!("cpu (flex, {n} threads)"),
        },
        is_gpu: false,
    }
}

/// Resolves the user's choice. `Auto` takes wgpu only for a hardware adapter: software
/// Vulkan works but is far slower than the CPU backend.
pub fn select(choice: BackendChoice) -> anyhow::Result<Compute> {
    match choice {
        BackendChoice::Cpu => Ok(cpu_device()),
        BackendChoice::Wgpu => wgpu_device().map_err(anyhow::Error::msg),
        BackendChoice::Auto => {
            if adapters().iter().any(|a| !a.is_cpu) {
                match wgpu_device() {
                    Ok(c) => return Ok(c),
                    Err(e) => log::warn!("{e}; using the CPU"),
                }
            }
            Ok(cpu_device())
        }
    }
}
