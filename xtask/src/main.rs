//! cinder's task runner: `cargo xtask <command>` trains, calibrates, quantizes, runs
//! and reports. Each command lives in its own module; this file only dispatches.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod allocator;
mod autoquant;
mod calibrate;
mod checks;
mod data;
mod dataset;
mod evaluate;
mod experiment;
mod infer;
mod onnx;
mod progress;
mod ptq;
mod qat;
mod quantize;
mod sensitivity;
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
    /// Accuracy-driven mixed precision: per-layer weight widths within an accuracy budget.
    Autoquant(autoquant::AutoquantArgs),
}

fn main() -> ExitCode {
    allocator::keep_freed_memory();
    // A negative number is a value for its flag (then refused with the flag's range),
    // not an unknown flag.
    let command = Cli::command().mut_subcommands(|c| c.allow_negative_numbers(true));
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Train(args) => train::run(args),
        Command::Data(args) => data::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Experiment(args) => experiment::run(args),
        Command::Qat(args) => qat::run(args),
        Command::Onnx(args) => onnx::run(args),
        Command::Autoquant(args) => autoquant::run(args),
    }
}

/// The error and its causes on one line, each cause only once: typed errors already
/// include their source's text, which the chain would otherwise repeat.
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let typed = cinder_tensor::io::FileError::io(std::path::Path::new("m.cinder"), io);
        let e = anyhow::Error::new(typed).context("loading the model");
        assert_eq!(message(&e), "loading the model: m.cinder: no such file");
    }

    #[test]
    fn negative_numbers_reach_the_flags_parser() {
        let command = Cli::command().mut_subcommands(|c| c.allow_negative_numbers(true));
        let err = command
            .try_get_matches_from(["xtask", "train", "--out", "x", "--momentum", "-5"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--momentum"), "{err}");
        assert!(err.contains("[0, 1)"), "{err}");
    }
}
