//! The Train cell: the form, the augmentation preview, progress and live curves.

use std::path::PathBuf;

use eframe::egui;

use crate::dataset::preprocess::Preprocess;
use crate::experiment::config::{
    BatchNormMode, HeadInit, Imbalance, Mode, Optimizer, Schedule, Task, TrainConfig,
};
use crate::experiment::events::{Phase, TrainEvent};
#[cfg(not(target_arch = "wasm32"))]
use crate::model::backend::BackendChoice;

use crate::ui::cells::freshness::current_data;
use crate::ui::cells::{Command, Notebook, TrainRuntime};

use super::*;
use crate::ui::widgets;

pub(super) fn train_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    config: &mut TrainConfig,
    run: &mut Option<String>,
    folds: &mut u32,
) {
    let running = app.rt.train(id).is_some_and(TrainRuntime::is_running);
    match current_data(app, id) {
        Ok(data) if *folds >= 2 => {
            let dataset = &data.dataset_name;
            ui.label(format!(
                "Cross-validates on {dataset}: {folds} folds grouped by patient (where known) and stratified by label; a split above is not used"
            ));
        }
        Ok(data) => {
            ui.label(format!("Trains on {}", data.description));
        }
        Err(problem) => {
            ui.colored_label(
                STALE_COLOR,
                format!("Not ready to train: {problem}. Start runs it first."),
            );
        }
    }
    if let Some(t) = app.rt.train(id) {
        ui.label(
            egui::RichText::new(format!(
                "{} run used: {}",
                if running { "This" } else { "The last" },
                t.data.description
            ))
            .weak(),
        );
    }
    ui.add_enabled_ui(!running, |ui| {
        egui::Grid::new(("train-form", id)).num_columns(4).spacing([14.0, 6.0]).show(ui, |ui| {
            ui.label("Mode");
            egui::ComboBox::from_id_salt(("mode", id))
                .selected_text(format!("{:?}", config.mode))
                .show_ui(ui, |ui| {
                    for (m, d) in [
                        (Mode::Probe, "Probe: linear head on cached features (fast)"),
                        (Mode::Finetune, "Fine-tune: head + last backbone blocks"),
                        (Mode::Scratch, "Scratch: small CNN from random weights"),
                    ] {
                        if ui.selectable_label(config.mode == m, d).clicked() && config.mode != m {
                            switch_mode(config, m);
                        }
                    }
                })
                .response
                .on_hover_text("How the network is trained");
            ui.label("Task");
            egui::ComboBox::from_id_salt(("task", id))
                .selected_text(config.task.map_or("from the data".into(), |t| format!("{t:?}")))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.task, None, "from the data");
                    for t in [Task::Binary, Task::MultiClass, Task::MultiLabel, Task::Ordinal] {
                        ui.selectable_value(&mut config.task, Some(t), format!("{t:?}"));
                    }
                })
                .response
                .on_hover_text("Binary/multi-class: softmax; multi-label: sigmoid per label; ordinal: cumulative thresholds P(grade > j), reported with quadratic kappa");
            ui.end_row();
            ui.label("Epochs");
            ui.add(egui::DragValue::new(&mut config.epochs).range(1..=500)).on_hover_text("Passes over the training images");
            ui.label("Batch size");
            ui.add(egui::DragValue::new(&mut config.batch_size).range(1..=512)).on_hover_text("Images per optimisation step");
            ui.end_row();
            ui.label("Learning rate");
            ui.add(egui::DragValue::new(&mut config.learning_rate).speed(1e-5).range(1e-6..=1.0).max_decimals(6))
                .on_hover_text("Step size; warm-up then the schedule");
            ui.label("Weight decay");
            ui.add(egui::DragValue::new(&mut config.weight_decay).speed(1e-5).range(0.0..=10.0).max_decimals(5))
                .on_hover_text("L2 regularisation (decoupled for AdamW)");
            ui.end_row();
            ui.label("Optimizer");
            egui::ComboBox::from_id_salt(("optim", id))
                .selected_text(match config.optimizer {
                    Optimizer::Sgd { .. } => "SGD (momentum 0.9)",
                    Optimizer::Adam => "Adam",
                    Optimizer::AdamW => "AdamW",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.optimizer, Optimizer::Sgd { momentum: 0.9 }, "SGD (momentum 0.9)");
                    ui.selectable_value(&mut config.optimizer, Optimizer::Adam, "Adam");
                    ui.selectable_value(&mut config.optimizer, Optimizer::AdamW, "AdamW");
                })
                .response
                .on_hover_text("Optimisation algorithm");
            ui.label("Schedule");
            egui::ComboBox::from_id_salt(("sched", id))
                .selected_text(match config.schedule {
                    Schedule::Constant => "constant",
                    Schedule::Cosine => "cosine",
                    Schedule::Plateau { .. } => "reduce on plateau",
                })
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.schedule, Schedule::Constant, "constant");
                    ui.selectable_value(&mut config.schedule, Schedule::Cosine, "cosine");
                    ui.selectable_value(&mut config.schedule, Schedule::Plateau { patience: 2, factor: 0.3 }, "reduce on plateau");
                })
                .response
                .on_hover_text("Learning rate after the warm-up epoch");
            ui.end_row();
            ui.label("Imbalance");
            egui::ComboBox::from_id_salt(("imb", id))
                .selected_text(format!("{:?}", config.imbalance))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.imbalance, Imbalance::None, "none");
                    ui.selectable_value(&mut config.imbalance, Imbalance::ClassWeights, "class weights");
                    ui.selectable_value(&mut config.imbalance, Imbalance::Oversample, "oversample");
                })
                .response
                .on_hover_text("Weight rare classes in the loss, or sample them more often");
            ui.label("Image size");
            ui.add(egui::DragValue::new(&mut config.preprocess.size).range(32..=512).suffix(" px"))
                .on_hover_text("Side of the square network input");
            ui.end_row();
            if config.mode != Mode::Scratch {
                ui.label("Backbone");
                backbone_choice(ui, id, config);
                ui.end_row();
            }
            ui.label("Device");
            #[cfg(target_arch = "wasm32")]
            ui.label(format!("features on {}", crate::model::gpu::browser::describe()))
                .on_hover_text(
                    "The backbone's features are computed on the browser's WebGPU when it has a GPU, \
                     else in WebAssembly on the CPU; the head trains on the CPU",
                );
            #[cfg(not(target_arch = "wasm32"))]
            egui::ComboBox::from_id_salt(("backend", id))
                .selected_text(format!("{:?}", config.backend))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut config.backend, BackendChoice::Auto, "Auto (GPU if present)");
                    ui.selectable_value(&mut config.backend, BackendChoice::Wgpu, "wgpu (GPU)");
                    ui.selectable_value(&mut config.backend, BackendChoice::Cpu, "CPU");
                })
                .response
                .on_hover_text("Where the network runs");
            if config.mode == Mode::Finetune {
                ui.label("Unfrozen blocks");
                ui.add(egui::DragValue::new(&mut config.unfreeze_blocks).range(0..=config.backbone.num_blocks()))
                    .on_hover_text("How many of the last backbone blocks are trained");
            }
            ui.end_row();
        });
        ui.horizontal(|ui| {
            ui.label("Augmentation:");
            ui.checkbox(&mut config.augment.dihedral, "flips + 90° rotations")
                .on_hover_text("The 8 symmetries of the square; cells have no orientation");
            ui.label("brightness");
            ui.add(egui::Slider::new(&mut config.augment.brightness, 0.0..=0.5)).on_hover_text("Random brightness shift");
            ui.label("contrast");
            ui.add(egui::Slider::new(&mut config.augment.contrast, 0.0..=0.5)).on_hover_text("Random contrast change");
            ui.checkbox(&mut config.preprocess.border_crop, "crop black border")
                .on_hover_text("Crop to the cell before resizing (cells imaged on black)");
        });
        ui.horizontal(|ui| {
            let mut cv = *folds >= 2;
            if ui
                .checkbox(&mut cv, "Cross-validate")
                .on_hover_text("Train one run per fold: each run scores one patient-grouped, stratified fold it never saw, once, and makes its choices (best epoch, the probe's settings) on an inner validation part of its own training side. Reports mean ± sd over the folds, so you can see how big a difference between two settings really is.")
                .changed()
            {
                *folds = if cv { 5 } else { 0 };
            }
            if cv {
                ui.add(egui::DragValue::new(folds).range(2..=20).suffix(" folds"))
                    .on_hover_text("Number of folds (k). Patients never span two folds.");
                ui.label(egui::RichText::new("A split given above is not used; every image is scored once.").weak());
            }
        });
        ui.checkbox(&mut config.calibrate, "calibrate probabilities (temperature scaling)")
            .on_hover_text("Binary and multi-class tasks: a temperature fitted on the validation side softens (or sharpens) the probabilities so that a 0.8 means right 8 times in 10; the predicted class never changes. Saved with the model and used by every prediction; Evaluate shows the calibration error before and after.");
        if config.mode == Mode::Probe {
            ui.horizontal(|ui| {
                ui.checkbox(&mut config.orientation_mean, "average features over the 8 orientations")
                    .on_hover_text("Each image's features are the mean over its flips and 90° turns, so a cell gives the same features however it lies. 8× the feature extraction; cached like the others.");
                ui.checkbox(&mut config.multiscale, "multi-scale features")
                    .on_hover_text("On by default: the pooled outputs of two earlier stages (mid-level texture and shape) follow the final pool, each weighted alike; same forward pass, cached like the others. Off: the final pool alone (single-scale).");
                ui.label(egui::RichText::new("Probe runs use features of unaugmented images (cached).").weak());
            });
        }
        if config.mode == Mode::Finetune {
            ui.horizontal(|ui| {
                let mut from_probe = config.head_init == HeadInit::Probe;
                if ui
                    .checkbox(&mut from_probe, "start the head from the probe")
                    .on_hover_text("The probe of the same backbone is solved on the training side first (cached features, about a second) and the fine-tune starts from it, instead of from a random head that the first epochs would spend learning what the probe already knows.")
                    .changed()
                {
                    config.head_init = if from_probe { HeadInit::Probe } else { HeadInit::Random };
                }
                let mut frozen = config.batch_norm == BatchNormMode::Frozen;
                if ui
                    .checkbox(&mut frozen, "keep batch-norm statistics")
                    .on_hover_text("The trained blocks normalise by the pretrained running statistics, as in prediction (their scale and shift still learn). Off: each batch's own statistics, which for small batches of one kind of image differ from what the network sees when it predicts.")
                    .changed()
                {
                    config.batch_norm = if frozen { BatchNormMode::Frozen } else { BatchNormMode::Batch };
                }
            });
        }
    });
    augment_preview_ui(app, ui, id, config);
    ui.horizontal(|ui| {
        if running {
            if ui
                .button("Stop")
                .on_hover_text("Stop after the current batch; the run folder stays consistent")
                .clicked()
            {
                app.push(Command::StopTrain(id));
            }
        } else if ui
            .button(if *folds >= 2 { "Start cross-validation" } else { "Start training" })
            .on_hover_text("Train on the dataset (and split) above")
            .clicked()
        {
            app.push(Command::RunCell(id));
        }
        if let Some(r) = run.as_ref() {
            ui.label(format!("last run: {r}"));
            let state = app.rt.run_state(&app.runs_dir().join(r));
            if !running
                && matches!(
                    state,
                    Some(crate::runs::RunState::Interrupted | crate::runs::RunState::Cancelled)
                )
                && ui
                    .button("Resume")
                    .on_hover_text("Continue this run from its last complete checkpoint, on the data it recorded; it ends where an uninterrupted run would")
                    .clicked()
            {
                app.push(Command::ResumeTrain(id));
            }
        }
    });
    let Some(t) = app.rt.train(id) else {
        return;
    };
    // Cross-validation: one run per fold, one after the other; progress and curves show the
    // fold running (or the last one), the table the spread over all of them.
    let fold = fold_of(&t.events);
    let run_events = current_run(&t.events);
    if let Some((i, k)) = fold
        && t.is_running()
    {
        ui.strong(format!("Cross-validation: fold {i} of {k}"));
    }
    progress_ui(ui, t, run_events, fold);
    curves_ui(ui, ("train-curves", id), run_events);
    if let Some(summary) = t.events.iter().rev().find_map(|e| match e {
        TrainEvent::CrossValidation { summary } => Some(summary),
        _ => None,
    }) {
        cv_summary_ui(ui, id, summary);
    }
    // What the run chose or found (the probe's settings, cache reads, an early stop).
    for e in &t.events {
        if let TrainEvent::Info { message } = e {
            ui.weak(message);
        }
    }
    let warnings: Vec<&String> = t
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Warning { message } => Some(message),
            _ => None,
        })
        .collect();
    if !warnings.is_empty() {
        egui::CollapsingHeader::new(format!("Warnings ({})", warnings.len()))
            .id_salt(("warn", id))
            .show(ui, |ui| {
                for w in warnings {
                    ui.label(w);
                }
            });
    }
    if let Some(Err(e)) = &t.finished {
        error_label(ui, &format!("Training failed: {e}"));
    }
}

