//! QDQ import: a QDQ ONNX model (`QuantizeLinear` / `DequantizeLinear` around float
//! operators, as ONNX Runtime's `quantize_static` writes it: static, per-channel or
//! per-tensor int8 weights, uint8 or int8 activations) as a cinder int8
//! [`QuantizedModel`] that keeps the model's scales, zero points, weight codes and int32
//! bias codes.
//!
//! The model is first split into the float model it computes and its quantization
//! (`strip`); the float model is imported as any float ONNX model (same operators, same
//! errors), then the steps are built with the model's parameters (`steps`). What
//! cinder cannot represent exactly (asymmetric or uint8 weights, a weight code of -128,
//! per-channel activations, a bias scale other than `s_in * s_w`, a layer with int8
//! weights reading or writing float) is a typed error naming the node.

mod steps;
mod strip;

use std::collections::HashMap;
use std::path::Path;

use cinder_runtime::QuantizedModel;
use cinder_tensor::graph::FloatGraph;
use prost::Message;

use crate::error::OnnxError;
use crate::import::{check_opset, import_model, import_with_tensors, read_bounded};
use crate::proto::ModelProto;

/// Whether `model` holds `QuantizeLinear` or `DequantizeLinear` nodes (a QDQ model).
pub fn is_qdq(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| {
        g.node
            .iter()
            .any(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
    })
}

/// What an ONNX file holds once imported.
#[derive(Debug)]
pub enum Imported {
    /// A float model, as cinder's float graph.
    Float(FloatGraph),
    /// A QDQ model, as a cinder int8 model.
    Int8(QuantizedModel),
}

/// Reads and imports an ONNX file, float or QDQ ([`is_qdq`]); errors name the file.
pub fn import_any_file(path: &Path) -> Result<Imported, OnnxError> {
    let bytes = read_bounded(path)?;
    let imported = ModelProto::decode(bytes.as_slice())
        .map_err(|e| OnnxError::Decode(e.to_string()))
        .and_then(|model| {
            if is_qdq(&model) {
                Ok(Imported::Int8(import_qdq_model(&model)?))
            } else {
                Ok(Imported::Float(import_model(&model)?))
            }
        });
    imported.map_err(|e| e.in_file(path))
}

/// Reads and imports a QDQ ONNX file; errors name the file.
pub fn import_qdq_file(path: &Path) -> Result<QuantizedModel, OnnxError> {
    let bytes = read_bounded(path)?;
    import_qdq_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// Imports an encoded QDQ ONNX model.
pub fn import_qdq_bytes(bytes: &[u8]) -> Result<QuantizedModel, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    import_qdq_model(&model)
}

/// Imports a decoded QDQ ONNX model.
pub fn import_qdq_model(model: &ModelProto) -> Result<QuantizedModel, OnnxError> {
    check_opset(model)?;
    let (float, quantization) = strip::strip(model)?;
    let (graph, tensors) = import_with_tensors(&float)?;
    let mut activations = HashMap::new();
    for (onnx, (params, node)) in quantization.activations {
        let Some(tensor) = tensors.get(&onnx) else {
            return Err(OnnxError::Tensor {
                name: onnx,
                message: format!(
                    "quantized by `{node}` but is no graph input or output of a mapped node"
                ),
            });
        };
        match activations.insert(tensor.clone(), params) {
            Some(other) if other != params => {
                return Err(OnnxError::Tensor {
                    name: onnx,
                    message: format!(
                        "quantized by `{node}` with other parameters than the tensor `{tensor}` \
                         it is an alias of"
                    ),
                });
            }
            _ => {}
        }
    }
    steps::build(&graph, &activations, &quantization.layers)
}
