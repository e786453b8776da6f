//! The reference ConvNet as a graph network, BatchNorm folding and the float graph hand-off.

mod common;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::rng::SplitMix64;
use cinder_model::{BackendKind, BurnData, ConvNetConfig, GraphNet, INPUT_NAME, ModelError};
use cinder_tensor::graph::{FloatGraph, Node, Op};
use cinder_tensor::{Tensor as _, TensorBuf};
use common::reference::reference_forward;
use common::{host, max_abs_diff, random_images, tiny_config, tiny_net, tiny_spec};

/// The reference ConvNet's node names without BatchNorm.
const NODES: [&str; 10] = [
    "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2",
];

#[test]
fn reference_config_is_the_article_model() {
    let c = ConvNetConfig::reference();
    assert_eq!(
        (c.in_channels, c.channels, c.hidden, c.classes, c.input_size),
        (3, [64, 128], 1024, 10, 32)
    );
    assert_eq!(c.flat_features(), 8192);
    let model = GraphNet::init(&c.spec().unwrap(), &Device::flex(), 0).unwrap();
    assert_eq!(model.num_params(), 8_475_530);
    let names: Vec<&str> = model.spec().nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, NODES);
}

#[test]
fn forward_gives_logits_and_bad_configs_are_rejected() {
    let device = Device::flex();
    let config = tiny_config();
    let model = tiny_net(&tiny_spec(), 1, &device);
    let logits = model.forward(random_images(config.input_shape(), 5, 2, &device));
    assert_eq!(logits.dims(), [5, 4]);
    for bad in [
        ConvNetConfig {
            input_size: 10,
            ..tiny_config()
        },
        ConvNetConfig {
            classes: 0,
            ..tiny_config()
        },
    ] {
        assert!(matches!(bad.spec(), Err(ModelError::Config(_))));
    }
}

#[test]
fn the_seed_fixes_the_initial_weights_on_every_backend() {
    let config = tiny_config();
    let weights = |device: &Device, seed| {
        let graph = tiny_net(&tiny_spec(), seed, device)
            .to_float_graph()
            .unwrap();
        let Op::Linear(l) = &graph.node("fc1").unwrap().op else {
            panic!("fc1 is linear")
        };
        l.weight.data().to_vec()
    };
    let flex = weights(&Device::flex(), 7);
    assert_eq!(flex, weights(&BackendKind::Ndarray.device().unwrap(), 7));
    assert_ne!(flex, weights(&Device::flex(), 8));
    let bound = 1.0 / (config.flat_features() as f32).sqrt();
    assert!(flex.iter().all(|w| w.abs() <= bound));
}

/// Random per-channel values in `[lo, hi)`.
fn channel_values(rng: &mut SplitMix64, n: usize, lo: f32, hi: f32) -> TensorBuf<f32> {
    TensorBuf::from_vec((0..n).map(|_| lo + (hi - lo) * rng.next_unit()).collect())
}

/// `graph` with every BatchNorm given non-trivial affine parameters and statistics.
pub fn scrambled(graph: &FloatGraph, seed: u64) -> FloatGraph {
    let mut rng = SplitMix64::new(seed);
    let nodes: Vec<Node> = graph
        .nodes()
        .iter()
        .cloned()
        .map(|mut node| {
            if let Op::BatchNorm(bn) = &mut node.op {
                let n = bn.channels();
                bn.gamma = channel_values(&mut rng, n, 0.5, 2.0);
                bn.beta = channel_values(&mut rng, n, -1.0, 1.0);
                bn.mean = channel_values(&mut rng, n, -0.5, 0.5);
                bn.var = channel_values(&mut rng, n, 0.1, 3.0);
            }
            node
        })
        .collect();
    FloatGraph::new(graph.input_shape().to_vec(), nodes).unwrap()
}

#[test]
fn folding_batchnorm_keeps_eval_outputs() {
    let device = Device::flex();
    let config = tiny_config().with_batch_norm(true);
    let model = tiny_net(&config.spec().unwrap(), 3, &device);
    let graph = scrambled(&model.to_float_graph().unwrap(), 4);
    let model = GraphNet::from_float_graph(&graph, &device).unwrap().valid();
    let folded = model.to_inference_graph().unwrap();
    assert!(!folded.has_batch_norm());
    let names: Vec<&str> = folded.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, NODES);
    let folded = GraphNet::from_float_graph(&folded, &device).unwrap();
    let x = random_images(config.input_shape(), 6, 5, &device);
    let (a, b) = (host(model.forward(x.clone())), host(folded.forward(x)));
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&a, &b) <= 1e-5 * scale.max(1.0),
        "{} vs scale {scale}",
        max_abs_diff(&a, &b)
    );
}

