//! Training: configuration, feature extraction and its cache, the training loops, metrics
//! and the event stream.

mod batches;
pub mod config;
pub mod cv;
pub mod data;
pub mod engine;
pub mod events;
pub mod export;
pub mod features;
pub mod logreg;
pub mod metrics;
mod net;
pub mod probe;
pub mod report;
mod trainer;
pub mod uncertainty;

pub use crate::model::ordinal;
pub use config::{Mode, TrainConfig};
pub use events::TrainEvent;
pub use metrics::{Metrics, Task};
