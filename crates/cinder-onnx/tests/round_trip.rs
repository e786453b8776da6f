//! Export then import gives back the same graph, in memory and through a file.

mod common;

use cinder_onnx::{export_bytes, export_file, import_bytes, import_file};
use cinder_runtime::synthetic::{random_input, reference_convnet};
use cinder_tensor::Tensor;

#[test]
fn the_reference_convnet_round_trips() {
    let graph = reference_convnet(3);
    assert_eq!(import_bytes(&export_bytes(&graph)).unwrap(), graph);
}

#[test]
fn every_operator_round_trips_through_a_file() {
    for graph in [common::small_chain(1), common::residual_depthwise(2)] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        export_file(&graph, &path).unwrap();
        assert_eq!(import_file(&path).unwrap(), graph);
    }
}

#[test]
fn the_evaluator_matches_the_runtime_float_forward_on_a_chain() {
    let graph = reference_convnet(5);
    let input = random_input(&graph, 2, 9);
    let expected = cinder_runtime::float_forward(&graph, &input).unwrap();
    let got = common::evaluate(&graph, &input);
    assert_eq!(got.shape(), expected.shape());
    assert!(common::max_abs_diff(got.data(), expected.data()) <= 1e-4);
}