pub(super) fn augment_preview_ui(
    app: &mut Notebook,
    ui: &mut egui::Ui,
    id: u64,
    config: &TrainConfig,
) {
    let Ok((manifest, data)) = train_manifest(app, id) else {
        return;
    };
    // Keyed by the data too: a new dataset shows its own images.
    let wanted = format!(
        "{:?}",
        (
            &config.augment,
            config.preprocess.border_crop,
            data.dataset,
            data.split
        )
    );
    let preview = app
        .rt
        .aug_preview_or_insert_with(id, crate::ui::cells::AugPreview::default);
    if let Some((key, task)) = &preview.pending
        && let Some(images) = task.poll()
    {
        let key = key.clone();
        preview.pending = None;
        preview.textures = images
            .into_iter()
            .enumerate()
            .map(|(i, img)| {
                ui.ctx()
                    .load_texture(format!("aug-{id}-{i}"), img, egui::TextureOptions::LINEAR)
            })
            .collect();
        preview.key = key;
    }
    // Decoding runs in the background, one request at a time: while a slider moves, the last
    // preview stays on screen and the newest settings are rendered next.
    if preview.key != wanted && preview.pending.is_none() {
        let sample: Vec<PathBuf> = manifest
            .records
            .iter()
            .filter(|r| r.is_usable())
            .take(4)
            .map(|r| manifest.image_path(r))
            .collect();
        let pre = Preprocess {
            size: 96,
            border_crop: config.preprocess.border_crop,
            center_crop: false,
        };
        let augment = config.augment.clone();
        let task = BgTask::spawn(ui.ctx(), "augment-preview", move || {
            let mut images = Vec::new();
            for (i, p) in sample.iter().enumerate() {
                for v in 0..2u64 {
                    if let Ok(mut chw) = pre.load(p) {
                        if v > 0 {
                            augment.apply(
                                &mut chw,
                                96,
                                &mut crate::dataset::split::SplitMix64::new(i as u64 * 31 + v),
                            );
                        }
                        images.push(chw_to_image(&chw, 96));
                    }
                }
            }
            images
        });
        preview.pending = Some((wanted, task));
    }
    if preview.textures.is_empty() {
        return;
    }
    let textures = preview.textures.clone();
    ui.horizontal(|ui| {
        ui.label("Preview (original, augmented):").on_hover_text(
            "Real images from the dataset through the current preprocessing and augmentation",
        );
        for t in &textures {
            ui.add(egui::Image::new(t).fit_to_exact_size(egui::vec2(56.0, 56.0)));
        }
    });
}

