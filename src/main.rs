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

/// Mesa's Vulkan device-select layer connects to a Wayland display to order the GPUs, and on a
/// machine without one (a server, a cluster worker, CI) prints "XDG_RUNTIME_DIR is invalid or
/// not set" for every Vulkan instance, that is for every `--backend auto` command. Without a
/// display there is nothing for it to order, so it is switched off there (its own switch,
/// `NODEVICE_SELECT`); a user's explicit setting is kept.
#[cfg(target_os = "linux")]
fn quiet_vulkan_device_select() {
    let no_display = ["XDG_RUNTIME_DIR", "WAYLAND_DISPLAY", "DISPLAY"]
        .iter()
        .all(|v| std::env::var_os(v).is_none());
    if no_display && std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: first statement of `main`, before any thread exists.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn quiet_vulkan_device_select() {}
