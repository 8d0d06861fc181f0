//! What a probe's settings search tried and chose, and on which data.

/// One point of the search, as scored on the held-out predictions it was chosen by (pooled
/// inner folds, or the validation side).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridPoint {
    pub c: f64,
    pub class_weighting: String,
    /// Macro F1 (quadratic kappa for grades) of those predictions, for reference.
    pub score: f64,
    /// Their mean cross-entropy: the selection criterion (see [`ProbeSelection::criterion`]).
    pub log_loss: f64,
    pub iterations: usize,
}

/// What was chosen for a probe, and on what.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProbeSelection {
    pub solver: String,
    /// Inverse L2 strength, scikit-learn's convention.
    pub c: f64,
    /// `λ` of the objective `mean loss + λ/2 ‖W‖²` on the refit rows.
    pub l2: f64,
    /// `none` or `balanced` (loss weights inversely proportional to class frequency).
    pub class_weighting: String,
    /// Where the choice was made.
    pub chosen_on: String,
    /// How many images the choice was made on.
    #[serde(default)]
    pub chosen_images: u64,
    pub criterion: String,
    /// The head's form.
    #[serde(default)]
    pub head: String,
    /// Where the kept model was fitted with the chosen settings (training + validation when
    /// a test side scores it, else the training side: the fit the validation side scored).
    pub refit_on: String,
    pub grid: Vec<GridPoint>,
}

impl ProbeSelection {
    /// One line for the event stream.
    pub fn summary(&self) -> String {
        format!(
            "probe settings chosen on {} by {}: C = {} (L2 λ = {:.2e}), class weighting {}; kept model refitted on {}",
            self.chosen_on, self.criterion, self.c, self.l2, self.class_weighting, self.refit_on
        )
    }
}
