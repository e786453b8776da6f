//! Random-weight graphs of the zoo's architectures, folded as conversion sees them.

#![allow(dead_code)]

use cinder_runtime::synthetic::random_graph;
use cinder_tensor::graph::{FloatGraph, zoo};

/// Small images keep the tests quick; the architectures are the zoo's.
pub const INPUT: [usize; 3] = [3, 16, 16];

/// `(name, folded graph)` for each zoo architecture.
pub fn zoo_graphs(seed: u64) -> Vec<(&'static str, FloatGraph)> {
    [
        ("convnet", zoo::convnet(INPUT, [8, 16], 32, 10, true)),
        ("resnet20", zoo::resnet20(INPUT, 10)),
        ("mobilenetv2-tiny", zoo::mobilenetv2_tiny(INPUT, 10)),
    ]
    .into_iter()
    .map(|(name, spec)| {
        let graph = random_graph(spec, seed)
            .unwrap()
            .fold_batch_norms()
            .unwrap();
        (name, graph)
    })
    .collect()
}

/// The largest element-wise difference of two outputs, relative to the largest
/// magnitude of the first.
pub fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale.max(f32::MIN_POSITIVE)
}
