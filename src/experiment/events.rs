//! Typed events of a training or evaluation job, one JSON line each. The same lines go to
//! `events.jsonl`, the CLI progress bar, the GUI's live curves and a cluster job's log.

use super::metrics::{ConfusionMatrix, Metrics};

/// Which work a progress event counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Running the frozen backbone over images (cached afterwards).
    Features,
    Train,
    Validate,
    Predict,
}

/// Loss and headline metrics of one side in one epoch.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochSide {
    pub loss: f64,
    pub accuracy: f64,
    pub balanced_accuracy: f64,
    pub macro_f1: f64,
    pub macro_auc: Option<f64>,
    pub kappa_quadratic: Option<f64>,
}

impl EpochSide {
    pub fn from_metrics(loss: f64, m: &Metrics) -> Self {
        Self {
            loss,
            accuracy: m.accuracy,
            balanced_accuracy: m.balanced_accuracy,
            macro_f1: m.macro_f1,
            macro_auc: m.macro_auc,
            kappa_quadratic: m.kappa_quadratic,
        }
    }
}

/// One event. Serialised with an `"event"` tag, e.g. `{"event":"epoch","epoch":3,…}`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    Started {
        run_id: String,
        mode: super::config::Mode,
        task: super::metrics::Task,
        labels: Vec<String>,
        train_images: usize,
        val_images: usize,
        device: String,
        epochs: u32,
    },
    Progress {
        phase: Phase,
        done: usize,
        total: usize,
    },
    Epoch {
        epoch: u32,
        learning_rate: f64,
        train: EpochSide,
        val: Option<EpochSide>,
        elapsed_secs: f64,
    },
    Confusion {
        epoch: u32,
        split: String,
        matrix: ConfusionMatrix,
    },
    /// Something the user should know that does not stop the run (a skipped image, …).
    Warning {
        message: String,
    },
    /// What the run chose or found, for the record (the probe's chosen settings, features
    /// read from the cache, an early stop): nothing to act on.
    Info {
        message: String,
    },
    Checkpoint {
        epoch: u32,
        path: String,
    },
    Finished {
        best_epoch: u32,
        metrics: Box<Metrics>,
        /// Patient-level metrics (cells of a patient averaged), when patients are known.
        patient_metrics: Option<Box<Metrics>>,
        elapsed_secs: f64,
    },
    Failed {
        error: String,
    },
    Cancelled {
        epoch: u32,
    },
    /// Cross-validation: fold `fold` (1-based) of `folds` starts; the events up to the next
    /// `Fold` are its run's.
    Fold {
        fold: usize,
        folds: usize,
    },
    /// Cross-validation scored every fold: the spread of their held-out metrics (also saved
    /// as `cv-<timestamp>.json` beside the run folders).
    CrossValidation {
        summary: Box<super::cv::CvSummary>,
    },
}

impl TrainEvent {
    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("events serialise")
    }

    /// Parses a line of a log; `None` for anything that is not an event (Ray's header lines,
    /// a stray print, a truncated last line).
    pub fn parse_line(line: &str) -> Option<Self> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }

    /// True for the last event of a job.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Finished { .. } | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_noise_is_ignored() {
        let e = TrainEvent::Progress {
            phase: Phase::Features,
            done: 3,
            total: 10,
        };
        let line = e.to_json_line();
        assert_eq!(
            line,
            r#"{"event":"progress","phase":"features","done":3,"total":10}"#
        );
        assert_eq!(TrainEvent::parse_line(&line), Some(e));
        assert_eq!(
            TrainEvent::parse_line(
                "2026-11-22 12:00:00,000 INFO job_manager.py:530 -- Runtime env is setting up."
            ),
            None
        );
        assert_eq!(TrainEvent::parse_line(r#"{"event":"epoch","epo"#), None);
        assert_eq!(TrainEvent::parse_line(r#"{"not":"an event"}"#), None);
        assert!(TrainEvent::Failed { error: "x".into() }.is_terminal());
    }
}
