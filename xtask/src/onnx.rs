//! `cargo xtask onnx`: ONNX interop.
//!
//! `cargo xtask onnx import --onnx model.onnx --out runs/outside` imports a float ONNX
//! model (e.g. from `torch.onnx.export`) as cinder's float graph (`graph.json` +
//! `graph.safetensors` in `--out`), ready to calibrate and quantize.
//!
//! `cargo xtask onnx export --graph runs/fmnist/graph.json --out model.onnx` writes a float
//! graph as a plain float ONNX model (opset 17) for ONNX Runtime and other tools.

use std::path::PathBuf;

use anyhow::Context;
use cinder_tensor::graph::FloatGraph;

#[derive(clap::Args, Debug)]
pub struct OnnxArgs {
    #[command(subcommand)]
    pub command: OnnxCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum OnnxCommand {
    /// A float ONNX model -> cinder's float graph (graph.json + graph.safetensors).
    Import(ImportArgs),
    /// cinder's float graph -> a float ONNX model.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The float ONNX model to import (opset 13 to 21).
    #[arg(long)]
    pub onnx: PathBuf,
    /// The directory to write graph.json and graph.safetensors into.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The float graph's JSON description.
    #[arg(long)]
    pub graph: PathBuf,
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
    let graph = cinder_onnx::import_file(&args.onnx)?;
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
    let weights = args
        .weights
        .unwrap_or_else(|| args.graph.with_extension("safetensors"));
    let graph = FloatGraph::load(&args.graph, &weights)?;
    cinder_onnx::export_file(&graph, &args.out)?;
    println!(
        "wrote {}: {} nodes, ONNX opset {}",
        args.out.display(),
        graph.nodes().len(),
        cinder_onnx::EXPORT_OPSET
    );
    Ok(())
}
