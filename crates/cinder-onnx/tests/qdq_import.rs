//! QDQ import without ONNX Runtime: cinder's own QDQ export imports back as a model that
//! computes bit for bit what the exported one computes (with uint8 or int8 activations),
//! and every quantization cinder cannot represent exactly is refused with a typed error
//! naming the node.

mod common;

use cinder_onnx::proto::tensor_proto::DataType;
use cinder_onnx::proto::{ModelProto, NodeProto, TensorProto};
use cinder_onnx::tensor::from_codes;
use cinder_onnx::{
    OnnxError, export_qdq_bytes, export_qdq_model, import_qdq_bytes, import_qdq_model,
};
use cinder_runtime::synthetic::{minmax_table, random_graph, random_input, reference_convnet};
use cinder_runtime::{
    LayerConfig, LayerOverride, Mode, QuantConfig, QuantizedModel, WeightGranularity,
};
use cinder_tensor::Tensor;
use cinder_tensor::graph::{FloatGraph, zoo};

fn int8_model(graph: &FloatGraph, config: &QuantConfig) -> QuantizedModel {
    let graph = graph.fold_batch_norms().unwrap();
    let table = minmax_table(&graph, &random_input(&graph, 32, 3)).unwrap();
    cinder_runtime::convert(&graph, &table, config).unwrap()
}

fn float_layer(name: &str) -> QuantConfig {
    QuantConfig::default().with_layer(
        name,
        LayerOverride {
            mode: Some(Mode::Float),
            ..LayerOverride::default()
        },
    )
}

fn outputs(model: &QuantizedModel, input: &impl Tensor<f32>) -> Vec<f32> {
    model.session().unwrap().run(input).unwrap().data().to_vec()
}

#[test]
fn exported_models_import_back_computing_the_same_codes() {
    let per_tensor = QuantConfig::uniform(LayerConfig {
        granularity: WeightGranularity::PerTensor,
        ..LayerConfig::default()
    });
    let convnet = reference_convnet(5);
    let cases = [
        ("convnet", convnet.clone(), QuantConfig::default()),
        ("convnet per tensor", convnet.clone(), per_tensor),
        ("convnet fc1 float", convnet, float_layer("fc1")),
        (
            "residual DAG, grouped conv float",
            common::residual_depthwise(6),
            float_layer("down"),
        ),
        (
            "mobilenetv2_tiny",
            random_graph(zoo::mobilenetv2_tiny([3, 16, 16], 10), 7).unwrap(),
            QuantConfig::default(),
        ),
    ];
    for (what, graph, config) in cases {
        let model = int8_model(&graph, &config);
        let imported = import_qdq_bytes(&export_qdq_bytes(&model).unwrap())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let input = random_input(&graph, 16, 9);
        assert_eq!(
            outputs(&imported, &input),
            outputs(&model, &input),
            "{what}"
        );
    }
}

fn exported() -> ModelProto {
    export_qdq_model(&int8_model(&reference_convnet(5), &QuantConfig::default())).unwrap()
}

fn initializer<'m>(model: &'m mut ModelProto, name: &str) -> &'m mut TensorProto {
    let graph = model.graph.as_mut().unwrap();
    graph
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap()
}

fn node<'m>(model: &'m mut ModelProto, name: &str) -> &'m mut NodeProto {
    let graph = model.graph.as_mut().unwrap();
    graph.node.iter_mut().find(|n| n.name == name).unwrap()
}

/// The import error of `model`, which must name `node` and mention `what`.
fn assert_refused(model: &ModelProto, node: &str, what: &str) {
    match import_qdq_model(model) {
        Err(e @ OnnxError::Node { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&format!("node `{node}`")), "{message}");
            assert!(message.contains(what), "{message}");
        }
        other => panic!("expected an error about {what}, got {other:?}"),
    }
}

