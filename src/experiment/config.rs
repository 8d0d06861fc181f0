//! The training configuration: one struct for the CLI, the GUI, workbooks and cluster jobs.

use crate::dataset::preprocess::{Augment, Preprocess};
use crate::model::backend::BackendChoice;

pub use super::metrics::Task;

pub use crate::model::task::Mode;

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
#[derive(Default)]
pub enum Optimizer {
    Sgd {
        momentum: f64,
    },
    Adam,
    #[default]
    AdamW,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sgd" => Ok(Self::Sgd { momentum: 0.9 }),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::AdamW),
            other => Err(format!(
                "unknown optimizer {other:?} (expected sgd, adam or adamw)"
            )),
        }
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
#[derive(Default)]
pub enum Schedule {
    Constant,
    /// Cosine decay to zero over the epochs.
    #[default]
    Cosine,
    /// Multiply by `factor` when validation loss has not improved for `patience` epochs.
    Plateau {
        patience: u32,
        factor: f64,
    },
}

impl std::str::FromStr for Schedule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            "plateau" => Ok(Self::Plateau {
                patience: 2,
                factor: 0.3,
            }),
            other => Err(format!(
                "unknown schedule {other:?} (expected constant, cosine or plateau)"
            )),
        }
    }
}

/// How a linear probe is fitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Solver {
    /// Logistic regression solved to convergence (L-BFGS), its L2 strength and class
    /// weighting chosen by the pooled log loss of patient-grouped inner folds (of training +
    /// validation, refitted on both, when a test side scores the kept model; else of the
    /// training side).
    #[default]
    Lbfgs,
    /// Epochs of mini-batch gradient steps with the configured optimiser, the best epoch
    /// chosen on the validation side.
    Sgd,
}

impl std::str::FromStr for Solver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lbfgs" | "l-bfgs" => Ok(Self::Lbfgs),
            "sgd" | "epochs" => Ok(Self::Sgd),
            other => Err(format!("unknown solver {other:?} (expected lbfgs or sgd)")),
        }
    }
}

/// Where a fine-tuned network's classification head starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadInit {
    /// The probe of the same backbone solved on the training side (its L2 strength and class
    /// weighting chosen on inner folds of it), its feature standardisation folded into the
    /// weights: fine-tuning starts where the probe ends ("linear probe, then fine-tune").
    #[default]
    Probe,
    /// Small random weights.
    Random,
}

impl HeadInit {
    fn before_choice() -> Self {
        Self::Random
    }
}

impl std::str::FromStr for HeadInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "probe" => Ok(Self::Probe),
            "random" => Ok(Self::Random),
            other => Err(format!(
                "unknown head start {other:?} (expected probe or random)"
            )),
        }
    }
}

/// What a fine-tuned backbone's batch norms normalise by while training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchNormMode {
    /// The running statistics of the pretrained weights, as in prediction (scale and shift
    /// still learn).
    #[default]
    Frozen,
    /// Each batch's own statistics, the running statistics updated from them.
    Batch,
}

impl BatchNormMode {
    fn before_choice() -> Self {
        Self::Batch
    }
}

impl std::str::FromStr for BatchNormMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "frozen" => Ok(Self::Frozen),
            "batch" => Ok(Self::Batch),
            other => Err(format!(
                "unknown batch norm mode {other:?} (expected frozen or batch)"
            )),
        }
    }
}

/// What to do about unequal class sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Imbalance {
    None,
    /// Loss weights inversely proportional to class frequency.
    #[default]
    ClassWeights,
    /// Sample rarer classes more often in each epoch.
    Oversample,
}

impl std::str::FromStr for Imbalance {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Self::None),
            "class-weights" | "weights" => Ok(Self::ClassWeights),
            "oversample" => Ok(Self::Oversample),
            other => Err(format!(
                "unknown imbalance handling {other:?} (expected none, class-weights or oversample)"
            )),
        }
    }
}

