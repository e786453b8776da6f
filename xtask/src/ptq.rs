//! The post-training steps of `cargo xtask quantize` (crate `cinder-ptq`, Nagel et al.
//! 2019 and 2020): cross-layer equalization (`--equalize`, then recalibration of the
//! equalized graph on the training images), AdaRound (`--adaround`: learned rounding of
//! the weights, whose codes conversion takes as they are) and bias correction
//! (`--bias-correction`, against AdaRound's weights where it ran), switched per layer by
//! `equalize` / `adaround` / `bias_correction` in the quantization config, and the
//! per-layer report of what they did: each layer's weight SQNR under its config before
//! and after, the equalized pairs, AdaRound's reconstruction errors, and each bias
//! correction against the layer's mean output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use cinder_datasets::Dataset;
use cinder_model::calibrate::calibrate;
use cinder_model::data::ImageSource;
use cinder_model::{BackendKind, GraphNet};
use cinder_observers::{CalibrationTable, Calibrator, ObserverSpec};
use cinder_ptq::{
    AdaRoundOptions, AdaRounded, ClipPolicy, EqualizeOptions, LayerCorrection, LayerRounding,
    PairReport, adaround, correct_biases_rounded, equalize, quantized_weight,
};
use cinder_runtime::{Mode, QuantConfig};
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::{read_json, write_json_atomic};
use cinder_tensor::{ErrorMetrics, QuantScheme, Tensor as _, TensorBuf, TensorQuantParams};
use serde::Serialize;

use crate::dataset::{DatasetImages, TrainSummary, calibration_indices, dataset_source};

