//! The workbench clicked through with egui_kittest on the bundled real demo dataset (BCCD
//! white-blood-cell crops): open, explore, split, train a small probe, evaluate, compare.
#![cfg(feature = "gui")]

use std::time::{Duration, Instant};

use cellbench::ui::{AppState, WorkbenchApp};
use cellbench::workbook::CellKind;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;

/// One feature cache for every test of this binary (they run on parallel threads of one
/// process, so the variable must not change under a running test).
#[allow(unsafe_code)]
fn use_test_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let dir = std::env::temp_dir().join(format!("cellbench-gui-cache-{}", std::process::id()));
        // SAFETY: set once, before any test of this binary reads it.
        unsafe { std::env::set_var("CELLBENCH_CACHE", dir) };
    });
}

/// The workbench in a test window `height` pixels tall (1280 wide).
fn window(app: WorkbenchApp, height: f32) -> Harness<'static, WorkbenchApp> {
    Harness::builder()
        .with_size([1280.0, height])
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.frame(ui), app)
}

fn wait_until_settled(harness: &mut Harness<'_, WorkbenchApp>, limit: Duration) {
    let start = Instant::now();
    loop {
        harness.step();
        if harness.state().settled() {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "the workbench did not settle in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    harness.run_steps(3);
}

/// A synthetic C-NMC-style folder at `dir`: `patients` × `images` cells of `size` pixels.
fn synth_cells(dir: &std::path::Path, patients: u32, images: u32, size: u32) {
    cellbench::dataset::synth::generate(
        dir,
        &cellbench::dataset::synth::SynthConfig {
            patients,
            images_per_patient: images,
            size,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn notebook_runs_every_cell_on_real_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("demo.cellbook.toml");
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book.clone()), None);
    assert!(book.is_file(), "a new workbook is saved at once");
    // A small, quick probe on the CPU.
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 4;
            config.preprocess.size = 96;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
    }
    let mut harness = window(app, 5200.0);
    harness.run_steps(2);
    harness.get_by_label("Run all").click();
    wait_until_settled(&mut harness, Duration::from_secs(180));

    // Dataset and Explore.
    harness.get_by_label_contains("35 images · 5 labels · no patient ids");
    harness.get_by_label("35 of 35 images shown");
    harness.get_by_label("Images and patients per label");
    // Split.
    harness.get_by_label(
        "Leakage check passed: no patient and no copy of an image is on more than one side",
    );
    // Embedding: the map of the 35 images, drawn (the status line says what its axes carry).
    harness.get_by_label_contains("35 images; PC 1 explains");
    harness.get_by_label("The dataset has no patient ids: images were split individually.");
    // Train: finished, with live curves drawn from the events.
    let finished = harness.get_by_label_contains("Finished in").rect();
    harness.get_by_label_contains("Device: cpu (flex");
    // The curves' legends lie under their plots (200 points tall), never over the curves.
    for series in ["train loss", "validation loss", "validation accuracy"] {
        let entry = harness.get_by_label(series).rect();
        assert!(
            entry.top() > finished.bottom() + 200.0,
            "{series}'s entry {entry:?} is not under its plot below {finished:?}"
        );
    }
    // Evaluate.
    harness.get_by_label("Confusion matrix (val side)");
    // The ROC legend lies under the plot (300 points tall), never over its curves.
    let title = harness.get_by_label("ROC curves (one vs rest)").rect();
    for class in ["Basophil", "Neutrophil"] {
        let entry = harness
            .get_by_label_contains(&format!("{class} AUC "))
            .rect();
        assert!(
            entry.top() > title.bottom() + 300.0,
            "{class}'s entry {entry:?} is not under the plot below {title:?}"
        );
    }
    // Headline numbers with their bootstrap intervals, and the reliability diagram.
    harness.get_by_label_contains("95% bootstrap intervals over 9 images");
    harness.get_by_label_contains("Reliability (calibration error ");
    harness.get_by_label("validation: per class");

    // The workbook remembers the run.
    let run_id = first_train_run(harness.state()).expect("the Train cell records its run");
    harness.run_steps(80); // past the autosave delay
    std::thread::sleep(Duration::from_millis(1200));
    harness.run_steps(3);
    let saved = std::fs::read_to_string(&book).unwrap();
    assert!(saved.contains(&run_id), "{saved}");
    assert!(
        tmp.path()
            .join("runs")
            .join(&run_id)
            .join("model.safetensors")
            .is_file()
    );

    // The Embedding cell coloured by the run: its 9 validation images right or wrong, the 26
    // training images not predicted by it.
    let embedding = cell_id(harness.state(), |k| matches!(k, CellKind::Embedding { .. }));
    if let Some(CellKind::Embedding { run }) = harness
        .state_mut()
        .notebook
        .workbook
        .cells
        .iter_mut()
        .find(|c| c.id == embedding)
        .map(|c| &mut c.kind)
    {
        *run = Some(run_id.clone());
    }
    let start = Instant::now();
    while harness.query_by_label("correct").is_none()
        || egui_kittest::kittest::NodeT::accesskit_node(&harness.get_by_label("correct"))
            .is_disabled()
    {
        harness.step();
        std::thread::sleep(Duration::from_millis(30));
        assert!(start.elapsed() < Duration::from_secs(30), "no run colours");
    }
    harness.get_by_label("correct").click();
    harness.run_steps(3);
    harness.get_by_label("(not predicted by the run) (26)");

    // The images behind a confusion-matrix cell open in the inspector with their prediction.
    let evaluate = harness
        .state()
        .notebook
        .workbook
        .cells
        .iter()
        .find(|c| matches!(c.kind, CellKind::Evaluate { .. }))
        .unwrap()
        .id;
    let (cell, file, truth) = {
        let ev = &harness
            .state()
            .notebook
            .rt
            .eval(evaluate)
            .expect("the cell's state");
        let data = ev.data.ready().expect("evaluation loaded");
        let row = &data.rows[0];
        let cm = data.metrics.confusion.as_ref().unwrap();
        let at = |l: &str| cm.labels.iter().position(|x| x == l).unwrap();
        let file = std::path::Path::new(&row.path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        (
            (at(&row.truth), at(&row.predicted)),
            file,
            row.truth.clone(),
        )
    };
    harness
        .state_mut()
        .notebook
        .rt
        .eval_mut(evaluate)
        .unwrap()
        .selected = Some(cell);
    harness.run_steps(3);
    // The second tile of that name: the Dataset gallery shows the same file further up, the
    // Predict cell further down.
    harness
        .get_all_by_label(&file)
        .nth(1)
        .expect("thumbnail")
        .click();
    wait_until_settled(&mut harness, Duration::from_secs(30));
    harness.run_steps(3);
    harness.get_by_label(&format!("true label: {truth}"));
    // The same image opened from the Dataset gallery shows what the evaluated run predicted.
    let (run_id_shown, predicted) = {
        let ev = harness.state().notebook.rt.eval(evaluate).unwrap();
        let data = ev.data.ready().unwrap();
        (data.id.clone(), data.rows[0].predicted.clone())
    };
    harness
        .get_all_by_label(&file)
        .next()
        .expect("gallery thumbnail")
        .click();
    wait_until_settled(&mut harness, Duration::from_secs(30));
    harness.run_steps(3);
    harness.get_by_label(&format!(
        "Run {run_id_shown} (val side): predicted {predicted}"
    ));
    // Its saliency map is computed in the background; the switch lays it over the image.
    harness.get_by_label("Saliency").click();
    harness.run_steps(3);
    assert!(
        harness
            .state()
            .notebook
            .rt
            .eval(evaluate)
            .expect("the cell's state")
            .inspected
            .as_ref()
            .is_some_and(|i| i.show_saliency && i.saliency.ready().is_some()),
        "the saliency map is shown"
    );

    // Filter the gallery to one label through the label filter.
    let dataset = harness.state().notebook.workbook.cells[1].id;
    harness
        .state_mut()
        .notebook
        .push(cellbench::ui::app::Command::FilterLabel {
            dataset,
            label: Some("Basophil".into()),
        });
    harness.run_steps(3);
    harness.get_by_label("3 of 35 images shown");

    // Predict wrote its CSV next to the workbook.
    let predictions = std::fs::read_to_string(tmp.path().join("predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 36, "{predictions}");
    harness.get_by_label_contains("35 of 35 images predicted");
    // It names the model it used and the data that model learned from.
    let demo_root = std::path::absolute(cellbench::demo_dataset()).unwrap();
    harness.get_by_label_contains(&format!(
        ", trained on {} (5 labels): 35 of 35",
        demo_root.display()
    ));
    // The Predict cell shows every image with its label; a click shows all probabilities.
    let first = predictions.lines().nth(1).unwrap();
    let file = std::path::Path::new(first.split(',').next().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let label = first.split(',').nth(1).unwrap().to_owned();
    harness
        .get_all_by_label(&file)
        .last()
        .expect("prediction thumbnail")
        .click();
    harness.run_steps(3);
    harness.get_by_label(&format!("predicted: {label}"));

    // Compare: pick the run.
    harness.get_by_label(&run_id).click();
    wait_until_settled(&mut harness, Duration::from_secs(30));
    harness.get_by_label("Validation metrics (the side that chose each run's epoch: not ranked)");
    // Its markers are drawn even for the probe's one epoch (a point, not an empty plot).
    assert!(
        harness
            .state()
            .notebook
            .rt
            .compares()
            .any(|(_, c)| matches!(&c.loaded, cellbench::ui::cells::Loading::Ready(l) if l.runs.iter().any(|r| r.curves.len() == 1)))
    );
    harness.get_by_label("Configurations");

    // A Note renders its markdown: bold without its asterisks.
    let note = harness.state().notebook.workbook.cells[0].id;
    if let CellKind::Note { text } = &mut harness.state_mut().notebook.workbook.cells[0].kind {
        *text = "Cells from **three** patients".into();
    }
    let _ = note;
    harness.run_steps(3);
    harness.get_by_label("three");
    assert!(harness.query_by_label_contains("**").is_none());

    // Add a cell below the last one.
    let cells = harness.state().notebook.workbook.cells.len();
    let last = harness.state().notebook.workbook.cells.last().unwrap().id;
    harness
        .state_mut()
        .notebook
        .push(cellbench::ui::app::Command::AddCell {
            after: Some(last),
            kind: CellKind::templates().pop().unwrap(),
        });
    harness.run_steps(3);
    assert_eq!(harness.state().notebook.workbook.cells.len(), cells + 1);
    assert!(matches!(
        harness.state().notebook.workbook.cells.last().unwrap().kind,
        CellKind::Note { .. }
    ));
}

/// Sets the path of the first Dataset cell, as typing it into the cell does.
fn set_dataset_path(harness: &mut Harness<'_, WorkbenchApp>, path: &std::path::Path) -> u64 {
    let app = harness.state_mut();
    let cell = app
        .notebook
        .workbook
        .cells
        .iter_mut()
        .find(|c| matches!(c.kind, CellKind::Dataset { .. }))
        .unwrap();
    if let CellKind::Dataset { path: p, .. } = &mut cell.kind {
        *p = path.display().to_string();
    }
    cell.id
}

/// The run the first Train cell records.
fn first_train_run(app: &WorkbenchApp) -> Option<String> {
    app.notebook
        .workbook
        .cells
        .iter()
        .find_map(|c| match &c.kind {
            CellKind::Train { run, .. } => run.clone(),
            _ => None,
        })
}

fn cell_id(app: &WorkbenchApp, pred: fn(&CellKind) -> bool) -> u64 {
    app.notebook
        .workbook
        .cells
        .iter()
        .find(|c| pred(&c.kind))
        .unwrap()
        .id
}

/// The sequence that once trained on another dataset's split: run all on the demo, open another
/// dataset and split it, put the demo back and run only the Dataset cell, then train. Training
/// must use the dataset the notebook shows, and the out-of-date Split must say so.
#[test]
fn training_never_uses_a_stale_split() {
    use cellbench::ui::app::Command;
    use cellbench::ui::cells::freshness::{Freshness, freshness};

    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("stale.cellbook.toml");
    use_test_cache();
    let other = tmp.path().join("other");
    synth_cells(&other, 6, 8, 48);
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 2;
            config.preprocess.size = 64;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
    }
    let mut harness = window(app, 5200.0);
    // The demo's dataset opens by itself on launch.
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.get_by_label_contains("35 images · 5 labels");
    harness.get_by_label("Run all").click();
    wait_until_settled(&mut harness, Duration::from_secs(180));
    let demo = cellbench::demo_dataset();
    let split = cell_id(harness.state(), |k| matches!(k, CellKind::Split { .. }));
    let train = cell_id(harness.state(), |k| matches!(k, CellKind::Train { .. }));

    // Another dataset, opened and split.
    let dataset = set_dataset_path(&mut harness, &other);
    harness.run_steps(2);
    assert!(matches!(
        freshness(&harness.state().notebook, dataset),
        Freshness::Stale(_)
    ));
    harness.get_by_label_contains("Out of date: its path or format changed");
    harness.state_mut().notebook.push(Command::RunCell(dataset));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.state_mut().notebook.push(Command::RunCell(split));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    assert_eq!(
        freshness(&harness.state().notebook, split),
        Freshness::Fresh
    );

    // The demo back; only the Dataset cell runs. The split below it is now out of date.
    set_dataset_path(&mut harness, &demo);
    harness.state_mut().notebook.push(Command::RunCell(dataset));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    assert!(
        matches!(
            freshness(&harness.state().notebook, split),
            Freshness::Stale(_)
        ),
        "{:?}",
        freshness(&harness.state().notebook, split)
    );
    harness.get_by_label_contains("Out of date: the dataset above was opened again");

    // Train: the split reruns first, on the demo, and training uses the demo.
    harness.state_mut().notebook.push(Command::RunCell(train));
    wait_until_settled(&mut harness, Duration::from_secs(180));
    assert_eq!(
        freshness(&harness.state().notebook, split),
        Freshness::Fresh
    );
    let started = harness
        .state()
        .notebook
        .rt
        .train(train)
        .expect("the cell's state")
        .events
        .iter()
        .find_map(|e| match e {
            cellbench::train::TrainEvent::Started {
                train_images,
                val_images,
                labels,
                ..
            } => Some((train_images + val_images, labels.len())),
            _ => None,
        })
        .expect("the run started");
    assert_eq!(
        started,
        (35, 5),
        "trained on the demo's 35 cells and 5 labels"
    );
    let run = first_train_run(harness.state()).unwrap();
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("runs").join(&run).join("model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        std::path::Path::new(info["dataset_root"].as_str().unwrap()),
        std::path::absolute(&demo).unwrap()
    );
    harness.get_by_label_contains("Trains on bccd (35 images), split by the Split cell");

    // The Train cell's settings change after the run: it and the Evaluate cell below it are
    // out of date, and Run on Evaluate trains again before it shows anything.
    let evaluate = cell_id(harness.state(), |k| matches!(k, CellKind::Evaluate { .. }));
    harness
        .state_mut()
        .notebook
        .push(Command::RunCell(evaluate));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    assert_eq!(
        harness
            .state()
            .notebook
            .rt
            .eval(evaluate)
            .map(|e| e.run.clone()),
        Some(run.clone())
    );
    assert_eq!(
        freshness(&harness.state().notebook, evaluate),
        Freshness::Fresh
    );
    for cell in &mut harness.state_mut().notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 3;
        }
    }
    harness.run_steps(2);
    assert_eq!(
        freshness(&harness.state().notebook, train),
        Freshness::Stale("its settings changed since its last run".into())
    );
    assert!(
        matches!(freshness(&harness.state().notebook, evaluate), Freshness::Stale(ref why) if why.contains("the Train cell")),
        "{:?}",
        freshness(&harness.state().notebook, evaluate)
    );
    harness.get_by_label_contains("Out of date: its settings changed since its last run");
    harness
        .state_mut()
        .notebook
        .push(Command::RunCell(evaluate));
    wait_until_settled(&mut harness, Duration::from_secs(180));
    let rerun = first_train_run(harness.state()).unwrap();
    assert_ne!(rerun, run, "the Train cell ran again");
    assert_eq!(
        harness
            .state()
            .notebook
            .rt
            .eval(evaluate)
            .map(|e| e.run.clone()),
        Some(rerun),
        "Evaluate shows the new run"
    );
    assert_eq!(
        freshness(&harness.state().notebook, train),
        Freshness::Fresh
    );
    assert_eq!(
        freshness(&harness.state().notebook, evaluate),
        Freshness::Fresh
    );
}

/// Epoch events of a run with `n` epochs whose scores climb from 0.2 towards 0.95.
fn epochs(n: u32) -> Vec<cellbench::train::TrainEvent> {
    use cellbench::experiment::events::EpochSide;
    (1..=n)
        .map(|epoch| {
            let score = 0.2 + 0.75 * f64::from(epoch) / f64::from(n);
            let side = EpochSide {
                loss: 2.0 / f64::from(epoch),
                accuracy: score,
                balanced_accuracy: score,
                macro_f1: score,
                macro_auc: Some(score),
                kappa_quadratic: None,
            };
            cellbench::train::TrainEvent::Epoch {
                epoch,
                learning_rate: 1e-3,
                train: side.clone(),
                val: Some(side),
                elapsed_secs: 1.0,
            }
        })
        .collect()
}

/// The live curves refit to a second run: the plot's bounds hold every point of the new
/// run, whatever bounds the plot had remembered from before (a relaunch, a stray drag).
#[test]
fn curves_refit_to_every_new_run() {
    let mut harness = Harness::builder().with_size([900.0, 300.0]).build_ui_state(
        |ui, events: &mut Vec<cellbench::train::TrainEvent>| {
            cellbench::ui::cells::curves_ui(ui, 7u64, events);
        },
        epochs(1),
    );
    harness.run_steps(3);
    // As a relaunch restores them (plot memory is persisted), or a stray drag leaves them:
    // bounds far from any data, with automatic bounds off.
    for plot in ["acc", "loss"] {
        let id = eframe::egui::Id::unique((plot, 7u64));
        let mut memory = egui_plot::PlotMemory::load(&harness.ctx, id).expect("plot memory");
        memory.auto_bounds = false.into();
        memory.set_bounds(egui_plot::PlotBounds::from_min_max(
            [100.0, -5.0],
            [101.0, -4.0],
        ));
        memory.store(&harness.ctx, id);
    }
    *harness.state_mut() = epochs(12);
    harness.run_steps(3);
    for (plot, y_max) in [("acc", 0.95), ("loss", 2.0)] {
        let id = eframe::egui::Id::unique((plot, 7u64));
        let memory = egui_plot::PlotMemory::load(&harness.ctx, id).expect("plot memory");
        let b = memory.bounds();
        assert!(
            b.min()[0] <= 1.0 && b.max()[0] >= 12.0,
            "{plot}: x bounds {:?}..{:?}",
            b.min(),
            b.max()
        );
        assert!(
            b.min()[1] <= 0.2 && b.max()[1] >= y_max,
            "{plot}: y bounds {:?}..{:?}",
            b.min(),
            b.max()
        );
    }
}

#[test]
fn confusion_heatmap_snapshot() {
    let cm = cellbench::experiment::metrics::ConfusionMatrix {
        labels: vec!["all".into(), "hem".into()],
        counts: vec![vec![40, 5], vec![8, 27]],
    };
    let mut harness = Harness::builder()
        .with_size([300.0, 190.0])
        .build_ui(move |ui| {
            cellbench::ui::widgets::confusion_heatmap(ui, &cm, false, Some((1, 0)));
        });
    harness.run();
    harness.snapshot("confusion_heatmap");
}

/// The embedding map's own WGSL shader (`shaders/points.wgsl`), drawn through egui's wgpu
/// paint callback on the test renderer (Mesa's software Vulkan here): three coloured clusters
/// and a view that keeps them inside the plot.
#[test]
fn embedding_points_shader_snapshot() {
    use cellbench::ui::points::{self, Point, PointSet, View};
    use eframe::egui;
    use egui_kittest::wgpu::{WgpuTestRenderer, create_render_state, default_wgpu_setup};
    let render_state = create_render_state(
        default_wgpu_setup(),
        eframe::egui_wgpu::RendererOptions::PREDICTABLE,
    );
    points::install(&render_state);
    assert!(points::on_gpu());
    let colors = [
        egui::Color32::from_rgb(31, 119, 180),
        egui::Color32::from_rgb(255, 127, 14),
        egui::Color32::from_rgb(44, 160, 44),
    ];
    let centres = [[-2.0f32, -1.0], [2.0, -1.0], [0.0, 2.0]];
    let mut pts = Vec::new();
    for (c, color) in centres.iter().zip(colors) {
        for i in 0..60 {
            let a = i as f32 * 2.399_963; // golden angle: a filled disk of points
            let r = (i as f32 / 60.0).sqrt() * 0.8;
            pts.push(Point::new([c[0] + r * a.cos(), c[1] + r * a.sin()], color));
        }
    }
    let set = PointSet {
        key: 1,
        points: std::sync::Arc::new(pts),
    };
    let view = View::fit(&set.points);
    let mut harness = Harness::builder()
        .with_size([320.0, 240.0])
        .renderer(WgpuTestRenderer::from_render_state(render_state))
        .build_ui(move |ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(300.0, 220.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 4.0, egui::Color32::WHITE);
            points::paint(ui.painter(), rect, &set, view, 4.0);
        });
    harness.run();
    harness.snapshot("embedding_points");
}

/// A label CSV whose columns cannot be guessed: the Dataset cell says to choose them, offers
/// the CSV's own column names, and with the choices made (as the combo boxes make them) the
/// dataset opens; the choices live in the workbook.
#[test]
fn a_csv_with_unguessable_columns_is_imported_from_the_cell() {
    use cellbench::ui::app::Command;
    let tmp = tempfile::tempdir().unwrap();
    use_test_cache();
    let demo = cellbench::demo_dataset();
    let mut text = String::from("specimen,finding,donor\n");
    for (i, label) in ["Lymphocyte", "Neutrophil"].into_iter().enumerate() {
        for e in std::fs::read_dir(demo.join(label))
            .unwrap()
            .flatten()
            .take(4)
        {
            let name = e.file_name().to_string_lossy().into_owned();
            std::fs::copy(e.path(), tmp.path().join(&name)).unwrap();
            text.push_str(&format!("{name},{label},d{i}\n"));
        }
    }
    let csv = tmp.path().join("labels.csv");
    std::fs::write(&csv, text).unwrap();
    let ctx = eframe::egui::Context::default();
    let app = WorkbenchApp::with_state(
        &ctx,
        AppState::default(),
        Some(tmp.path().join("book.cellbook.toml")),
        None,
    );
    let mut harness = window(app, 3000.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    let dataset = set_dataset_path(&mut harness, &csv);
    harness.state_mut().notebook.push(Command::RunCell(dataset));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.run_steps(3);
    harness.get_by_label_contains(
        "Could not open the dataset: could not guess the path column (columns: specimen, finding, donor); choose the Image column above",
    );
    harness.get_by_label("Choose the CSV's columns above, then press Run.");
    harness.get_by_label("Image column");
    // Three column choices, each still guessing.
    let combos = harness.query_all_by_value("guess").count();
    assert!(combos >= 3, "{combos} column choices shown");
    let app = harness.state_mut();
    if let Some(CellKind::Dataset { options, .. }) = app
        .notebook
        .workbook
        .cells
        .iter_mut()
        .find(|c| c.id == dataset)
        .map(|c| &mut c.kind)
    {
        options.path_column = Some("specimen".into());
        options.label_column = Some("finding".into());
        options.patient_column = Some("donor".into());
    }
    harness.state_mut().notebook.push(Command::RunCell(dataset));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.run_steps(3);
    harness.get_by_label_contains("8 images · 2 labels · 2 patients");
    harness.get_by_label_contains("8 of 8 listed images found and usable");
    let saved = harness.state().notebook.workbook.clone();
    let toml = toml::to_string(&saved).unwrap();
    assert!(toml.contains("path_column = \"specimen\""), "{toml}");

    // The images moved to a folder of their own, named relative to the workbook: found there
    // (not in the directory the workbench was started from).
    let images = tmp.path().join("scans");
    std::fs::create_dir(&images).unwrap();
    let other = tmp.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    for e in std::fs::read_dir(tmp.path()).unwrap().flatten() {
        if e.path()
            .extension()
            .is_some_and(|x| x == "jpg" || x == "jpeg" || x == "png" || x == "bmp")
        {
            std::fs::rename(e.path(), images.join(e.file_name())).unwrap();
        }
    }
    let moved = other.join("labels.csv");
    std::fs::rename(&csv, &moved).unwrap();
    set_dataset_path(&mut harness, &moved);
    if let Some(CellKind::Dataset { options, .. }) = harness
        .state_mut()
        .notebook
        .workbook
        .cells
        .iter_mut()
        .find(|c| c.id == dataset)
        .map(|c| &mut c.kind)
    {
        options.images = Some("scans".into());
    }
    harness.state_mut().notebook.push(Command::RunCell(dataset));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.run_steps(3);
    harness.get_by_label_contains("8 images · 2 labels · 2 patients");
    // Named as the cell names it: relative to the workbook's folder.
    harness.get_by_label_contains("8 of 8 listed images found and usable under scans");
    assert!(images.is_dir());
}

#[test]
fn cross_validation_runs_from_the_train_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("cv.cellbook.toml");
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, folds, .. } = &mut cell.kind {
            config.epochs = 2;
            config.preprocess.size = 64;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
            *folds = 3;
        }
    }
    let mut harness = window(app, 5200.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    // The form says what the button does; the split above is run first, then not used.
    harness.get_by_label("Start cross-validation").click();
    wait_until_settled(&mut harness, Duration::from_secs(300));
    let train = cell_id(harness.state(), |k| matches!(k, CellKind::Train { .. }));
    let events = harness
        .state()
        .notebook
        .rt
        .train(train)
        .unwrap()
        .events
        .clone();
    let folds: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            cellbench::train::TrainEvent::Fold { fold, folds } => Some((*fold, *folds)),
            _ => None,
        })
        .collect();
    assert_eq!(folds, vec![(1, 3), (2, 3), (3, 3)]);
    let summary = events
        .iter()
        .find_map(|e| match e {
            cellbench::train::TrainEvent::CrossValidation { summary } => Some(summary.clone()),
            _ => None,
        })
        .expect("the cross-validation finished");
    assert_eq!(summary.folds, 3);
    assert_eq!(summary.runs.len(), 3);
    assert_eq!(
        summary.images.iter().sum::<u64>(),
        35,
        "every demo image is scored exactly once"
    );
    let spread = &summary.metrics["accuracy"];
    assert_eq!(spread.folds.len(), 3);
    // The cell shows the spread and records the last fold's run.
    harness.get_by_label_contains("Cross-validation over 3 folds");
    harness.get_by_label("mean ± sd");
    harness.get_by_label(&format!("{:.3} ± {:.3}", spread.mean, spread.sd));
    let run = first_train_run(harness.state()).unwrap();
    assert_eq!(Some(&run), summary.runs.last());

    // Compare lists the cross-validation and shows its spread next to others.
    let root = tmp.path().join("runs");
    let cvs = cellbench::runs::view::list_cross_validations(&root);
    assert_eq!(cvs.len(), 1, "{cvs:?}");
    let saved = cellbench::runs::view::load_cross_validation(&root, &cvs[0]).unwrap();
    assert_eq!(
        (&saved.runs, &saved.images),
        (&summary.runs, &summary.images)
    );
    assert!((saved.metrics["accuracy"].mean - spread.mean).abs() < 1e-12);
    for cell in &mut harness.state_mut().notebook.workbook.cells {
        if let CellKind::Compare { runs } = &mut cell.kind {
            *runs = cvs.clone();
        }
    }
    harness.run_steps(2);
    wait_until_settled(&mut harness, Duration::from_secs(30));
    harness
        .get_by_label_contains("Cross-validations: mean ± sd over folds (each image scored once)");
    assert_eq!(
        harness
            .get_all_by_label(&format!("{:.3} ± {:.3}", spread.mean, spread.sd))
            .count(),
        2,
        "the Train cell's table and the Compare cell's"
    );
}

