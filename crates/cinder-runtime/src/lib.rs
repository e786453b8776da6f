//! cinder's int8 runtime: converts a float graph (any DAG of convolutions — dense,
//! strided, depthwise —, linear layers, ReLU / clip, pools, residual adds, concatenations)
//! into a quantized model, stores it, and runs it with integer-only arithmetic (static
//! mode), per-batch ranges (dynamic mode) or float layers left in place (partial
//! quantization). No burn.
//!
//! Modules, top down: [`mod@convert`] and [`mod@file`] produce a [`QuantizedModel`] (its steps
//! and their rules in [`model`], checked by one walk over the graph that tracks every
//! tensor's shape and domain); the session runs its plan (stages on [`kernels`]); the
//! reference interpreter and the simulation read the model directly.
//!
//! - [`convert()`]: float graph + calibration table + [`QuantConfig`] -> [`QuantizedModel`]
//!   (offline, float arithmetic allowed).
//! - [`QuantizedModel::save`] / [`QuantizedModel::load`]: the model file (see [`mod@file`]).
//! - [`QuantizedModel::session`] and [`Session::run`]: the fast path (packed weights,
//!   exact AVX2 kernels, threads across the batch, no allocation after warm-up).
//! - [`reference_forward`]: the plain interpreter the fast path equals bit for bit;
//!   [`simulate()`]: the fake-quant float simulation; [`float_forward`]: the float graph's
//!   reference forward.

mod arith;
pub mod config;
pub mod convert;
pub mod error;
pub mod file;
mod float;
mod geometry;
pub mod kernels;
pub mod model;
mod plan;
mod quantized;
pub mod reference;
pub mod session;
pub mod simulate;
pub mod synthetic;
mod walk;

pub use config::{LayerConfig, LayerOverride, Mode, QuantConfig, WeightGranularity};
pub use convert::{convert, convert_with_weights};
pub use error::{ConvertError, Invalid, ModelError, RunError};
pub use file::{MODEL_FORMAT, MODEL_FORMAT_VERSION};
pub use float::{float_forward, float_forward_with};
pub use model::{
    Activation, DynamicLayer, FloatLayer, IntMerge, Layer, LayerExec, Merge, QuantWeights,
    StaticLayer, Step, StepOp, Window,
};
pub use plan::ConvAlgorithm;
pub use quantized::QuantizedModel;
pub use reference::reference_forward;
pub use session::{Session, SessionOptions, StageTime};
pub use simulate::simulate;
