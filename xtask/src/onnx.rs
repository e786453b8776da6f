//! `cargo xtask onnx`: ONNX interop.
//!
//! `cargo xtask onnx import --onnx model.onnx --out runs/outside` imports a float ONNX
//! model (e.g. from `torch.onnx.export`) as cinder's float graph (`graph.json` +
//! `graph.safetensors` in `--out`), ready to calibrate and quantize; a QDQ model (e.g.
//! from ONNX Runtime's `quantize_static`) becomes a cinder int8 model, `int8.cinder` in
//! `--out`.
//!
//! `cargo xtask onnx export --graph runs/fmnist/graph.json --out model.onnx` writes a float
//! graph as a plain float ONNX model (opset 17) for ONNX Runtime and other tools;
//! `cargo xtask onnx export --model runs/fmnist/int8.cinder --out model.qdq.onnx` writes an
//! int8 model as the QDQ ONNX model ONNX Runtime's quantizer writes.
//!
//! Two helpers let other tools check cinder against their own run of the same model on
//! the same data: `cargo xtask onnx run --model X.cinder --input x.f32 --out y.f32` runs
//! an int8 model on raw little-endian float32 inputs and writes its outputs the same way;
//! `cargo xtask onnx calibration-images --dataset fashion-mnist --out cal.f32` writes the
//! normalized images `cargo xtask calibrate --model-onnx` calibrates on (same
//! `--batches`, `--batch-size` and `--seed`), e.g. for ONNX Runtime's `quantize_static`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cinder_model::ImageSource;
use cinder_runtime::QuantizedModel;
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::write_atomic;
use cinder_tensor::{Tensor, TensorBuf};

use crate::calibrate::CalibrationSample;
use crate::dataset::DatasetImages;

