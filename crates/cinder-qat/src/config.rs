//! What a QAT run does: the weight and activation quantization it simulates, how the
//! ranges are found (observers, frozen after some steps, or learned step sizes), and the
//! fine-tuning recipe.

use cinder_model::{OptimizerConfig, TrainConfig};
use cinder_runtime::model::weight_scheme;
use cinder_runtime::{Mode, QuantConfig, WeightGranularity};
use cinder_tensor::{Granularity, QuantScheme};
use serde::{Deserialize, Serialize};

use crate::error::QatError;

/// A QAT (or control) fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QatConfig {
    /// Weight quantization of each layer, as the runtime will run it: every layer static,
    /// 2 to 8 bits, per channel or per tensor, symmetric or asymmetric.
    pub quant: QuantConfig,
    /// Activation quantization (per tensor, a grid that fits 8 bits); default the
    /// runtime's u8 asymmetric.
    pub activations: QuantScheme,
    /// Learned step sizes (LSQ, Esser et al. 2019): after the observers freeze, the
    /// scales of weights and activations become trainable, initialized from the
    /// observers, with gradient scale `1/sqrt(N·Q_P)`.
    pub lsq: bool,
    /// Observers update during this many training steps, then their parameters are
    /// frozen (weights and activations). `None`: they never freeze (not with LSQ).
    pub freeze_observers_after: Option<usize>,
    /// Averaging constant of the activations' moving-average min/max observers.
    pub averaging_constant: f32,
    /// `false` runs the control: the same fine-tuning without fake quantization.
    pub fake_quant: bool,
    pub training: TrainConfig,
}

impl Default for QatConfig {
    /// W8A8 (per-channel symmetric s8 weights, u8 asymmetric activations), observers
    /// never frozen, one epoch of SGD lr 0.001 momentum 0.9, batch 64.
    fn default() -> Self {
        Self {
            quant: QuantConfig::default(),
            activations: QuantScheme::activations_uint8(),
            lsq: false,
            freeze_observers_after: None,
            averaging_constant: cinder_observers::DEFAULT_AVERAGING_CONSTANT,
            fake_quant: true,
            training: TrainConfig {
                epochs: 1,
                batch_size: 64,
                lr: 0.001,
                optimizer: OptimizerConfig::sgd(),
                ..TrainConfig::default()
            },
        }
    }
}

impl QatConfig {
    /// The control of this run: the same fine-tuning without fake quantization.
    pub fn control(&self) -> Self {
        Self {
            fake_quant: false,
            lsq: false,
            ..self.clone()
        }
    }

    /// Checks the config for a graph with the weighted layers `layers` (node names): each
    /// static with a weight scheme the runtime runs, and overrides for those layers only.
    pub fn validate(&self, layers: &[String]) -> Result<(), QatError> {
        let bad = |m: String| Err(QatError::Config(m));
        self.training.validate()?;
        if self.training.early_stopping.is_some() {
            return bad(
                "training.early_stopping: fine-tuning runs its fixed number of epochs".to_owned(),
            );
        }
        for layer in layers {
            self.weight_scheme(layer)?;
            if self.quant.layer(layer).mode != Mode::Static {
                return bad(format!("layer `{layer}`: QAT simulates static layers only"));
            }
        }
        if let Some(name) = self.quant.layers.keys().find(|n| !layers.contains(n)) {
            return bad(format!(
                "quant.layers.{name}: the graph has no weighted layer `{name}` (its layers: {layers:?})"
            ));
        }
        if self.activations.granularity != Granularity::PerTensor
            || self.activations.qmin() < -128
            || self.activations.qmax() > 255
        {
            return bad(format!(
                "activations {:?}: expected per tensor on a grid that fits 8 bits",
                self.activations
            ));
        }
        if !(self.averaging_constant > 0.0 && self.averaging_constant <= 1.0) {
            return bad(format!(
                "averaging constant {} is not in (0, 1]",
                self.averaging_constant
            ));
        }
        if self.lsq && self.freeze_observers_after.is_none_or(|n| n == 0) {
            return bad("LSQ needs observers for at least one step to initialize its scales (freeze_observers_after >= 1)".into());
        }
        Ok(())
    }

    /// The weight scheme of `layer` (per-channel schemes on axis 0, the output channel
    /// of the graph's `[out, ...]` weights).
    pub fn weight_scheme(&self, layer: &str) -> Result<QuantScheme, QatError> {
        let c = self.quant.layer(layer);
        let per_channel = c.granularity == WeightGranularity::PerChannel;
        Ok(weight_scheme(c.weight_bits, c.mapping, per_channel)?)
    }
}
