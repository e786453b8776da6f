//! ONNX interop: reading and writing ONNX models for cinder's float graph.
//!
//! Files are decoded with prost types generated from the official ONNX schema
//! ([`proto`]); [`tensor`] converts ONNX tensors to and from cinder's tensors.

pub mod error;
pub mod proto;
pub mod tensor;

pub use error::OnnxError;
