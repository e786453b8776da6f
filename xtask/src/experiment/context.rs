//! What every cell of a run shares: the config, the trained float model, the data, the
//! fp32 baseline and the output directory, and from them each cell's result key and model
//! path.

use std::path::{Path, PathBuf};

use cinder_model::GraphNet;
use cinder_tensor::graph::FloatGraph;

use super::config::{CellConfig, ExperimentConfig, Method};
use super::data::ExperimentData;
use super::results::Baseline;
use super::store::Key;

/// Everything the cells share.
pub struct Context<'a> {
    pub config: &'a ExperimentConfig,
    /// The trained float model (inference mode).
    pub model: &'a GraphNet,
    pub data: &'a ExperimentData,
    pub graph: &'a FloatGraph,
    pub graph_key: &'a str,
    pub baseline: &'a Baseline,
    pub out: &'a Path,
}

impl Context<'_> {
    /// The key of `cell`'s result: the cell, the model, the data and every setting used.
    pub fn cell_key(&self, cell: &CellConfig) -> anyhow::Result<String> {
        let c = self.config;
        let mut key = Key::new("cell");
        // A new model format means new runtime arithmetic: cached cells are stale.
        key.json(&cinder_runtime::MODEL_FORMAT_VERSION)?
            .json(cell)?
            .bytes(self.graph_key.as_bytes())
            .bytes(self.data.key.as_bytes())
            .json(&c.calibration)?
            .json(&c.evaluation)?;
        if matches!(cell.method, Method::Qat | Method::QatControl) {
            key.json(&c.qat)?;
        }
        if crate::ptq::steps(self.graph, &cell.quant).adaround {
            key.json(&c.adaround)?;
        }
        Ok(key.hex())
    }

    pub fn model_path(&self, cell: &CellConfig) -> PathBuf {
        self.out
            .join("models")
            .join(format!("{}.cinder", cell.name))
    }
}
