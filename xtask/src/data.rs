//! `cargo xtask data`: look at a data set before training on it. Prints the split sizes,
//! the class histogram and the training split's channel mean/std, and writes a PNG grid
//! with one row of samples per class (top row: class 0).
//!
//! `cargo xtask data --dataset synthetic [--difficulty 0.5 --seed 0]`,
//! `--dataset cifar10 DIR`, `--dataset cifar100 DIR`, `--dataset fashion-mnist (DIR optional)`
//! (or, as `train` takes it, `--dataset NAME --data-dir DIR`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use cinder_datasets::{DatasetSource, Summary, class_grid, load};

use crate::dataset::dataset_source;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    /// synthetic, cifar10 DIR, cifar100 DIR or fashion-mnist (DIR optional)
    #[arg(long, num_args = 1..=2, value_names = ["NAME", "DIR"], default_value = "synthetic")]
    pub dataset: Vec<String>,
    /// The data set's directory, as `train` takes it (same as DIR after the name).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seed of the synthetic data set (default 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Difficulty of the synthetic data set in [0, 1] (default 0.5).
    #[arg(long)]
    pub difficulty: Option<f32>,
    /// Samples per class in the PNG grid.
    #[arg(long, default_value_t = 10)]
    pub per_class: usize,
    /// Magnification of each 32x32 image in the grid.
    #[arg(long, default_value_t = 3)]
    pub scale: usize,
    /// Where to write the grid; default `results/data/<dataset>.png`.
    #[arg(long)]
    pub png: Option<PathBuf>,
}

/// The source named by `--dataset NAME [DIR]` (or `--data-dir DIR`) and the synthetic
/// options.
fn source(args: &DataArgs) -> anyhow::Result<DatasetSource> {
    let name = args.dataset.first().map_or("synthetic", String::as_str);
    let dir = args
        .dataset
        .get(1)
        .map(Path::new)
        .or(args.data_dir.as_deref());
    let mut source = dataset_source(name, dir)?;
    match &mut source {
        DatasetSource::Synthetic(spec) => {
            spec.seed = args.seed.unwrap_or(spec.seed);
            spec.difficulty = args.difficulty.unwrap_or(spec.difficulty);
        }
        _ if args.seed.is_some() || args.difficulty.is_some() => {
            bail!("--seed and --difficulty apply to the synthetic data set only")
        }
        _ => {}
    }
    Ok(source)
}

pub fn run(args: DataArgs) -> anyhow::Result<()> {
    let source = source(&args)?;
    let start = Instant::now();
    let splits = load(&source)?;
    println!(
        "{}: loaded in {:.2} s",
        source.name(),
        start.elapsed().as_secs_f64()
    );
    println!("{}", Summary::new(&splits)?);
    let png = args
        .png
        .unwrap_or_else(|| Path::new("results/data").join(format!("{}.png", source.name())));
    if let Some(dir) = png.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let grid = class_grid(&splits.train, args.per_class, args.scale)?;
    grid.write_png(&png)?;
    println!(
        "wrote {} ({}x{}: one row per class, {} training samples each)",
        png.display(),
        grid.width,
        grid.height,
        args.per_class
    );
    Ok(())
}
