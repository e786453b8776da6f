//! The experiment's results as data: the fp32 baseline, one [`CellResult`] per cell
//! (each saved on its own as soon as it finishes), and [`Results`], the versioned
//! `results.json` the report and the plots are written from.

use std::collections::{BTreeMap, BTreeSet};

use cinder_model::INPUT_NAME;
use cinder_runtime::QuantConfig;
use cinder_tensor::ErrorMetrics;
use cinder_tensor::graph::GraphSpec;
use serde::{Deserialize, Serialize};

use super::config::{ExperimentConfig, Method};
use super::memory::PeakMemory;
use super::peers::Peers;
use super::training::TrainingSummary;
pub use crate::sensitivity::LayerSensitivity;

/// Version of `results.json`; bumped on incompatible changes.
pub const RESULTS_FORMAT_VERSION: u32 = 2;

/// Accuracy and speed of one model on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub accuracy: f64,
    pub model_bytes: u64,
    /// Median time of one evaluation batch.
    pub batch_ms: f64,
    pub batch: usize,
    /// Median time of one single-image run.
    pub single_ms: f64,
    /// `batch / batch_ms`, images per second.
    pub images_per_sec: f64,
    pub memory: PeakMemory,
}

/// The float model: burn (flex backend) on the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub measured: Measured,
    pub model_file: String,
    /// Predicted class of every test image (for the agreement of each cell).
    pub predictions: Vec<u32>,
}

/// Calibration cost of the observer a cell used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTime {
    pub observer: String,
    pub images: usize,
    pub forward_seconds: f64,
    pub observe_seconds: f64,
}

/// The figures of a finished cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellMetrics {
    pub measured: Measured,
    pub model_file: String,
    /// `accuracy - fp32 accuracy`, percentage points.
    pub accuracy_delta_pp: f64,
    /// Share of test images whose prediction equals the fp32 model's.
    pub agreement: f64,
    /// Model file bytes over the fp32 weights file bytes.
    pub size_ratio: f64,
    /// Layers left in f32.
    pub float_layers: Vec<String>,
    /// Per weighted layer: float weights against the model's dequantized weights.
    pub weight_errors: BTreeMap<String, ErrorMetrics>,
    /// Per calibrated tensor: activations against their fake-quantized copy under the
    /// cell's calibration table (static cells only).
    pub activation_errors: BTreeMap<String, ErrorMetrics>,
    pub calibration: Option<CalibrationTime>,
    /// The per-layer analysis of a sensitivity cell.
    pub sensitivity: Vec<LayerSensitivity>,
    /// An autoquant cell's layer table, trajectory and chosen widths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoquant: Option<Box<crate::autoquant::search::Found>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    Done(Box<CellMetrics>),
    /// The cell ran and failed (e.g. weight bits the runtime does not support yet).
    Failed {
        error: String,
    },
}

/// One cell as saved in `cells/NAME.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellResult {
    pub name: String,
    pub group: String,
    pub method: Method,
    pub observer: String,
    pub quant: QuantConfig,
    /// Equalization took ReLU6 as ReLU.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relu6_as_relu: bool,
    /// Wall time of the cell (calibration shared with other cells not included).
    pub seconds: f64,
    /// Milliseconds since the Unix epoch when the cell finished.
    pub finished_unix_ms: u64,
    pub outcome: Outcome,
}

impl CellResult {
    pub fn metrics(&self) -> Option<&CellMetrics> {
        match &self.outcome {
            Outcome::Done(m) => Some(m),
            _ => None,
        }
    }
}

/// The machine the experiment ran on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub flags: Vec<String>,
}

/// The data an experiment saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub dataset: String,
    pub train_images: usize,
    pub test_images: usize,
    pub classes: usize,
}

/// `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub format_version: u32,
    pub experiment: String,
    pub config: ExperimentConfig,
    pub machine: Machine,
    pub data: DataSummary,
    pub training: TrainingSummary,
    /// The fp32 baseline without its per-image predictions.
    pub fp32: Measured,
    pub fp32_model_file: String,
    pub cells: Vec<CellResult>,
    /// ONNX Runtime on the same models and images, or why not.
    #[serde(default)]
    pub peers: Peers,
    /// Wall time of this run of the command (cells reused from earlier runs cost ~0).
    pub wall_seconds: f64,
}

impl Machine {
    /// This machine, from `/proc/cpuinfo` and `/proc/meminfo` (empty fields elsewhere).
    pub fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == name))
                .map_or("", |(_, v)| v.trim())
                .to_owned()
        };
        let wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"];
        let flags = field("flags")
            .split_whitespace()
            .filter(|f| wanted.contains(f))
            .map(str::to_owned)
            .collect();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            cpu: field("model name"),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: memory_kib * 1024,
            flags,
        }
    }
}

impl Results {
    /// The finished cells.
    pub fn done(&self) -> impl Iterator<Item = (&CellResult, &CellMetrics)> {
        self.cells.iter().filter_map(|c| Some((c, c.metrics()?)))
    }

    /// The activation errors of each observer (from its first static cell).
    pub fn activation_errors_by_observer(&self) -> Vec<(String, &BTreeMap<String, ErrorMetrics>)> {
        let mut seen = std::collections::BTreeSet::new();
        self.done()
            .filter(|(c, m)| !m.activation_errors.is_empty() && seen.insert(&c.observer))
            .map(|(c, m)| (c.observer.clone(), &m.activation_errors))
            .collect()
    }

    /// The finished cells that quantize the trained model as it is (not fine-tuned).
    pub fn post_training(&self) -> impl Iterator<Item = (&CellResult, &CellMetrics)> {
        self.done().filter(|(c, _)| !c.method.fine_tunes())
    }

    /// The finished cells that train the model further first (QAT and its control).
    pub fn fine_tuned(&self) -> impl Iterator<Item = (&CellResult, &CellMetrics)> {
        self.done().filter(|(c, _)| c.method.fine_tunes())
    }

    /// Names of the finished post-training cells on the accuracy-vs-size Pareto front (no
    /// other such cell is both smaller or as small and more accurate), smallest first.
    /// The control of QAT cell `cell`: the control cell with the same quantization.
    pub fn control_of(&self, cell: &CellResult) -> Option<(&CellResult, &CellMetrics)> {
        (cell.method == Method::Qat)
            .then(|| {
                self.fine_tuned()
                    .find(|(o, _)| o.method == Method::QatControl && o.quant == cell.quant)
            })
            .flatten()
    }

    pub fn pareto_front(&self) -> Vec<&str> {
        let mut points: Vec<(u64, f64, &str)> = self
            .post_training()
            .map(|(c, m)| (m.measured.model_bytes, m.measured.accuracy, c.name.as_str()))
            .collect();
        points.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
        let mut best = f64::NEG_INFINITY;
        points
            .into_iter()
            .filter(|&(_, acc, _)| {
                let better = acc > best;
                best = best.max(acc);
                better
            })
            .map(|(_, _, name)| name)
            .collect()
    }
}

/// The union of the keys of `maps`, in graph order (input, then the nodes of `spec`, the
/// model the experiment measures).
pub fn columns<'a>(
    spec: &GraphSpec,
    maps: impl Iterator<Item = &'a BTreeMap<String, ErrorMetrics>>,
) -> Vec<String> {
    let rank = |name: &String| {
        std::iter::once(INPUT_NAME)
            .chain(spec.nodes.iter().map(|n| n.name.as_str()))
            .position(|n| n == name)
            .unwrap_or(usize::MAX)
    };
    let mut names: Vec<String> = maps
        .flat_map(|m| m.keys().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    names.sort_by_key(rank);
    names
}
