//! Typed errors of the observers, the observer spec parser and the calibrator.

use cinder_tensor::{Granularity, QuantError, TensorError};
use thiserror::Error;

/// What can go wrong while observing tensors or deriving parameters from them.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ObserverError {
    #[error("cannot observe an empty tensor")]
    EmptyTensor,
    #[error("no batches have been observed yet")]
    NoData,
    #[error("tensor holds a non-finite value {value} at flat index {index}")]
    NonFiniteValue { index: usize, value: f32 },
    #[error("this observer has {observed} channels along axis {axis}, the tensor has {found}")]
    ChannelCountChanged {
        axis: usize,
        observed: usize,
        found: usize,
    },
    #[error("the scheme asks for {requested:?} but this observer tracks {observed:?}")]
    GranularityMismatch {
        requested: Granularity,
        observed: Granularity,
    },
    #[error("cannot merge observers with different configurations: {message}")]
    MergeMismatch { message: String },
    #[error("invalid observer configuration: {message}")]
    InvalidConfig { message: String },
    #[error("invalid observer state: {message}")]
    InvalidState { message: String },
    #[error("tensor `{name}` is not in the calibration table")]
    UnknownTensor { name: String },
    #[error("tensor `{name}`: {source}")]
    InTensor {
        name: String,
        #[source]
        source: Box<ObserverError>,
    },
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl ObserverError {
    /// Wraps `self` with the name of the tensor it concerns.
    pub fn in_tensor(self, name: &str) -> Self {
        Self::InTensor {
            name: name.to_owned(),
            source: Box::new(self),
        }
    }

    pub(crate) fn merge_mismatch(message: impl Into<String>) -> Self {
        Self::MergeMismatch {
            message: message.into(),
        }
    }

    pub(crate) fn invalid_config(message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            message: message.into(),
        }
    }

    pub(crate) fn invalid_state(message: impl Into<String>) -> Self {
        Self::InvalidState {
            message: message.into(),
        }
    }
}

/// An observer spec string (`minmax`, `percentile=99.99`, ...) that does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "unknown observer `{0}`: expected minmax, moving-average[=C], entropy, percentile=P or mse"
    )]
    Unknown(String),
    #[error("observer `{name}` needs a value: `{name}=...`")]
    MissingValue { name: &'static str },
    #[error("observer `{name}` takes no value, got `{value}`")]
    UnexpectedValue { name: &'static str, value: String },
    #[error("observer `{name}`: `{value}` is not valid: expected {expected}")]
    BadValue {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}
