//! Calibration observers: they watch float tensors batch after batch and decide the
//! quantization ranges. Written against `cinder_tensor::Tensor` (never burn), so the int8
//! runtime's dynamic mode reuses the same code at run time.

pub mod table;

pub use table::{CalibrationTable, TensorRange};
