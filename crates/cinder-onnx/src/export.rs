//! Export: a [`FloatGraph`] as a plain float ONNX model that ONNX Runtime runs.
//!
//! Each graph node becomes one ONNX node of the same name whose output tensor carries
//! that name too; the graph input is `input` of shape `[batch, ...]` with a symbolic
//! batch; weights are initializers named as in cinder's safetensors files
//! (`<node>.weight`, `<node>.bias`, `<node>.running_mean`, `<node>.running_var`).
//! Importing the exported model gives back the same graph.

use std::path::Path;

use cinder_tensor::graph::{FloatGraph, INPUT, Node, Op, Pool2d};
use cinder_tensor::io::write_atomic;
use prost::Message;

use crate::error::OnnxError;
use crate::proto::attribute_proto::AttributeType;
use crate::proto::tensor_proto::DataType;
use crate::proto::tensor_shape_proto::{Dimension, dimension};
use crate::proto::type_proto::{Tensor as TensorType, Value as TypeValue};
use crate::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor;

/// The opset of the default domain exported models import.
pub const EXPORT_OPSET: i64 = 17;
/// IR version 8, the one opset 17 was released with.
const IR_VERSION: i64 = 8;

/// Writes `graph` as an ONNX file (atomically).
pub fn export_file(graph: &FloatGraph, path: &Path) -> Result<(), OnnxError> {
    Ok(write_atomic(path, &export_bytes(graph))?)
}

/// `graph` as an encoded ONNX model.
pub fn export_bytes(graph: &FloatGraph) -> Vec<u8> {
    export_model(graph).encode_to_vec()
}

/// `graph` as an ONNX model.
pub fn export_model(graph: &FloatGraph) -> ModelProto {
    let mut initializer = Vec::new();
    let node = graph
        .nodes()
        .iter()
        .map(|n| node(n, &mut initializer))
        .collect();
    let output = graph.output();
    let onnx_graph = GraphProto {
        name: "cinder".into(),
        node,
        initializer,
        input: vec![value_info(INPUT, graph.input_shape())],
        output: vec![value_info(
            &output.name,
            graph.shape(&output.name).unwrap_or_default(),
        )],
        ..GraphProto::default()
    };
    model_of(onnx_graph)
}

/// `graph` as a model of opset [`EXPORT_OPSET`] produced by cinder.
pub(crate) fn model_of(graph: GraphProto) -> ModelProto {
    ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: EXPORT_OPSET,
        }],
        producer_name: "cinder".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph),
        ..ModelProto::default()
    }
}

/// A float tensor `[batch, per_sample...]` with a symbolic batch.
pub(crate) fn value_info(name: &str, per_sample: &[usize]) -> ValueInfoProto {
    let batch = Dimension {
        value: Some(dimension::Value::DimParam("batch".into())),
        ..Dimension::default()
    };
    let dims = per_sample.iter().map(|&d| Dimension {
        value: Some(dimension::Value::DimValue(d as i64)),
        ..Dimension::default()
    });
    let tensor_type = TensorType {
        elem_type: DataType::Float as i32,
        shape: Some(TensorShapeProto {
            dim: std::iter::once(batch).chain(dims).collect(),
        }),
    };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(TypeValue::TensorType(tensor_type)),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// The ONNX node of `n`, its weights appended to `initializer`.
fn node(n: &Node, initializer: &mut Vec<TensorProto>) -> NodeProto {
    let mut input = n.inputs.clone();
    let mut weight = |suffix: &str, values: &cinder_tensor::TensorBuf<f32>| {
        let name = format!("{}.{suffix}", n.name);
        initializer.push(tensor::from_f32(&name, values));
        input.push(name);
    };
    let (op_type, attribute) = match &n.op {
        Op::Conv2d(c) => {
            weight("weight", &c.weight);
            if let Some(b) = &c.bias {
                weight("bias", b);
            }
            let mut attrs = window_attrs(c.kernel(), c.stride, c.padding);
            attrs.push(int("group", c.groups as i64));
            attrs.push(ints("dilations", &[1, 1]));
            ("Conv", attrs)
        }
        Op::BatchNorm(bn) => {
            weight("weight", &bn.gamma);
            weight("bias", &bn.beta);
            weight("running_mean", &bn.mean);
            weight("running_var", &bn.var);
            ("BatchNormalization", vec![float("epsilon", bn.eps)])
        }
        Op::Relu => ("Relu", vec![]),
        Op::Clip { min, max } => {
            weight(
                "min",
                &cinder_tensor::TensorBuf::new(vec![], vec![*min]).expect("scalar"),
            );
            weight(
                "max",
                &cinder_tensor::TensorBuf::new(vec![], vec![*max]).expect("scalar"),
            );
            ("Clip", vec![])
        }
        Op::MaxPool2d(p) => ("MaxPool", pool_attrs(p)),
        Op::AvgPool2d(a) => {
            let mut attrs = pool_attrs(&a.window);
            attrs.push(int("count_include_pad", i64::from(a.count_include_pad)));
            ("AveragePool", attrs)
        }
        Op::GlobalAvgPool => ("GlobalAveragePool", vec![]),
        Op::Add => ("Add", vec![]),
        Op::Concat => ("Concat", vec![int("axis", 1)]),
        Op::Flatten => ("Flatten", vec![int("axis", 1)]),
        Op::Linear(l) => {
            weight("weight", &l.weight);
            if let Some(b) = &l.bias {
                weight("bias", b);
            }
            ("Gemm", vec![int("transB", 1)])
        }
    };
    NodeProto {
        input,
        output: vec![n.name.clone()],
        name: n.name.clone(),
        op_type: op_type.into(),
        attribute,
        ..NodeProto::default()
    }
}

fn pool_attrs(p: &Pool2d) -> Vec<AttributeProto> {
    window_attrs(p.kernel, p.stride, p.padding)
}

pub(crate) fn window_attrs(
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Vec<AttributeProto> {
    let [ph, pw] = padding.map(|p| p as i64);
    vec![
        ints("kernel_shape", &kernel.map(|k| k as i64)),
        ints("strides", &stride.map(|s| s as i64)),
        ints("pads", &[ph, pw, ph, pw]),
    ]
}

pub(crate) fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

pub(crate) fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f,
        ..AttributeProto::default()
    }
}
