//! Peak memory of running one model, measured in a child process so that nothing else
//! of the experiment counts: the child (`xtask experiment --measure-memory FILE`) notes
//! its resident set (`VmRSS`) before loading, loads the model, runs two batches of
//! zeros, and reports its high-water mark (`VmHWM` of `/proc/self/status`). The model's
//! own share is the difference: weights, packed copies and every run-time buffer.
//!
//! A `.json` file is a float graph (its weights next to it in `graph.safetensors`), run
//! with burn's flex backend; anything else is an int8 model file run by the runtime.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use cinder_model::{BackendKind, Batch, GraphNet};
use cinder_runtime::{QuantizedModel, SessionOptions};
use cinder_tensor::TensorBuf;
use cinder_tensor::graph::FloatGraph;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeakMemory {
    /// Resident set of the child before it loaded the model.
    pub baseline_rss_bytes: u64,
    /// The child's resident high-water mark after two runs.
    pub peak_rss_bytes: u64,
}

impl PeakMemory {
    /// What loading and running the model added to the process.
    pub fn model_bytes(&self) -> u64 {
        self.peak_rss_bytes.saturating_sub(self.baseline_rss_bytes)
    }
}

/// Runs the child on `model` at `batch` images with `threads` runtime threads.
pub fn measure(model: &Path, batch: usize, threads: usize) -> anyhow::Result<PeakMemory> {
    let output = Command::new(this_binary()?)
        .arg("experiment")
        .arg("--measure-memory")
        .arg(model)
        .args(["--memory-batch", &batch.to_string()])
        .args(["--memory-threads", &threads.to_string()])
        .output()
        .context("starting the memory probe")?;
    if !output.status.success() {
        bail!(
            "memory probe of {} failed: {}",
            model.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the memory probe's report")
}

/// The running program: `/proc/self/exe` where there is one, which still names it after
/// a rebuild replaced or removed the file it was started from (the probe then runs the
/// same code as the experiment), else the path it was started from.
fn this_binary() -> anyhow::Result<PathBuf> {
    let running = Path::new("/proc/self/exe");
    if running.exists() {
        return Ok(running.to_path_buf());
    }
    std::env::current_exe().context("locating the xtask binary")
}

/// The child's side: prints a [`PeakMemory`] as JSON.
pub fn probe(model: &Path, batch: usize, threads: usize) -> anyhow::Result<()> {
    let baseline_rss_bytes = status_kib("VmRSS")? * 1024;
    if model.extension().is_some_and(|e| e == "json") {
        run_float(model, batch)?;
    } else {
        run_int8(model, batch, threads)?;
    }
    let peak = PeakMemory {
        baseline_rss_bytes,
        peak_rss_bytes: status_kib("VmHWM")? * 1024,
    };
    println!("{}", serde_json::to_string(&peak)?);
    Ok(())
}

fn zeros(batch: usize, sample: &[usize]) -> anyhow::Result<TensorBuf<f32>> {
    let shape = std::iter::once(batch)
        .chain(sample.iter().copied())
        .collect();
    Ok(TensorBuf::zeros(shape)?)
}

fn run_int8(path: &Path, batch: usize, threads: usize) -> anyhow::Result<()> {
    let model = QuantizedModel::load(path)?;
    let mut session = model.session_with(SessionOptions { threads })?;
    let x = zeros(batch, model.input_shape())?;
    for _ in 0..2 {
        session.run(&x)?;
    }
    Ok(())
}

fn run_float(json: &Path, batch: usize) -> anyhow::Result<()> {
    let graph = FloatGraph::load(json, &json.with_file_name("graph.safetensors"))?;
    let device = BackendKind::Flex.device()?;
    let model = GraphNet::from_float_graph(&graph, &device)?;
    let input = Batch {
        images: zeros(batch, graph.input_shape())?,
        labels: vec![0; batch],
    };
    for _ in 0..2 {
        let (images, _) = input.to_tensors(&device);
        model.forward(images).into_data();
    }
    Ok(())
}

/// A `kB` field of `/proc/self/status`.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/self/status"))
}
