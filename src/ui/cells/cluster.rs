//! The Cluster job cell: the Train cell above as a Ray job, followed live.

#[cfg(not(target_arch = "wasm32"))]
use std::path::PathBuf;
use std::sync::mpsc;

use eframe::egui;

use crate::experiment::events::TrainEvent;
#[cfg(not(target_arch = "wasm32"))]
use crate::workbook::{CellKind, resolve_path};

use crate::ui::cells::Notebook;
#[cfg(not(target_arch = "wasm32"))]
use crate::ui::cells::Task as BgTask;

#[cfg(not(target_arch = "wasm32"))]
use super::*;

/// What a cluster worker thread reports.
pub enum ClusterMsg {
    Submitted(String),
    Status(String),
    Event(TrainEvent),
    Imported(String),
    Failed(String),
}

/// A job on a cluster, followed from a Cluster job cell.
pub struct ClusterRuntime {
    pub job: Option<String>,
    pub status: String,
    pub events: Vec<TrainEvent>,
    pub rx: mpsc::Receiver<ClusterMsg>,
    pub error: Option<String>,
    pub imported: Option<String>,
    pub active: bool,
}

/// Submits (when `spec` is given) and then follows a job until it ends, importing its
/// results as a run folder. Also used to re-attach to a job after a restart.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn spawn_cluster_worker(
    ctx: &egui::Context,
    profile: crate::cluster::ClusterProfile,
    spec: Option<crate::cluster::job::JobSpec>,
    job: Option<String>,
    runs_root: PathBuf,
) -> ClusterRuntime {
    let (tx, rx) = mpsc::channel();
    let repaint = ctx.clone();
    let send = move |m: ClusterMsg| {
        tx.send(m).ok();
        repaint.request_repaint();
    };
    let spawned = std::thread::Builder::new()
        .name("cluster-job".into())
        .spawn(move || {
            use crate::cluster::ClusterBackend as _;
            let run = || -> anyhow::Result<()> {
                let client = crate::cluster::RayClient::new(&profile)?;
                let id = match (spec, job) {
                    (Some(spec), _) => {
                        send(ClusterMsg::Status("UPLOADING".into()));
                        let id = crate::cluster::job::submit(&client, &spec, &Default::default())?;
                        send(ClusterMsg::Submitted(id.clone()));
                        id
                    }
                    (None, Some(id)) => id,
                    (None, None) => anyhow::bail!("no job to follow"),
                };
                let info = client.status(&id)?;
                send(ClusterMsg::Status(info.status.to_string()));
                crate::cluster::job::follow(&client, &id, &mut |e| {
                    send(ClusterMsg::Event(e.clone()))
                })?;
                let info = client.status(&id)?;
                send(ClusterMsg::Status(info.status.to_string()));
                let dir = crate::cluster::job::import_results(&client, &id, &runs_root)?;
                send(ClusterMsg::Imported(
                    dir.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ));
                Ok(())
            };
            if let Err(e) = run() {
                send(ClusterMsg::Failed(format!("{e:#}")));
            }
        });
    let active = spawned.is_ok();
    ClusterRuntime {
        job: None,
        status: "CONNECTING".into(),
        events: Vec::new(),
        rx,
        error: spawned.err().map(|e| e.to_string()),
        imported: None,
        active,
    }
}

