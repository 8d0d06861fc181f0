//! Drawing with our own WGSL shaders (`shaders/`) on a wgpu device, with no window system:
//! the same pipelines serve the workbench's window (through an egui paint callback) and
//! `cellbench bench map`, which draws offscreen on whatever adapter the machine has.

pub mod points;
