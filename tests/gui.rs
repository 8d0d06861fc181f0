//! The workbench clicked through with egui_kittest on the bundled real demo dataset (BCCD
//! white-blood-cell crops): open, explore, split, train a small probe, evaluate, compare.

use std::time::{Duration, Instant};

use cellbench::ui::{AppState, WorkbenchApp};
use cellbench::workbook::CellKind;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;

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

#[test]
fn notebook_runs_every_cell_on_real_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let book = tmp.path().join("demo.cellbook.toml");
    // SAFETY: set before any thread of this test reads the environment.
    unsafe { std::env::set_var("CELLBENCH_CACHE", tmp.path().join("cache")) };
    let ctx = eframe::egui::Context::default();
    let mut app = WorkbenchApp::with_state(&ctx, AppState::default(), Some(book.clone()), None);
    assert!(book.is_file(), "a new workbook is saved at once");
    // A small, quick probe on the CPU.
    for cell in &mut app.workbook.cells {
        if let CellKind::Train { config, .. } = &mut cell.kind {
            config.epochs = 4;
            config.preprocess.size = 96;
            config.backend = cellbench::model::backend::BackendChoice::Cpu;
        }
    }
    let mut harness = Harness::builder()
        .with_size([1280.0, 5200.0])
        .build_ui_state(|ui, app: &mut WorkbenchApp| app.frame(ui), app);
    harness.run_steps(2);
    harness.get_by_label("Run all").click();
    wait_until_settled(&mut harness, Duration::from_secs(180));

    // Dataset and Explore.
    harness.get_by_label_contains("35 images · 5 labels · no patient ids");
    harness.get_by_label("35 of 35 images shown");
    harness.get_by_label("Images and patients per label");
    // Split.
    harness.get_by_label("Leakage check passed: no patient is on more than one side");
    harness.get_by_label("The dataset has no patient ids: images were split individually.");
    // Train: finished, with live curves drawn from the events.
    harness.get_by_label_contains("Finished in");
    harness.get_by_label_contains("Device: cpu (flex");
    // Evaluate.
    harness.get_by_label("Confusion matrix (val side)");
    harness.get_by_label("ROC curves (one vs rest)");
    harness.get_by_label("validation: per class");

    // The workbook remembers the run.
    let run_id = harness
        .state()
        .workbook
        .cells
        .iter()
        .find_map(|c| match &c.kind {
            CellKind::Train { run, .. } => run.clone(),
            _ => None,
        })
        .expect("the Train cell records its run");
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

    // Filter the gallery to one label through the label filter.
    let dataset = harness.state().workbook.cells[1].id;
    harness
        .state_mut()
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

    // Compare: pick the run.
    harness.get_by_label(&run_id).click();
    harness.run_steps(3);
    harness.get_by_label("Validation metrics (best per column in green)");
    harness.get_by_label("Configurations");

    // Add a cell below the last one.
    let cells = harness.state().workbook.cells.len();
    let last = harness.state().workbook.cells.last().unwrap().id;
    harness
        .state_mut()
        .push(cellbench::ui::app::Command::AddCell {
            after: Some(last),
            kind: CellKind::templates().pop().unwrap(),
        });
    harness.run_steps(3);
    assert_eq!(harness.state().workbook.cells.len(), cells + 1);
    assert!(matches!(
        harness.state().workbook.cells.last().unwrap().kind,
        CellKind::Note { .. }
    ));
}

#[test]
fn confusion_heatmap_snapshot() {
    let cm = cellbench::train::metrics::ConfusionMatrix {
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
