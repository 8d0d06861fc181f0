//! What a trained model is: how it was trained and which kind of answer it gives.

/// The kind of prediction task a model solves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Two classes; class index 1 is the positive class.
    Binary,
    /// One label out of `K > 2` unordered classes.
    MultiClass,
    /// Any subset of `K` labels per sample (independent sigmoid outputs).
    MultiLabel,
    /// One grade out of `K` ordered classes (e.g. retinopathy grade 0–4).
    Ordinal,
}

/// How the network is trained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Linear head on cached features of the frozen pretrained backbone. Fast.
    #[default]
    Probe,
    /// New head plus the last backbone blocks unfrozen, trained end to end.
    Finetune,
    /// A small CNN from random initialisation (a baseline).
    Scratch,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "probe" => Ok(Self::Probe),
            "finetune" | "fine-tune" => Ok(Self::Finetune),
            "scratch" => Ok(Self::Scratch),
            other => Err(format!(
                "unknown mode {other:?} (expected probe, finetune or scratch)"
            )),
        }
    }
}
