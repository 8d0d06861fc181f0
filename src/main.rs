// Tensor work allocates and frees large buffers at every layer; mimalloc keeps them instead of
// returning them to the OS each time (the system allocator's unmapping cost a fifth of CPU
// feature extraction).
#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    quiet_vulkan_device_select();
    cellbench::cli::main()
}

/// Mesa's Vulkan device-select layer connects to a Wayland display to order the GPUs, and where
/// none can be reached (a server, a cluster worker, CI, an X11 session over ssh) prints
/// "XDG_RUNTIME_DIR is invalid or not set" for every Vulkan instance, that is for every
/// `--backend auto` command. Wayland is reachable only through `XDG_RUNTIME_DIR`, an absolute
/// `WAYLAND_DISPLAY` or `WAYLAND_SOCKET`; without any of them the layer is switched off (its own
/// switch, `NODEVICE_SELECT`): cellbench chooses its adapter itself. A user's explicit setting is
/// kept.
#[cfg(target_os = "linux")]
fn quiet_vulkan_device_select() {
    let set = |v: &str| std::env::var_os(v).is_some_and(|s| !s.is_empty());
    let absolute_display =
        std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| std::path::Path::new(&d).is_absolute());
    let wayland_reachable = set("XDG_RUNTIME_DIR") || set("WAYLAND_SOCKET") || absolute_display;
    if !wayland_reachable && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: first statement of `main`, before any thread exists.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn quiet_vulkan_device_select() {}
