//! `predict`, `explain`, `embed`, `evaluate`, `serve`, `weights check` and `run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Args;

use crate::dataset::OpenOptions;
use crate::experiment::config::Task;
use crate::experiment::events::TrainEvent;
use crate::model::backend::{self, BackendChoice};
use crate::train::features::FeatureCache;

use super::ProgressView;
use super::train_cmd::parse_task;

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A finished run folder.
    pub run: PathBuf,
    /// An image, a folder of images, or a manifest CSV.
    pub input: PathBuf,
    #[arg(long, short, default_value = "predictions.csv")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Exit with code 3 when any image was skipped (unreadable); without it, skipped images
    /// are listed and the command succeeds.
    #[arg(long)]
    pub strict: bool,
    /// Test-time augmentation: average each image's probabilities over its 8 orientations
    /// (flips, quarter turns); 8 times the compute.
    #[arg(long)]
    pub tta: bool,
    /// For a manifest CSV of ids without an extension: the image file name, e.g.
    /// `{id:03}.bmp` (`{id}`, or `{id:0N}` for zero-padded numbers), as for `train`.
    #[arg(long, value_name = "PATTERN")]
    pub image_pattern: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// A finished run folder (a linear probe or a fine-tuned model).
    pub run: PathBuf,
    /// An image, a folder of images, or a manifest CSV.
    pub input: PathBuf,
    /// Folder for the overlays (`<image>.png`), the raw maps (`<image>.csv`, one row per grid
    /// row) and `saliency.csv` (one line per image: class, score, peak).
    #[arg(long, short)]
    pub out: PathBuf,
    /// The label to explain (default: each image's predicted label).
    #[arg(long)]
    pub class: Option<String>,
    /// Opacity of the overlay at its strongest point, 0 to 1.
    #[arg(long, default_value_t = 0.6, value_parser = opacity)]
    pub opacity: f32,
    /// Exit with code 3 when an image could not be read (it is listed and skipped either
    /// way), as `predict --strict` does.
    #[arg(long)]
    pub strict: bool,
}

fn opacity(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 1"))
    }
}

/// `cellbench explain`: class activation maps of a run's model, as overlays and raw maps.
pub fn explain_cmd(args: ExplainArgs) -> anyhow::Result<u8> {
    let device = burn::tensor::Device::flex();
    let classifier = crate::infer::Classifier::load(&args.run, &device)?;
    let labels = &classifier.info.labels;
    let class = match &args.class {
        Some(name) => Some(labels.iter().position(|l| l == name).with_context(|| {
            format!(
                "no label {name:?} in the run (labels: {})",
                labels.join(", ")
            )
        })?),
        None => None,
    };
    let (paths, left_out) = crate::infer::collect_inputs_noting(&args.input)?;
    for (path, why) in &left_out {
        crate::errln!("skipped ({why}): {path}");
    }
    anyhow::ensure!(!paths.is_empty(), "no images in {}", args.input.display());
    crate::fsio::create_dir_all(&args.out)?;
    let base = if crate::fs::is_dir(&args.input) {
        args.input.clone()
    } else {
        args.input.parent().map(Path::to_owned).unwrap_or_default()
    };
    let mut index =
        String::from("path,explains,label,peak_x,peak_y,grid_width,grid_height,overlay\n");
    let mut skipped = left_out.len();
    let mut names = std::collections::HashSet::new();
    for path in &paths {
        let img = match crate::dataset::image_io::decode_file_complete(path) {
            Ok(img) => img,
            Err(e) => {
                crate::errln!("skipped (unreadable: {e}): {}", path.display());
                skipped += 1;
                continue;
            }
        };
        let map = classifier.saliency(&img, class)?;
        // `Neutrophil/x.bmp` → `Neutrophil__x.bmp`: one flat folder, names kept apart.
        let flat = crate::dataset::relative_path(path, &base)
            .unwrap_or_else(|| path.display().to_string())
            .replace(['/', '\\'], "__");
        // `a/b.jpg` and a file named `a__b.jpg` would share a name: the later one is numbered.
        let mut name = flat.clone();
        let mut n = 1;
        while !names.insert(name.clone()) {
            n += 1;
            name = format!("{flat}~{n}");
        }
        let overlay = args.out.join(format!("{name}.png"));
        map.overlay(&img.to_rgb8(), args.opacity)
            .save(&overlay)
            .with_context(|| format!("writing {}", overlay.display()))?;
        crate::fsio::write_atomic_bytes(
            &args.out.join(format!("{name}.csv")),
            map.to_csv().as_bytes(),
        )?;
        let (x, y) = map.peak();
        index.push_str(&format!(
            "{},{},{},{x},{y},{},{},{}\n",
            crate::fsio::csv_field(&path.display().to_string()),
            crate::fsio::csv_field(&map.explains),
            crate::fsio::csv_field(labels.get(map.class).map_or("", String::as_str)),
            map.width,
            map.height,
            crate::fsio::csv_field(&overlay.display().to_string()),
        ));
    }
    crate::fsio::write_atomic_bytes(&args.out.join("saliency.csv"), index.as_bytes())?;
    crate::errln!(
        "explained {} of {} images into {} ({} skipped)",
        paths.len() - skipped,
        paths.len(),
        args.out.display(),
        skipped
    );
    Ok(if skipped > 0 && args.strict {
        super::exit::PROBLEMS
    } else {
        0
    })
}

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Dataset folder or CSV.
    pub dataset: PathBuf,
    /// The map as CSV: `path,label,patient,x,y` (principal components of the backbone
    /// features).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Also draw the map, points coloured by label: a PNG or an SVG, by the file's extension.
    #[arg(long, visible_alias = "png")]
    pub plot: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
}