#[test]
fn float_graph_forward_matches_burn() {
    let device = Device::flex();
    let config = tiny_config().with_batch_norm(true);
    let model = tiny_net(&config.spec().unwrap(), 11, &device);
    let graph = scrambled(&model.to_float_graph().unwrap(), 12);
    let model = GraphNet::from_float_graph(&graph, &device).unwrap().valid();
    let graph = model.to_inference_graph().unwrap();

    let n = 3;
    let images = random_images(config.input_shape(), n, 13, &device);
    let burn_logits = host(model.forward(images.clone()));
    let flat = host(images);
    let per = flat.len() / n;
    let reference: Vec<f32> = flat
        .chunks(per)
        .flat_map(|s| reference_forward(&graph, s))
        .collect();
    let diff = max_abs_diff(&burn_logits, &reference);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn graph_files_round_trip_into_an_equivalent_model() {
    let device = Device::flex();
    let config = tiny_config();
    let model = tiny_net(&tiny_spec(), 21, &device);
    let graph = model.to_float_graph().unwrap();
    let Op::Linear(l) = &graph.node("fc1").unwrap().op else {
        panic!("fc1 is linear")
    };
    assert_eq!(
        l.weight.shape(),
        [16, config.flat_features()],
        "exported [out, in]"
    );

    let dir = tempfile::tempdir().unwrap();
    let (json, weights) = (
        dir.path().join("graph.json"),
        dir.path().join("graph.safetensors"),
    );
    graph.save(&json, &weights).unwrap();
    let loaded = FloatGraph::load(&json, &weights).unwrap();
    assert_eq!(loaded, graph);
    let ndarray = BackendKind::Ndarray.device().unwrap();
    let rebuilt = GraphNet::from_float_graph(&loaded, &ndarray).unwrap();
    let x = random_images(config.input_shape(), 2, 22, &device);
    let x_nd = Tensor::from_data(x.to_data(), &ndarray);
    let diff = max_abs_diff(&host(model.forward(x)), &host(rebuilt.forward(x_nd)));
    assert!(diff <= 1e-5, "{diff}");
}

#[test]
fn activations_cover_every_node() {
    let device = Device::flex();
    let config = tiny_config();
    let model = tiny_net(&tiny_spec(), 31, &device);
    let images = random_images(config.input_shape(), 2, 32, &device);
    let (logits, acts) = model.forward_with_activations(images.clone()).unwrap();
    let mut expected = vec![INPUT_NAME];
    expected.extend(NODES);
    assert_eq!(acts.names(), expected);
    let graph = model.to_float_graph().unwrap();
    for (name, shape) in NODES.iter().zip(graph.output_shapes()) {
        let a = acts.get(name).unwrap();
        assert_eq!(a.shape()[0], 2);
        assert_eq!(&a.shape()[1..], shape.as_slice(), "{name}");
    }
    assert_eq!(
        acts.get(INPUT_NAME).unwrap().data(),
        host(images).as_slice()
    );
    assert_eq!(acts.get("fc2").unwrap().data(), host(logits).as_slice());
    assert!(acts.get("relu2").unwrap().data().iter().all(|&v| v >= 0.0));
}

#[test]
fn a_folded_batchnorm_is_recorded_under_its_convolution() {
    let device = Device::flex();
    let config = tiny_config().with_batch_norm(true);
    let model = tiny_net(&config.spec().unwrap(), 33, &device).valid();
    let images = random_images(config.input_shape(), 2, 34, &device);
    let (_, acts) = model.forward_with_activations(images).unwrap();
    let mut expected = vec![INPUT_NAME];
    expected.extend(NODES);
    assert_eq!(acts.names(), expected, "bn1/bn2 appear as conv1/conv2");
    let relu1 = acts.get("relu1").unwrap().data();
    let conv1 = acts.get("conv1").unwrap().data();
    assert!(conv1.iter().zip(relu1).all(|(c, r)| c.max(0.0) == *r));
}

#[test]
fn burn_data_implements_the_common_tensor_trait() {
    let t = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, -2.0, 3.5, 0.0, 5.0, 6.0], [2, 3]),
        &Device::flex(),
    );
    let d = BurnData::from_tensor(&t).unwrap();
    assert_eq!(d.shape(), [2, 3]);
    assert_eq!(d.data(), [1.0, -2.0, 3.5, 0.0, 5.0, 6.0]);
    assert_eq!(
        d.to_buf(),
        TensorBuf::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.0]).unwrap()
    );
    let ints = BurnData::new(TensorData::new(vec![1i64, 2], [2])).unwrap();
    assert_eq!(ints.data(), [1.0, 2.0]);
}