/// Everything that defines a training run. Saved as `config.toml` in the run folder.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    pub mode: Mode,
    /// `None`: decided from the data (2 labels → binary, `A|B` labels → multi-label,
    /// retinopathy levels → ordinal, else multi-class).
    pub task: Option<Task>,
    /// The pretrained network (probe features, fine-tuning); its input size is the default
    /// image size.
    pub backbone: crate::model::efficientnet::Backbone,
    pub preprocess: Preprocess,
    pub augment: Augment,
    pub epochs: u32,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub warmup_epochs: u32,
    /// Stop when validation loss has not improved for this many epochs.
    pub early_stopping_patience: Option<u32>,
    pub imbalance: Imbalance,
    /// Dropout before the classification head.
    pub dropout: f64,
    /// Fine-tuning: how many of the last backbone blocks are trained.
    pub unfreeze_blocks: usize,
    /// Fine-tuning: where the classification head starts. A file without it (a run folder's
    /// `config.toml` or a workbook written before the choice existed) describes a fine-tune
    /// from a random head, and reads as one, so that resuming or rerunning it does what it did.
    #[serde(default = "HeadInit::before_choice")]
    pub head_init: HeadInit,
    /// Fine-tuning: what the trained blocks' batch norms normalise by; absent from a file, the
    /// batch statistics every fine-tune used before the choice existed.
    #[serde(default = "BatchNormMode::before_choice")]
    pub batch_norm: BatchNormMode,
    pub seed: u64,
    pub backend: BackendChoice,
    /// Without a split column: the share of patients held out for validation.
    pub val_fraction: f64,
    /// Probe: features averaged over the 8 orientations of the square (flips, 90° turns), so a
    /// cell gives the same features however it lies. Costs 8× the feature extraction.
    pub orientation_mean: bool,
    /// Probe: the pooled outputs of two earlier stages follow the final pool (multi-scale
    /// features; see [`crate::model::efficientnet::Backbone::taps`]), each part weighted alike
    /// in the L2 penalty. Computed in the same pass. On by default (it scored higher on real
    /// cells); off, the probe reads the final pool alone. A file without it (a run folder's
    /// `config.toml` or a workbook written before multi-scale was the default) describes a
    /// single-scale probe, and reads as one, so that resuming or rerunning it does what it did.
    #[serde(default = "multiscale_before_default")]
    pub multiscale: bool,
    /// Probe: how the head is fitted (fine-tuning and scratch always train in epochs).
    pub solver: Solver,
    /// Single-label tasks: fit a temperature on held-out predictions (a solved probe's inner
    /// folds; else the validation side's predictions of the kept network) that calibrates the
    /// probabilities, and use it in every prediction.
    pub calibrate: bool,
}

/// What a file without `multiscale` ran: the final pool alone.
fn multiscale_before_default() -> bool {
    false
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Probe,
            task: None,
            backbone: Default::default(),
            preprocess: Preprocess::default(),
            augment: Augment::default(),
            epochs: 30,
            batch_size: 32,
            learning_rate: 1e-3,
            weight_decay: 1e-4,
            optimizer: Optimizer::AdamW,
            schedule: Schedule::Cosine,
            warmup_epochs: 1,
            early_stopping_patience: Some(8),
            imbalance: Imbalance::ClassWeights,
            // A linear probe is regularised by weight decay; dropout is for the deeper heads.
            dropout: 0.0,
            unfreeze_blocks: 2,
            head_init: HeadInit::Probe,
            batch_norm: BatchNormMode::Frozen,
            seed: 7,
            backend: BackendChoice::Auto,
            val_fraction: 0.2,
            orientation_mean: false,
            multiscale: true,
            solver: Solver::Lbfgs,
            calibrate: false,
        }
    }
}

impl TrainConfig {
    /// True when the run fits a probe to convergence instead of training in epochs.
    pub fn solves_probe(&self) -> bool {
        self.mode == Mode::Probe && self.solver == Solver::Lbfgs
    }

    /// What the probe's feature vectors hold (fine-tuned heads read the final pool of one view).
    pub fn feature_kind(&self) -> crate::model::extractor::FeatureKind {
        crate::model::extractor::FeatureKind::for_mode(
            self.mode,
            self.backbone,
            self.orientation_mean,
            self.multiscale,
        )
    }