/// A file dropped on the window, as the desktop integration hands it over.
#[derive(Debug)]
struct Dropped(std::path::PathBuf);

impl eframe::egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn images_dropped_on_the_notebook_are_predicted_and_inspected() {
    use cellbench::ui::app::Command;
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("drop.cellbook.toml");
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 2;
            config.preprocess.size = 64;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
        if let CellKind::Predict { input, .. } = &mut cell.kind {
            input.clear();
        }
    }
    let mut harness = window(app, 5200.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    let train = cell_id(harness.state(), |k| matches!(k, CellKind::Train { .. }));
    harness.state_mut().notebook.push(Command::RunCell(train));
    wait_until_settled(&mut harness, Duration::from_secs(180));
    harness.get_by_label(
        "Drop images or a folder on this cell to classify them with the run at once.",
    );

    // Two images dropped anywhere: the Predict cell classifies them at once.
    let demo = cellbench::demo_dataset();
    let mut images: Vec<std::path::PathBuf> = walk(&demo)
        .into_iter()
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "jpg" || e == "png" || e == "bmp")
        })
        .collect();
    images.sort();
    let dropped: Vec<std::path::PathBuf> = images.into_iter().take(2).collect();
    assert_eq!(dropped.len(), 2);
    for p in &dropped {
        harness
            .input_mut()
            .dropped_files
            .push(std::sync::Arc::new(Dropped(p.clone())));
    }
    harness.run_steps(2);
    wait_until_settled(&mut harness, Duration::from_secs(120));
    let predict = cell_id(harness.state(), |k| matches!(k, CellKind::Predict { .. }));
    let rows = match harness.state().notebook.rt.predict(predict) {
        Some(cellbench::ui::cells::Loading::Ready(view)) => view.rows.clone(),
        _ => panic!("the dropped images were not predicted"),
    };
    let predicted: Vec<&std::path::PathBuf> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(predicted, dropped.iter().collect::<Vec<_>>());
    harness.get_by_label_contains("2 of 2 images predicted");
    // The dataset was not replaced by the drop.
    harness.get_by_label_contains("35 images · 5 labels");

    // A thumbnail opens the inspector with the probabilities and the saliency switch.
    // The last tile of that name: the Dataset gallery shows the same file further up.
    let name = dropped[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    harness.get_all_by_label(&name).last().unwrap().click();
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.get_by_label(&format!("predicted: {}", rows[0].1));
    harness.get_by_label("Saliency");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Ctrl+drag draws a lasso on the Embedding map; the points inside it filter the Dataset
/// gallery (here a lasso around the whole map: all 35 images).
#[test]
fn a_lasso_on_the_map_filters_the_gallery() {
    use eframe::egui;
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("lasso.cellbook.toml");
    use_test_cache();
    let ctx = egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 2;
            config.preprocess.size = 64;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
    }
    let mut harness = window(app, 5200.0);
    harness.run_steps(2);
    harness.get_by_label("Run all").click();
    wait_until_settled(&mut harness, Duration::from_secs(180));
    let map = cell_id(harness.state(), |k| matches!(k, CellKind::Embedding { .. }));
    let dataset = cell_id(harness.state(), |k| matches!(k, CellKind::Dataset { .. }));
    let rect = harness
        .state()
        .notebook
        .rt
        .embedding(map)
        .and_then(|m| m.map_rect())
        .unwrap_or_else(|| panic!("the map is drawn: {:?}", harness.state().notebook.rt.log));
    let r = rect.shrink(4.0);
    let corners = [
        r.left_top(),
        r.right_top(),
        r.right_bottom(),
        r.left_bottom(),
    ];
    let command = egui::Modifiers::COMMAND;
    let press = |harness: &mut Harness<'_, WorkbenchApp>, pos: egui::Pos2, pressed: bool| {
        harness.input_mut().events.push(egui::Event::PointerButton {
            pos,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: command,
        });
    };
    harness
        .input_mut()
        .events
        .push(egui::Event::ModifiersChanged(command));
    harness
        .input_mut()
        .events
        .push(egui::Event::PointerMoved(corners[0]));
    harness.step();
    press(&mut harness, corners[0], true);
    harness.step();
    for c in corners.iter().skip(1).chain([&corners[0]]) {
        for k in 1..=4 {
            let prev = corners[(corners.iter().position(|x| x == c).unwrap() + 3) % 4];
            let at = prev + (*c - prev) * (k as f32 / 4.0);
            harness
                .input_mut()
                .events
                .push(egui::Event::PointerMoved(at));
            harness.step();
        }
    }
    press(&mut harness, corners[0], false);
    harness.run_steps(3);
    let picked = harness
        .state()
        .notebook
        .rt
        .dataset(dataset)
        .unwrap()
        .filter
        .picked
        .clone()
        .expect("the lasso filtered the gallery");
    assert_eq!(picked.len(), 35);
    harness.get_by_label("35 of 35 images shown");
}

