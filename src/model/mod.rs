//! Models: the pretrained EfficientNet-Lite0 backbone, the small CNN trained from scratch,
//! classification heads, weights I/O and the choice of compute backend.

pub mod backend;
pub mod efficientnet;
pub mod fused;
pub mod heads;
pub mod safetensors;
