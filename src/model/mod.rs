//! Models: the pretrained EfficientNet-Lite0 backbone, the small CNN trained from scratch,
//! classification heads, weights I/O and the choice of compute backend.

pub mod backend;
pub mod classifier;
pub mod decision;
pub mod efficientnet;
pub mod extractor;
pub mod folded;
pub mod fused;
pub mod gpu;
pub mod heads;
pub mod ordinal;
pub mod safetensors;
pub mod saliency;
pub mod task;

pub use classifier::{Classifier, FinetuneWeights, ModelInfo};
pub use task::{Mode, Task};
