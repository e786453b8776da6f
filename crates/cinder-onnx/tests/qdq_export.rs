//! The QDQ export's form, without ONNX Runtime: uint8 activations shifted by 128, int8
//! weights per channel with their axis, int32 biases with scale `s_in * s_w`, float layers
//! left float, and dynamic layers as ONNX Runtime's dynamic quantization writes them.

use cinder_onnx::proto::tensor_proto::DataType;
use cinder_onnx::proto::{GraphProto, NodeProto, TensorProto};
use cinder_onnx::tensor::{to_codes, to_f32};
use cinder_onnx::{OnnxError, export_qdq_model};
use cinder_runtime::synthetic::{minmax_table, random_input, reference_convnet};
use cinder_runtime::{LayerExec, LayerOverride, Mode, QuantConfig, QuantizedModel, StepOp};
use cinder_tensor::{Mapping, Tensor};

fn model(config: &QuantConfig) -> QuantizedModel {
    let graph = reference_convnet(7);
    let table = minmax_table(&graph, &random_input(&graph, 16, 8)).unwrap();
    cinder_runtime::convert(&graph, &table, config).unwrap()
}

fn float_layer(name: &str, mode: Mode) -> QuantConfig {
    QuantConfig::default().with_layer(
        name,
        LayerOverride {
            mode: Some(mode),
            ..LayerOverride::default()
        },
    )
}

fn initializer<'g>(graph: &'g GraphProto, name: &str) -> &'g TensorProto {
    graph
        .initializer
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no initializer {name}"))
}

fn producer<'g>(graph: &'g GraphProto, output: &str) -> &'g NodeProto {
    graph
        .node
        .iter()
        .find(|n| n.output.first().map(String::as_str) == Some(output))
        .unwrap_or_else(|| panic!("nothing writes {output}"))
}

#[test]
fn static_layers_export_as_int8_weights_int32_biases_and_uint8_activations() {
    let model = model(&QuantConfig::default());
    let onnx = export_qdq_model(&model).unwrap();
    let graph = onnx.graph.as_ref().unwrap();
    let step = model.steps().iter().find(|s| s.name == "conv1").unwrap();
    let StepOp::Conv2d { layer, .. } = &step.op else {
        panic!("conv1 is a convolution")
    };
    let LayerExec::Static(s) = &layer.exec else {
        panic!("conv1 is static")
    };
    let StepOp::Quantize(input) = model.steps()[0].op else {
        panic!("the model starts by quantizing")
    };

    let quantize = producer(graph, "conv1");
    assert_eq!(quantize.op_type, "QuantizeLinear");
    let (kind, _, zero_point) = to_codes(initializer(graph, &quantize.input[2])).unwrap();
    assert_eq!(kind, DataType::Uint8);
    assert_eq!(zero_point, [s.output.zero_point + 128]);
    let scale = to_f32(initializer(graph, &quantize.input[1])).unwrap();
    assert_eq!(scale.data(), [s.output.scale]);

    let weight = producer(graph, "conv1.weight");
    assert_eq!(weight.op_type, "DequantizeLinear");
    assert_eq!(weight.attribute[0].name, "axis");
    assert_eq!(weight.attribute[0].i, 0);
    let (kind, shape, codes) = to_codes(initializer(graph, &weight.input[0])).unwrap();
    assert_eq!(
        (kind, shape.as_slice()),
        (DataType::Int8, s.weights.codes.shape())
    );
    assert!(
        codes
            .iter()
            .zip(s.weights.codes.data())
            .all(|(&a, &b)| a == i32::from(b))
    );

    let bias = producer(graph, "conv1.bias");
    let (kind, _, codes) = to_codes(initializer(graph, &bias.input[0])).unwrap();
    assert_eq!((kind, codes), (DataType::Int32, s.bias.clone()));
    let scales = to_f32(initializer(graph, &bias.input[1])).unwrap();
    for (c, &scale) in scales.data().iter().enumerate() {
        assert_eq!(scale, input.scale * s.weights.scale(c));
    }
}

#[test]
fn float_layers_stay_float() {
    let model = model(&float_layer("fc2", Mode::Float));
    let onnx = export_qdq_model(&model).unwrap();
    let graph = onnx.graph.as_ref().unwrap();
    let gemm = producer(graph, "fc2/float");
    assert_eq!(gemm.op_type, "Gemm");
    let weight = initializer(graph, &gemm.input[1]);
    assert_eq!(weight.data_type, DataType::Float as i32);
    let input = producer(graph, &gemm.input[0]);
    assert_eq!(
        input.op_type, "DequantizeLinear",
        "fc1's int8 output dequantized"
    );
}

#[test]
fn dynamic_linear_layers_export_as_onnxruntime_dynamic_quantization() {
    let model = model(&float_layer("fc1", Mode::Dynamic));
    let onnx = export_qdq_model(&model).unwrap();
    let graph = onnx.graph.as_ref().unwrap();
    let quantize = graph
        .node
        .iter()
        .find(|n| n.name == "fc1/quantize")
        .unwrap();
    assert_eq!(quantize.op_type, "DynamicQuantizeLinear");
    let matmul = producer(graph, "fc1/acc");
    assert_eq!(matmul.op_type, "MatMulInteger");
    let (kind, shape, codes) = to_codes(initializer(graph, &matmul.input[1])).unwrap();
    let step = model.steps().iter().find(|s| s.name == "fc1").unwrap();
    let StepOp::Linear(layer) = &step.op else {
        panic!("fc1 is linear")
    };
    let LayerExec::Dynamic(d) = &layer.exec else {
        panic!("fc1 is dynamic")
    };
    let [outputs, depth] = [d.weights.codes.shape()[0], d.weights.codes.shape()[1]];
    assert_eq!((kind, shape), (DataType::Int8, vec![depth, outputs]));
    assert_eq!(
        codes[outputs + 2],
        i32::from(d.weights.codes.data()[2 * depth + 1])
    );
}

#[test]
fn dynamic_convolutions_export_as_conv_integer() {
    let model = model(&float_layer("conv2", Mode::Dynamic));
    let onnx = export_qdq_model(&model).unwrap();
    let graph = onnx.graph.as_ref().unwrap();
    let conv = producer(graph, "conv2/acc");
    assert_eq!(conv.op_type, "ConvInteger");
    let (kind, shape, _) = to_codes(initializer(graph, &conv.input[1])).unwrap();
    assert_eq!(
        (kind, shape.as_slice()),
        (DataType::Int8, &[128, 64, 3, 3][..])
    );
    let scale = to_f32(initializer(graph, "conv2.weight_scale")).unwrap();
    assert_eq!(scale.shape(), [128, 1, 1], "broadcasts over [N, C, H, W]");
}

#[test]
fn dynamic_convolutions_with_per_channel_zero_points_are_refused_by_name() {
    let asymmetric = LayerOverride {
        mode: Some(Mode::Dynamic),
        mapping: Some(Mapping::Asymmetric),
        ..LayerOverride::default()
    };
    let model = model(&QuantConfig::default().with_layer("conv2", asymmetric));
    match export_qdq_model(&model) {
        Err(e @ OnnxError::NotExportable { .. }) => {
            let message = e.to_string();
            assert!(message.contains("step `conv2`"), "{message}");
            assert!(message.contains("zero points"), "{message}");
        }
        other => panic!("expected NotExportable, got {other:?}"),
    }
}