pub(super) fn chw_to_image(chw: &[f32], side: usize) -> egui::ColorImage {
    let plane = side * side;
    let px = |c: usize, i: usize| ((chw[c * plane + i] + 1.0) * 127.5).clamp(0.0, 255.0) as u8;
    let pixels = (0..plane)
        .map(|i| egui::Color32::from_rgb(px(0, i), px(1, i), px(2, i)))
        .collect();
    egui::ColorImage::new([side, side], pixels)
}

/// The fold running (1-based) and the number of folds, in a cross-validation.
pub fn fold_of(events: &[TrainEvent]) -> Option<(usize, usize)> {
    events.iter().rev().find_map(|e| match e {
        TrainEvent::Fold { fold, folds } => Some((*fold, *folds)),
        _ => None,
    })
}

/// The events of the run in progress (or the last one): in a cross-validation, those after
/// the last `Fold` event.
pub fn current_run(events: &[TrainEvent]) -> &[TrainEvent] {
    let start = events
        .iter()
        .rposition(|e| matches!(e, TrainEvent::Fold { .. }))
        .map_or(0, |i| i + 1);
    &events[start..]
}

/// The spread of a cross-validation's held-out metrics: a mean ± sd table with each fold's
/// value, and a chart of the folds (dots) around the mean (± sd bar) per metric.
fn cv_summary_ui(ui: &mut egui::Ui, id: u64, s: &crate::experiment::cv::CvSummary) {
    ui.add_space(4.0);
    ui.strong(format!(
        "Cross-validation over {} folds: every image scored once, by a run that never saw its patient",
        s.folds
    ));
    let images: Vec<String> = s.images.iter().map(u64::to_string).collect();
    ui.label(
        egui::RichText::new(format!(
            "Scored on: {} ({} images per fold). Chosen on: {}.",
            s.scored_on,
            images.join(", "),
            s.chosen_on
        ))
        .weak(),
    );
    egui::Grid::new(("cv-table", id))
        .striped(true)
        .num_columns(2 + s.folds)
        .show(ui, |ui| {
            ui.strong("metric");
            ui.strong("mean ± sd");
            for f in 1..=s.folds {
                ui.strong(format!("fold {f}"));
            }
            ui.end_row();
            for (key, spread) in &s.metrics {
                ui.label(widgets::metric_title(key));
                ui.label(format!("{:.3} ± {:.3}", spread.mean, spread.sd));
                for v in &spread.folds {
                    ui.label(format!("{v:.3}"));
                }
                ui.end_row();
            }
        });
    if let Some(pooled) = &s.pooled {
        use crate::train::report::with_interval;
        let intervals = pooled.ci.as_ref();
        ui.label(format!(
            "All held-out predictions together: accuracy {}, macro F1 {} (95% bootstrap intervals)",
            with_interval(Some(pooled.accuracy), intervals.and_then(|c| c.accuracy)),
            with_interval(Some(pooled.macro_f1), intervals.and_then(|c| c.macro_f1))
        ));
    }
    widgets::fold_spread_plot(ui, ("cv-spread", id), &[(format!("{} folds", s.folds), s)]);
}

