//! The zoo's models through [`GraphNet`]: burn forward against a plain reference
//! evaluation of the exported graph, BatchNorm folding, save/load, sizes, training and
//! reproducibility.

mod common;

use burn::module::Module;
use burn::tensor::Device;
use cinder_model::rng::SplitMix64;
use cinder_model::zoo::{self, MODELS, multiply_accumulates};
use cinder_model::{
    BackendKind, GraphNet, LrSchedule, ModelError, OptimizerConfig, TrainConfig, Trainer,
};
use cinder_tensor::graph::{FloatGraph, Node, Op};
use cinder_tensor::{Tensor as _, TensorBuf};
use common::reference::reference_forward;
use common::{host, max_abs_diff, quadrant_images, random_images};

/// A 3×16×16 input keeps the reference evaluation quick; every model takes it.
const SMALL: [usize; 3] = [3, 16, 16];

fn spec(name: &str, input: [usize; 3]) -> cinder_tensor::graph::GraphSpec {
    zoo::by_name(name, input, 10, false).unwrap()
}

/// `graph` with non-trivial BatchNorm parameters and statistics (fresh ones are close
/// to the identity, which would hide folding mistakes).
fn scrambled(graph: &FloatGraph, seed: u64) -> FloatGraph {
    let mut rng = SplitMix64::new(seed);
    let mut values = |n: usize, lo: f32, hi: f32| {
        TensorBuf::from_vec((0..n).map(|_| lo + (hi - lo) * rng.next_unit()).collect())
    };
    let nodes: Vec<Node> = graph
        .nodes()
        .iter()
        .cloned()
        .map(|mut node| {
            if let Op::BatchNorm(bn) = &mut node.op {
                let n = bn.channels();
                bn.gamma = values(n, 0.5, 1.5);
                bn.beta = values(n, -0.5, 0.5);
                bn.mean = values(n, -0.3, 0.3);
                bn.var = values(n, 0.5, 2.0);
            }
            node
        })
        .collect();
    FloatGraph::new(graph.input_shape().to_vec(), nodes).unwrap()
}

/// A model of the zoo with scrambled BatchNorms, in inference mode.
fn scrambled_model(name: &str, seed: u64, device: &Device) -> GraphNet {
    let net = GraphNet::init(&spec(name, SMALL), device, seed).unwrap();
    let graph = scrambled(&net.to_float_graph().unwrap(), seed + 1);
    GraphNet::from_float_graph(&graph, device).unwrap().valid()
}

fn reference(graph: &FloatGraph, images: &[f32], n: usize) -> Vec<f32> {
    images
        .chunks(images.len() / n)
        .flat_map(|s| reference_forward(graph, s))
        .collect()
}

#[test]
fn burn_forward_matches_the_reference_evaluation_of_the_folded_graph() {
    let device = Device::flex();
    for (i, name) in MODELS.iter().enumerate() {
        let model = scrambled_model(name, 10 + i as u64, &device);
        let images = random_images(SMALL, 2, 3, &device);
        let logits = host(model.forward(images.clone()));
        let images = host(images);
        let with_bn = model.to_float_graph().unwrap();
        let folded = model.to_inference_graph().unwrap();
        assert!(!folded.has_batch_norm(), "{name}");
        let unfolded_ref = reference(&with_bn, &images, 2);
        let folded_ref = reference(&folded, &images, 2);
        let diff = max_abs_diff(&logits, &folded_ref);
        assert!(diff <= 1e-4, "{name}: burn vs folded reference {diff}");
        let fold_diff = max_abs_diff(&unfolded_ref, &folded_ref);
        assert!(
            fold_diff <= 1e-4,
            "{name}: folding changed the outputs by {fold_diff}"
        );
        let burn_folded = GraphNet::from_float_graph(&folded, &device).unwrap();
        let images = random_images(SMALL, 2, 3, &device);
        let diff = max_abs_diff(&logits, &host(burn_folded.forward(images)));
        assert!(
            diff <= 1e-4,
            "{name}: burn with and without BatchNorm {diff}"
        );
    }
}

/// In training, a forward runs each BatchNorm that only a ReLU reads with the ReLU fused
/// into it; recording the activations runs the two in turn: the logits agree bit for bit.
#[test]
fn training_forward_with_fused_relus_equals_the_one_in_turn() {
    let device = Device::flex().autodiff();
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    for name in ["resnet20", "mobilenetv2-tiny"] {
        let net = GraphNet::init(&spec(name, SMALL), &device, 5).unwrap();
        let images = random_images(SMALL, 4, 6, &device);
        let fused = net.forward(images.clone());
        let (in_turn, _) = net.forward_with_activations(images).unwrap();
        assert_eq!(bits(host(fused)), bits(host(in_turn)), "{name}");
    }
}