/// The Lite0 features of `records` (through the feature cache), with progress and skipped
/// images on stderr. Returns the indices (into `records`) of the images read and their rows.
pub fn backbone_features(
    manifest: &crate::dataset::Manifest,
    records: &[&crate::dataset::Record],
    choice: BackendChoice,
) -> anyhow::Result<(Vec<usize>, Vec<Vec<f32>>)> {
    let paths: Vec<PathBuf> = records.iter().map(|r| manifest.image_path(r)).collect();
    let compute = backend::select(choice)?;
    let extractor = crate::model::extractor::Extractor::bundled(
        crate::model::efficientnet::Backbone::Lite0,
        &compute.device,
    )?;
    crate::errln!(
        "extracting the features of {} images on {}",
        paths.len(),
        compute.description
    );
    let cache = FeatureCache::default_location();
    let f = crate::explore::embedding::map_features(
        &extractor,
        &paths,
        Some(&cache),
        32,
        &AtomicBool::new(false),
    );
    for (path, reason) in &f.failures {
        crate::errln!("skipped (unreadable: {reason}): {}", path.display());
    }
    Ok(crate::explore::embedding::read_rows(
        0..paths.len(),
        f.features,
    ))
}

/// `cellbench embed`: a 2-D map (PCA) of a dataset's EfficientNet-Lite0 features, through the
/// feature cache.
pub fn embed_cmd(args: EmbedArgs) -> anyhow::Result<u8> {
    let manifest = crate::dataset::open(&args.dataset, &OpenOptions::default())?;
    let records: Vec<_> = manifest
        .records
        .iter()
        .filter(|r| r.bytes.is_some())
        .collect();
    anyhow::ensure!(
        !records.is_empty(),
        "no images in {}",
        args.dataset.display()
    );
    if let Some(plot) = &args.plot {
        anyhow::ensure!(
            plot.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("png") || e.eq_ignore_ascii_case("svg")),
            "--plot needs a file name ending in .png or .svg, got {}",
            plot.display()
        );
    }
    let (kept, rows) = backbone_features(&manifest, &records, args.backend)?;
    anyhow::ensure!(
        kept.len() >= 2,
        "fewer than two readable images: no map to draw"
    );
    let map =
        crate::explore::embedding::EmbeddingMap::new((0..kept.len()).collect(), &rows, Vec::new());
    anyhow::ensure!(
        map.explained[0] > 0.0,
        "all {} images have identical features (copies of one image?): no map to draw",
        kept.len()
    );
    let mut text = String::from("path,label,patient,x,y\n");
    let mut points = Vec::with_capacity(kept.len());
    for (row, &i) in kept.iter().enumerate() {
        let r = records[i];
        let [x, y] = map.coords[row];
        text.push_str(&format!(
            "{},{},{},{x:.6},{y:.6}\n",
            crate::fsio::csv_field(&r.path),
            crate::fsio::csv_field(&r.label_string()),
            crate::fsio::csv_field(r.patient.as_deref().unwrap_or("")),
        ));
        points.push((x, y, r.label_string()));
    }
    crate::fsio::write_atomic_bytes(&args.out, text.as_bytes())
        .with_context(|| format!("writing {}", args.out.display()))?;
    let share = |c: usize| map.explained[c] * 100.0;
    crate::errln!(
        "mapped {} images to {}: the axes are the first two principal components of the features ({:.1}% and {:.1}% of their variance)",
        kept.len(),
        args.out.display(),
        share(0),
        share(1)
    );
    if let Some(png) = &args.plot {
        #[cfg(feature = "gui")]
        {
            let title = format!("{} images: PCA of EfficientNet-Lite0 features", kept.len());
            let axes = (
                format!("PC 1 ({:.1}% of variance)", share(0)),
                format!("PC 2 ({:.1}% of variance)", share(1)),
            );
            crate::explore::charts::write_scatter(png, &title, &axes, &points)?;
            crate::errln!("drew {}", png.display());
        }
        #[cfg(not(feature = "gui"))]
        anyhow::bail!(
            "this headless build draws no charts (built without the gui feature): {}",
            png.display()
        );
    }
    // Unreadable images were listed above; exit code 3 is for `--strict` alone.
    Ok(0)
}

