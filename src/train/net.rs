//! The network being trained (probe head, fine-tuned backbone + head, or a small CNN), its
//! optimisers, and restoring its training state from a checkpoint.

use std::path::Path;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::store::{ModuleSnapshot as _, SafetensorsStore};
use burn::tensor::Tensor;

use crate::model::FinetuneWeights;
use crate::model::efficientnet::EfficientNetLite;
use crate::model::heads::{Head, SmallCnn};

use crate::experiment::config::{Optimizer, TrainConfig};

/// The network being trained, with its input. One value per run: the size difference
/// between variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Net {
    Probe(Head),
    Finetune {
        backbone: EfficientNetLite,
        head: Head,
    },
    Scratch(SmallCnn),
}

pub(super) enum Input {
    Features(Tensor<2>),
    Images(Tensor<4>),
}

impl Net {
    pub(super) fn logits(&self, input: Input, finetune_start: usize) -> Tensor<2> {
        match (self, input) {
            (Self::Probe(head), Input::Features(x)) => head.forward(x),
            (Self::Finetune { backbone, head }, Input::Images(x)) => {
                head.forward(backbone.forward_suffix(x, finetune_start))
            }
            (Self::Scratch(cnn), Input::Images(x)) => cnn.forward(x),
            _ => unreachable!("each network is fed its own input kind"),
        }
    }

    pub(super) fn valid(&self) -> Self {
        match self {
            Self::Probe(h) => Self::Probe(h.valid()),
            Self::Finetune { backbone, head } => Self::Finetune {
                backbone: backbone.valid(),
                head: head.valid(),
            },
            Self::Scratch(c) => Self::Scratch(c.valid()),
        }
    }

    pub(super) fn train_mode(self) -> Self {
        match self {
            Self::Probe(h) => Self::Probe(h.train()),
            Self::Finetune { backbone, head } => Self::Finetune {
                backbone: backbone.train(),
                head: head.train(),
            },
            Self::Scratch(c) => Self::Scratch(c.train()),
        }
    }

    /// `½‖W‖²` of a probe head's weights, the L2 term of its objective; `None` for the
    /// other networks, whose weight decay is the optimiser's.
    pub(super) fn l2_term(&self) -> Option<Tensor<1>> {
        match self {
            Self::Probe(h) => Some(h.half_squared_norm()),
            _ => None,
        }
    }

    /// One optimiser step; the optimiser state is per network part.
    pub(super) fn step(self, optims: &mut [ModuleOptimizer], lr: f64, loss: Tensor<1>) -> Self {
        let grads = loss.backward();
        match self {
            Self::Probe(h) => {
                let g = GradientsParams::from_grads(grads, &h);
                Self::Probe(optims[0].step(lr, h, g))
            }
            Self::Finetune { backbone, head } => {
                let mut grads = grads;
                let gh = GradientsParams::from_module(&mut grads, &head);
                let gb = GradientsParams::from_module(&mut grads, &backbone);
                let head = optims[0].step(lr, head, gh);
                // Pretrained blocks move more slowly than the new head.
                let backbone = optims[1].step(lr * 0.3, backbone, gb);
                Self::Finetune { backbone, head }
            }
            Self::Scratch(c) => {
                let g = GradientsParams::from_grads(grads, &c);
                Self::Scratch(optims[0].step(lr, c, g))
            }
        }
    }

    /// The same network with weights from [`Self::to_bytes`] output.
    pub(super) fn with_bytes(self, bytes: &[u8]) -> anyhow::Result<Self> {
        let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()));
        Ok(match self {
            Self::Probe(mut h) => {
                h.load_from(&mut store)?;
                Self::Probe(h)
            }
            Self::Finetune { backbone, head } => {
                let mut w = FinetuneWeights { backbone, head };
                w.load_from(&mut store)?;
                Self::Finetune {
                    backbone: w.backbone,
                    head: w.head,
                }
            }
            Self::Scratch(mut c) => {
                c.load_from(&mut store)?;
                Self::Scratch(c)
            }
        })
    }

    /// Parameter id by module path. Optimiser state is keyed by parameter id, and a network
    /// rebuilt from a checkpoint gets fresh ids: this map re-attaches the saved state.
    pub(super) fn param_ids(&self) -> BTreeMap<String, u64> {
        let mut ids = IdPaths::default();
        match self {
            Self::Probe(h) => h.visit(&mut ids),
            Self::Finetune { backbone, head } => {
                ids.path.push("backbone".into());
                backbone.visit(&mut ids);
                ids.path = vec!["head".into()];
                head.visit(&mut ids);
            }
            Self::Scratch(c) => c.visit(&mut ids),
        }
        ids.ids
    }

    /// The same network with the parameter ids of `ids` (paths not in it keep theirs).
    pub(super) fn with_param_ids(self, ids: BTreeMap<String, u64>) -> Self {
        let mut m = IdPaths {
            ids,
            path: Vec::new(),
        };
        match self {
            Self::Probe(h) => Self::Probe(h.map(&mut m)),
            Self::Finetune { backbone, head } => {
                m.path.push("backbone".into());
                let backbone = backbone.map(&mut m);
                m.path = vec!["head".into()];
                let head = head.map(&mut m);
                Self::Finetune { backbone, head }
            }
            Self::Scratch(c) => Self::Scratch(c.map(&mut m)),
        }
    }

    /// The weights as safetensors (fine-tuned networks as one [`FinetuneWeights`]).
    pub(super) fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut store = SafetensorsStore::from_bytes(None);
        match self {
            Self::Probe(h) => h.save_into(&mut store)?,
            Self::Finetune { backbone, head } => FinetuneWeights {
                backbone: backbone.clone(),
                head: head.clone(),
            }
            .save_into(&mut store)?,
            Self::Scratch(c) => c.save_into(&mut store)?,
        }
        Ok(store.get_bytes()?)
    }
}

