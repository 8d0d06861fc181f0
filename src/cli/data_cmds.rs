//! `explore`, `split` and `synth`: the dataset commands, and the dataset options every command shares.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::dataset::headers::CheckLevel;
use crate::dataset::split::{Split, SplitConfig, SplitReport, assign_splits};
use crate::dataset::{DatasetFormat, Manifest, OpenOptions};
use crate::model::backend::BackendChoice;

use super::exit;

/// How to read a dataset's format and CSV columns (shared by every subcommand that opens one).
#[derive(Args, Debug, Clone, Default)]
pub struct CsvArgs {
    /// Force the format instead of detecting it: cnmc, class-folders, nih, retina, csv.
    #[arg(long)]
    pub format: Option<DatasetFormat>,
    /// For CSVs: the folder holding the images (default: the CSV's folder).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// For CSVs: the column with image paths or ids.
    #[arg(long)]
    pub path_column: Option<String>,
    /// For CSVs: the column with labels (`A|B` for multi-label).
    #[arg(long)]
    pub label_column: Option<String>,
    /// For CSVs: the column with patient ids.
    #[arg(long)]
    pub patient_column: Option<String>,
    /// For CSVs of ids: the image file name of each id, e.g. `{id}.bmp` or `{id:03}.bmp`
    /// (numeric ids zero-padded to 3 digits).
    #[arg(long, value_name = "PATTERN")]
    pub image_pattern: Option<String>,
}

impl CsvArgs {
    /// The options, an images folder named as the shell names it (relative to the current
    /// folder) made absolute: a run records it, and a resume or a cluster job reads it
    /// from elsewhere.
    pub fn options(&self) -> OpenOptions {
        OpenOptions {
            format: self.format,
            images: self
                .images
                .as_ref()
                .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            path_column: self.path_column.clone(),
            label_column: self.label_column.clone(),
            patient_column: self.patient_column.clone(),
            image_pattern: self.image_pattern.clone(),
        }
    }
}

/// How to open a dataset (shared by every subcommand that reads one).
#[derive(Args, Debug, Clone)]
pub struct DatasetArgs {
    /// Dataset folder (C-NMC names or class folders) or CSV (NIH, Kaggle retinopathy, generic).
    pub dataset: PathBuf,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// Also read every image's header (`headers`) or decode every image (`decode`); for
    /// `explore`, also `features`: whether the backbone features identify the patient more
    /// easily than the label (a batch-effect check). Several: `--check decode,features`.
    #[arg(long, value_parser = parse_check, value_delimiter = ',')]
    pub check: Vec<Check>,
}

/// One `--check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Images(CheckLevel),
    Features,
}

fn parse_check(s: &str) -> Result<Check, String> {
    match s {
        "headers" => Ok(Check::Images(CheckLevel::Headers)),
        "decode" => Ok(Check::Images(CheckLevel::Decode)),
        "features" => Ok(Check::Features),
        _ => Err("expected `headers`, `decode` or `features`".into()),
    }
}

impl DatasetArgs {
    pub fn options(&self) -> OpenOptions {
        self.csv.options()
    }

    /// Opens the dataset and runs the requested image check (`--check features` is
    /// `explore`'s and refused here).
    pub fn open(&self) -> anyhow::Result<Manifest> {
        anyhow::ensure!(
            !self.check.contains(&Check::Features),
            "--check features is a check of `cellbench explore`"
        );
        self.open_checked()
    }

    /// Opens the dataset and runs the requested image checks (the most thorough one).
    fn open_checked(&self) -> anyhow::Result<Manifest> {
        let mut manifest = crate::dataset::open(&self.dataset, &self.options())?;
        let level = if self.check.contains(&Check::Images(CheckLevel::Decode)) {
            Some(CheckLevel::Decode)
        } else if self.check.contains(&Check::Images(CheckLevel::Headers)) {
            Some(CheckLevel::Headers)
        } else {
            None
        };
        if let Some(level) = level {
            crate::dataset::headers::check_images(&mut manifest, level);
        }
        Ok(manifest)
    }
}

