//! Whether a cell's result still matches its inputs. The notebook is reactive: a change to a
//! cell makes every cell that depends on it out of date (shown in its header), and no cell runs
//! on an out-of-date input — Run first brings the cells above up to date (see
//! [`plan_run`]), and training refuses to start on anything stale.

use crate::workbook::CellKind;

use super::{DataUse, Loading, Notebook};

/// The state of a cell's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Never run in this session.
    NotRun,
    Running,
    Failed,
    /// Computed from inputs that have changed since; the text says which.
    Stale(String),
    Fresh,
}

impl Freshness {
    pub fn is_fresh(&self) -> bool {
        *self == Self::Fresh
    }
}

fn loading_state<T>(l: &Loading<T>) -> Freshness {
    match l {
        Loading::Idle => Freshness::NotRun,
        Loading::Busy(_) => Freshness::Running,
        Loading::Failed(_) => Freshness::Failed,
        Loading::Ready(_) => Freshness::Fresh,
    }
}

/// "the Dataset cell (2)": how messages name a cell (its kind and position in the notebook).
pub fn cell_name(app: &Notebook, id: u64) -> String {
    app.workbook.position(id).map_or_else(
        || "a removed cell".to_owned(),
        |i| {
            format!(
                "the {} cell ({})",
                app.workbook.cells[i].kind.title(),
                i + 1
            )
        },
    )
}

/// Why an input of a cell cannot be used, or `None` when it is up to date.
fn input_problem(app: &Notebook, input: u64) -> Option<String> {
    match freshness(app, input) {
        Freshness::Fresh => None,
        Freshness::NotRun => Some(format!("{} has not run", cell_name(app, input))),
        Freshness::Running => Some(format!("{} is still running", cell_name(app, input))),
        Freshness::Failed => Some(format!("{} failed", cell_name(app, input))),
        Freshness::Stale(why) => Some(format!("{} is out of date ({why})", cell_name(app, input))),
    }
}

/// Why a result computed from the Dataset cell and load `computed_from` no longer matches the
/// Dataset cell `dataset` above (`changed` when it was opened again), or `None`.
fn dataset_problem(
    app: &Notebook,
    dataset: Option<u64>,
    computed_from: (u64, u64),
    changed: &str,
) -> Option<String> {
    if let Some(problem) = dataset.and_then(|d| input_problem(app, d)) {
        return Some(problem);
    }
    let current = dataset.and_then(|d| app.rt.dataset(d).map(|rt| (d, rt.generation)));
    (current != Some(computed_from)).then(|| changed.to_owned())
}

/// The data a Train cell would use now, when all of it is up to date.
pub fn current_data(app: &Notebook, id: u64) -> Result<DataUse, String> {
    let inputs = app.workbook.inputs(id);
    let Some(dataset) = inputs.dataset else {
        return Err("add a Dataset cell above it".to_owned());
    };
    for input in [Some(dataset), inputs.split].into_iter().flatten() {
        if let Some(problem) = input_problem(app, input) {
            return Err(problem);
        }
    }
    let d = app.rt.dataset(dataset).expect("checked fresh above");
    let data = d.data.ready().expect("fresh");
    let name = data
        .manifest
        .root
        .file_name()
        .map_or_else(|| d.source.0.clone(), |n| n.to_string_lossy().into_owned());
    let dataset_name = format!("{name} ({} images)", data.manifest.records.len());
    let mut description = dataset_name.clone();
    let split = inputs.split.map(|s| {
        let rt = app.rt.split(s).expect("checked fresh above");
        let report = &rt.data.ready().expect("fresh").report;
        let side = |k: crate::dataset::Split| {
            report
                .counts
                .iter()
                .filter(|c| c.split == k)
                .map(|c| c.images)
                .sum::<usize>()
        };
        description.push_str(&format!(
            ", split by {}: {} train / {} validation / {} test",
            cell_name(app, s),
            side(crate::dataset::Split::Train),
            side(crate::dataset::Split::Val),
            side(crate::dataset::Split::Test)
        ));
        (s, rt.generation)
    });
    if split.is_none() {
        description.push_str(", no Split cell above: the run splits it by its own seed");
    }
    Ok(DataUse {
        dataset: (dataset, d.generation),
        split,
        resumed: false,
        dataset_name,
        description,
    })
}