pub fn predict_cmd(args: PredictArgs) -> anyhow::Result<u8> {
    let strict = args.strict;
    let compute = backend::select(args.backend)?;
    let crate::infer::Inputs {
        paths,
        left_out,
        notes,
    } = crate::infer::gather_inputs(&args.input, args.image_pattern.clone()).map_err(|e| {
        // The command line's name for the pattern.
        anyhow::anyhow!(
            "{}",
            format!("{e:#}").replace("an image pattern names", "--image-pattern names")
        )
    })?;
    for note in &notes {
        crate::errln!("note: {note}");
    }
    for (path, why) in &left_out {
        crate::errln!("skipped ({why}): {path}");
    }
    anyhow::ensure!(!paths.is_empty(), "no images in {}", args.input.display());
    // The run's own predictions.csv is what its metrics and Evaluate read.
    let own = args.run.join("predictions.csv");
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(&own), std::path::absolute(&args.out)) {
        anyhow::ensure!(
            std::fs::canonicalize(&b).map_or(a != b, |b| a != b),
            "--out {} is the run's own predictions (what its metrics and Evaluate read); \
             write to another file",
            args.out.display()
        );
    }
    let worker = std::thread::Builder::new().name("predict".into()).spawn(
        move || -> anyhow::Result<_> {
            let classifier = crate::infer::Classifier::load(&args.run, &compute.device)?
                .with_orientation_tta(args.tta);
            crate::errln!(
                "predicting {} images on {}{}",
                paths.len(),
                compute.description,
                if args.tta {
                    ", each averaged over its 8 orientations"
                } else {
                    ""
                }
            );
            let bar = indicatif::ProgressBar::new(paths.len() as u64);
            let summary = crate::infer::predict_to_csv(
                &classifier,
                &paths,
                &args.out,
                args.batch_size,
                &mut |d, _| bar.set_position(d as u64),
            )?;
            bar.finish_and_clear();
            Ok((summary, args.out))
        },
    )?;
    let (summary, out) = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the prediction thread panicked"))??;
    for (path, reason) in &summary.failed {
        crate::errln!("skipped unreadable image ({reason}): {path}");
    }
    crate::errln!(
        "wrote {} predictions to {}",
        summary.predicted,
        out.display()
    );
    anyhow::ensure!(
        summary.predicted > 0,
        "none of the {} image(s) could be read",
        summary.failed.len()
    );
    Ok(
        if (summary.failed.is_empty() && left_out.is_empty()) || !strict {
            0
        } else {
            crate::cli::exit::PROBLEMS
        },
    )
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Predictions CSV with p_<label> columns.
    #[arg(long)]
    pub pred: PathBuf,
    /// CSV with the true labels (path + label columns), if the predictions have none.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[arg(long, value_parser = parse_task)]
    pub task: Option<Task>,
    #[arg(long)]
    pub json: bool,
}

pub fn evaluate_cmd(args: EvaluateArgs) -> anyhow::Result<u8> {
    let e = crate::infer::evaluate::evaluate_csv(&args.pred, args.truth.as_deref(), args.task)?;
    if let Some(scored) = &e.scored {
        crate::errln!("scored: {scored}");
    }
    if e.rows_without_truth > 0 {
        crate::errln!(
            "{} row(s) without a truth label left out",
            e.rows_without_truth
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        for t in crate::train::report::metrics_tables("images", &e.metrics) {
            outln!("{t}");
        }
        if let Some(p) = &e.patient_metrics {
            for t in crate::train::report::metrics_tables("patients", p)
                .into_iter()
                .take(1)
            {
                outln!("{t}");
            }
        }
    }
    Ok(0)
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    pub run: PathBuf,
    /// Test-time augmentation: average each image's probabilities over its 8 orientations
    /// (flips, quarter turns); 8 times the compute per image.
    #[arg(long)]
    pub tta: bool,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to bind (loopback by default). Any other address, e.g. 0.0.0.0 for remote
    /// clients, needs --token-env or --token-file.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Environment variable holding the token clients must send as `Authorization: Bearer
    /// <token>` (every request except GET /health).
    #[arg(long, value_name = "VAR", conflicts_with = "token_file")]
    pub token_env: Option<String>,
    /// File holding the token clients must send (see --token-env).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Largest image accepted, in pixels (width × height, read from the header before
    /// decoding); larger images get 413.
    #[arg(long, default_value_t = crate::infer::serve::MAX_PIXELS)]
    pub max_pixels: u64,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, default_value_t = crate::infer::serve::MAX_BODY_BYTES)]
    pub max_body_bytes: u64,
    /// Connection threads: clients served at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub threads: u16,
    /// Images admitted at once (being decoded, waiting or being classified); more get 503
    /// with Retry-After.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub queue: u32,
    /// Most images classified together in one batch.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_batch: u32,
    /// Milliseconds the model waits for more images to fill a batch while more are arriving.
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    /// Seconds a client has to send one request, and to take one reply (slower: 408).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout_secs: u64,
}

