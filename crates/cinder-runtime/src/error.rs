//! Typed errors of conversion, model files and execution. Every error names what it
//! concerns: the file, the field or tensor, the layer, and what was expected.

use std::path::PathBuf;

use cinder_observers::ObserverError;
use cinder_tensor::QuantError;
use cinder_tensor::io::FileError;
use thiserror::Error;

/// A model that breaks one of the format's rules; `field` locates it (`steps[3] (conv2)
/// .multiplier[7]`).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a float graph could not be converted into a quantized model.
#[derive(Debug, Error)]
pub enum ConvertError {
    #[error("config: layer `{0}` is not a convolution or linear node of the graph")]
    UnknownLayer(String),
    #[error("node `{node}`: the int8 runtime does not support {what}")]
    Unsupported { node: String, what: String },
    #[error("config: layer `{layer}`: {bits}-bit weights are not supported (expected 2 to 8)")]
    UnsupportedBits { layer: String, bits: u8 },
    #[error("calibration table has no entry for tensor `{tensor}`, which layer `{layer}` needs")]
    MissingCalibration { tensor: String, layer: String },
    #[error("calibration entry `{tensor}`: {message}")]
    BadCalibration { tensor: String, message: String },
    #[error("layer `{layer}`: {source}")]
    Quant {
        layer: String,
        #[source]
        source: QuantError,
    },
    #[error(
        "layer `{layer}`: the bias of channel {channel} ({value:e}) needs an int32 code beyond \
         ±{bound} at the accumulator scale {scale:e} (input scale × weight scale): the bias \
         is out of all proportion to the layer's weights and input range"
    )]
    BiasOutOfRange {
        layer: String,
        channel: usize,
        value: f32,
        /// The bias code's scale, `s_in * s_w`.
        scale: f32,
        /// The largest bias code the layer's accumulators leave room for.
        bound: i32,
    },
    #[error("layer `{layer}`: {source}")]
    Weights {
        layer: String,
        #[source]
        source: ObserverError,
    },
    #[error("the converted model is invalid: {0}")]
    Invalid(#[from] Invalid),
}

/// A model file that cannot be read, written or trusted.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: no `{key}` entry in the safetensors metadata: not a cinder model file")]
    NotAModel { path: PathBuf, key: &'static str },
    #[error("{path}: model metadata is not valid: {message}")]
    Metadata { path: PathBuf, message: String },
    #[error(
        "{path}: format `{format}` version {version} is not supported (expected `{expected_format}` version {expected_version})"
    )]
    Version {
        path: PathBuf,
        format: String,
        version: u32,
        expected_format: &'static str,
        expected_version: u32,
    },
    #[error(
        "{path}: tensor data checksum {actual} differs from {expected} in the metadata: the file is corrupt"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: Invalid,
    },
}

/// Bad input to a run, or a session that cannot start.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("input has shape {actual:?}, expected [batch, {expected:?}] with batch >= 1")]
    InputShape {
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("input: {0}")]
    Input(#[source] ObserverError),
    #[error(
        "node `{node}`: output element {index} is {value}: the float graph overflows on this \
         input (weights or activations beyond f32)"
    )]
    NonFiniteOutput {
        node: String,
        index: usize,
        value: f32,
    },
    #[error("dynamic quantization of the input of `{layer}`: {message}")]
    DynamicRange { layer: String, message: String },
    #[error("cannot start {threads} worker threads: {message}")]
    ThreadPool { threads: usize, message: String },
}
