//! `cargo xtask quantize`: a trained float graph, its calibration table and an optional
//! per-layer config (TOML, see `cinder_runtime::config`) become an int8 model file,
//! optionally after the post-training steps of [`crate::ptq`] (cross-layer equalization,
//! AdaRound, bias correction).
//!
//! `cargo xtask quantize --graph runs/fmnist/graph.json --weights runs/fmnist/graph.safetensors
//!  --calibration runs/fmnist/calibration.json [--config w4.toml] --out runs/fmnist/int8.cinder`
//!
//! `cargo xtask quantize --graph ... --weights ... --equalize --bias-correction
//!  --checkpoint runs/fmnist --out runs/fmnist/int8-cle-bc.cinder`
//!
//! `cargo xtask quantize --model-onnx model.onnx --calibration cal/calibration.json
//!  --out model.cinder` quantizes a float ONNX model (e.g. from `torch.onnx.export`).
//!
//! `cargo xtask quantize --graph ... --weights ... --calibration ... --config w4.toml
//!  --adaround [--adaround-iters N] --checkpoint runs/fmnist --out runs/fmnist/w4-ada.cinder`

use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_runtime::{Activation, QuantConfig, QuantizedModel, StepOp, convert_with_weights};
use cinder_tensor::TensorQuantParams;
use cinder_tensor::graph::FloatGraph;

use crate::checks;
use crate::ptq::{PtqArgs, prepare};

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The float graph's JSON description.
    #[arg(long, required_unless_present = "model_onnx", requires = "weights")]
    pub graph: Option<PathBuf>,
    /// The float graph's safetensors weights.
    #[arg(long, required_unless_present = "model_onnx", requires = "graph")]
    pub weights: Option<PathBuf>,
    /// A float ONNX model (e.g. from `torch.onnx.export`) instead of --graph and --weights.
    #[arg(long, conflicts_with_all = ["graph", "weights"])]
    pub model_onnx: Option<PathBuf>,
    /// The calibration table (JSON); not with --equalize, which recalibrates.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Per-layer quantization config (TOML); default: W8A8 static, per-channel symmetric.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The model file to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub ptq: PtqArgs,
}

/// Reads a TOML [`QuantConfig`].
pub fn read_config(path: &Path) -> anyhow::Result<QuantConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{}: invalid quantization config", path.display()))
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<()> {
    let mut inputs = Vec::new();
    inputs.extend(args.graph.as_deref().map(|c| ("--graph", c)));
    inputs.extend(args.weights.as_deref().map(|c| ("--weights", c)));
    inputs.extend(args.model_onnx.as_deref().map(|c| ("--model-onnx", c)));
    inputs.extend(args.calibration.as_deref().map(|c| ("--calibration", c)));
    inputs.extend(args.config.as_deref().map(|c| ("--config", c)));
    inputs.extend(args.ptq.report.as_deref().map(|c| ("--report", c)));
    checks::output_apart("--out", &args.out, &inputs)?;
    let (graph, fp32_file) = match (&args.model_onnx, &args.graph, &args.weights) {
        (Some(onnx), _, _) => (crate::onnx::float_graph(onnx)?, onnx.as_path()),
        (None, Some(graph), Some(weights)) => {
            (FloatGraph::load(graph, weights)?, weights.as_path())
        }
        _ => anyhow::bail!("--model-onnx, or --graph with --weights, is required"),
    };
    let mut config = match &args.config {
        Some(path) => read_config(path)?,
        None => QuantConfig::default(),
    };
    let p = prepare(graph, args.calibration.as_deref(), &mut config, &args.ptq)?;
    let model = convert_with_weights(&p.graph, &p.table, &config, &p.weights)?;
    model.save(&args.out)?;
    describe(&model);
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .with_context(|| format!("reading {}", p.display()))
    };
    let (fp32, int) = (size(fp32_file)?, size(&args.out)?);
    println!(
        "wrote {}: {int} bytes, {:.2}% of the fp32 weights ({fp32} bytes)",
        args.out.display(),
        int as f64 / fp32 as f64 * 100.0
    );
    Ok(())
}

/// One line per layer: mode, weight bits and granularity, fused ReLU.
fn describe(model: &QuantizedModel) {
    for step in model.steps() {
        let Some(layer) = step.op.layer() else {
            if let StepOp::Quantize(p) = step.op {
                println!(
                    "  quantize {:<10} scale {:.6} zero point {}",
                    step.inputs[0], p.scale, p.zero_point
                );
            }
            continue;
        };
        let detail = layer.quant_weights().map_or_else(
            || "f32 weights".to_owned(),
            |w| {
                let granularity = match w.params {
                    TensorQuantParams::PerTensor(_) => "per tensor",
                    TensorQuantParams::PerChannel { .. } => "per channel",
                };
                format!("{}-bit {:?} {granularity}", w.bits, w.mapping).to_lowercase()
            },
        );
        let relu = match layer.activation {
            Activation::None => String::new(),
            a => format!(" + {a:?}").to_lowercase(),
        };
        println!(
            "  {:<8} {:<7} {:?} {detail}{relu}",
            step.name,
            format!("{:?}", layer.mode()).to_lowercase(),
            layer.weight_shape(),
        );
    }
}