/// The options of the post-training steps on the command line.
#[derive(clap::Args, Debug)]
pub struct PtqArgs {
    /// Cross-layer equalization of every pair (per layer: `equalize` in --config). The
    /// equalized graph is recalibrated (--observer), so --calibration is not taken.
    #[arg(long)]
    pub equalize: bool,
    /// Equalize pairs through ReLU6 by replacing it with ReLU (Nagel et al.'s MobileNetV2
    /// recipe; changes the float model where activations exceed 6). Without it such
    /// pairs are left alone and the float model is unchanged.
    #[arg(long)]
    pub relu6_as_relu: bool,
    /// Bias correction of every quantized layer (per layer: `bias_correction`).
    #[arg(long)]
    pub bias_correction: bool,
    /// AdaRound of every quantized layer (per layer: `adaround`): each weight rounds up
    /// or down as learned on the calibration images (Nagel et al. 2020).
    #[arg(long)]
    pub adaround: bool,
    /// AdaRound's Adam steps per layer.
    #[arg(long, default_value_t = AdaRoundOptions::default().iterations, value_parser = crate::checks::positive)]
    pub adaround_iters: usize,
    /// AdaRound's Adam learning rate (the paper's 1e-3 suits its 10,000 steps; fewer
    /// steps need a larger one for the rounding to settle).
    #[arg(long, default_value_t = AdaRoundOptions::default().learning_rate)]
    pub adaround_lr: f32,
    /// AdaRound reconstructs each layer's float output from the input it sees once the
    /// layers before it are rounded (one calibration pass per layer).
    #[arg(long)]
    pub adaround_asymmetric: bool,
    /// A `cargo xtask train --out` directory: its summary.json names the data set and
    /// normalization whose training images the steps use.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The observer that recalibrates an equalized graph.
    #[arg(long, default_value = "minmax")]
    pub observer: String,
    /// Training images for recalibration and bias correction.
    #[arg(long, default_value_t = 1024, value_parser = crate::checks::positive)]
    pub calibration_images: usize,
    /// Seed of the random choice of those images.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the post-training report as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// One weighted layer's figures.
#[derive(Debug, Serialize)]
struct LayerRow {
    layer: String,
    /// Weight SQNR under the layer's config, dB, before and after the steps.
    weight_sqnr_db: [Option<f64>; 2],
    correction: Option<LayerCorrection>,
}

/// What `--report` writes.
#[derive(Debug, Default, Serialize)]
struct Report {
    equalized_pairs: Vec<PairReport>,
    equalization_sweeps: usize,
    relu6_replaced: Vec<String>,
    relu6_refused: Vec<String>,
    adaround: Vec<LayerRounding>,
    adaround_seconds: f64,
    layers: Vec<LayerRow>,
}

/// What conversion takes: the graph after the steps, its calibration table, and the
/// given weight parameters of the layers AdaRound rounded (their weights in `graph` are
/// on those grids: `cinder_runtime::convert_with_weights` reproduces the learned codes).
pub struct Prepared {
    pub graph: FloatGraph,
    pub table: CalibrationTable,
    pub weights: BTreeMap<String, TensorQuantParams>,
}

/// The graph and table to convert: `graph` (folded) after the steps `config` asks for,
/// and its calibration table (`calibration`, or a fresh one of an equalized graph).
pub fn prepare(
    graph: FloatGraph,
    calibration: Option<&Path>,
    config: &mut QuantConfig,
    args: &PtqArgs,
) -> anyhow::Result<Prepared> {
    config.default.equalize |= args.equalize;
    config.default.bias_correction |= args.bias_correction;
    config.default.adaround |= args.adaround;
    let graph = graph.fold_batch_norms()?;
    let steps = steps(&graph, config);
    let table = match (steps.equalize, calibration) {
        (false, Some(path)) => Some(CalibrationTable::load(path)?),
        (false, None) => bail!("--calibration is required (unless the graph is equalized)"),
        (true, Some(_)) => bail!(
            "--calibration describes the graph before equalization: leave it out, the \
             equalized graph is recalibrated on --checkpoint's images"
        ),
        (true, None) => None,
    };
    if !steps.any() {
        let table = table.expect("checked above");
        return Ok(Prepared {
            graph,
            table,
            weights: BTreeMap::new(),
        });
    }
    let data = CalibrationData::load(args)?;
    let mut report = Report::default();
    let original = graph.clone();
    let graph = if steps.equalize {
        equalize_graph(&graph, config, args.relu6_as_relu, &mut report)?
    } else {
        graph
    };
    let table = match table {
        Some(t) => t,
        None => data.calibrate(&graph, &args.observer)?,
    };
    let batches = if steps.correct || steps.adaround {
        data.batches()?
    } else {
        Vec::new()
    };
    let options = AdaRoundOptions {
        iterations: args.adaround_iters,
        learning_rate: args.adaround_lr,
        asymmetric: args.adaround_asymmetric,
        seed: args.seed,
        ..AdaRoundOptions::default()
    };
    let start = Instant::now();
    let rounded = adaround(&graph, &batches, config, &options)?;
    report.adaround_seconds = start.elapsed().as_secs_f64();
    report.adaround = rounded.report.clone();
    let mut corrections = Vec::new();
    let graph = if steps.correct {
        let bc = correct_biases_rounded(&graph, &batches, config, &rounded)?;
        corrections = bc.layers;
        bc.graph
    } else {
        graph
    };
    report.layers = layer_rows(&original, &graph, config, &rounded, corrections)?;
    print_report(&report);
    if let Some(path) = &args.report {
        write_json_atomic(path, &report)?;
    }
    let (graph, weights) = rounded.apply(&graph)?;
    Ok(Prepared {
        graph,
        table,
        weights,
    })
}

/// What equalization does with ReLU6: replace it with ReLU where asked, else leave its
/// pairs alone.
pub fn clip_policy(relu6_as_relu: bool) -> ClipPolicy {
    if relu6_as_relu {
        ClipPolicy::AsRelu
    } else {
        ClipPolicy::Refuse
    }
}

/// `graph` equalized where `config` says, with what was done recorded in `report`.
fn equalize_graph(
    graph: &FloatGraph,
    config: &QuantConfig,
    relu6_as_relu: bool,
    report: &mut Report,
) -> anyhow::Result<FloatGraph> {
    let options = EqualizeOptions {
        clip: clip_policy(relu6_as_relu),
        ..EqualizeOptions::default()
    };
    let eq = equalize(graph, &options, |n| config.layer(n).equalize)?;
    if !eq.converged {
        println!("equalization: not converged after {} sweeps", eq.iterations);
    }
    report.equalized_pairs = eq.pairs;
    report.equalization_sweeps = eq.iterations;
    report.relu6_replaced = eq.replaced_clips;
    report.relu6_refused = eq.refused_clips;
    Ok(eq.graph)
}

/// Which post-training steps a config asks for on a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    /// Any layer to be equalized (float layers too: equalization rewrites the float graph).
    pub equalize: bool,
    /// Any quantized layer to be bias-corrected.
    pub correct: bool,
    /// Any quantized layer to be rounded by AdaRound.
    pub adaround: bool,
}

