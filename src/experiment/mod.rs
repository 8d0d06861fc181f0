//! The vocabulary of a training run, shared by the trainer that produces it (`train`), the run
//! folder that stores it (`runs`) and everything that reads either: what was asked
//! ([`TrainConfig`]), what happened ([`TrainEvent`]) and what came out ([`Metrics`] with their
//! intervals and calibration, a probe's settings search, a cross-validation's summary).
//!
//! Nothing here trains or touches the disk, so both sides depend on it and not on each other.

pub mod config;
pub mod cv;
pub mod events;
pub mod metrics;
pub mod selection;
pub mod uncertainty;

pub use config::{Mode, TrainConfig};
pub use events::TrainEvent;
pub use metrics::{Metrics, Task};
