//! The per-layer quantization config: which layers are quantized (statically or
//! dynamically) and which stay float, and how each layer's weights are quantized.
//!
//! Serde-friendly, so a TOML or JSON file maps onto it directly:
//!
//! ```toml
//! [default]
//! mode = "static"            # static | dynamic | float
//! weight_bits = 8            # 2..=8 (3-4 bits stored two per byte, 2 bits four per byte)
//! granularity = "per_channel" # per_channel | per_tensor
//! mapping = "symmetric"      # symmetric | asymmetric
//! equalize = false           # cross-layer equalization of the pairs this layer is in
//! bias_correction = false    # correct the bias for the mean error of the quantized weights
//! adaround = false           # learn each weight's rounding (AdaRound) instead of rounding to nearest
//!
//! [layers.conv2]
//! weight_bits = 4
//! bias_correction = true
//!
//! [layers.fc2]
//! mode = "float"
//! ```
//!
//! Keys of `layers` are node names of the float graph (its convolution and linear nodes).
//! `equalize`, `bias_correction` and `adaround` select the post-training steps that run
//! before conversion (the `cinder-ptq` crate: Nagel et al. 2019 and 2020);
//! [`crate::convert()`] itself reads none of them (AdaRound's codes reach it as weights
//! on their grid with their parameters, see [`crate::convert_with_weights()`]).

use std::collections::BTreeMap;

use cinder_tensor::Mapping;
use serde::{Deserialize, Serialize};

/// How a weighted layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Integer only: int8 input and output with calibrated (static) ranges.
    Static,
    /// int8 arithmetic with the input range measured on each batch at run time; float
    /// output.
    Dynamic,
    /// Left in f32 (partial quantization).
    Float,
}

/// One weight scale for the whole tensor or one per output channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightGranularity {
    PerTensor,
    PerChannel,
}

/// The complete choice for one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerConfig {
    pub mode: Mode,
    pub weight_bits: u8,
    pub granularity: WeightGranularity,
    pub mapping: Mapping,
    /// Cross-layer equalization of the consecutive pairs this layer belongs to (a pair is
    /// equalized when both its layers say so).
    #[serde(default)]
    pub equalize: bool,
    /// Bias correction: the expected output change caused by quantizing the weights,
    /// measured on calibration images, is added back to the bias.
    #[serde(default)]
    pub bias_correction: bool,
    /// AdaRound: each weight rounds up or down as learned on calibration images so as to
    /// reconstruct the layer's float output, instead of to the nearest code.
    #[serde(default)]
    pub adaround: bool,
}

impl Default for LayerConfig {
    /// W8A8 static, per-channel symmetric weights: the configuration of the goals.
    fn default() -> Self {
        Self {
            mode: Mode::Static,
            weight_bits: 8,
            granularity: WeightGranularity::PerChannel,
            mapping: Mapping::Symmetric,
            equalize: false,
            bias_correction: false,
            adaround: false,
        }
    }
}

/// A layer's departures from the default; unset fields keep the default's value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerOverride {
    pub mode: Option<Mode>,
    pub weight_bits: Option<u8>,
    pub granularity: Option<WeightGranularity>,
    pub mapping: Option<Mapping>,
    pub equalize: Option<bool>,
    pub bias_correction: Option<bool>,
    pub adaround: Option<bool>,
}

/// The default layer config plus overrides keyed by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantConfig {
    #[serde(default)]
    pub default: LayerConfig,
    #[serde(default)]
    pub layers: BTreeMap<String, LayerOverride>,
}

impl QuantConfig {
    /// Every layer with `layer`.
    pub fn uniform(layer: LayerConfig) -> Self {
        Self {
            default: layer,
            layers: BTreeMap::new(),
        }
    }

    /// Sets (or replaces) the override of `name`.
    pub fn with_layer(mut self, name: impl Into<String>, layer: LayerOverride) -> Self {
        self.layers.insert(name.into(), layer);
        self
    }

    /// The effective config of layer `name`.
    pub fn layer(&self, name: &str) -> LayerConfig {
        let d = self.default;
        match self.layers.get(name) {
            None => d,
            Some(o) => LayerConfig {
                mode: o.mode.unwrap_or(d.mode),
                weight_bits: o.weight_bits.unwrap_or(d.weight_bits),
                granularity: o.granularity.unwrap_or(d.granularity),
                mapping: o.mapping.unwrap_or(d.mapping),
                equalize: o.equalize.unwrap_or(d.equalize),
                bias_correction: o.bias_correction.unwrap_or(d.bias_correction),
                adaround: o.adaround.unwrap_or(d.adaround),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_fall_back_to_the_default() {
        let c = QuantConfig::default().with_layer(
            "fc2",
            LayerOverride {
                mode: Some(Mode::Float),
                ..Default::default()
            },
        );
        assert_eq!(c.layer("conv1"), LayerConfig::default());
        let fc2 = c.layer("fc2");
        assert_eq!(fc2.mode, Mode::Float);
        assert_eq!(fc2.weight_bits, 8);
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let json = r#"{"default": {"mode": "dynamic", "weight_bits": 4, "granularity": "per_tensor", "mapping": "asymmetric"},
                       "layers": {"fc1": {"weight_bits": 8}}}"#;
        let c: QuantConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.layer("conv1").mode, Mode::Dynamic);
        assert_eq!(c.layer("fc1").weight_bits, 8);
        assert_eq!(c.layer("fc1").mapping, Mapping::Asymmetric);
        let back: QuantConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(
            serde_json::from_str::<QuantConfig>(r#"{"layers": {"fc1": {"bits": 4}}}"#).is_err()
        );
    }

    #[test]
    fn post_training_steps_default_off_and_override_per_layer() {
        let json = r#"{"default": {"mode": "static", "weight_bits": 8, "granularity": "per_tensor", "mapping": "symmetric", "bias_correction": true},
                       "layers": {"fc1": {"bias_correction": false, "equalize": true, "adaround": true}}}"#;
        let c: QuantConfig = serde_json::from_str(json).unwrap();
        assert!(c.layer("conv1").bias_correction && !c.layer("conv1").equalize);
        assert!(!c.layer("fc1").bias_correction && c.layer("fc1").equalize);
        assert!(!c.layer("conv1").adaround && c.layer("fc1").adaround);
        let d = QuantConfig::default().layer("conv1");
        assert!(!d.equalize && !d.bias_correction && !d.adaround);
    }
}