    /// This config on `backbone`, at the backbone's input size (scratch CNNs keep theirs: they
    /// do not use the backbone).
    pub fn with_backbone(mut self, backbone: crate::model::efficientnet::Backbone) -> Self {
        if self.mode != Mode::Scratch {
            self.preprocess.size = backbone.input_size();
        }
        self.backbone = backbone;
        self
    }

    /// Sensible defaults per mode (fine-tuning and scratch need smaller steps and more epochs).
    pub fn for_mode(mode: Mode) -> Self {
        let base = Self::default();
        match mode {
            Mode::Probe => base,
            Mode::Finetune => Self {
                mode,
                dropout: 0.2,
                epochs: 8,
                learning_rate: 3e-4,
                batch_size: 16,
                ..base
            },
            Mode::Scratch => Self {
                mode,
                dropout: 0.2,
                epochs: 20,
                learning_rate: 2e-3,
                preprocess: Preprocess {
                    size: 64,
                    ..Preprocess::default()
                },
                ..base
            },
        }
    }

    /// Learning rate for `epoch` (0-based) from warm-up and schedule; `plateau_scale` is the
    /// product of reduce-on-plateau factors applied so far.
    pub fn learning_rate_at(&self, epoch: u32, plateau_scale: f64) -> f64 {
        let base = self.learning_rate;
        if epoch < self.warmup_epochs {
            return base * f64::from(epoch + 1) / f64::from(self.warmup_epochs + 1);
        }
        match self.schedule {
            Schedule::Constant => base,
            Schedule::Plateau { .. } => base * plateau_scale,
            Schedule::Cosine => {
                let span = self.epochs.saturating_sub(self.warmup_epochs).max(1) as f64;
                let t = f64::from(epoch - self.warmup_epochs) / span;
                base * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// The settings as a run of `task` uses them, for its `config.toml`: options its mode or
    /// task ignores (multi-scale features in a fine-tune, calibration of a multi-label model)
    /// are recorded off, so a run folder never claims what did not happen.
    pub fn as_used(&self, task: Task) -> Self {
        let mut c = self.clone();
        if c.mode != Mode::Probe {
            c.multiscale = false;
            c.orientation_mean = false;
        }
        if !matches!(task, Task::Binary | Task::MultiClass) {
            c.calibrate = false;
        }
        c
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        /// The largest network input side.
        const MAX_IMAGE_SIZE: u32 = 1024;
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "batch size must be at least 1");
        anyhow::ensure!(
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "learning rate must be positive"
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.dropout),
            "dropout must be in [0, 1)"
        );
        anyhow::ensure!(self.preprocess.size >= 16, "image size must be at least 16");
        // The network's activations grow with the square of the side: 1024 px already takes
        // about 20 times the memory of the backbone's 224.
        anyhow::ensure!(
            self.preprocess.size <= MAX_IMAGE_SIZE,
            "image size {} is over the largest cellbench trains at ({MAX_IMAGE_SIZE} px; the \
             backbones were pretrained at 224–260)",
            self.preprocess.size
        );
        anyhow::ensure!(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "weight decay must be zero or positive"
        );
        anyhow::ensure!(
            self.early_stopping_patience != Some(0),
            "early-stopping patience must be at least 1 epoch"
        );
        let (b, c) = (self.augment.brightness, self.augment.contrast);
        anyhow::ensure!(
            (0.0..=1.0).contains(&b) && (0.0..=1.0).contains(&c),
            "augmentation brightness and contrast must be in [0, 1] (got {b} and {c})"
        );
        if let Optimizer::Sgd { momentum } = self.optimizer {
            anyhow::ensure!(
                (0.0..1.0).contains(&momentum),
                "SGD momentum must be in [0, 1) (got {momentum})"
            );
        }
        anyhow::ensure!(
            self.mode != Mode::Finetune || self.unfreeze_blocks <= self.backbone.num_blocks(),
            "--unfreeze {}: {} has {} blocks",
            self.unfreeze_blocks,
            self.backbone,
            self.backbone.num_blocks()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's recorded settings leave out what its mode or task ignores.
    #[test]
    fn recorded_settings_are_those_used() {
        let mut c = TrainConfig::for_mode(Mode::Finetune);
        c.multiscale = true;
        c.orientation_mean = true;
        c.calibrate = true;
        let used = c.as_used(Task::MultiLabel);
        assert!(!used.multiscale && !used.orientation_mean && !used.calibrate);
        let mut p = TrainConfig::for_mode(Mode::Probe);
        p.multiscale = true;
        p.calibrate = true;
        assert_eq!(p.as_used(Task::MultiClass), p);
    }

    #[test]
    fn a_backbone_brings_its_input_size_except_to_a_scratch_cnn() {
        use crate::model::efficientnet::Backbone;
        let c = TrainConfig::for_mode(Mode::Probe).with_backbone(Backbone::Lite2);
        assert_eq!((c.backbone, c.preprocess.size), (Backbone::Lite2, 260));
        let c = TrainConfig::for_mode(Mode::Finetune).with_backbone(Backbone::Lite1);
        assert_eq!(c.preprocess.size, 240);
        let s = TrainConfig::for_mode(Mode::Scratch).with_backbone(Backbone::Lite2);
        assert_eq!(s.preprocess.size, 64);
        // Configs written before the choice existed are Lite0 runs.
        let old: TrainConfig = toml::from_str("epochs = 3").unwrap();
        assert_eq!(old.backbone, Backbone::Lite0);
        let named: TrainConfig = toml::from_str("backbone = \"efficientnet-lite1\"").unwrap();
        assert_eq!(named.backbone, Backbone::Lite1);
        assert!(toml::from_str::<TrainConfig>("backbone = \"resnet50\"").is_err());
    }

    #[test]
    fn toml_round_trip_and_partial_files() {
        let cfg = TrainConfig::for_mode(Mode::Finetune);
        let text = toml::to_string(&cfg).unwrap();
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let partial: TrainConfig = toml::from_str(
            "epochs = 3\nmode = \"scratch\"\n[optimizer]\nkind = \"sgd\"\nmomentum = 0.8\n",
        )
        .unwrap();
        assert_eq!(partial.epochs, 3);
        assert_eq!(partial.mode, Mode::Scratch);
        assert_eq!(partial.optimizer, Optimizer::Sgd { momentum: 0.8 });
        assert_eq!(partial.batch_size, TrainConfig::default().batch_size);
        // A file from before the fine-tune's head and batch-norm choices reads as what it ran.
        assert_eq!(
            (partial.head_init, partial.batch_norm),
            (HeadInit::Random, BatchNormMode::Batch)
        );
        assert_eq!(
            (cfg.head_init, cfg.batch_norm),
            (HeadInit::Probe, BatchNormMode::Frozen)
        );
    }

    /// A probe reads multi-scale features by default; a file that does not say (written
    /// before that default) reads as the single-scale probe it ran, and one that says keeps it.
    #[test]
    fn multiscale_is_the_default_but_not_of_files_that_omit_it() {
        let probe = TrainConfig::default();
        assert!(probe.multiscale && probe.feature_kind().multiscale);
        assert_eq!(probe.feature_kind().width(), 1280 + 112 + 192);
        let old: TrainConfig = toml::from_str("mode = \"probe\"\nepochs = 3").unwrap();
        assert!(!old.multiscale);
        assert_eq!(old.feature_kind().width(), 1280);
        let text = toml::to_string(&probe).unwrap();
        assert!(text.contains("multiscale = true"), "{text}");
        assert!(toml::from_str::<TrainConfig>(&text).unwrap().multiscale);
        // Fine-tuned heads read the final pool whatever the setting says.
        let tuned = TrainConfig::for_mode(Mode::Finetune);
        assert!(!tuned.feature_kind().multiscale);
        assert!(!tuned.as_used(Task::MultiClass).multiscale);
    }

    #[test]
    fn warmup_then_cosine() {
        let cfg = TrainConfig {
            epochs: 11,
            warmup_epochs: 1,
            learning_rate: 1.0,
            ..Default::default()
        };
        assert_eq!(cfg.learning_rate_at(0, 1.0), 0.5);
        assert_eq!(cfg.learning_rate_at(1, 1.0), 1.0);
        assert!((cfg.learning_rate_at(6, 1.0) - 0.5).abs() < 1e-12);
        assert!(cfg.learning_rate_at(10, 1.0) < 0.03);
    }
}