/// In the browser a Cluster job cell explains where it runs instead of offering dead buttons
/// (a page cannot reach a Ray head's REST API across origins, nor package a binary).
#[cfg(target_arch = "wasm32")]
#[allow(clippy::too_many_arguments)]
pub fn cluster_ui(
    _app: &mut Notebook,
    ui: &mut egui::Ui,
    _id: u64,
    profile: &mut String,
    _dataset: &mut String,
    _runs: &mut String,
    _gpus: &mut f64,
    job: &mut Option<String>,
) {
    ui.label(format!(
        "Cluster jobs are submitted and followed from the desktop app (profile {profile:?}{}). Runs they produce open here when you drop their run folder (.zip) on the page.",
        job.as_ref().map_or(String::new(), |j| format!(", job {j}"))
    ));
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
pub fn cluster_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    profile: &mut String,
    dataset: &mut String,
    runs: &mut String,
    gpus: &mut f64,
    job: &mut Option<String>,
) {
    let profiles = app.rt.profiles();
    ui.horizontal(|ui| {
        ui.label("Cluster");
        egui::ComboBox::from_id_salt(("cluster-profile", id))
            .selected_text(if profile.is_empty() { "choose a profile" } else { profile.as_str() })
            .show_ui(ui, |ui| {
                for p in &profiles.profiles {
                    ui.selectable_value(profile, p.name.clone(), format!("{} ({})", p.name, p.address));
                }
            })
            .response
            .on_hover_text("Cluster profiles from clusters.toml (`cellbench cluster add-profile`); tokens stay in the environment or a file");
        ui.label("GPUs");
        ui.add(egui::DragValue::new(gpus).range(0.0..=8.0)).on_hover_text("GPUs the job asks the cluster for");
    });
    ui.horizontal(|ui| {
        ui.label("Dataset on the cluster");
        ui.add(egui::TextEdit::singleline(dataset).desired_width(320.0).hint_text("default: the Dataset cell's path"))
            .on_hover_text("A path the cluster can read (shared filesystem)");
        ui.label("Runs folder");
        ui.add(egui::TextEdit::singleline(runs).desired_width(200.0).hint_text("shared folder (optional)"))
            .on_hover_text("Where the run folder (with the model) goes on the cluster; metrics come back either way");
    });
    let base = app.base_dir();
    let runs_root = app.runs_dir();
    // Re-attach to a remembered job.
    if let (Some(j), false) = (job.clone(), app.rt.cluster(id).is_some())
        && let Ok(p) = profiles.get(profile)
    {
        let rt = spawn_cluster_worker(
            ui.ctx(),
            p.clone(),
            None,
            Some(j.clone()),
            runs_root.clone(),
        );
        app.rt
            .set_cluster(id, ClusterRuntime { job: Some(j), ..rt });
    }
    let active = app.rt.cluster(id).is_some_and(|r| r.active);
    ui.horizontal(|ui| {
        let can_submit = !active && !profile.is_empty();
        if ui
            .add_enabled(can_submit, egui::Button::new("Submit"))
            .on_hover_text("Package cellbench with the Train cell above and submit it")
            .clicked()
        {
            let train = app
                .workbook
                .above(id, |k| matches!(k, CellKind::Train { .. }))
                .map(|c| c.kind.clone());
            let data_cell = app
                .workbook
                .above(id, |k| matches!(k, CellKind::Dataset { .. }))
                .map(|c| c.kind.clone());
            match (train, data_cell, profiles.get(profile)) {
                (
                    Some(CellKind::Train { config, .. }),
                    Some(CellKind::Dataset { path, options }),
                    Ok(p),
                ) => {
                    let ds = if dataset.trim().is_empty() {
                        resolve_path(&path, &base)
                    } else {
                        PathBuf::from(dataset.trim())
                    };
                    let spec = crate::cluster::job::JobSpec::Train {
                        dataset: std::path::absolute(&ds).unwrap_or(ds).display().to_string(),
                        options,
                        config,
                        runs: if runs.trim().is_empty() {
                            "runs".into()
                        } else {
                            runs.trim().to_owned()
                        },
                    };
                    let rt = spawn_cluster_worker(
                        ui.ctx(),
                        p.clone(),
                        Some(spec),
                        None,
                        runs_root.clone(),
                    );
                    app.rt.set_cluster(id, rt);
                }
                (None, _, _) => app.rt.note(true, "cluster job: add a Train cell above it"),
                (_, None, _) => app
                    .rt
                    .note(true, "cluster job: add a Dataset cell above it"),
                (_, _, Err(e)) => app.rt.note(true, format!("cluster job: {e}")),
                _ => app.rt.note(
                    true,
                    "cluster job: needs a Train and a Dataset cell above it",
                ),
            }
        }
        if let Some(j) = job.clone() {
            ui.label(egui::RichText::new(&j).monospace());
            if ui
                .add_enabled(active, egui::Button::new("Stop"))
                .on_hover_text("Ask the cluster to stop the job")
                .clicked()
                && let Ok(p) = profiles.get(profile).cloned()
            {
                let j2 = j.clone();
                let _ = BgTask::spawn(ui.ctx(), "cluster-stop", move || {
                    use crate::cluster::ClusterBackend as _;
                    crate::cluster::RayClient::new(&p)
                        .and_then(|c| c.stop(&j2))
                        .map_err(|e| e.to_string())
                });
            }
            if !active
                && ui
                    .button("Forget")
                    .on_hover_text("Detach this cell from the job")
                    .clicked()
            {
                *job = None;
                app.rt.take_cluster(id);
            }
        }
    });
    let Some(rt) = app.rt.cluster(id) else {
        if profiles.profiles.is_empty() {
            ui.label("No cluster profiles yet: `cellbench cluster add-profile NAME --url http://head:8265 --token-env-var RAY_TOKEN`.");
        }
        return;
    };
    let color = match rt.status.as_str() {
        "SUCCEEDED" => egui::Color32::from_rgb(46, 160, 67),
        "FAILED" => ui.visuals().error_fg_color,
        "STOPPED" => egui::Color32::from_rgb(200, 140, 40),
        _ => egui::Color32::from_rgb(52, 130, 200),
    };
    ui.horizontal(|ui| {
        ui.label("State:");
        ui.label(egui::RichText::new(&rt.status).strong().color(color));
        if rt.active {
            ui.spinner();
        }
        if let Some(r) = &rt.imported {
            ui.label(format!("results in run {r} (use it in Compare)"));
        }
    });
    if let Some(e) = &rt.error {
        error_label(ui, e);
    }
    if let Some(TrainEvent::Epoch {
        epoch, train, val, ..
    }) = rt
        .events
        .iter()
        .rev()
        .find(|e| matches!(e, TrainEvent::Epoch { .. }))
    {
        ui.label(format!(
            "epoch {epoch}: train loss {:.4}{}",
            train.loss,
            val.as_ref().map_or(String::new(), |v| format!(
                ", validation loss {:.4}, accuracy {:.3}",
                v.loss, v.accuracy
            ))
        ));
    }
    curves_ui(ui, ("cluster-curves", id), &rt.events);
}
