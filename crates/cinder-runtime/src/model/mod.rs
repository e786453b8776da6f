//! The quantized model as data: its steps and layers ([`types`](self)), the arithmetic
//! conventions they follow ([`rules`]) and the checks of a valid model
//! (`validate`).
//!
//! A model is a graph: an ordered list of [`Step`]s over one sample of shape
//! `input_shape` (`[C, H, W]` or `[F]`), each reading named tensors (the input, named
//! [`INPUT`], or earlier steps' outputs) and writing the tensor named after it; the last
//! step writes the model's output, and every other step's output is read. Tensors are in
//! one of two domains:
//!
//! - **float**: f32, canonical NCHW (the float graph's layout);
//! - **int8**: integer codes `q` with the current parameters, `real = scale * (q - zp)`,
//!   on a signed grid within `[-128, 127]`.
//!
//! [`StepOp::Quantize`] enters the int8 domain with calibrated parameters,
//! [`StepOp::Dequantize`] leaves it. A static layer reads and writes int8 (its input
//! parameters are its input's, its output parameters are its own); dynamic and float
//! layers read and write float. Activations, pools and flatten work in either domain (in
//! int8 they keep the parameters: ReLU is `max(q, zp)`, average pooling rounds as
//! documented in [`crate::kernels`]); `Add` and `Concat` read tensors of one domain and
//! in int8 rescale each to their own output parameters ([`IntMerge`]).
//!
//! Weights are stored in the float graph's canonical layout (`[out, in, k, k]`,
//! `[out, in]`, a linear layer's columns in NCHW flatten order); the fast plan permutes
//! them for its NHWC execution, the reference interpreter does not.

pub mod rules;
mod types;
pub(crate) mod validate;

pub use crate::geometry::Window;
pub use rules::{ACTIVATION_GRID, WEIGHT_BITS, codes_per_byte, weight_grid, weight_scheme};
pub use types::{
    Activation, DynamicLayer, FloatLayer, IntMerge, Layer, LayerExec, Merge, QuantWeights,
    StaticLayer, Step, StepOp,
};

/// The name of the model's input tensor (the float graph's input).
pub const INPUT: &str = cinder_observers::GRAPH_INPUT;
