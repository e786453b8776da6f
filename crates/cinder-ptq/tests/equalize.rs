//! Cross-layer equalization leaves the float function unchanged on every zoo
//! architecture, equalizes the channel ranges of each pair, and treats ReLU6 as its
//! policy says.

mod common;

use cinder_ptq::{ClipPolicy, EqualizeOptions, PtqError, equalize};
use cinder_runtime::float_forward;
use cinder_runtime::synthetic::{Rng, random_graph, random_input};
use cinder_tensor::graph::{Conv2d, FloatGraph, Op, zoo};
use cinder_tensor::{Tensor, TensorBuf};
use common::{INPUT, relative_difference, zoo_graphs};
use proptest::prelude::*;

fn outputs(graph: &FloatGraph) -> Vec<f32> {
    float_forward(graph, &random_input(graph, 4, 11))
        .unwrap()
        .into_data()
}

#[test]
fn float_outputs_are_unchanged_on_every_zoo_graph() {
    let expected_pairs = [("convnet", 3), ("resnet20", 9), ("mobilenetv2-tiny", 0)];
    for ((name, graph), (_, pairs)) in zoo_graphs(1).into_iter().zip(expected_pairs) {
        let eq = equalize(&graph, &EqualizeOptions::default(), |_| true).unwrap();
        assert_eq!(eq.pairs.len(), pairs, "{name}: {:?}", eq.pairs);
        assert!(eq.converged, "{name}: {} sweeps", eq.iterations);
        assert!(eq.replaced_clips.is_empty());
        let diff = relative_difference(&outputs(&graph), &outputs(&eq.graph));
        assert!(
            diff < 1e-5,
            "{name}: outputs moved by {diff:e} of their range"
        );
    }
}

#[test]
fn relu6_pairs_are_refused_by_default_and_replaced_on_request() {
    let graph = zoo_graphs(2).remove(2).1;
    let refused = equalize(&graph, &EqualizeOptions::default(), |_| true).unwrap();
    assert!(
        refused
            .refused_clips
            .contains(&"blocks.1.dw.relu6".to_owned())
    );
    let options = EqualizeOptions {
        clip: ClipPolicy::AsRelu,
        ..EqualizeOptions::default()
    };
    let eq = equalize(&graph, &options, |_| true).unwrap();
    // 6 expand -> depthwise, 7 depthwise -> project, head -> fc (every projection is read
    // by a residual add, and so is the stem's output).
    assert_eq!(eq.pairs.len(), 14, "{:?}", eq.pairs);
    assert!(eq.converged);
    let dw = eq
        .pairs
        .iter()
        .find(|p| p.first == "blocks.1.dw.conv")
        .unwrap();
    assert_eq!(dw.second, "blocks.1.project.conv");
    assert!(dw.precision_after[0] > dw.precision_before[0]);
    // Exact against the same graph with its clips replaced by ReLU and no rescaling.
    let nodes = graph
        .nodes()
        .iter()
        .cloned()
        .map(|mut n| {
            if eq.replaced_clips.contains(&n.name) {
                n.op = Op::Relu;
            }
            n
        })
        .collect();
    let relu = FloatGraph::new(graph.input_shape().to_vec(), nodes).unwrap();
    let diff = relative_difference(&outputs(&relu), &outputs(&eq.graph));
    assert!(diff < 1e-5, "outputs moved by {diff:e} of their range");
}

#[test]
fn disabled_layers_keep_their_pairs_unequalized() {
    let graph = zoo_graphs(3).remove(1).1;
    let eq = equalize(&graph, &EqualizeOptions::default(), |name| {
        !name.starts_with("layer1.")
    })
    .unwrap();
    assert_eq!(eq.pairs.len(), 6);
    assert!(eq.pairs.iter().all(|p| !p.first.starts_with("layer1.")));
    for name in ["layer1.0.conv1", "layer1.0.conv2"] {
        assert_eq!(graph.node(name), eq.graph.node(name));
    }
}

#[test]
fn unfolded_graphs_are_refused_naming_the_batch_norm() {
    let spec = zoo::resnet20(INPUT, 10);
    let graph = random_graph(spec, 0).unwrap();
    let err = equalize(&graph, &EqualizeOptions::default(), |_| true).unwrap_err();
    assert!(
        matches!(&err, PtqError::BatchNorm(n) if n == "bn1"),
        "{err}"
    );
}

/// `conv(3 -> c) -> relu -> depthwise(c) -> relu -> conv(c -> 4)` with output channels
/// of the first two layers scaled by `spread^u`, `u` uniform in [-1, 1].
fn conv_dw_conv(seed: u64, channels: usize, spread: f32) -> FloatGraph {
    let mut rng = Rng::new(seed);
    let mut spread_rows = |shape: Vec<usize>| {
        let mut w = rng.tensor(shape, 0.5);
        let row = w.len() / w.shape()[0];
        let factors: Vec<f32> = (0..w.shape()[0])
            .map(|_| spread.powf(rng.uniform(-1.0, 1.0)))
            .collect();
        for (values, f) in w.data_mut().chunks_mut(row).zip(&factors) {
            values.iter_mut().for_each(|v| *v *= f);
        }
        w
    };
    let conv = |weight: TensorBuf<f32>, groups: usize| {
        let out = weight.shape()[0];
        Op::Conv2d(Conv2d {
            weight,
            bias: Some(TensorBuf::from_vec(vec![0.1; out])),
            stride: [1, 1],
            padding: [1, 1],
            groups,
        })
    };
    let first = conv(spread_rows(vec![channels, 3, 3, 3]), 1);
    let depthwise = conv(spread_rows(vec![channels, 1, 3, 3]), channels);
    let last = conv(spread_rows(vec![4, channels, 1, 1]), 1);
    FloatGraph::chain(
        vec![3, 6, 6],
        vec![
            ("first".into(), first),
            ("relu1".into(), Op::Relu),
            ("dw".into(), depthwise),
            ("relu2".into(), Op::Relu),
            ("last".into(), last),
        ],
    )
    .unwrap()
}

fn ranges(graph: &FloatGraph, name: &str, by_input: bool) -> Vec<f32> {
    let Op::Conv2d(c) = &graph.node(name).unwrap().op else {
        unreachable!()
    };
    let [o, i, kh, kw] = c.weight.shape().try_into().unwrap();
    let channels = if by_input { i } else { o };
    let mut r = vec![0.0f32; channels];
    for (index, w) in c.weight.data().iter().enumerate() {
        let ch = if by_input {
            (index / (kh * kw)) % i
        } else {
            index / (i * kh * kw)
        };
        r[ch] = r[ch].max(w.abs());
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn conv_depthwise_conv_converges_to_equal_ranges(
        seed in any::<u64>(), channels in 1usize..9, spread in 1.0f32..1000.0,
    ) {
        let graph = conv_dw_conv(seed, channels, spread);
        let eq = equalize(&graph, &EqualizeOptions::default(), |_| true).unwrap();
        prop_assert_eq!(eq.pairs.len(), 2);
        prop_assert!(eq.converged);
        let diff = relative_difference(&outputs(&graph), &outputs(&eq.graph));
        prop_assert!(diff < 1e-5, "outputs moved by {:e}", diff);
        let first = ranges(&eq.graph, "first", false);
        let dw = ranges(&eq.graph, "dw", false);
        let last = ranges(&eq.graph, "last", true);
        for c in 0..channels {
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-3 * a.max(b);
            prop_assert!(close(first[c], dw[c]) && close(dw[c], last[c]),
                "channel {}: {} {} {}", c, first[c], dw[c], last[c]);
        }
    }
}
