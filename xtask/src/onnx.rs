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

use std::path::PathBuf;

use anyhow::Context;
use cinder_runtime::QuantizedModel;
use cinder_tensor::graph::FloatGraph;

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

pub fn run(args: OnnxArgs) -> anyhow::Result<()> {
    match args.command {
        OnnxCommand::Import(args) => import(args),
        OnnxCommand::Export(args) => export(args),
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