pub(super) fn progress_ui(
    ui: &mut egui::Ui,
    t: &TrainRuntime,
    events: &[TrainEvent],
    fold: Option<(usize, usize)>,
) {
    let started = events.iter().find_map(|e| match e {
        TrainEvent::Started {
            device,
            epochs,
            train_images,
            val_images,
            ..
        } => Some((device.clone(), *epochs, *train_images, *val_images)),
        _ => None,
    });
    let Some((device, epochs, n_train, n_val)) = started else {
        if t.is_running() {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Queued or preparing: compute jobs run one at a time, in order (Stop cancels it)");
            });
        }
        return;
    };
    let epochs_done = events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Epoch { .. }))
        .count() as u32;
    let last_progress = events.iter().rev().find_map(|e| match e {
        TrainEvent::Progress { phase, done, total } => Some((*phase, *done, *total)),
        _ => None,
    });
    ui.label(format!(
        "Device: {device} · {n_train} training / {n_val} validation images"
    ));
    if t.is_running() {
        let (text, frac) = match last_progress {
            Some((Phase::Features, d, n)) if epochs_done == 0 => (
                format!("extracting features {d}/{n}"),
                d as f32 / n.max(1) as f32,
            ),
            Some((_, d, n)) => {
                let f = (epochs_done as f32 + d as f32 / n.max(1) as f32) / epochs.max(1) as f32;
                (format!("epoch {}/{epochs}", epochs_done + 1), f)
            }
            None => ("starting".into(), 0.0),
        };
        // Over all folds of a cross-validation.
        let frac = fold.map_or(frac, |(i, k)| ((i - 1) as f32 + frac) / k.max(1) as f32);
        let elapsed = t.started.elapsed().as_secs_f32();
        let eta = if frac > 0.02 {
            format!(" · about {:.0} s left", elapsed / frac - elapsed)
        } else {
            String::new()
        };
        ui.add(
            egui::ProgressBar::new(frac.clamp(0.0, 1.0))
                .text(format!("{text}{eta}"))
                .animate(true),
        );
    } else if fold.is_none() {
        for e in events {
            match e {
                TrainEvent::Finished {
                    best_epoch,
                    metrics,
                    elapsed_secs,
                    ..
                } => {
                    ui.label(format!(
                        "Finished in {elapsed_secs:.1} s · best epoch {best_epoch} · validation accuracy {:.3}, balanced {:.3}, macro F1 {:.3}{}",
                        metrics.accuracy,
                        metrics.balanced_accuracy,
                        metrics.macro_f1,
                        metrics.macro_auc.map_or(String::new(), |a| format!(", AUC {a:.3}"))
                    ));
                }
                TrainEvent::Cancelled { epoch } => {
                    ui.label(format!(
                        "Stopped after epoch {epoch}; the run folder holds its last checkpoint."
                    ));
                }
                _ => {}
            }
        }
    }
}

