//! cinder's task runner: `cargo xtask <command>` trains, calibrates, quantizes, runs
//! and reports. Each command lives in its own module; this file only dispatches.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "cinder: train, quantize and measure CNNs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {}
}
