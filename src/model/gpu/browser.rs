//! The page's WebGPU device, asked for once when the page starts. Features are computed on
//! it when the browser has a GPU; on a software adapter (the browser's fallback) only when
//! the page is opened with `?compute=webgpu`, since WebAssembly on the CPU is then as fast.

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