/// Live loss and accuracy/AUC curves from a run's events.
pub fn curves_ui(
    ui: &mut egui::Ui,
    id: impl std::hash::Hash + std::fmt::Debug + Copy,
    events: &[TrainEvent],
) {
    let points = crate::runs::view::curves(events);
    if points.is_empty() {
        return;
    }
    let series = |f: &dyn Fn(&crate::runs::view::EpochPoint) -> Option<f64>| -> Vec<[f64; 2]> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| [f64::from(p.epoch), v]))
            .collect()
    };
    let loss = [
        ("train loss", series(&|e| Some(e.train_loss))),
        ("validation loss", series(&|e| e.val_loss)),
    ];
    let scores = [
        ("train accuracy", series(&|e| Some(e.train_accuracy))),
        ("validation accuracy", series(&|e| e.val_accuracy)),
        ("validation macro AUC", series(&|e| e.val_auc)),
    ];
    let last_epoch = points.last().map_or(1.0, |p| f64::from(p.epoch));
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    // Each chart's legend under it, never over the curves; hovering an entry picks out its
    // curve.
    let chart = |ui: &mut egui::Ui,
                 key: &str,
                 series: &[(&str, Vec<[f64; 2]>)],
                 y_label: &str,
                 score: bool| {
        let plot_id = egui::Id::unique((key, id));
        let legend_id = plot_id.with("legend");
        let picked = widgets::legend_hovered(ui, legend_id);
        let slices = || series.iter().map(|(n, pts)| (*n, pts.as_slice()));
        ui.vertical(|ui| {
            let mut plot =
                widgets::refitting_plot(ui, plot_id, widgets::series_signature(slices()))
                    .width(width)
                    .height(200.0)
                    .x_axis_label("epoch")
                    .y_axis_label(y_label)
                    .include_x(0.5)
                    .include_x(last_epoch + 0.5)
                    .include_y(0.0);
            if score {
                plot = plot.include_y(1.0);
            }
            plot.show(ui, |p| widgets::marked_series_picking(p, slices(), picked));
            let names: Vec<String> = series.iter().map(|(n, _)| (*n).to_string()).collect();
            widgets::legend_below(ui, legend_id, &names, width);
        });
    };
    ui.horizontal_top(|ui| {
        chart(ui, "loss", &loss, "loss", false);
        chart(ui, "acc", &scores, "score", true);
    });
}