/// Whether the result a cell shows matches its current inputs and parameters.
pub fn freshness(app: &Notebook, id: u64) -> Freshness {
    let Some(i) = app.workbook.position(id) else {
        return Freshness::NotRun;
    };
    let inputs = app.workbook.inputs(id);
    match &app.workbook.cells[i].kind {
        CellKind::Dataset { path, options } => {
            let Some(rt) = app.rt.dataset(id) else {
                return Freshness::NotRun;
            };
            if rt.source.0 != *path || rt.source.1 != *options {
                return Freshness::Stale("its path or format changed since it ran".to_owned());
            }
            loading_state(&rt.data)
        }
        CellKind::Embedding { .. } => {
            let Some(rt) = app.rt.embedding(id) else {
                return Freshness::NotRun;
            };
            if let Some(problem) = dataset_problem(
                app,
                inputs.dataset,
                rt.dataset,
                "the map was drawn from an earlier load of the dataset above",
            ) {
                return Freshness::Stale(problem);
            }
            loading_state(&rt.data)
        }
        CellKind::Explore {} => match inputs.dataset {
            None => Freshness::NotRun,
            Some(d) => match freshness(app, d) {
                Freshness::Stale(_) => {
                    Freshness::Stale(format!("{} is out of date", cell_name(app, d)))
                }
                other => other,
            },
        },
        CellKind::Split { config } => {
            let Some(rt) = app.rt.split(id) else {
                return Freshness::NotRun;
            };
            if let Some(problem) = dataset_problem(
                app,
                inputs.dataset,
                rt.dataset,
                "the dataset above was opened again or changed since the split",
            ) {
                return Freshness::Stale(problem);
            }
            if rt.config != *config {
                return Freshness::Stale("its parameters changed".to_owned());
            }
            loading_state(&rt.data)
        }
        CellKind::Train { config, folds, .. } => {
            let Some(rt) = app.rt.train(id) else {
                return Freshness::NotRun;
            };
            if rt.is_running() {
                return Freshness::Running;
            }
            if rt.data.resumed {
                return match rt.finished {
                    Some(Err(_)) => Freshness::Failed,
                    _ => Freshness::Fresh,
                };
            }
            match current_data(app, id) {
                Err(problem) => Freshness::Stale(problem),
                Ok(now) if now.dataset != rt.data.dataset || now.split != rt.data.split => {
                    Freshness::Stale("its last run used an earlier version of the data".to_owned())
                }
                Ok(_)
                    if rt
                        .settings
                        .as_ref()
                        .is_some_and(|(c, k)| c != config || k != folds) =>
                {
                    Freshness::Stale("its settings changed since its last run".to_owned())
                }
                Ok(_) => match rt.finished {
                    Some(Err(_)) => Freshness::Failed,
                    _ => Freshness::Fresh,
                },
            }
        }
        CellKind::Evaluate { run } | CellKind::Predict { run, .. } => {
            if let Some(problem) = train_problem(app, id) {
                return Freshness::Stale(problem);
            }
            // The run on show is not the one the cell now points at (its own choice, or the
            // Train cell above has trained a newer one).
            let shown = match &app.workbook.cells[i].kind {
                CellKind::Evaluate { .. } => app.rt.eval(id).map(|e| e.run.clone()),
                _ => None,
            };
            match (shown, crate::ui::cells::run_for(app, id, run)) {
                (Some(shown), Some(now)) if shown != now => {
                    Freshness::Stale(format!("it shows run {shown}; the cell now uses run {now}"))
                }
                _ => Freshness::Fresh,
            }
        }
        CellKind::Note { .. } | CellKind::Compare { .. } | CellKind::Cluster { .. } => {
            Freshness::Fresh
        }
    }
}

/// Whether an Evaluate or Predict cell takes its run from the Train cell above (it has no run
/// of its own chosen).
fn follows_train(app: &Notebook, id: u64) -> bool {
    app.workbook.position(id).is_some_and(|i| {
        matches!(
            &app.workbook.cells[i].kind,
            CellKind::Evaluate { run: None } | CellKind::Predict { run: None, .. }
        )
    })
}

/// Why the Train cell an Evaluate or Predict cell takes its run from cannot be used now (out
/// of date or still training), or `None` (also when the cell has a run of its own chosen). A
/// Train cell that has not run in this session is fine: its saved run is what the cell shows.
pub fn train_problem(app: &Notebook, id: u64) -> Option<String> {
    if !follows_train(app, id) {
        return None;
    }
    let t = app.workbook.inputs(id).train?;
    match freshness(app, t) {
        Freshness::Stale(why) => Some(format!("{} is out of date ({why})", cell_name(app, t))),
        Freshness::Running => Some(format!("{} is still training", cell_name(app, t))),
        _ => None,
    }
}

/// What pressing Run on `id` runs, in order: every input above it that is not up to date,
/// then the cell itself.
pub fn plan_run(app: &Notebook, id: u64) -> Vec<u64> {
    // An input whose own input is stale reads as stale itself, so the whole chain reruns.
    let mut plan: Vec<u64> = app
        .workbook
        .upstream(id)
        .into_iter()
        .filter(|&u| !matches!(freshness(app, u), Freshness::Fresh | Freshness::Running))
        .collect();
    // An Evaluate or Predict cell on an out-of-date Train cell trains it again first (with
    // whatever that Train cell needs), then shows the new run.
    let inputs = app.workbook.inputs(id);
    if let Some(t) = inputs.train
        && matches!(freshness(app, t), Freshness::Stale(_))
        && follows_train(app, id)
    {
        for u in plan_run(app, t) {
            if !plan.contains(&u) {
                plan.push(u);
            }
        }
    }
    plan.push(id);
    plan
}