impl Steps {
    pub fn any(&self) -> bool {
        self.equalize || self.correct || self.adaround
    }
}

/// The steps `config` asks for on `graph`'s weighted layers.
pub fn steps(graph: &FloatGraph, config: &QuantConfig) -> Steps {
    let layers = || graph.nodes().iter().filter(|n| n.op.is_weighted());
    let quantized = |pick: fn(&cinder_runtime::LayerConfig) -> bool| {
        layers().any(|n| {
            let c = config.layer(&n.name);
            pick(&c) && c.mode != Mode::Float
        })
    };
    Steps {
        equalize: layers().any(|n| config.layer(&n.name).equalize),
        correct: quantized(|c| c.bias_correction),
        adaround: quantized(|c| c.adaround),
    }
}

/// Each quantized layer's weight SQNR before and after (with AdaRound's weights where
/// it ran), with its correction.
fn layer_rows(
    before: &FloatGraph,
    after: &FloatGraph,
    config: &QuantConfig,
    rounded: &AdaRounded,
    mut corrections: Vec<LayerCorrection>,
) -> anyhow::Result<Vec<LayerRow>> {
    let sqnr = |graph: &FloatGraph, name: &str, learned| -> anyhow::Result<Option<f64>> {
        let node = graph.node(name).context("a layer of both graphs")?;
        let (w, _) = node.op.weight_and_bias().context("a weighted layer")?;
        let q = match learned {
            Some(q) => q,
            None => quantized_weight(name, w, &config.layer(name))?,
        };
        Ok(ErrorMetrics::between(w.data(), q.data())?.sqnr_db)
    };
    let mut rows = Vec::new();
    for node in after.nodes() {
        if !node.op.is_weighted() || config.layer(&node.name).mode == Mode::Float {
            continue;
        }
        let correction = corrections
            .iter()
            .position(|c| c.layer == node.name)
            .map(|i| corrections.swap_remove(i));
        rows.push(LayerRow {
            layer: node.name.clone(),
            weight_sqnr_db: [
                sqnr(before, &node.name, None)?,
                sqnr(after, &node.name, rounded.dequantized(&node.name))?,
            ],
            correction,
        });
    }
    Ok(rows)
}