/// Changes the training mode. A setting still at the old mode's default takes the new
/// The pretrained network. Choosing one moves the image size to its input size unless the
/// user set another. The page bundles Lite0's weights only.
fn backbone_choice(ui: &mut egui::Ui, id: u64, config: &mut TrainConfig) {
    use crate::model::efficientnet::Backbone;
    let label = |b: Backbone| match b {
        Backbone::Lite0 => "EfficientNet-Lite0 (224 px, 4.7 M)",
        Backbone::Lite1 => "EfficientNet-Lite1 (240 px, 5.4 M)",
        Backbone::Lite2 => "EfficientNet-Lite2 (260 px, 6.1 M)",
    };
    let mut chosen = config.backbone;
    ui.add_enabled_ui(!cfg!(target_arch = "wasm32"), |ui| {
        egui::ComboBox::from_id_salt(("backbone", id))
            .selected_text(label(chosen))
            .show_ui(ui, |ui| {
                for b in Backbone::ALL {
                    ui.selectable_value(&mut chosen, b, label(b));
                }
            })
            .response
            .on_hover_text("ImageNet-pretrained network whose features the head reads; larger ones are slower and sometimes better")
            .on_disabled_hover_text("The page carries Lite0 only; Lite1 and Lite2 run in the desktop app");
    });
    choose_backbone(config, chosen);
}

