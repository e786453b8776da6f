//! `cargo xtask calibrate`: runs calibration images of the training split through a
//! trained float model, feeds an observer at every quantization point, and writes
//! `calibration.json` (the table `cargo xtask quantize` reads) and `errors.json` (the
//! per-layer quantization error of weights and activations), printing the observer and
//! forward times and each layer's SQNR.
//!
//! `cargo xtask calibrate --checkpoint results/fmnist --observer entropy --batches 32`
//!
//! `cargo xtask calibrate --model-onnx model.onnx --dataset fashion-mnist --out cal/`
//! calibrates a float ONNX model (e.g. from `torch.onnx.export`) on the data set's training
//! images, normalized as `cargo xtask train` normalizes them (`half` for Fashion-MNIST,
//! the training split's statistics otherwise).

use std::path::PathBuf;

use anyhow::Context;
use cinder_datasets::{Dataset, Normalization};
use cinder_model::calibrate::{CalibrationTiming, activation_errors, calibrate};
use cinder_model::{BackendKind, GraphNet};
use cinder_observers::{Calibrator, ErrorReport, ObserverSpec, weight_errors};
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::read_json;
use cinder_tensor::{ErrorMetrics, Granularity, Mapping, QuantScheme, Signedness};

use crate::dataset::{
    DatasetImages, TrainSummary, calibration_indices, dataset_source, training_split,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivationScheme {
    /// u8, asymmetric (zero point anywhere in 0..=255): the runtime's default.
    Asymmetric,
    /// s8, symmetric (zero point 0).
    Symmetric,
}

#[derive(clap::Args, Debug)]
pub struct CalibrateArgs {
    /// A `cargo xtask train --out` directory (graph.json, graph.safetensors, summary.json).
    #[arg(long, required_unless_present = "model_onnx")]
    pub checkpoint: Option<PathBuf>,
    /// A float ONNX model (e.g. from `torch.onnx.export`) instead of --checkpoint; needs
    /// --out.
    #[arg(long, conflicts_with = "checkpoint", requires = "out")]
    pub model_onnx: Option<PathBuf>,
    /// With --model-onnx: the data set of the calibration images (synthetic,
    /// fashion-mnist, cifar10 or cifar100).
    #[arg(long, default_value = "fashion-mnist", requires = "model_onnx")]
    pub dataset: String,
    /// minmax, moving-average[=C], entropy, percentile=P or mse.
    #[arg(long, default_value = "minmax")]
    pub observer: String,
    #[arg(long, value_enum, default_value_t = ActivationScheme::Asymmetric)]
    pub scheme: ActivationScheme,
    /// Activation bit width (2..=8).
    #[arg(long, default_value_t = 8)]
    pub bits: u8,
    #[command(flatten)]
    pub sample: CalibrationSample,
    /// Where to write calibration.json and errors.json; default: the checkpoint directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Which training images calibrate: `batches` batches of `batch_size`, chosen by `seed`.
#[derive(clap::Args, Debug)]
pub struct CalibrationSample {
    /// Number of calibration batches.
    #[arg(long, default_value_t = 32, value_parser = crate::checks::positive)]
    pub batches: usize,
    #[arg(long, default_value_t = 32, value_parser = crate::checks::positive)]
    pub batch_size: usize,
    /// Seed of the random choice of calibration images from the training split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl CalibrationSample {
    /// The indices of the calibration images among `len` training images.
    pub fn indices(&self, len: usize) -> Vec<usize> {
        calibration_indices(len, self.batches * self.batch_size, self.seed)
    }
}

impl CalibrateArgs {
    fn activation_scheme(&self) -> anyhow::Result<QuantScheme> {
        let (signedness, mapping) = match self.scheme {
            ActivationScheme::Asymmetric => (Signedness::Unsigned, Mapping::Asymmetric),
            ActivationScheme::Symmetric => (Signedness::Signed, Mapping::Symmetric),
        };
        QuantScheme::new(
            self.bits,
            signedness,
            mapping,
            false,
            Granularity::PerTensor,
        )
        .with_context(|| format!("--bits {}", self.bits))
    }
}

/// The float graph to calibrate, its training split and their normalization: a
/// checkpoint's, or a float ONNX model's with the data set named by --dataset.
fn graph_and_data(args: &CalibrateArgs) -> anyhow::Result<(FloatGraph, Dataset, Normalization)> {
    if let Some(onnx) = &args.model_onnx {
        let graph = crate::onnx::float_graph(onnx)?;
        let (train, norm) = training_split(&args.dataset, args.sample.data_dir.as_deref())?;
        return Ok((graph, train, norm));
    }
    let dir = args
        .checkpoint
        .as_ref()
        .expect("clap requires --checkpoint or --model-onnx");
    let summary: TrainSummary = read_json(&dir.join("summary.json"))?;
    let graph = FloatGraph::load(&dir.join("graph.json"), &dir.join("graph.safetensors"))?;
    let source = dataset_source(&summary.dataset, args.sample.data_dir.as_deref())?;
    let train = cinder_datasets::load(&source)?
        .train
        .limit(summary.train_images);
    Ok((graph, train, summary.normalization))
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<()> {
    let (graph, train, norm) = graph_and_data(&args)?;
    let model = GraphNet::from_float_graph(&graph, &BackendKind::Flex.device()?)?;
    let images = DatasetImages { data: &train, norm };
    let indices = args.sample.indices(train.len());
    let spec: ObserverSpec = args.observer.parse()?;
    let scheme = args.activation_scheme()?;
    let mut calibrator = Calibrator::new(spec, scheme)?;
    let timing = calibrate(
        &model,
        &images,
        &indices,
        args.sample.batch_size,
        &mut calibrator,
    )?;
    let table = calibrator.table()?;
    let errors = activation_errors(&model, &images, &indices, args.sample.batch_size, &table)?;
    let weight_scheme = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
    let report = ErrorReport::new(
        spec.to_string(),
        weight_scheme,
        scheme,
        weight_errors(&graph, &weight_scheme)?,
        errors.metrics(),
    );
    let out = args
        .out
        .clone()
        .or_else(|| args.checkpoint.clone())
        .expect("clap requires --out or --checkpoint");
    table.save(&out.join("calibration.json"))?;
    report.save(&out.join("errors.json"))?;
    print_timing(&spec, &timing);
    print_errors(&report);
    println!("wrote {}/calibration.json and errors.json", out.display());
    Ok(())
}

fn print_timing(spec: &ObserverSpec, t: &CalibrationTiming) {
    let forward = t.forward.as_secs_f64();
    let observe = t.observe.as_secs_f64();
    println!(
        "{spec}: {} images, observers {observe:.3} s, float forward {forward:.3} s \
         (observer overhead {:.1}% of the forward)",
        t.samples,
        100.0 * observe / forward.max(f64::MIN_POSITIVE)
    );
}

fn print_errors(report: &ErrorReport) {
    println!(
        "{:<18} {:>12} {:>12} {:>9}",
        "tensor", "MAE", "MSE", "SQNR dB"
    );
    let rows = report
        .weights
        .iter()
        .map(|(n, m)| (format!("{n}.weight"), m))
        .chain(report.activations.iter().map(|(n, m)| (n.clone(), m)));
    for (name, m) in rows {
        println!(
            "{name:<18} {:>12.3e} {:>12.3e} {:>9}",
            m.mean_abs_error,
            m.mse,
            sqnr(m)
        );
    }
}

fn sqnr(m: &ErrorMetrics) -> String {
    m.sqnr_db.map_or("exact".into(), |db| format!("{db:.2}"))
}