/// Typing into the path of a Dataset cell that has just run keeps the focus (the "Out of date"
/// line the first keystroke brings must not move the field elsewhere).
#[test]
fn typing_a_dataset_path_keeps_the_focus() {
    use cellbench::ui::cells::freshness::{Freshness, freshness};

    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("typing.cellbook.toml");
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    let mut harness = window(app, 5200.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.get_by_label_contains("35 images · 5 labels");
    let dataset = cell_id(harness.state(), |k| matches!(k, CellKind::Dataset { .. }));
    let path = |app: &WorkbenchApp| {
        app.notebook
            .workbook
            .cells
            .iter()
            .find_map(|c| match &c.kind {
                CellKind::Dataset { path, .. } => Some(path.clone()),
                _ => None,
            })
            .unwrap()
    };
    let path_field = |node: &egui_kittest::kittest::AccessKitNode<'_>| {
        node.role() == eframe::egui::accesskit::Role::TextInput
            && node
                .value()
                .is_some_and(|v| v.ends_with("bccd") || v.contains("bccdx"))
    };
    let mut typed = path(harness.state());
    harness.get_by(path_field).focus();
    harness.run_steps(2);
    for c in ["x", "y", "z"] {
        harness.get_by(path_field).type_text(c);
        harness.run_steps(2);
        typed.push_str(c);
        assert_eq!(
            path(harness.state()),
            typed,
            "every keystroke reaches the field"
        );
    }
    assert!(matches!(
        freshness(&harness.state().notebook, dataset),
        Freshness::Stale(_)
    ));

    // Enter in the field opens the path: the cell runs on the new folder.
    let other = tmp.path().join("cells");
    synth_cells(&other, 3, 4, 32);
    set_dataset_path(&mut harness, &other);
    harness.run_steps(2);
    let field = |node: &egui_kittest::kittest::AccessKitNode<'_>| {
        node.role() == eframe::egui::accesskit::Role::TextInput
            && node.value().is_some_and(|v| v.ends_with("cells"))
    };
    harness.get_by(field).focus();
    harness.run_steps(2);
    harness.key_press(eframe::egui::Key::Enter);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    assert_eq!(
        freshness(&harness.state().notebook, dataset),
        Freshness::Fresh,
        "Enter ran the cell"
    );
    harness.get_by_label_contains("12 images · ");
}

