//! Every model the importer cannot map exactly is refused with a typed error naming the
//! node, its operator and what is supported. The malformed models are exported ones with
//! one field edited.

mod common;

use cinder_onnx::proto::attribute_proto::AttributeType;
use cinder_onnx::proto::{AttributeProto, ModelProto, NodeProto};
use cinder_onnx::{OnnxError, export_bytes, export_model, import_bytes, import_file, import_model};
use prost::Message;

fn model() -> ModelProto {
    export_model(&common::small_chain(4))
}

fn node<'m>(model: &'m mut ModelProto, name: &str) -> &'m mut NodeProto {
    let graph = model.graph.as_mut().unwrap();
    graph.node.iter_mut().find(|n| n.name == name).unwrap()
}

fn set_ints(node: &mut NodeProto, name: &str, values: &[i64]) {
    node.attribute.retain(|a| a.name != name);
    node.attribute.push(AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..AttributeProto::default()
    });
}

fn set_attr(node: &mut NodeProto, name: &str, attr: AttributeProto) {
    node.attribute.retain(|a| a.name != name);
    node.attribute.push(AttributeProto {
        name: name.into(),
        ..attr
    });
}

fn int(i: i64) -> AttributeProto {
    AttributeProto {
        r#type: AttributeType::Int as i32,
        i,
        ..AttributeProto::default()
    }
}

/// The import error of `model`, which must be a node error of `node` mentioning `what`.
fn assert_node_error(model: &ModelProto, node: &str, what: &str) {
    match import_model(model) {
        Err(e @ OnnxError::Node { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&format!("node `{node}`")), "{message}");
            assert!(message.contains(what), "{message}");
        }
        other => panic!("expected a node error about {what}, got {other:?}"),
    }
}

#[test]
fn the_unedited_model_imports() {
    assert_eq!(import_model(&model()).unwrap(), common::small_chain(4));
}

#[test]
fn asymmetric_pads_are_refused() {
    let mut m = model();
    set_ints(node(&mut m, "conv1"), "pads", &[1, 1, 0, 0]);
    assert_node_error(&m, "conv1", "asymmetric pads");
}

#[test]
fn dilations_other_than_one_are_refused() {
    let mut m = model();
    set_ints(node(&mut m, "conv2"), "dilations", &[2, 2]);
    assert_node_error(&m, "conv2", "dilations [2, 2] are not supported");
}

#[test]
fn ceil_mode_is_refused() {
    let mut m = model();
    set_attr(node(&mut m, "pool1"), "ceil_mode", int(1));
    assert_node_error(&m, "pool1", "ceil_mode = 1 is not supported");
}

#[test]
fn same_auto_padding_is_refused() {
    let mut m = model();
    let conv = node(&mut m, "conv1");
    conv.attribute.retain(|a| a.name != "pads");
    set_attr(
        conv,
        "auto_pad",
        AttributeProto {
            r#type: AttributeType::String as i32,
            s: b"SAME_UPPER".to_vec(),
            ..AttributeProto::default()
        },
    );
    assert_node_error(&m, "conv1", "auto_pad = SAME_UPPER is not supported");
}

#[test]
fn an_unknown_attribute_is_refused() {
    let mut m = model();
    set_attr(node(&mut m, "relu1"), "alpha", int(1));
    assert_node_error(&m, "relu1", "attribute `alpha` is not supported");
}

#[test]
fn an_unsupported_operator_names_the_node_and_the_supported_ones() {
    let mut m = model();
    node(&mut m, "relu1").op_type = "Sigmoid".into();
    let message = import_model(&m).unwrap_err().to_string();
    assert!(
        message.contains("node `relu1`: operator `Sigmoid` is not supported"),
        "{message}"
    );
    assert!(message.contains("Conv, BatchNormalization"), "{message}");
}

#[test]
fn opsets_outside_13_to_21_are_refused() {
    for version in [12, 22] {
        let mut m = model();
        m.opset_import[0].version = version;
        match import_model(&m) {
            Err(OnnxError::Opset { found, .. }) => assert_eq!(found, version.to_string()),
            other => panic!("expected an opset error, got {other:?}"),
        }
    }
    let mut m = model();
    m.opset_import.clear();
    assert!(matches!(import_model(&m), Err(OnnxError::Opset { .. })));
}

#[test]
fn truncated_files_are_refused() {
    let bytes = export_bytes(&common::small_chain(4));
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        assert!(import_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(matches!(
        import_bytes(&bytes[..bytes.len() / 2]),
        Err(OnnxError::Decode(_))
    ));
    assert!(matches!(
        import_bytes(&[]),
        Err(OnnxError::Opset { .. } | OnnxError::Model { .. })
    ));
}

fn input_dims(m: &mut ModelProto) -> &mut Vec<cinder_onnx::proto::tensor_shape_proto::Dimension> {
    let input = &mut m.graph.as_mut().unwrap().input[0];
    let Some(cinder_onnx::proto::type_proto::Value::TensorType(t)) =
        input.r#type.as_mut().unwrap().value.as_mut()
    else {
        unreachable!("exported inputs are tensors")
    };
    &mut t.shape.as_mut().unwrap().dim
}

#[test]
fn inconsistent_shapes_are_refused() {
    // conv1's weight expects 3 input channels; the model now declares 5.
    let mut m = model();
    input_dims(&mut m)[1].value =
        Some(cinder_onnx::proto::tensor_shape_proto::dimension::Value::DimValue(5));
    let message = import_model(&m).unwrap_err().to_string();
    assert!(message.contains("node `conv1`"), "{message}");
    assert!(message.contains("expects 3 input channels"), "{message}");
}

#[test]
fn a_tensor_whose_data_does_not_fill_its_dimensions_is_refused() {
    let mut m = model();
    let graph = m.graph.as_mut().unwrap();
    let weight = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == "fc.weight")
        .unwrap();
    weight.dims = vec![1 << 40, 1 << 30];
    match import_model(&m) {
        Err(OnnxError::Tensor { name, message }) => {
            assert_eq!(name, "fc.weight");
            assert!(
                message.contains("overflow") || message.contains("need"),
                "{message}"
            );
        }
        other => panic!("expected a tensor error, got {other:?}"),
    }
}

#[test]
fn a_reshape_to_the_wrong_feature_count_is_refused() {
    let mut m = model();
    let flatten = node(&mut m, "flatten");
    flatten.op_type = "Reshape".into();
    flatten.attribute.clear();
    flatten.input.push("target".into());
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .push(cinder_onnx::proto::TensorProto {
            name: "target".into(),
            dims: vec![2],
            data_type: 7,
            int64_data: vec![-1, 9],
            ..Default::default()
        });
    assert_node_error(&m, "flatten", "does not match the 8 values");
    // With the right count it is a flatten.
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .last_mut()
        .unwrap()
        .int64_data = vec![0, 8];
    assert_eq!(import_model(&m).unwrap(), common::small_chain(4));
}

#[test]
fn a_model_without_a_fixed_sample_shape_is_refused() {
    let mut m = model();
    input_dims(&mut m).pop();
    assert!(matches!(
        import_model(&m),
        Err(OnnxError::Model { field: "input", .. })
    ));
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.onnx");
    let mut m = model();
    node(&mut m, "relu1").op_type = "Sigmoid".into();
    std::fs::write(&path, m.encode_to_vec()).unwrap();
    let message = import_file(&path).unwrap_err().to_string();
    assert!(
        message.starts_with(&path.display().to_string()),
        "{message}"
    );
    assert!(matches!(
        import_file(&dir.path().join("missing.onnx")),
        Err(OnnxError::Io { .. })
    ));
}
