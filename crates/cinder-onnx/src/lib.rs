//! ONNX interop: import a float ONNX model (opsets 13 to 21) into cinder's
//! [`FloatGraph`](cinder_tensor::graph::FloatGraph) and export a float graph as a plain
//! float ONNX model that ONNX Runtime and every other ONNX tool run; export a cinder int8
//! [`QuantizedModel`](cinder_runtime::QuantizedModel) as the QDQ ONNX model ONNX
//! Runtime's quantizer writes ([`qdq_export`]); import such a QDQ model, from cinder or
//! from ONNX Runtime's `quantize_static`, as a cinder int8 model ([`qdq_import`]).
//!
//! Files are decoded with prost types generated from the official ONNX schema
//! ([`proto`]). Every operator, attribute and tensor the importer does not map exactly is
//! refused with a typed [`OnnxError`] naming the node, its operator and what is supported:
//! a model either imports as the same function or not at all.

mod attrs;
pub mod error;
pub mod export;
pub mod import;
pub mod proto;
pub mod qdq_export;
pub mod qdq_import;
pub mod tensor;

pub use error::OnnxError;
pub use export::{EXPORT_OPSET, export_bytes, export_file, export_model};
pub use import::{
    MAX_MODEL_BYTES, SUPPORTED_OPS, SUPPORTED_OPSETS, import_bytes, import_file, import_model,
};
pub use qdq_export::{export_qdq_bytes, export_qdq_file, export_qdq_model};
pub use qdq_import::{
    Imported, import_any_file, import_qdq_bytes, import_qdq_file, import_qdq_model, is_qdq,
};
