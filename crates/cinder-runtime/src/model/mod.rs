//! The quantized model as data: its steps and layers ([`types`](self)), the arithmetic
//! conventions they follow ([`rules`]) and the checks of a valid model
//! (`validate`).
//!
//! A model is an ordered list of [`Step`]s over one sample of shape `input_shape`
//! (`[C, H, W]` or `[F]`). Tensors flow in one of two domains:
//!
//! - **float**: f32, canonical NCHW (the float graph's layout);
//! - **int8**: integer codes `q` with the current parameters, `real = scale * (q - zp)`,
//!   on a signed grid within `[-128, 127]`.
//!
//! [`StepOp::Quantize`] enters the int8 domain with calibrated parameters,
//! [`StepOp::Dequantize`] leaves it. A static layer reads and writes int8 (its input
//! parameters are the current ones, its output parameters are its own); dynamic and float
//! layers read and write float. ReLU, max-pool and flatten work in either domain (in
//! int8, ReLU is `max(q, zp)` and max-pool keeps the parameters).
//!
//! Weights are stored in the float graph's canonical layout (`[out, in, k, k]`,
//! `[out, in]`, a linear layer's columns in NCHW flatten order); the fast plan permutes
//! them for its NHWC execution, the reference interpreter does not.

pub mod rules;
mod types;
pub(crate) mod validate;

pub use rules::{ACTIVATION_GRID, WEIGHT_BITS, codes_per_byte, weight_grid, weight_scheme};
pub use types::{
    DynamicLayer, FloatLayer, Layer, LayerExec, QuantWeights, StaticLayer, Step, StepOp,
};
