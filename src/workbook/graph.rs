//! The notebook's dependency rules, written once for the workbench and `cellbench run`.
//!
//! Cells form a graph through their order: a cell works on the nearest Dataset cell above it
//! (a Dataset cell is its own dataset); a Train (or Cluster) cell trains on the nearest Split
//! cell between that Dataset cell and itself, or on the dataset as it is; an Evaluate or
//! Predict cell without a run of its own looks at the nearest Train cell between the Dataset
//! cell and itself. A change to a cell makes every cell that depends on it out of date.

use super::{CellKind, Workbook};

/// The cells a cell reads from (ids), as the rules above choose them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The Dataset cell (the cell itself for a Dataset cell).
    pub dataset: Option<u64>,
    /// The Split cell a Train or Cluster cell trains on.
    pub split: Option<u64>,
    /// The Train cell whose run an Evaluate or Predict cell looks at by default.
    pub train: Option<u64>,
}

impl Workbook {
    /// The cells `id` reads from.
    pub fn inputs(&self, id: u64) -> Inputs {
        let Some(i) = self.position(id) else {
            return Inputs::default();
        };
        let kind = &self.cells[i].kind;
        let dataset_at = if matches!(kind, CellKind::Dataset { .. }) {
            Some(i)
        } else {
            self.cells[..i]
                .iter()
                .rposition(|c| matches!(c.kind, CellKind::Dataset { .. }))
        };
        let Some(d) = dataset_at else {
            return Inputs::default();
        };
        // Nearest cell of a kind strictly between the Dataset cell and `i`.
        let between = |pred: fn(&CellKind) -> bool| {
            self.cells[d + 1..i.max(d + 1)]
                .iter()
                .rev()
                .find(|c| pred(&c.kind))
                .map(|c| c.id)
        };
        let (split, train) = match kind {
            CellKind::Train { .. } | CellKind::Cluster { .. } => {
                (between(|k| matches!(k, CellKind::Split { .. })), None)
            }
            CellKind::Evaluate { .. } | CellKind::Predict { .. } => {
                (None, between(|k| matches!(k, CellKind::Train { .. })))
            }
            _ => (None, None),
        };
        Inputs {
            dataset: Some(self.cells[d].id),
            split,
            train,
        }
    }

    /// The cells that must be up to date before `id` runs, in the order they run: its Dataset
    /// cell, then (for training) its Split cell. `id` itself is not included.
    pub fn upstream(&self, id: u64) -> Vec<u64> {
        let inputs = self.inputs(id);
        [inputs.dataset, inputs.split]
            .into_iter()
            .flatten()
            .filter(|&u| u != id)
            .collect()
    }

    /// The cells that depend on `id`, directly or through others, in notebook order.
    pub fn downstream(&self, id: u64) -> Vec<u64> {
        let mut affected = vec![id];
        let mut out = Vec::new();
        for c in &self.cells {
            if c.id == id {
                continue;
            }
            let inputs = self.inputs(c.id);
            let depends = [inputs.dataset, inputs.split, inputs.train]
                .into_iter()
                .flatten()
                .any(|u| affected.contains(&u));
            if depends {
                affected.push(c.id);
                out.push(c.id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::dataset::OpenOptions;
    use crate::workbook::{CellKind, Workbook};

    fn dataset(path: &str) -> CellKind {
        CellKind::Dataset {
            path: path.into(),
            options: OpenOptions::default(),
        }
    }

    #[test]
    fn inputs_follow_the_nearest_cells_of_the_same_dataset() {
        let mut book = Workbook::default();
        let d1 = book.push(dataset("a"));
        let s1 = book.push(CellKind::Split {
            config: Default::default(),
        });
        let t1 = book.push(CellKind::Train {
            config: Default::default(),
            run: None,
            folds: 0,
        });
        let e1 = book.push(CellKind::Evaluate { run: None });
        let d2 = book.push(dataset("b"));
        let t2 = book.push(CellKind::Train {
            config: Default::default(),
            run: None,
            folds: 0,
        });
        let e2 = book.push(CellKind::Evaluate { run: None });

        let i = book.inputs(t1);
        assert_eq!((i.dataset, i.split, i.train), (Some(d1), Some(s1), None));
        assert_eq!(book.inputs(e1).train, Some(t1));
        // The second dataset has no Split: its Train cell never borrows the first one's.
        let i = book.inputs(t2);
        assert_eq!((i.dataset, i.split), (Some(d2), None));
        assert_eq!(book.inputs(e2).train, Some(t2));
        assert_eq!(book.inputs(d2).dataset, Some(d2));
        assert_eq!(book.upstream(t1), [d1, s1]);
        assert_eq!(book.upstream(d1), Vec::<u64>::new());

        assert_eq!(book.downstream(d1), [s1, t1, e1]);
        assert_eq!(book.downstream(s1), [t1, e1]);
        assert_eq!(book.downstream(d2), [t2, e2]);
    }

    #[test]
    fn cells_above_every_dataset_have_no_inputs() {
        let mut book = Workbook::default();
        let t = book.push(CellKind::Train {
            config: Default::default(),
            run: None,
            folds: 0,
        });
        book.push(dataset("a"));
        assert_eq!(book.inputs(t), super::Inputs::default());
        assert!(book.upstream(t).is_empty());
    }
}