/// Switches `config` to `backbone`: an image size left at the old backbone's input size moves
/// to the new one's (a size the user set stays), and the unfrozen blocks fit the new network.
pub fn choose_backbone(config: &mut TrainConfig, backbone: crate::model::efficientnet::Backbone) {
    if backbone == config.backbone {
        return;
    }
    let size = config.preprocess.size;
    let followed = size == config.backbone.input_size();
    *config = config.clone().with_backbone(backbone);
    if !followed {
        config.preprocess.size = size;
    }
    config.unfreeze_blocks = config.unfreeze_blocks.min(backbone.num_blocks());
}

/// mode's default; a setting the user changed is kept (so Probe → Fine-tune → Probe gives
/// back the same form).
pub fn switch_mode(config: &mut TrainConfig, mode: Mode) {
    let (old, new) = (
        TrainConfig::for_mode(config.mode).with_backbone(config.backbone),
        TrainConfig::for_mode(mode).with_backbone(config.backbone),
    );
    macro_rules! follow {
        ($($field:ident).+) => {
            if config.$($field).+ == old.$($field).+ {
                config.$($field).+ = new.$($field).+.clone();
            }
        };
    }
    follow!(epochs);
    follow!(learning_rate);
    follow!(batch_size);
    follow!(dropout);
    follow!(weight_decay);
    follow!(optimizer);
    follow!(schedule);
    follow!(preprocess.size);
    follow!(augment);
    follow!(unfreeze_blocks);
    config.mode = mode;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choosing_a_backbone_moves_the_default_image_size_but_keeps_a_chosen_one() {
        use crate::model::efficientnet::Backbone;
        let mut config = TrainConfig::for_mode(Mode::Finetune);
        choose_backbone(&mut config, Backbone::Lite2);
        assert_eq!(
            (config.backbone, config.preprocess.size),
            (Backbone::Lite2, 260)
        );
        config.unfreeze_blocks = 20;
        config.preprocess.size = 300;
        choose_backbone(&mut config, Backbone::Lite0);
        assert_eq!(config.preprocess.size, 300, "a size the user set stays");
        assert_eq!(config.unfreeze_blocks, 16, "Lite0 has 16 blocks");
        assert!(config.validate().is_ok());
        config.unfreeze_blocks = 17;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("16 blocks")
        );
    }

    #[test]
    fn switching_modes_back_and_forth_keeps_what_the_user_set() {
        let mut config = TrainConfig {
            epochs: 15,
            ..TrainConfig::for_mode(Mode::Probe)
        };
        switch_mode(&mut config, Mode::Finetune);
        assert_eq!(config.mode, Mode::Finetune);
        assert_eq!(config.epochs, 15, "a changed setting is kept");
        assert_eq!(
            config.learning_rate,
            TrainConfig::for_mode(Mode::Finetune).learning_rate,
            "a default follows the mode"
        );
        switch_mode(&mut config, Mode::Probe);
        assert_eq!(
            config,
            TrainConfig {
                epochs: 15,
                ..TrainConfig::for_mode(Mode::Probe)
            }
        );
    }
}