#[derive(Args, Debug)]
pub struct ExploreArgs {
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Write the charts as PNG and SVG into this folder.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Exit with code 3 when the dataset has problems.
    #[arg(long)]
    pub strict: bool,
    /// Where `--check features` computes the backbone features.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
}

#[derive(Args, Debug)]
pub struct SplitArgs {
    /// Dataset to split (omit with --check).
    #[arg(required_unless_present = "check")]
    pub dataset: Option<PathBuf>,
    /// Check an existing split CSV (with `patient` and `split` columns) for leakage instead.
    #[arg(long, value_name = "CSV", conflicts_with = "dataset")]
    pub check: Option<PathBuf>,
    /// Fraction of images for the test side.
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    /// Fraction of images for the validation side.
    #[arg(long, default_value_t = 0.1)]
    pub val: f64,
    /// Seed of the split: the same seed and data give the same sides.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Split images one by one even when patients are known: the leaky split, to compare
    /// with the patient split (it says how many patients it divides and still succeeds).
    #[arg(long)]
    pub by_image: bool,
    /// Where to write the split manifest.
    #[arg(long, short, default_value = "split.csv")]
    pub out: PathBuf,
    #[command(flatten)]
    pub csv: CsvArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Output folder.
    pub dir: PathBuf,
    #[arg(long, default_value_t = 12)]
    pub patients: u32,
    /// Cell images (files) per patient.
    #[arg(long, default_value_t = 20)]
    pub images: u32,
    /// Cells per microscope image are 1..=max-cells.
    #[arg(long, default_value_t = 3)]
    pub max_cells: u32,
    /// Image width and height in pixels.
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Every n-th patient is a healthy subject (`hem`).
    #[arg(long, default_value_t = 3)]
    pub hem_every: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of `all` cells drawn as blasts (the rest look normal): below 1 each patient's
    /// stain is an easier cue than the cell, as in real data with batch effects.
    #[arg(long, default_value_t = 1.0)]
    pub signal: f64,
}

pub(super) fn explore(args: ExploreArgs) -> anyhow::Result<u8> {
    let manifest = args.data.open_checked()?;
    let mut report = crate::explore::explore(&manifest)?;
    if args.data.check.contains(&Check::Features) {
        report.batch_effect = Some(batch_effect(&manifest, args.backend)?);
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for table in report.tables() {
            outln!("{table}");
        }
        let conflicting = crate::dataset::duplicates::conflicting_groups(&manifest);
        if conflicting > 0 {
            crate::errln!(
                "warning: {conflicting} group(s) of identical images carry different labels: at most one label of each is right (`--json` lists them)"
            );
        }
        if let Some(b) = &report.batch_effect {
            outln!(
                "batch effect ({} of {} images, {} patients, {} labels): {}",
                b.images,
                b.dataset_images,
                b.patients,
                b.labels,
                b.summary
            );
        }
    }
    if let Some(dir) = &args.plots {
        #[cfg(feature = "gui")]
        {
            crate::fsio::create_dir_all(dir)?;
            let files = crate::explore::charts::write_report_charts(&report, dir)?;
            crate::errln!("wrote {} chart files to {}", files.len(), dir.display());
        }
        #[cfg(not(feature = "gui"))]
        anyhow::bail!(
            "this headless build draws no charts (built without the gui feature): {}",
            dir.display()
        );
    }
    Ok(if args.strict && !report.problems.is_empty() {
        exit::PROBLEMS
    } else {
        0
    })
}