#[test]
fn graphs_with_batch_norm_round_trip_through_files() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in MODELS.iter().enumerate() {
        let model = scrambled_model(name, 20 + i as u64, &device);
        let graph = model.to_float_graph().unwrap();
        let (json, weights) = (
            dir.path().join(format!("{name}.json")),
            dir.path().join(format!("{name}.safetensors")),
        );
        graph.save(&json, &weights).unwrap();
        let loaded = FloatGraph::load(&json, &weights).unwrap();
        assert_eq!(loaded, graph, "{name}");
        let rebuilt = GraphNet::from_float_graph(&loaded, &device)
            .unwrap()
            .valid();
        let x = random_images(SMALL, 2, 4, &device);
        assert_eq!(
            host(model.forward(x.clone())),
            host(rebuilt.forward(x)),
            "{name}"
        );
    }
}

/// Trainable parameters (weights, biases, BatchNorm γ and β) and multiply-accumulates
/// per 3×32×32 image. burn's `num_params` also counts the BatchNorm running statistics.
fn size(name: &str) -> (usize, usize, u64) {
    let net = GraphNet::init(&spec(name, [3, 32, 32]), &Device::flex(), 0).unwrap();
    let graph = net.to_float_graph().unwrap();
    let trainable = graph
        .nodes()
        .iter()
        .map(|n| match &n.op {
            Op::BatchNorm(bn) => 2 * bn.channels(),
            op => op
                .weight_and_bias()
                .map_or(0, |(w, b)| w.len() + b.map_or(0, |b| b.len())),
        })
        .sum();
    let macs = multiply_accumulates(&net.to_inference_graph().unwrap());
    (trainable, net.num_params(), macs)
}

#[test]
fn model_sizes() {
    // He et al. 2016 with projection shortcuts: 0.27 M parameters, 41 M MACs.
    let (trainable, burn_count, macs) = size("resnet20");
    assert_eq!(trainable, 272_474);
    assert_eq!(burn_count, 274_042);
    assert_eq!(macs, 40_813_184);
    let (trainable, _, macs) = size("mobilenetv2-tiny");
    assert_eq!((trainable, macs), (96_650, 6_519_296));
}

#[test]
fn node_names_are_stable_module_paths() {
    let resnet = spec("resnet20", SMALL);
    let names: Vec<&str> = resnet.nodes.iter().map(|n| n.name.as_str()).collect();
    for expected in [
        "conv1",
        "layer1.0.conv1",
        "layer2.0.downsample.0",
        "layer3.2.add",
        "fc",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    let mobile = spec("mobilenetv2-tiny", SMALL);
    let depthwise = mobile
        .nodes
        .iter()
        .filter(|n| n.name.ends_with("dw.conv"))
        .count();
    assert_eq!(depthwise, 7);
    assert!(matches!(
        zoo::by_name("vgg", SMALL, 10, false),
        Err(ModelError::Config(_))
    ));
}

fn quick(seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 16,
        lr: 0.05,
        optimizer: OptimizerConfig::sgd(),
        weight_decay: 5e-4,
        schedule: LrSchedule::Cosine { min_lr: 0.0 },
        seed,
        augment: None,
        early_stopping: None,
    }
}

#[test]
fn training_lowers_the_loss_of_every_model() {
    let data = quadrant_images(96, 1);
    for name in MODELS {
        let spec = zoo::by_name(name, [3, 8, 8], 4, false).unwrap();
        let mut trainer = Trainer::new(&spec, quick(3), BackendKind::Flex).unwrap();
        for _ in 0..3 {
            trainer.run_epoch(&data, None, &mut |_| {}).unwrap();
        }
        let losses: Vec<f64> = trainer.history().iter().map(|m| m.train_loss).collect();
        assert!(losses[2] < losses[0], "{name}: {losses:?}");
    }
}

#[test]
fn a_seed_reproduces_a_run() {
    let data = quadrant_images(32, 2);
    let spec = zoo::by_name("mobilenetv2-tiny", [3, 8, 8], 4, false).unwrap();
    let run = |seed| {
        let mut config = quick(seed);
        config.augment = Some(cinder_model::Augmentation::crop_flip());
        let mut t = Trainer::new(&spec, config, BackendKind::Ndarray).unwrap();
        t.run_epoch(&data, None, &mut |_| {}).unwrap();
        t.model().to_float_graph().unwrap()
    };
    let first = run(5);
    assert_eq!(first, run(5));
    assert_ne!(first, run(6));
}