#[derive(clap::Args, Debug)]
pub struct OnnxArgs {
    #[command(subcommand)]
    pub command: OnnxCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum OnnxCommand {
    /// A float ONNX model -> cinder's float graph (graph.json + graph.safetensors); a QDQ
    /// model -> a cinder int8 model (int8.cinder).
    Import(ImportArgs),
    /// cinder's float graph -> a float ONNX model, or an int8 model -> a QDQ ONNX model.
    Export(ExportArgs),
    /// Runs an int8 model on raw float32 inputs, writing raw float32 outputs.
    Run(RunArgs),
    /// Writes the normalized images `cargo xtask calibrate --model-onnx` calibrates on.
    CalibrationImages(CalibrationImagesArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The int8 model file (`.cinder`).
    #[arg(long)]
    pub model: PathBuf,
    /// Little-endian float32 inputs, `[N, ...the model's input shape]` in row-major order.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the little-endian float32 outputs, `[N, ...the output shape]`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct CalibrationImagesArgs {
    /// synthetic, fashion-mnist, cifar10 or cifar100.
    #[arg(long, default_value = "fashion-mnist")]
    pub dataset: String,
    /// The same options as `cargo xtask calibrate`'s choose the same images.
    #[command(flatten)]
    pub sample: CalibrationSample,
    /// Where to write the images: little-endian float32 `[N, 3, 32, 32]`.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The float or QDQ ONNX model to import (opset 13 to 21).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The directory to write graph.json and graph.safetensors (or int8.cinder) into.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["graph", "model"])))]
pub struct ExportArgs {
    /// The float graph's JSON description (exported as a float ONNX model).
    #[arg(long)]
    pub graph: Option<PathBuf>,
    /// An int8 model file (`.cinder`), exported as a QDQ ONNX model.
    #[arg(long, conflicts_with = "weights")]
    pub model: Option<PathBuf>,
    /// The float graph's safetensors weights (default: beside --graph, `.safetensors`).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The ONNX file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// The float graph of an outside float ONNX model: what `--model-onnx FILE` gives the
/// commands that take a float graph.
pub fn float_graph(path: &Path) -> anyhow::Result<FloatGraph> {
    let graph = cinder_onnx::import_file(path)?;
    println!(
        "imported {}: {} nodes over input {:?}",
        path.display(),
        graph.nodes().len(),
        graph.input_shape()
    );
    Ok(graph)
}

pub fn run(args: OnnxArgs) -> anyhow::Result<()> {
    match args.command {
        OnnxCommand::Import(args) => import(args),
        OnnxCommand::Export(args) => export(args),
        OnnxCommand::Run(args) => run_model(args),
        OnnxCommand::CalibrationImages(args) => calibration_images(args),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let graph = match cinder_onnx::import_any_file(&args.onnx)? {
        cinder_onnx::Imported::Float(graph) => graph,
        cinder_onnx::Imported::Int8(model) => {
            let path = args.out.join("int8.cinder");
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            model.save(&path)?;
            println!(
                "imported the QDQ model {}: {} steps over input {:?}; wrote {}",
                args.onnx.display(),
                model.steps().len(),
                model.input_shape(),
                path.display()
            );
            return Ok(());
        }
    };
    let (json, weights) = (
        args.out.join("graph.json"),
        args.out.join("graph.safetensors"),
    );
    graph
        .save(&json, &weights)
        .with_context(|| format!("writing the graph into {}", args.out.display()))?;
    println!(
        "imported {}: {} nodes over input {:?}, output {:?}; wrote {} and {}",
        args.onnx.display(),
        graph.nodes().len(),
        graph.input_shape(),
        graph
            .output_shapes()
            .last()
            .map(Vec::as_slice)
            .unwrap_or_default(),
        json.display(),
        weights.display()
    );
    Ok(())
}

fn export(args: ExportArgs) -> anyhow::Result<()> {
    let Some(graph) = args.graph else {
        let path = args.model.expect("clap requires --graph or --model");
        let model = QuantizedModel::load(&path)?;
        cinder_onnx::export_qdq_file(&model, &args.out)?;
        println!(
            "wrote {}: {} steps of {} as QDQ ONNX (opset {})",
            args.out.display(),
            model.steps().len(),
            path.display(),
            cinder_onnx::EXPORT_OPSET
        );
        return Ok(());
    };
    let weights = args
        .weights
        .unwrap_or_else(|| graph.with_extension("safetensors"));
    let graph = FloatGraph::load(&graph, &weights)?;
    cinder_onnx::export_file(&graph, &args.out)?;
    println!(
        "wrote {}: {} nodes, ONNX opset {}",
        args.out.display(),
        graph.nodes().len(),
        cinder_onnx::EXPORT_OPSET
    );
    Ok(())
}

fn run_model(args: RunArgs) -> anyhow::Result<()> {
    let model = QuantizedModel::load(&args.model)?;
    let bytes =
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let per_sample = model.input_shape().iter().product::<usize>() * 4;
    if bytes.is_empty() || !bytes.len().is_multiple_of(per_sample) {
        anyhow::bail!(
            "{}: {} bytes are not a whole number of float32 inputs of shape {:?}",
            args.input.display(),
            bytes.len(),
            model.input_shape()
        );
    }
    let mut shape = vec![bytes.len() / per_sample];
    shape.extend_from_slice(model.input_shape());
    let values = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
        .collect();
    let input = TensorBuf::new(shape, values)?;
    let mut session = model.session()?;
    let output = session.run(&input)?;
    write_f32(&args.out, output.data())?;
    println!(
        "ran {} on {} inputs; wrote {}",
        args.model.display(),
        input.shape()[0],
        args.out.display()
    );
    Ok(())
}

fn calibration_images(args: CalibrationImagesArgs) -> anyhow::Result<()> {
    let (train, norm) =
        crate::dataset::training_split(&args.dataset, args.sample.data_dir.as_deref())?;
    let indices = args.sample.indices(train.len());
    let images = DatasetImages { data: &train, norm }
        .gather(&indices)?
        .images;
    write_f32(&args.out, images.data())?;
    println!(
        "wrote {}: {:?} normalized calibration images",
        args.out.display(),
        images.shape()
    );
    Ok(())
}

/// `values` as little-endian float32, written atomically.
pub fn write_f32(path: &Path, values: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(write_atomic(path, &bytes)?)
}
