//! The hand-off to the int8 runtime: the float graph of the fine-tuned (folded) weights,
//! a calibration table holding the QAT activation params themselves, and the weight
//! params the fake-quant forward used (learned or frozen), which
//! `cinder_runtime::convert_with_weights` takes instead of recomputing min/max. The
//! runtime then computes on exactly the grids the simulation trained on.

use std::collections::BTreeMap;
use std::path::Path;

use cinder_observers::{CalibrationTable, TensorRange};
use cinder_runtime::{QuantConfig, QuantizedModel, convert_with_weights};
use cinder_tensor::TensorQuantParams;
use cinder_tensor::graph::FloatGraph;

use crate::error::QatError;
use crate::model::{FrozenParams, QatModel};

/// Everything the runtime needs to reproduce a QAT model.
#[derive(Debug, Clone, PartialEq)]
pub struct QatExport {
    pub graph: FloatGraph,
    /// Activation params by tensor name (the plan's activation points); each range is
    /// the real interval of its grid.
    pub table: CalibrationTable,
    /// Weight params by layer (per-channel on axis 0 of the graph's weights).
    pub weights: BTreeMap<String, TensorQuantParams>,
    pub quant: QuantConfig,
}

impl QatModel {
    /// The runtime hand-off of the model as it is now.
    pub fn export(&self) -> Result<QatExport, QatError> {
        let FrozenParams {
            activations: acts,
            weights,
        } = self.effective_params()?;
        let config = self.config();
        let observer = if config.lsq { "qat-lsq" } else { "qat" };
        let mut table =
            CalibrationTable::new(observer, config.activations, self.state().observed_images);
        for (name, params) in acts {
            let (min, max) = params.real_range();
            table.tensors.insert(name, TensorRange { min, max, params });
        }
        Ok(QatExport {
            graph: self.net().to_float_graph()?,
            table,
            weights,
            quant: config.quant.clone(),
        })
    }
}

impl QatExport {
    /// The int8 model.
    pub fn convert(&self) -> Result<QuantizedModel, QatError> {
        Ok(convert_with_weights(
            &self.graph,
            &self.table,
            &self.quant,
            &self.weights,
        )?)
    }

    /// Writes `graph.json` + `graph.safetensors`, `calibration.json` and
    /// `weight_params.json` to `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), QatError> {
        self.graph
            .save(&dir.join("graph.json"), &dir.join("graph.safetensors"))?;
        self.table.save(&dir.join("calibration.json"))?;
        cinder_tensor::io::write_json_atomic(&dir.join("weight_params.json"), &self.weights)?;
        Ok(())
    }
}
