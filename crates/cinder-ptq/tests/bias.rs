//! Bias correction drives each corrected layer's mean output error on the calibration
//! data to zero, corrects exactly the weights conversion quantizes, and leaves layers
//! the config excludes alone.

mod common;

use cinder_ptq::{correct_biases, quantized_weight};
use cinder_runtime::synthetic::{minmax_table, random_input};
use cinder_runtime::{
    LayerConfig, LayerOverride, Mode, QuantConfig, WeightGranularity, convert, float_forward,
    float_forward_with,
};
use cinder_tensor::graph::{Conv2d, FloatGraph, Linear, Node, Op};
use cinder_tensor::{Tensor, TensorBuf};
use common::zoo_graphs;

fn w4_per_tensor(bias_correction: bool) -> QuantConfig {
    QuantConfig::uniform(LayerConfig {
        weight_bits: 4,
        granularity: WeightGranularity::PerTensor,
        bias_correction,
        ..LayerConfig::default()
    })
}

fn calibration(graph: &FloatGraph) -> Vec<TensorBuf<f32>> {
    (0..3).map(|seed| random_input(graph, 8, seed)).collect()
}

/// `node` alone over its input shape with weight `weight` and its own bias.
fn alone(graph: &FloatGraph, node: &Node, weight: TensorBuf<f32>) -> FloatGraph {
    let op = match &node.op {
        Op::Conv2d(c) => Op::Conv2d(Conv2d {
            weight,
            ..c.clone()
        }),
        Op::Linear(l) => Op::Linear(Linear {
            weight,
            bias: l.bias.clone(),
        }),
        _ => unreachable!("weighted layers only"),
    };
    let shape = graph.shape(&node.inputs[0]).unwrap().to_vec();
    FloatGraph::chain(shape, vec![(node.name.clone(), op)]).unwrap()
}

/// Per output channel, the mean over the inputs and positions of `a(x) - b(x)`.
fn mean_error(a: &FloatGraph, b: &FloatGraph, inputs: &[TensorBuf<f32>]) -> Vec<f64> {
    let channels = a.output_shapes()[0][0];
    let mut sum = vec![0.0f64; channels];
    let mut count = 0usize;
    for x in inputs {
        let (ya, yb) = (float_forward(a, x).unwrap(), float_forward(b, x).unwrap());
        let per_channel = ya.len() / (x.shape()[0] * channels);
        for (i, (p, q)) in ya.data().iter().zip(yb.data()).enumerate() {
            sum[(i / per_channel) % channels] += f64::from(p - q);
        }
        count += ya.len() / channels;
    }
    sum.iter().map(|s| s / count as f64).collect()
}

fn largest(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

#[test]
fn corrected_layers_have_zero_mean_output_error_on_the_calibration_data() {
    for (name, graph) in zoo_graphs(5) {
        let batches = calibration(&graph);
        let config = w4_per_tensor(true);
        let corrected = correct_biases(&graph, &batches, &config).unwrap();
        let weighted = graph.nodes().iter().filter(|n| n.op.is_weighted()).count();
        assert_eq!(corrected.layers.len(), weighted, "{name}");
        let mut inputs: std::collections::HashMap<String, Vec<TensorBuf<f32>>> = Default::default();
        for x in &batches {
            float_forward_with(&graph, x, |tensor, t| {
                inputs.entry(tensor.to_owned()).or_default().push(t.clone());
            })
            .unwrap();
        }
        let (mut before_total, mut after_total) = (0.0, 0.0);
        for node in graph.nodes().iter().filter(|n| n.op.is_weighted()) {
            let (w, _) = node.op.weight_and_bias().unwrap();
            let q = quantized_weight(&node.name, w, &config.layer(&node.name)).unwrap();
            let fixed = corrected.graph.node(&node.name).unwrap();
            let x = &inputs[&node.inputs[0]];
            let float = alone(&graph, node, w.clone());
            let before = mean_error(&float, &alone(&graph, node, q.clone()), x);
            let after = mean_error(&float, &alone(&corrected.graph, fixed, q), x);
            assert!(
                largest(&after) <= 1e-3 * largest(&before) + 1e-6,
                "{name} {}: mean error {:e} after, {:e} before",
                node.name,
                largest(&after),
                largest(&before)
            );
            before_total += largest(&before);
            after_total += largest(&after);
        }
        assert!(
            before_total > 1e-3,
            "{name}: W4 per tensor left no mean error to fix"
        );
        println!("{name}: sum of largest mean errors {before_total:e} -> {after_total:e}");
    }
}

#[test]
fn the_corrected_weights_are_the_ones_conversion_quantizes() {
    let graph = zoo_graphs(6).remove(2).1;
    let config = w4_per_tensor(false);
    let table = minmax_table(&graph, &random_input(&graph, 4, 0)).unwrap();
    let model = convert(&graph, &table, &config).unwrap();
    let mut checked = 0;
    for step in model.steps() {
        let Some(weights) = step.op.layer().and_then(|l| l.quant_weights()) else {
            continue;
        };
        let node = graph.node(&step.name).unwrap();
        let (w, _) = node.op.weight_and_bias().unwrap();
        let ours = quantized_weight(&node.name, w, &config.layer(&node.name)).unwrap();
        let converted = weights.dequantized();
        assert_eq!(ours.data(), converted.data(), "{}", node.name);
        checked += 1;
    }
    assert_eq!(
        checked,
        graph.nodes().iter().filter(|n| n.op.is_weighted()).count()
    );
}

#[test]
fn layers_without_bias_get_one_and_excluded_layers_stay_as_they_are() {
    let graph = zoo_graphs(7).remove(0).1;
    let nodes = graph
        .nodes()
        .iter()
        .cloned()
        .map(|mut n| {
            if let Op::Linear(l) = &mut n.op {
                l.bias = None;
            }
            n
        })
        .collect();
    let graph = FloatGraph::new(graph.input_shape().to_vec(), nodes).unwrap();
    let config = w4_per_tensor(true)
        .with_layer(
            "conv2",
            LayerOverride {
                bias_correction: Some(false),
                ..LayerOverride::default()
            },
        )
        .with_layer(
            "fc1",
            LayerOverride {
                mode: Some(Mode::Float),
                ..LayerOverride::default()
            },
        );
    let corrected = correct_biases(&graph, &calibration(&graph), &config).unwrap();
    let names: Vec<&str> = corrected.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(names, ["conv1", "fc2"]);
    for same in ["conv2", "fc1"] {
        assert_eq!(graph.node(same), corrected.graph.node(same));
    }
    let Op::Linear(fc2) = &corrected.graph.node("fc2").unwrap().op else {
        unreachable!()
    };
    assert!(fc2.bias.is_some());
}

#[test]
fn no_calibration_images_is_an_error() {
    let graph = zoo_graphs(8).remove(0).1;
    let none: Vec<TensorBuf<f32>> = Vec::new();
    let err = correct_biases(&graph, &none, &w4_per_tensor(true)).unwrap_err();
    assert!(matches!(err, cinder_ptq::PtqError::NoImages), "{err}");
}
