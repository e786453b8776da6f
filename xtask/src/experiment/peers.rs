//! Peers in the report: ONNX Runtime on the experiment's own float model, calibration
//! images and test images, on the same machine in the same run. Three kinds of rows:
//! ONNX Runtime fp32 on the float model exported to ONNX, ONNX Runtime's own
//! `quantize_static` (U8S8 QDQ, per channel, MinMax) of that model, and each of cinder's
//! int8 models exported as QDQ ONNX and run by ONNX Runtime.
//!
//! The measuring is done by `benches/peers/experiment_peers.py` in a Python that has
//! `onnxruntime`, `onnx` and `numpy`: the one `CINDER_ONNX_PYTHON` names, else `python3`.
//! Where there is none, the report says how to install it and nothing else changes. The
//! result is saved in `peers/peers.json` with the key of everything it was measured on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use cinder_model::ImageSource;
use cinder_runtime::QuantizedModel;
use cinder_tensor::Tensor;
use cinder_tensor::io::{read_json, write_json_atomic};
use serde::{Deserialize, Serialize};

use super::config::workspace_dir;
use super::context::Context;
use super::results::CellResult;
use super::store::{Key, read_cached, write_cached};
use crate::dataset::calibration_indices;
use crate::onnx::write_f32;

/// What to run to make the peer rows appear.
pub const HOW_TO_ENABLE: &str = "python3 -m venv .venv && .venv/bin/pip install onnxruntime \
     onnx numpy, then run the experiment with CINDER_ONNX_PYTHON=.venv/bin/python";

/// The peer rows of a run, or why there are none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Peers {
    Measured(PeerRuns),
    /// No Python with ONNX Runtime here.
    Unavailable {
        reason: String,
    },
    /// ONNX Runtime was there but the measurement failed.
    Failed {
        error: String,
    },
}

impl Default for Peers {
    fn default() -> Self {
        Self::Unavailable {
            reason: "not measured in this run".to_owned(),
        }
    }
}

/// ONNX Runtime's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRuns {
    pub onnxruntime_version: String,
    /// The float model exported to ONNX.
    pub fp32: PeerRun,
    /// ONNX Runtime's `quantize_static` of that float model on the experiment's
    /// calibration images.
    pub quantize_static: PeerRun,
    pub quantize_seconds: f64,
    /// cinder's int8 model of each finished cell, exported as QDQ ONNX.
    pub cells: BTreeMap<String, PeerRun>,
    /// Cells whose model could not be exported, with the reason.
    pub not_exported: BTreeMap<String, String>,
}

/// One model run by ONNX Runtime on the test images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRun {
    pub accuracy: f64,
    /// Share of test images whose prediction equals the fp32 (burn) model's.
    pub agreement: f64,
    pub model_bytes: u64,
    /// Median time of one evaluation batch.
    pub batch_ms: f64,
    /// Median time of one single-image run.
    pub single_ms: f64,
}

/// What the script reports of one model.
#[derive(Deserialize)]
struct ScriptRun {
    accuracy: f64,
    predictions: Vec<u32>,
    model_bytes: u64,
    batch_ms: f64,
    single_ms: f64,
}

#[derive(Deserialize)]
struct ScriptResult {
    onnxruntime_version: String,
    fp32: ScriptRun,
    quantize_static: ScriptQuantized,
    cells: BTreeMap<String, ScriptRun>,
}

#[derive(Deserialize)]
struct ScriptQuantized {
    #[serde(flatten)]
    run: ScriptRun,
    seconds: f64,
}

/// The peer rows for `cells`, measured unless saved under the same key.
pub fn measure(ctx: &Context<'_>, cells: &[CellResult]) -> anyhow::Result<Peers> {
    let dir = ctx.out.join("peers");
    let mut key = Key::new("peers");
    key.bytes(ctx.graph_key.as_bytes())
        .bytes(ctx.data.key.as_bytes())
        .json(&ctx.config.calibration)?
        .json(&ctx.config.evaluation)?;
    // The models themselves, not their results (which carry timings).
    for (cell, metrics) in cells.iter().filter_map(|c| Some((c, c.metrics()?))) {
        let model = ctx.out.join(&metrics.model_file);
        let bytes =
            std::fs::read(&model).with_context(|| format!("reading {}", model.display()))?;
        key.bytes(cell.name.as_bytes()).bytes(&bytes);
    }
    let key = key.hex();
    let saved = dir.join("peers.json");
    if let Some(peers) = read_cached::<Peers>(&saved, &key) {
        return Ok(peers);
    }
    let python = match onnxruntime_python() {
        Ok(python) => python,
        Err(reason) => return Ok(Peers::Unavailable { reason }),
    };
    let peers = match run(ctx, cells, &python, &dir) {
        Ok(runs) => Peers::Measured(runs),
        Err(e) => Peers::Failed {
            error: format!("{e:#}"),
        },
    };
    write_cached(&saved, &key, &peers)?;
    Ok(peers)
}

/// A Python that imports `onnxruntime`, `onnx` and `numpy`, or why there is none.
fn onnxruntime_python() -> Result<PathBuf, String> {
    let python = std::env::var_os("CINDER_ONNX_PYTHON")
        .map_or_else(|| PathBuf::from("python3"), PathBuf::from);
    let check = Command::new(&python)
        .args(["-c", "import onnxruntime, onnx, numpy"])
        .output();
    match check {
        Ok(out) if out.status.success() => Ok(python),
        Ok(_) => Err(format!(
            "{} has no onnxruntime, onnx or numpy",
            python.display()
        )),
        Err(e) => Err(format!("{}: {e}", python.display())),
    }
}