/// On resume: re-attaches the optimiser state saved with the checkpoint to `net` (rebuilt
/// from the checkpoint's weights) and loads the best epoch's weights. What is missing (a
/// checkpoint from an older version) is reported in the returned message, and training goes
/// on with fresh optimiser moments or without an earlier best; a file that is there but does
/// not read is an error naming it.
pub(super) fn restore_training_state(
    net: Net,
    config: &TrainConfig,
    optims: &mut [ModuleOptimizer],
    dir: &Path,
    best_epoch: u32,
) -> anyhow::Result<(Net, Option<Net>, Option<String>)> {
    use anyhow::Context as _;
    // A file that is absent is an older checkpoint layout (said in the warning); one that is
    // there but does not read is damaged, and the resume stops with it named.
    let read = |name: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let path = dir.join(name);
        match crate::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    };
    let damaged = |name: &str| format!("{} is damaged", dir.join(name).display());
    let mut missing = Vec::new();
    let net = match read("param_ids.json")? {
        Some(b) => {
            let ids: BTreeMap<String, u64> =
                serde_json::from_slice(&b).with_context(|| damaged("param_ids.json"))?;
            for (i, o) in optims.iter_mut().enumerate() {
                let name = format!("optimizer-{i}.bpk");
                match read(&name)? {
                    Some(b) => {
                        *o = optimizer(config)
                            .from_bytes(burn::tensor::Bytes::from_bytes_vec(b))
                            .map_err(|e| anyhow::anyhow!("{e:?}"))
                            .with_context(|| damaged(&name))?;
                    }
                    None => missing.push(name),
                }
            }
            net.with_param_ids(ids)
        }
        None => {
            missing.push("param_ids.json".to_owned());
            net
        }
    };
    let best = match (best_epoch > 0)
        .then(|| read("best.safetensors"))
        .transpose()?
    {
        Some(Some(b)) => Some(
            net.valid()
                .with_bytes(&b)
                .with_context(|| damaged("best.safetensors"))?,
        ),
        Some(None) => {
            missing.push("best.safetensors".to_owned());
            None
        }
        None => None,
    };
    let message = (!missing.is_empty()).then(|| {
        format!(
            "the checkpoint has no {}: training goes on with fresh optimiser moments or from the last weights",
            missing.join(", ")
        )
    });
    Ok((net, best, message))
}

/// Walks a module's float parameters by path (`fc.weight`), reading or setting their ids.
#[derive(Default)]
pub(super) struct IdPaths {
    pub(super) path: Vec<String>,
    pub(super) ids: BTreeMap<String, u64>,
}

impl ModuleVisitor for IdPaths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.ids.insert(self.path.join("."), param.id.val());
    }
}

impl ModuleMapper for IdPaths {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if let Some(&id) = self.ids.get(&self.path.join(".")) {
            param.id = ParamId::from(id);
        }
        param
    }
}

/// The optimiser of a run. A probe's weight decay is the L2 term of its loss (see
/// [`Net::l2_term`]), so its optimiser adds none of its own: AdamW's decoupled decay shrinks
/// the weights by `lr × decay` per step, about 1e-3 × decay at the default learning rate,
/// which over the few hundred steps of a probe leaves every decay below about 1 without
/// effect.
pub(super) fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    let wd = if config.mode == crate::experiment::config::Mode::Probe {
        0.0
    } else {
        config.weight_decay as f32
    };
    match config.optimizer {
        Optimizer::Sgd { momentum } => SgdConfig::new()
            .with_momentum(Some(
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0),
            ))
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
        Optimizer::Adam => AdamConfig::new()
            .with_weight_decay((wd > 0.0).then(|| WeightDecayConfig::new(wd)))
            .init(),
        Optimizer::AdamW => AdamWConfig::new().with_weight_decay(wd).init(),
    }
}