/// Whether the Train cell `id` has a run that has started (its first event came).
fn started(app: &WorkbenchApp, id: u64) -> bool {
    app.notebook.rt.train(id).is_some_and(|t| {
        t.events
            .iter()
            .any(|e| matches!(e, cellbench::train::TrainEvent::Started { .. }))
    })
}

/// Two Train cells started together train one after the other (never at once), and both
/// show their run; a run stopped midway offers Resume in its cell, which continues it in the
/// same run folder to its last epoch.
#[test]
fn train_cells_take_turns_and_a_stopped_run_resumes_from_its_cell() {
    use cellbench::ui::app::Command;
    let tmp = tempfile::tempdir().unwrap();
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(
        &ctx,
        AppState::default(),
        Some(tmp.path().join("turns.cellbook.toml")),
        None,
    );
    let book = &mut app.notebook.workbook;
    let first = book
        .cells
        .iter_mut()
        .find_map(|c| match &mut c.kind {
            CellKind::Train { config, .. } => {
                // The small CNN on the CPU: a few quick epochs, so a Stop lands mid-run.
                config.mode = cellbench::model::Mode::Scratch;
                config.epochs = 4;
                config.preprocess.size = 48;
                config.backend = cellbench::model::backend::BackendChoice::Cpu;
                Some(c.id)
            }
            _ => None,
        })
        .unwrap();
    let kind = book.cells[book.position(first).unwrap()].kind.clone();
    let second = book.insert_after(Some(first), kind);
    let mut harness = window(app, 5200.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));

    harness.state_mut().notebook.push(Command::RunCell(first));
    harness.state_mut().notebook.push(Command::RunCell(second));
    let start = Instant::now();
    loop {
        harness.step();
        let app = harness.state();
        let running = |id| {
            started(app, id)
                && app
                    .notebook
                    .rt
                    .train(id)
                    .is_some_and(|t| t.finished.is_none())
        };
        assert!(
            !(running(first) && running(second)),
            "two runs trained at once"
        );
        if app.settled() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "runs did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let run_of = |app: &WorkbenchApp, id| {
        app.notebook.workbook.cells[app.notebook.workbook.position(id).unwrap()]
            .kind
            .clone()
    };
    let (a, b) = match (
        run_of(harness.state(), first),
        run_of(harness.state(), second),
    ) {
        (CellKind::Train { run: Some(a), .. }, CellKind::Train { run: Some(b), .. }) => (a, b),
        other => panic!("both cells name their run: {other:?}"),
    };
    assert_ne!(a, b);
    for id in [first, second] {
        let t = harness.state().notebook.rt.train(id).unwrap();
        assert!(matches!(t.finished, Some(Ok(_))), "{:?}", t.finished);
    }

    // Run the first again and stop it after its first epoch.
    harness.state_mut().notebook.push(Command::RunCell(first));
    harness.step();
    let start = Instant::now();
    while !harness.state().notebook.rt.train(first).is_some_and(|t| {
        t.events
            .iter()
            .any(|e| matches!(e, cellbench::train::TrainEvent::Epoch { .. }))
    }) {
        harness.step();
        assert!(start.elapsed() < Duration::from_secs(120), "no epoch came");
        std::thread::sleep(Duration::from_millis(10));
    }
    harness.state_mut().notebook.push(Command::StopTrain(first));
    wait_until_settled(&mut harness, Duration::from_secs(120));
    let CellKind::Train {
        run: Some(stopped), ..
    } = run_of(harness.state(), first)
    else {
        panic!("the stopped run is named")
    };
    assert_ne!(stopped, a);
    let status = |run: &str| {
        cellbench::runs::read_status(&tmp.path().join("runs").join(run))
            .unwrap()
            .state
    };
    assert_eq!(status(&stopped), cellbench::runs::RunState::Cancelled);

    // The cell offers Resume (once it has read the run's state) and the run ends in place.
    harness.run_steps(3);
    wait_until_settled(&mut harness, Duration::from_secs(10));
    let resume = harness.query_all_by_label("Resume").count();
    assert_eq!(resume, 1, "one Resume button, in the stopped run's cell");
    harness.get_by_label("Resume").click();
    wait_until_settled(&mut harness, Duration::from_secs(120));
    let CellKind::Train {
        run: Some(resumed), ..
    } = run_of(harness.state(), first)
    else {
        panic!("the resumed run is named")
    };
    assert_eq!(resumed, stopped, "Resume continues the same run folder");
    assert_eq!(status(&stopped), cellbench::runs::RunState::Finished);
    let last_epoch = harness
        .state()
        .notebook
        .rt
        .train(first)
        .unwrap()
        .events
        .iter()
        .filter_map(|e| match e {
            cellbench::train::TrainEvent::Epoch { epoch, .. } => Some(*epoch),
            _ => None,
        })
        .max();
    assert_eq!(last_epoch, Some(4));
}

