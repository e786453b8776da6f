//! `cargo xtask autoquant`: accuracy-driven mixed precision. Chooses each layer's weight
//! width (8, 6, 4 or 2 bits) or the float fallback so that the model is as small (or
//! fast) as the search finds while its accuracy on a held-out split of the training
//! images stays within a budget of the float model's; see [`cinder_ptq::mixed`] for the
//! greedy search and [`search`] for the measurements on the int8 runtime.
//!
//! `cargo xtask autoquant --checkpoint runs/fmnist --budget 0.5 --target size --out runs/fmnist/autoquant`
//!
//! writes, under `--out`: `config.toml` (the chosen per-layer config, for
//! `cargo xtask quantize --config`), `model.cinder`, `uniform-w8.cinder`,
//! `uniform-w4.cinder`, `autoquant.json` and `autoquant.md` (the layer table, the
//! search's trajectory, and the test accuracy, size and latency of the chosen model beside
//! uniform W8 and W4, measured once at the end).

pub mod report;
pub mod search;

use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_datasets::{Dataset, DatasetSource, Normalization};
use cinder_model::calibrate::calibrate;
use cinder_model::{BackendKind, GraphNet};
use cinder_observers::{CalibrationTable, Calibrator, ObserverSpec};
use cinder_ptq::mixed::{GreedyOptions, Target, Width};
use cinder_runtime::{QuantConfig, QuantizedModel, SessionOptions, convert};
use cinder_tensor::QuantScheme;
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::{read_json, write_atomic};

use crate::dataset::{DatasetImages, TrainSummary, calibration_indices, dataset_source};
use crate::evaluate::{correct, images, median_ms, predict, single_latencies};
use crate::sensitivity::Probe;
use report::{Report, TestRow};
use search::{HeldOut, Inputs, held_out};