#[test]
fn asymmetric_weights_are_refused() {
    let mut model = exported();
    let zp = initializer(&mut model, "conv2.weight_zero_point");
    let channels = zp.dims[0] as usize;
    *zp = from_codes(&zp.name, DataType::Int8, &[channels], &vec![3; channels]);
    assert_refused(&model, "conv2", "weight zero point 3");
}

#[test]
fn a_weight_code_of_minus_128_is_refused() {
    let mut model = exported();
    initializer(&mut model, "fc1.weight_quantized").raw_data[0] = 0x80;
    assert_refused(&model, "fc1", "weight code -128");
}

#[test]
fn uint8_weights_are_refused() {
    let mut model = exported();
    for name in ["conv1.weight_quantized", "conv1.weight_zero_point"] {
        initializer(&mut model, name).data_type = DataType::Uint8 as i32;
    }
    assert_refused(&model, "conv1", "Uint8 weights");
}

#[test]
fn a_bias_scale_other_than_input_times_weight_scale_is_refused() {
    let mut model = exported();
    let scale = initializer(&mut model, "fc2.bias_scale");
    for b in scale.raw_data.chunks_exact_mut(4) {
        let v = f32::from_le_bytes(b.try_into().unwrap()) * 1.5;
        b.copy_from_slice(&v.to_le_bytes());
    }
    assert_refused(&model, "fc2", "bias scale");
}

#[test]
fn a_layer_with_int8_weights_writing_float_is_refused() {
    let mut model = exported();
    let quantize = node(&mut model, "fc1/quantize");
    let (float, quantized) = (quantize.input[0].clone(), quantize.output[0].clone());
    let graph = model.graph.as_mut().unwrap();
    let dequantized: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.input.first() == Some(&quantized))
        .map(|n| n.output[0].clone())
        .collect();
    graph
        .node
        .retain(|n| n.output[0] != quantized && !dequantized.contains(&n.output[0]));
    for input in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if dequantized.contains(input) {
            input.clone_from(&float);
        }
    }
    match import_qdq_model(&model) {
        Err(e) => assert!(e.to_string().contains("not quantized"), "{e}"),
        Ok(_) => panic!("imported a static layer with a float output"),
    }
}

#[test]
fn int8_activations_import_as_the_same_model() {
    let model = int8_model(&reference_convnet(5), &QuantConfig::default());
    let mut onnx = export_qdq_model(&model).unwrap();
    let graph = onnx.graph.as_mut().unwrap();
    let mut shifted = 0;
    for t in &mut graph.initializer {
        if t.data_type == DataType::Uint8 as i32 {
            let zero_point = i32::from(t.raw_data[0]) - 128;
            *t = from_codes(&t.name, DataType::Int8, &[], &[zero_point]);
            shifted += 1;
        }
    }
    assert!(shifted > 0);
    let imported = import_qdq_model(&onnx).unwrap();
    let input = random_input(&reference_convnet(5), 16, 9);
    assert_eq!(outputs(&imported, &input), outputs(&model, &input));
}

#[test]
fn per_channel_activations_are_refused() {
    let mut model = exported();
    let quantize = node(&mut model, "fc1/quantize");
    let (scale, zero_point) = (quantize.input[1].clone(), quantize.input[2].clone());
    *initializer(&mut model, &scale) =
        cinder_onnx::tensor::from_f32_values(&scale, &[2], &[0.1, 0.2]);
    *initializer(&mut model, &zero_point) = from_codes(&zero_point, DataType::Uint8, &[2], &[0, 0]);
    assert_refused(&model, "fc1/quantize", "per tensor");
}

#[test]
fn a_dequantization_with_other_parameters_than_its_quantization_is_refused() {
    let mut model = exported();
    let dequantize = node(&mut model, "pool1/input0/dequantize");
    assert_eq!(dequantize.input[0], "conv1");
    let name = dequantize.name.clone();
    dequantize.input[1] = "conv2.scale".into();
    assert_refused(&model, &name, "differ from the QuantizeLinear");
}