/// The fields of a cell keep their ids (so the focus, mid-typing) when a change marks the cell
/// out of date and the "Out of date" line appears above them.
#[test]
fn fields_keep_their_ids_when_a_cell_goes_out_of_date() {
    use eframe::egui::accesskit::Role;
    let tmp = tempfile::tempdir().unwrap();
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(
        &ctx,
        AppState::default(),
        Some(tmp.path().join("ids.cellbook.toml")),
        None,
    );
    for cell in &mut app.notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 1;
            config.preprocess.size = 48;
            config.mode = cellbench::model::Mode::Scratch;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
    }
    let mut harness = window(app, 5200.0);
    wait_until_settled(&mut harness, Duration::from_secs(60));
    let train = cell_id(harness.state(), |k| matches!(k, CellKind::Train { .. }));
    harness
        .state_mut()
        .notebook
        .push(cellbench::ui::app::Command::RunCell(train));
    wait_until_settled(&mut harness, Duration::from_secs(120));
    let fields = |h: &Harness<'_, WorkbenchApp>| -> Vec<_> {
        h.query_all_by(|n| matches!(n.role(), Role::SpinButton | Role::TextInput))
            .map(|n| egui_kittest::kittest::NodeT::accesskit_node(&n).id())
            .collect()
    };
    let before = fields(&harness);
    assert!(before.len() > 5, "{} fields", before.len());
    for cell in &mut harness.state_mut().notebook.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 2;
        }
    }
    harness.run_steps(2);
    harness.get_by_label_contains("Out of date: its settings changed");
    assert_eq!(fields(&harness), before);
}

