//! Post-training quantization steps on a batch-norm-folded float graph before
//! [`cinder_runtime::convert()`], from Nagel et al. 2019, "Data-Free Quantization Through
//! Weight Equalization and Bias Correction", and Nagel et al. 2020, "Up or Down? Adaptive
//! Rounding for Post-Training Quantization". No burn.
//!
//! - [`equalize()`]: cross-layer equalization. Consecutive weighted layers whose
//!   intermediate tensor passes only through positively homogeneous operators (ReLU,
//!   max / average pooling, flatten) have their channels rescaled so that both layers'
//!   per-channel weight ranges become equal; the float function is unchanged, and
//!   per-tensor weight quantization loses far less on layers (depthwise ones above all)
//!   whose channels differed in range by orders of magnitude.
//! - [`correct_biases()`]: empirical bias correction. The mean change of each layer's
//!   output caused by quantizing its weights, `E[W x] - E[Q(W) x]` over calibration
//!   images, is added to its bias, so that the quantized layer's output is unbiased.
//! - [`adaround()`]: AdaRound. Each layer learns, weight by weight, whether to round up
//!   or down, minimizing its output reconstruction error on calibration images; the
//!   learned codes reach conversion unchanged ([`AdaRounded::apply`]).
//!
//! - [`mixed::greedy()`]: accuracy-driven mixed precision. Given each layer's measured
//!   sensitivity and cost at every weight width, a greedy search chooses one width (or
//!   float) per layer that minimizes model size or latency within an accuracy budget.
//!
//! They read the per-layer switches `equalize`, `bias_correction` and `adaround` of the
//! runtime's [`cinder_runtime::QuantConfig`].

pub mod adaround;
pub mod bias;
pub mod equalize;
pub mod error;
mod layer;
mod matmul;
pub mod mixed;
mod patches;
mod reconstruction;
mod rounding;

pub use adaround::{AdaRounded, LayerRounding, RoundedLayer, adaround};
pub use bias::{
    BiasCorrection, LayerCorrection, correct_biases, correct_biases_rounded, quantized_weight,
};
pub use equalize::{ClipPolicy, Equalization, EqualizeOptions, PairReport, equalize};
pub use error::PtqError;
pub use rounding::AdaRoundOptions;
