// Tensor work allocates and frees large buffers at every layer; mimalloc keeps them instead of
// returning them to the OS each time (the system allocator's unmapping cost a fifth of CPU
// feature extraction).
#[cfg(not(target_arch = "wasm32"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cellbench::cli::main()
}