pub fn serve_cmd(args: ServeArgs) -> anyhow::Result<u8> {
    use crate::infer::serve::{Limits, ServeOptions, Token};
    let token = match (&args.token_env, &args.token_file) {
        (Some(var), _) => Some(Token::from_env(var)?),
        (None, Some(path)) => Some(Token::from_file(path)?),
        (None, None) => None,
    };
    // An IPv6 address needs brackets before its port.
    let addr = if args.host.contains(':') && !args.host.starts_with('[') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    let options = ServeOptions {
        addr,
        token,
        threads: args.threads.into(),
        queue: args.queue as usize,
        max_batch: args.max_batch as usize,
        batch_wait: std::time::Duration::from_millis(args.batch_wait_ms),
        orientation_tta: args.tta,
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_pixels: args.max_pixels,
            timeout: std::time::Duration::from_secs(args.timeout_secs),
            ..Limits::default()
        },
    };
    let compute = backend::select(args.backend)?;
    crate::infer::serve::serve(&args.run, compute.device, options)?;
    Ok(0)
}

/// `cellbench weights check [image]`: ImageNet top-5 of a photo through the bundled backbone.
pub fn weights_check(
    image: Option<&Path>,
    backbone: crate::model::efficientnet::Backbone,
    backend_choice: BackendChoice,
) -> anyhow::Result<u8> {
    use burn::tensor::{Tensor, TensorData, activation};
    let compute = backend::select(backend_choice)?;
    let path = image.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference/chelsea.png"),
        Path::to_owned,
    );
    let img = crate::dataset::image_io::decode_file(&path)
        .with_context(|| format!("reading {}", path.display()))?;
    let pre = crate::dataset::preprocess::Preprocess {
        size: backbone.input_size(),
        border_crop: false,
        center_crop: false,
    };
    let model = crate::model::extractor::load_backbone(backbone, &compute.device)?;
    let side = pre.size as usize;
    let x = Tensor::<4>::from_data(
        TensorData::new(pre.apply(&img), [1, 3, side, side]),
        &compute.device,
    );
    let probs: Vec<f32> = activation::softmax(model.logits(x), 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default();
    let classes = crate::model::efficientnet::imagenet_classes();
    let mut idx: Vec<usize> = (0..probs.len()).collect();
    idx.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    outln!(
        "{backbone} (ImageNet, {side}x{side}) on {} [{}]:",
        path.display(),
        compute.description
    );
    for &i in idx.iter().take(5) {
        outln!(
            "  {:6.2}%  {:>4}  {}",
            probs[i] * 100.0,
            i,
            classes.get(i).map_or("?", String::as_str)
        );
    }
    Ok(0)
}

/// `cellbench run <workbook>`.
pub fn run_workbook(path: &Path) -> anyhow::Result<u8> {
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let cancel = cancel.clone();
        ctrlc::set_handler(move || cancel.store(true, Ordering::SeqCst)).ok();
    }
    let mut view = ProgressView::new(false);
    let path = path.to_owned();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (etx, erx) = std::sync::mpsc::channel::<TrainEvent>();
    // The whole workbook runs on one thread (burn work included); output comes back here.
    let worker = std::thread::Builder::new()
        .name("workbook".into())
        .spawn(move || {
            crate::workbook::run::run_workbook(
                &path,
                &mut |o| match o {
                    crate::workbook::run::Output::Text(title, text) => {
                        tx.send(format!("── {title}\n{text}\n")).ok();
                    }
                    crate::workbook::run::Output::Table(t) => {
                        tx.send(t.to_string()).ok();
                    }
                    crate::workbook::run::Output::Event(e) => {
                        etx.send(e.clone()).ok();
                    }
                },
                &cancel,
            )
        })?;
    loop {
        let mut idle = true;
        for line in rx.try_iter() {
            idle = false;
            outln!("{line}");
        }
        for e in erx.try_iter() {
            idle = false;
            view.show(&e);
        }
        if worker.is_finished() {
            for line in rx.try_iter() {
                outln!("{line}");
            }
            break;
        }
        if idle {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    view.finish();
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the workbook thread panicked"))??;
    Ok(0)
}