/// A workbook that does not read (a typo in a key) is left exactly as it is: the session says
/// so and saves its new workbook beside it.
#[test]
fn a_workbook_that_does_not_read_is_never_saved_over() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("mine.cellbook.toml");
    let text = "title = \"mine\"\n\n[[cellz]]\nkind = \"note\"\ntext = \"keep me\"\n";
    std::fs::write(&book, text).unwrap();
    let ctx = eframe::egui::Context::default();
    let app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book.clone()), None);
    let mut harness = window(app, 2000.0);
    harness.run_steps(3);
    let aside = tmp.path().join("mine.new.cellbook.toml");
    assert_eq!(harness.state().notebook.workbook_path, aside);
    assert!(
        harness
            .state()
            .notebook
            .rt
            .log
            .iter()
            .any(|(_, error, t)| *error && t.contains("cellz") && t.contains("left as it is")),
        "{:?}",
        harness.state().notebook.rt.log
    );
    harness
        .state_mut()
        .notebook
        .push(cellbench::ui::app::Command::SaveWorkbook);
    harness.run_steps(2);
    assert_eq!(std::fs::read_to_string(&book).unwrap(), text);
    assert!(aside.exists());
    assert_eq!(
        harness.state().state.workbook_path.as_deref(),
        Some(book.as_path())
    );
}