#[derive(clap::Args, Debug)]
pub struct AutoquantArgs {
    /// A `cargo xtask train --out` directory (graph.json, graph.safetensors, summary.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The accuracy budget: the largest drop against fp32 on the held-out split, in
    /// percentage points.
    #[arg(long, default_value_t = 0.5, value_parser = crate::checks::finite_non_negative)]
    pub budget: f64,
    /// What to minimize: size (model bytes) or latency (runtime time per batch).
    #[arg(long, default_value = "size", value_parser = parse_target)]
    pub target: Target,
    /// The weight widths a layer may take, highest first.
    #[arg(long, default_value = "8,6,4,2", value_delimiter = ',')]
    pub widths: Vec<u8>,
    /// Never fall back to float weights (the search fails when W8 is over the budget).
    #[arg(long)]
    pub no_float: bool,
    /// Held-out training images every decision is measured on.
    #[arg(long, default_value_t = 2000, value_parser = crate::checks::positive)]
    pub held_out: usize,
    /// Seed of the held-out and calibration images' choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The activation observer: minmax, moving-average[=C], entropy, percentile=P or mse.
    #[arg(long, default_value = "minmax")]
    pub observer: String,
    #[arg(long, default_value_t = 1024, value_parser = crate::checks::positive)]
    pub calibration_images: usize,
    /// Per-layer quantization config (TOML) the widths are set on; default W8A8 static,
    /// per-channel symmetric.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, default_value_t = 64, value_parser = crate::checks::positive)]
    pub batch: usize,
    /// Test images timed one at a time for the batch-1 latency.
    #[arg(long, default_value_t = 200)]
    pub single: usize,
    #[arg(long, default_value_t = 2, value_parser = crate::checks::positive)]
    pub threads: usize,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_target(s: &str) -> Result<Target, String> {
    s.parse()
        .map_err(|e: cinder_ptq::mixed::AllocError| e.to_string())
}

/// The checkpoint's model, its data, the held-out split and the calibration table.
struct Loaded {
    graph: FloatGraph,
    model: GraphNet,
    test: Dataset,
    held_out: HeldOut,
    norm: Normalization,
    table: CalibrationTable,
}

fn load(args: &AutoquantArgs) -> anyhow::Result<Loaded> {
    let dir = &args.checkpoint;
    let summary: TrainSummary = read_json(&dir.join("summary.json"))?;
    let graph = FloatGraph::load(&dir.join("graph.json"), &dir.join("graph.safetensors"))?;
    let mut source = dataset_source(&summary.dataset, args.data_dir.as_deref())?;
    if let DatasetSource::Synthetic(spec) = &mut source {
        // A smaller synthetic set is a prefix of a larger one: generate only the images
        // trained on and the held-out ones after them.
        spec.train = summary.train_images.saturating_add(args.held_out);
    }
    let splits = cinder_datasets::load(&source)?;
    let trained = summary.train_images.min(splits.train.len());
    let held_out = held_out(
        &splits.train,
        trained,
        args.calibration_images,
        args.held_out,
        args.seed,
    )?;
    let model = GraphNet::from_float_graph(&graph, &BackendKind::Flex.device()?)?;
    let norm = summary.normalization;
    let table = calibration(&model, &splits.train.limit(trained), norm, args)?;
    Ok(Loaded {
        graph,
        model,
        test: splits.test,
        held_out,
        norm,
        table,
    })
}

pub fn run(args: AutoquantArgs) -> anyhow::Result<()> {
    crate::checks::threads("--threads", args.threads)?;
    let l = load(&args)?;
    let base = match &args.config {
        Some(path) => crate::quantize::read_config(path)?,
        None => QuantConfig::default(),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let inputs = Inputs {
        model: &l.model,
        graph: &l.graph,
        table: &l.table,
        base: &base,
        held_out: &l.held_out.data,
        norm: l.norm,
        batch: args.batch,
        threads: args.threads,
        target: args.target,
        options: GreedyOptions {
            widths: args.widths.clone(),
            budget_pp: args.budget,
            allow_float: !args.no_float,
        },
        scratch: &args.out.join("candidate.cinder"),
    };
    let found = search::run(&inputs)?;
    std::fs::remove_file(inputs.scratch).ok();
    write_atomic(
        &args.out.join("config.toml"),
        toml::to_string(&found.config)?.as_bytes(),
    )?;
    let test = on_test(&l, &base, &found.config, &args)?;
    let report = Report {
        format_version: report::FORMAT_VERSION,
        budget_pp: args.budget,
        target: args.target,
        seed: args.seed,
        observer: args.observer.clone(),
        held_out_images: l.held_out.data.len(),
        held_out_unseen: l.held_out.unseen,
        batch: args.batch,
        fp32_test_accuracy: Probe {
            model: &l.model,
            graph: &l.graph,
            images: DatasetImages {
                data: &l.test,
                norm: l.norm,
            },
            batch: args.batch,
        }
        .float_accuracy()?,
        fp32_bytes: file_bytes(&args.checkpoint.join("graph.safetensors"))?,
        found,
        test,
        load: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .map(|l| l.trim().to_owned()),
    };
    report::write(&report, &args.out)?;
    println!("{}", report::summary(&report));
    println!("wrote {}", args.out.join("autoquant.md").display());
    Ok(())
}

/// The chosen model, uniform W8 and uniform W4, written beside the config and measured
/// once on the test split.
fn on_test(
    l: &Loaded,
    base: &QuantConfig,
    chosen: &QuantConfig,
    args: &AutoquantArgs,
) -> anyhow::Result<Vec<TestRow>> {
    let models = [
        ("autoquant", chosen.clone(), "model.cinder"),
        (
            "uniform W8",
            search::uniform(base, Width::Bits(8)),
            "uniform-w8.cinder",
        ),
        (
            "uniform W4",
            search::uniform(base, Width::Bits(4)),
            "uniform-w4.cinder",
        ),
    ];
    let mut built = Vec::new();
    for (name, config, file) in models {
        let m = convert(&l.graph, &l.table, &config)?;
        m.save(&args.out.join(file))?;
        built.push((name, m, args.out.join(file)));
    }
    compare(&built, &l.test, l.norm, args)
}

/// The calibration table of `observer` on `calibration_images` of the model's training
/// images, in the seeded order the held-out split skips.
fn calibration(
    model: &GraphNet,
    train: &Dataset,
    norm: Normalization,
    args: &AutoquantArgs,
) -> anyhow::Result<CalibrationTable> {
    let spec: ObserverSpec = args.observer.parse()?;
    let mut calibrator = Calibrator::new(spec, QuantScheme::activations_uint8())?;
    let indices = calibration_indices(train.len(), args.calibration_images, args.seed);
    let images = DatasetImages { data: train, norm };
    calibrate(model, &images, &indices, args.batch, &mut calibrator)?;
    Ok(calibrator.table()?)
}

fn file_bytes(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len())
}

/// Images per turn of one model in [`compare`]: switching models every batch would time
/// the previous session's worker threads winding down, not the model.
const TURN_IMAGES: usize = 1024;
/// Single images per turn of one model.
const TURN_SINGLES: usize = 25;

/// Test accuracy, size and latency of every model, the models taking turns over the test
/// split (and the single images) so that they share the machine's load.
fn compare(
    models: &[(&str, QuantizedModel, PathBuf)],
    test: &Dataset,
    norm: Normalization,
    args: &AutoquantArgs,
) -> anyhow::Result<Vec<TestRow>> {
    let options = SessionOptions {
        threads: args.threads,
    };
    let mut sessions = models
        .iter()
        .map(|(_, m, _)| m.session_with(options))
        .collect::<Result<Vec<_>, _>>()?;
    let n = models.len();
    let (mut right, mut batch_times, mut single_times) =
        (vec![0; n], vec![Vec::new(); n], vec![Vec::new(); n]);
    let turn = TURN_IMAGES.max(args.batch);
    for start in (0..test.len()).step_by(turn) {
        let chunk = test.subset(&(start..(start + turn).min(test.len())).collect::<Vec<_>>());
        for (i, session) in sessions.iter_mut().enumerate() {
            session.run(&images(&chunk, &norm, 0..args.batch.min(chunk.len()))?.0)?;
            let (predicted, times) = predict(session, &chunk, &norm, args.batch)?;
            right[i] += correct(&predicted, &chunk);
            batch_times[i].extend(times);
        }
    }
    let singles = args.single.min(test.len());
    for start in (0..singles).step_by(TURN_SINGLES) {
        let chunk = test.subset(&(start..(start + TURN_SINGLES).min(singles)).collect::<Vec<_>>());
        for (i, session) in sessions.iter_mut().enumerate() {
            single_latencies(session, &chunk, &norm, 1)?;
            single_times[i].extend(single_latencies(session, &chunk, &norm, chunk.len())?);
        }
    }
    models
        .iter()
        .enumerate()
        .map(|(i, (name, _, path))| {
            Ok(TestRow {
                name: (*name).to_owned(),
                accuracy: right[i] as f64 / test.len().max(1) as f64,
                model_bytes: file_bytes(path)?,
                batch_ms: median_ms(std::mem::take(&mut batch_times[i])),
                single_ms: median_ms(std::mem::take(&mut single_times[i])),
            })
        })
        .collect()
}