/// `explore --check features`: the batch-effect check on the dataset's backbone features
/// (single-label images with a patient id).
fn batch_effect(
    manifest: &Manifest,
    backend: BackendChoice,
) -> anyhow::Result<crate::explore::batch_effect::BatchEffect> {
    anyhow::ensure!(
        manifest.has_patients(),
        "--check features compares patients with labels, and this dataset has no patient ids"
    );
    let usable = manifest.records.iter().filter(|r| r.is_usable()).count();
    let records: Vec<&crate::dataset::Record> = manifest
        .records
        .iter()
        .filter(|r| r.is_usable() && r.patient.is_some() && r.labels.len() == 1)
        .collect();
    if records.len() < usable {
        crate::errln!(
            "--check features: {} of {usable} usable images left out (several labels, or no patient id)",
            usable - records.len()
        );
    }
    // Refuse before extracting anything when the check cannot run.
    let distinct = |f: &dyn Fn(&crate::dataset::Record) -> String| {
        records
            .iter()
            .map(|r| f(r))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let (labels, patients) = (
        distinct(&|r| r.labels[0].clone()),
        distinct(&|r| r.patient.clone().unwrap_or_default()),
    );
    anyhow::ensure!(
        labels >= 2 && patients >= 2,
        "--check features needs two labels and two patients among the single-label images with a patient id; found {labels} label(s) and {patients} patient(s) in {} images",
        records.len()
    );
    let (kept, rows) = super::model_cmds::backbone_features(manifest, &records, backend)?;
    let labels: Vec<String> = kept.iter().map(|&i| records[i].labels[0].clone()).collect();
    let patients: Vec<String> = kept
        .iter()
        .map(|&i| records[i].patient.clone().unwrap_or_default())
        .collect();
    crate::explore::batch_effect::check(&rows, &labels, &patients, 1)
        .map_err(|e| anyhow::anyhow!("--check features: {e}"))
}

pub(super) fn split(args: SplitArgs) -> anyhow::Result<u8> {
    if let Some(csv) = &args.check {
        let manifest = crate::dataset::open(
            csv,
            &OpenOptions {
                format: Some(DatasetFormat::Csv),
                images: args.csv.images.clone(),
                ..Default::default()
            },
        )?;
        // What the check cannot see is said, not passed over: rows whose split is not
        // train/val/test, rows listed twice, images it could not find (copies among them are
        // not compared).
        let mut blind = 0;
        for p in &manifest.problems {
            use crate::dataset::ProblemKind as K;
            if matches!(p.kind, K::BadRow | K::DuplicatePath | K::MissingImage) {
                blind += 1;
                if blind <= 20 {
                    crate::errln!("{}: {} ({})", p.kind.description(), p.path, p.detail);
                }
            }
        }
        if blind > 20 {
            crate::errln!("… and {} more", blind - 20);
        }
        anyhow::ensure!(
            manifest.records.iter().any(|r| r.split.is_some()),
            "no `split` column with train/val/test values in {}",
            csv.display()
        );
        if !manifest.has_patients() {
            crate::errln!(
                "note: no patient column in {}: only copies of images are checked, not patients",
                csv.display()
            );
        }
        let report = SplitReport::of(&manifest.records, &manifest.copies);
        let code = print_split(&report, args.json, None, false);
        if code == 0 && blind > 0 {
            crate::errln!(
                "leakage check incomplete: {blind} row(s) above could not be checked (give the images folder with --images when the split CSV is not beside the dataset); failing"
            );
            return Ok(exit::LEAKAGE);
        }
        return Ok(code);
    }
    let data = DatasetArgs {
        dataset: args.dataset.clone().context("a dataset is required")?,
        csv: args.csv.clone(),
        check: Vec::new(),
    };
    let mut manifest = data.open()?;
    let config = SplitConfig {
        test: args.test,
        val: args.val,
        seed: args.seed,
        by_image: args.by_image,
    };
    let sides = assign_splits(&manifest.records, &manifest.copies, &config)?;
    for (r, s) in manifest.records.iter_mut().zip(sides) {
        r.split = s;
    }
    crate::dataset::frame::write_manifest_csv(&manifest, &args.out)?;
    let mut report = SplitReport::of(&manifest.records, &manifest.copies);
    if args.by_image {
        report.group_by = crate::dataset::split::GroupBy::Image;
    }
    // Sides asked for but left empty (too few patient groups) are said, not passed over.
    for (side, share) in [(Split::Val, args.val), (Split::Test, args.test)] {
        let images = report
            .counts
            .iter()
            .find(|c| c.split == side)
            .map_or(0, |c| c.images);
        if share > 0.0 && images == 0 {
            let groups = if manifest.has_patients() && !args.by_image {
                "patients"
            } else {
                "images"
            };
            let copies = if manifest.copies.is_empty() {
                ""
            } else {
                " (copies of one image count as one)"
            };
            crate::errln!(
                "warning: the {} side is empty: whole {groups}{copies} cannot make up {:.0}% of this dataset",
                side.name(),
                share * 100.0
            );
        }
    }
    Ok(print_split(
        &report,
        args.json,
        Some(&args.out),
        args.by_image,
    ))
}

/// Prints a split's table and its leakage check; returns the exit code. `by_image`: the
/// split divides patients on purpose (`--by-image`), so divided patients are expected.
fn print_split(
    report: &SplitReport,
    json: bool,
    written: Option<&std::path::Path>,
    by_image: bool,
) -> u8 {
    /// Leaks listed one per line, at most this many of each kind.
    const SHOWN: usize = 20;
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        outln!("{}", crate::explore::table::split_table(report));
        if by_image {
            outln!(
                "note: split by image on purpose (--by-image): validation scores on it are optimistic; compare with a patient split"
            );
        } else if report.group_by == crate::dataset::split::GroupBy::Image {
            outln!("note: the dataset has no patient ids, so images were split individually");
        }
        if report.unassigned > 0 {
            outln!(
                "note: {} unusable images were left out of every split",
                report.unassigned
            );
        }
    }
    if let Some(path) = written {
        crate::errln!("wrote {}", path.display());
    }
    if report.passed() {
        if !json {
            outln!(
                "leakage check: passed, no patient and no copy of an image on more than one side"
            );
        }
        return 0;
    }
    if by_image && report.copy_leaks.is_empty() {
        crate::errln!(
            "{} patient(s) have images on more than one side, as --by-image does (copies of one image were still kept together)",
            report.leaks.len()
        );
        return 0;
    }
    crate::errln!(
        "leakage check FAILED: {} patient(s) and {} group(s) of identical images on more than one side:",
        report.leaks.len(),
        report.copy_leaks.len()
    );
    for leak in report.leaks.iter().take(SHOWN) {
        let sides: Vec<&str> = leak.splits.iter().map(|s| s.name()).collect();
        crate::errln!(
            "  patient {} ({} images) in {}",
            leak.patient,
            leak.images,
            sides.join(" and ")
        );
    }
    if report.leaks.len() > SHOWN {
        crate::errln!("  … and {} more patients", report.leaks.len() - SHOWN);
    }
    for leak in report.copy_leaks.iter().take(SHOWN) {
        let sides: Vec<&str> = leak.splits.iter().map(|s| s.name()).collect();
        crate::errln!(
            "  identical images {} in {}",
            crate::explore::table::clip_chars(&leak.paths.join(", "), 200),
            sides.join(" and ")
        );
    }
    if report.copy_leaks.len() > SHOWN {
        crate::errln!(
            "  … and {} more groups of identical images",
            report.copy_leaks.len() - SHOWN
        );
    }
    exit::LEAKAGE
}

pub(super) fn synth(args: SynthArgs) -> anyhow::Result<u8> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.signal),
        "--signal is a share of cells, from 0 to 1; got {}",
        args.signal
    );
    let config = crate::dataset::synth::SynthConfig {
        patients: args.patients,
        images_per_patient: args.images,
        max_cells: args.max_cells,
        size: args.size,
        hem_every: args.hem_every,
        seed: args.seed,
        signal: args.signal,
    };
    let start = std::time::Instant::now();
    let summary = crate::dataset::synth::generate(&args.dir, &config)?;
    outln!(
        "wrote {} synthetic images ({} all patients, {} hem subjects, {:.1} MB) to {} in {:.1} s",
        summary.files,
        summary.patients_all,
        summary.patients_hem,
        summary.bytes as f64 / 1e6,
        args.dir.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(0)
}