/// A Note opened with Edit takes the keyboard at once: what is typed next (no click into the
/// field first) lands in the note, and Done shows it as markdown, bold without its asterisks.
#[test]
fn a_note_opened_for_editing_takes_the_typing() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("note.cellbook.toml");
    let mut workbook = cellbench::workbook::Workbook::default();
    workbook.push(CellKind::Note {
        text: "# Plan".into(),
    });
    workbook.save(&book).unwrap();
    let ctx = eframe::egui::Context::default();
    let app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    let mut harness = window(app, 800.0);
    harness.run_steps(3);
    let text = |app: &WorkbenchApp| match &app.notebook.workbook.cells[0].kind {
        CellKind::Note { text } => text.clone(),
        other => panic!("not a note: {other:?}"),
    };
    harness.get_by_label("Edit").click();
    harness.run_steps(3);
    // Plain text events, as a keyboard sends them: they reach whatever has the focus.
    harness.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::End);
    harness.run_steps(1);
    harness.event(eframe::egui::Event::Text("\nCount **every** cell".into()));
    harness.run_steps(3);
    assert_eq!(text(harness.state()), "# Plan\nCount **every** cell");
    // The focus is asked for once, when editing starts: Escape gives it up for good.
    let field = |n: &egui_kittest::kittest::AccessKitNode<'_>| {
        n.role() == eframe::egui::accesskit::Role::MultilineTextInput
    };
    assert!(harness.get_by(field).is_focused());
    harness.key_press(eframe::egui::Key::Escape);
    harness.run_steps(3);
    assert!(!harness.get_by(field).is_focused());
    harness.get_by_label("Done").click();
    harness.run_steps(3);
    harness.get_by_label("every");
    assert!(harness.query_by_label_contains("**").is_none());
    harness.get_by_label("Plan");
}

/// Another dataset opened in the untouched demo workbook renames the demo's title and first
/// note after it: the header never says "Demo: white blood cells" over other data.
#[test]
fn opening_a_dataset_in_the_demo_renames_its_title() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("demo.cellbook.toml");
    let cells = tmp.path().join("cells");
    synth_cells(&cells, 3, 4, 32);
    use_test_cache();
    let ctx = eframe::egui::Context::default();
    let app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book), None);
    let mut harness = window(app, 1600.0);
    harness.run_steps(2);
    harness.get_by_label_contains("Demo: white blood cells");
    harness
        .state_mut()
        .notebook
        .push(cellbench::ui::app::Command::OpenDataset(cells));
    wait_until_settled(&mut harness, Duration::from_secs(60));
    harness.get_by_label_contains("12 images · ");
    assert_eq!(harness.state().notebook.workbook.title, "cells");
    assert!(matches!(
        &harness.state().notebook.workbook.cells[0].kind,
        CellKind::Note { text } if text == "# cells"
    ));
    assert!(
        harness
            .query_by_label_contains("Demo: white blood cells")
            .is_none()
    );
}