fn print_report(r: &Report) {
    if !r.equalized_pairs.is_empty() || !r.relu6_refused.is_empty() {
        println!(
            "cross-layer equalization: {} pairs, {} sweeps",
            r.equalized_pairs.len(),
            r.equalization_sweeps
        );
        for p in &r.equalized_pairs {
            println!(
                "  {:<24} -> {:<24} {:>4} channels, precision {:.3}/{:.3} -> {:.3}/{:.3}",
                p.first,
                p.second,
                p.channels,
                p.precision_before[0],
                p.precision_before[1],
                p.precision_after[0],
                p.precision_after[1]
            );
        }
        if !r.relu6_replaced.is_empty() {
            println!("  ReLU6 replaced by ReLU: {}", r.relu6_replaced.join(", "));
        }
        if !r.relu6_refused.is_empty() {
            println!(
                "  pairs left alone at ReLU6: {}",
                r.relu6_refused.join(", ")
            );
        }
    }
    print_rounding(&r.adaround, r.adaround_seconds);
    println!(
        "{:<24} {:>16} {:>11} {:>11} {:>11}",
        "layer", "weight SQNR dB", "|bias fix|", "max", "|E[y]|"
    );
    let db = |v: Option<f64>| v.map_or("exact".to_owned(), |d| format!("{d:.1}"));
    for row in &r.layers {
        let fix = row.correction.as_ref().map_or(String::new(), |c| {
            format!(
                "{:>11.3e} {:>11.3e} {:>11.3e}",
                c.mean_abs, c.max_abs, c.output_mean_abs
            )
        });
        println!(
            "{:<24} {:>7} -> {:>5} {fix}",
            row.layer,
            db(row.weight_sqnr_db[0]),
            db(row.weight_sqnr_db[1])
        );
    }
}

/// AdaRound's reconstruction error per layer, nearest vs learned.
fn print_rounding(layers: &[LayerRounding], seconds: f64) {
    if layers.is_empty() {
        return;
    }
    println!("AdaRound: {} layers, {seconds:.1} s", layers.len());
    println!(
        "  {:<22} {:>8} {:>12} {:>12} {:>8} {:>9} {:>8}",
        "layer", "form", "nearest", "learned", "flipped", "undecided", "seconds"
    );
    for l in layers {
        println!(
            "  {:<22} {:>8} {:>12.4e} {:>12.4e} {:>7.1}% {:>9} {:>8.1}{}",
            l.layer,
            l.objective,
            l.nearest_error,
            l.learned_error,
            100.0 * l.flipped,
            l.undecided,
            l.seconds,
            if l.kept_nearest {
                " (kept nearest)"
            } else {
                ""
            }
        );
    }
}

/// Calibration images of the training split of a checkpoint's data set.
struct CalibrationData {
    train: Dataset,
    summary: TrainSummary,
    indices: Vec<usize>,
}

/// Images per calibration batch.
const BATCH: usize = 64;

impl CalibrationData {
    fn load(args: &PtqArgs) -> anyhow::Result<Self> {
        let dir = args.checkpoint.as_deref().context(
            "--equalize, --bias-correction and --adaround need --checkpoint (the training \
                 images)",
        )?;
        let summary: TrainSummary = read_json(&dir.join("summary.json"))?;
        let source = dataset_source(&summary.dataset, args.data_dir.as_deref())?;
        let train = cinder_datasets::load(&source)?
            .train
            .limit(summary.train_images);
        let indices = calibration_indices(train.len(), args.calibration_images, args.seed);
        Ok(Self {
            train,
            summary,
            indices,
        })
    }

    fn images(&self) -> DatasetImages<'_> {
        DatasetImages {
            data: &self.train,
            norm: self.summary.normalization,
        }
    }

    /// The normalized images in batches.
    fn batches(&self) -> anyhow::Result<Vec<TensorBuf<f32>>> {
        let images = self.images();
        self.indices
            .chunks(BATCH)
            .map(|chunk| Ok(images.gather(chunk)?.images))
            .collect()
    }

    /// A fresh calibration table of `graph` (u8 asymmetric activations, as `cargo xtask
    /// calibrate` writes by default).
    fn calibrate(&self, graph: &FloatGraph, observer: &str) -> anyhow::Result<CalibrationTable> {
        let model = GraphNet::from_float_graph(graph, &BackendKind::Flex.device()?)?;
        let spec: ObserverSpec = observer.parse()?;
        let mut calibrator = Calibrator::new(spec, QuantScheme::activations_uint8())?;
        calibrate(
            &model,
            &self.images(),
            &self.indices,
            BATCH,
            &mut calibrator,
        )?;
        Ok(calibrator.table()?)
    }
}
