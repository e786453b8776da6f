//! cinder's task runner: `cargo xtask <command>` trains, calibrates, quantizes, runs
//! and reports. Each command lives in its own module; this file only dispatches.

use clap::{Parser, Subcommand};

mod calibrate;
mod data;
mod experiment;
mod infer;
mod onnx;
mod qat;
mod quantize;
mod train;

#[derive(Parser)]
#[command(name = "xtask", about = "cinder: train, quantize and measure CNNs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train the reference ConvNet; writes checkpoint, float graph, metrics and summary.
    Train(train::TrainArgs),
    /// Look at a data set: counts, class histogram, channel mean/std, PNG grid per class.
    Data(data::DataArgs),
    /// Calibrate a trained model: observer table + per-layer quantization error report.
    Calibrate(calibrate::CalibrateArgs),
    /// Float graph + calibration table (+ TOML config) -> int8 model file.
    Quantize(quantize::QuantizeArgs),
    /// Run an int8 model file on a data set's test split: accuracy, latency, agreement.
    Infer(infer::InferArgs),
    /// Train, quantize with every strategy of the matrix, measure, and write a report.
    Experiment(experiment::ExperimentArgs),
    /// Quantization-aware fine-tuning (or its control), conversion, comparison with PTQ.
    Qat(qat::QatArgs),
    /// ONNX interop: import a float ONNX model as a float graph, export a graph as ONNX.
    Onnx(onnx::OnnxArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train::run(args),
        Command::Data(args) => data::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Experiment(args) => experiment::run(args),
        Command::Qat(args) => qat::run(args),
        Command::Onnx(args) => onnx::run(args),
    }
}