/// What the script is asked to run (its job file).
#[derive(Serialize)]
struct Job<'a> {
    float_onnx: &'a Path,
    work_dir: &'a Path,
    calibration: JobCalibration<'a>,
    test_images: &'a Path,
    test_labels: &'a Path,
    image_shape: [usize; 3],
    batch: usize,
    single: usize,
    threads: usize,
    cells: Vec<JobCell<'a>>,
}

#[derive(Serialize)]
struct JobCalibration<'a> {
    path: &'a Path,
    batch: usize,
}

#[derive(Serialize)]
struct JobCell<'a> {
    name: &'a str,
    onnx: &'a Path,
}

/// Exports the models, writes the images, runs the script, removes the images.
fn run(
    ctx: &Context<'_>,
    cells: &[CellResult],
    python: &Path,
    dir: &Path,
) -> anyhow::Result<PeerRuns> {
    std::fs::create_dir_all(dir)?;
    let float_onnx = dir.join("fp32.onnx");
    cinder_onnx::export_file(ctx.graph, &float_onnx)?;
    let (exported, not_exported) = export_cells(ctx, cells, dir);
    let images = write_images(ctx, dir)?;
    let (c, e) = (&ctx.config.calibration, &ctx.config.evaluation);
    let job = Job {
        float_onnx: &float_onnx,
        work_dir: dir,
        calibration: JobCalibration {
            path: &images.calibration,
            batch: c.batch_size,
        },
        test_images: &images.test,
        test_labels: &images.labels,
        image_shape: ctx.data.test_images().image_shape(),
        batch: e.batch,
        single: e.single,
        threads: e.threads,
        cells: exported
            .iter()
            .map(|(name, onnx)| JobCell { name, onnx })
            .collect(),
    };
    let (job_path, result_path) = (dir.join("job.json"), dir.join("result.json"));
    write_json_atomic(&job_path, &job)?;
    let outcome = run_script(python, &job_path, &result_path)
        .and_then(|()| Ok(read_json::<ScriptResult>(&result_path)?));
    // The images, the job and the script's raw output are scaffolding: only
    // `peers.json` (and the ONNX files) stay.
    for file in [
        &images.calibration,
        &images.test,
        &images.labels,
        &job_path,
        &result_path,
    ] {
        std::fs::remove_file(file).ok();
    }
    let result = outcome?;
    let row = |r: ScriptRun| peer_run(r, &ctx.baseline.predictions);
    Ok(PeerRuns {
        onnxruntime_version: result.onnxruntime_version,
        fp32: row(result.fp32),
        quantize_seconds: result.quantize_static.seconds,
        quantize_static: row(result.quantize_static.run),
        cells: result
            .cells
            .into_iter()
            .map(|(name, r)| (name, row(r)))
            .collect(),
        not_exported,
    })
}

fn peer_run(r: ScriptRun, fp32: &[u32]) -> PeerRun {
    let same = r.predictions.iter().zip(fp32).filter(|(a, b)| a == b);
    PeerRun {
        accuracy: r.accuracy,
        agreement: same.count() as f64 / fp32.len().max(1) as f64,
        model_bytes: r.model_bytes,
        batch_ms: r.batch_ms,
        single_ms: r.single_ms,
    }
}

/// Each finished cell's model as QDQ ONNX in `dir`: `(exported (name, path), not
/// exported (name, reason))`.
fn export_cells(
    ctx: &Context<'_>,
    cells: &[CellResult],
    dir: &Path,
) -> (Vec<(String, PathBuf)>, BTreeMap<String, String>) {
    let (mut exported, mut failed) = (Vec::new(), BTreeMap::new());
    for (cell, metrics) in cells.iter().filter_map(|c| Some((c, c.metrics()?))) {
        let model = ctx.out.join(&metrics.model_file);
        let onnx = dir.join(format!("{}.qdq.onnx", cell.name));
        let export = QuantizedModel::load(&model)
            .map_err(anyhow::Error::from)
            .and_then(|m| Ok(cinder_onnx::export_qdq_file(&m, &onnx)?));
        match export {
            Ok(()) => exported.push((cell.name.clone(), onnx)),
            Err(e) => {
                failed.insert(cell.name.clone(), format!("{e:#}"));
            }
        }
    }
    (exported, failed)
}

/// The files of images the script reads.
struct ImageFiles {
    calibration: PathBuf,
    test: PathBuf,
    labels: PathBuf,
}

/// The calibration images the cells calibrated on and the test images, normalized, as
/// little-endian float32; the test labels as bytes.
fn write_images(ctx: &Context<'_>, dir: &Path) -> anyhow::Result<ImageFiles> {
    let c = &ctx.config.calibration;
    let files = ImageFiles {
        calibration: dir.join("calibration.f32"),
        test: dir.join("test.f32"),
        labels: dir.join("labels.u8"),
    };
    let indices = calibration_indices(ctx.data.train.len(), c.images, c.seed);
    let calibration = ctx.data.train_images().gather(&indices)?;
    write_f32(&files.calibration, calibration.images.data())?;
    let test = ctx.data.test_images();
    let all: Vec<usize> = (0..test.len()).collect();
    write_f32(&files.test, test.gather(&all)?.images.data())?;
    cinder_tensor::io::write_atomic(&files.labels, ctx.data.test.labels())?;
    Ok(files)
}

/// Runs the script on `job`, failing with its last lines of output.
fn run_script(python: &Path, job: &Path, result: &Path) -> anyhow::Result<()> {
    let script = workspace_dir().join("benches/peers/experiment_peers.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(job)
        .arg(result)
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        anyhow::bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
