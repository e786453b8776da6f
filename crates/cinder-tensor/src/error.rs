//! Typed errors of the tensor and quantization math.

use thiserror::Error;

/// A tensor whose shape and data disagree, or an index outside it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements but the data has {actual}")]
    LengthMismatch {
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },
    #[error("shape {shape:?} overflows usize when multiplied out")]
    ShapeOverflow { shape: Vec<usize> },
    #[error("axis {axis} is out of range for a tensor of rank {rank}")]
    AxisOutOfRange { axis: usize, rank: usize },
    #[error("cannot reshape {from:?} into {to:?}: element counts differ")]
    ReshapeMismatch { from: Vec<usize>, to: Vec<usize> },
}

/// Invalid quantization inputs: a bad scheme, range, multiplier or tensor.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    #[error("bit width {bits} is not supported: expected 2..=8")]
    UnsupportedBits { bits: u8 },
    #[error("range [{min}, {max}] is not finite")]
    NonFiniteRange { min: f32, max: f32 },
    #[error("range [{min}, {max}] is inverted: min must not exceed max")]
    InvertedRange { min: f32, max: f32 },
    #[error("scale {scale} is not a finite positive number")]
    InvalidScale { scale: f32 },
    #[error("zero point {zero_point} lies outside the quantized range [{qmin}, {qmax}]")]
    ZeroPointOutOfRange {
        zero_point: i32,
        qmin: i32,
        qmax: i32,
    },
    #[error("real multiplier {multiplier} is not finite and positive")]
    InvalidMultiplier { multiplier: f64 },
    #[error(
        "real multiplier {multiplier} is too large for a Q0.31 multiplier with a left shift of at most 30"
    )]
    MultiplierTooLarge { multiplier: f64 },
    #[error(
        "fixed-point multiplier {multiplier} with exponent {exponent} is invalid: expected 0 or a Q0.31 value in [2^30, 2^31) and an exponent in -31..=30"
    )]
    InvalidFixedPoint { multiplier: i32, exponent: i32 },
    #[error("tensor holds a non-finite value {value} at flat index {index}")]
    NonFiniteValue { index: usize, value: f32 },
    #[error(
        "per-channel parameters for {params} channels do not match {channels} channels along axis {axis}"
    )]
    ChannelCountMismatch {
        axis: usize,
        channels: usize,
        params: usize,
    },
    #[error("codes in [{qmin}, {qmax}] do not fit storage of type {dtype:?}")]
    StorageTooNarrow {
        qmin: i32,
        qmax: i32,
        dtype: crate::tensor::DType,
    },
    #[error("the tensors to compare have {reference} and {other} elements")]
    LengthMismatch { reference: usize, other: usize },
    #[error("cannot compute an error metric over an empty tensor")]
    Empty,
    #[error(transparent)]
    Tensor(#[from] TensorError),
}
