//! Training: feature extraction and its cache, the training loops, cross-validation and the
//! probe's settings search. What a run is asked and reports lives in [`crate::experiment`].

mod batches;
pub mod cv;
pub mod data;
pub mod engine;
pub mod export;
pub mod features;
pub mod logreg;
mod loss;
mod net;
pub mod probe;
pub mod report;
mod trainer;

pub use crate::experiment::{Metrics, Mode, Task, TrainConfig, TrainEvent};
pub use crate::model::ordinal;
