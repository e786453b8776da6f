//! Your own CNN through cinder: define it as a graph (a residual block included), train
//! it a little, calibrate it with cinder-observers, convert it and run it in the int8
//! runtime.
//!
//! `cargo run --release -p cinder-model --example own_cnn`
//!
//! The task: 8×8 single-channel images whose class is the bright band of rows (top,
//! middle or bottom), under uniform noise.

use cinder_model::calibrate::calibrate;
use cinder_model::rng::SplitMix64;
use cinder_model::{BackendKind, ImageSource, InMemoryImages, TrainConfig, Trainer};
use cinder_observers::{Calibrator, ObserverSpec};
use cinder_runtime::{QuantConfig, convert};
use cinder_tensor::graph::{GRAPH_FORMAT_VERSION, GraphSpec, NodeSpec, OpSpec};
use cinder_tensor::{QuantScheme, Tensor as _};

/// The network: conv-BN-ReLU stem, a residual block (conv-BN, add, ReLU), global average
/// pool and a linear classifier.
fn my_cnn(classes: usize) -> GraphSpec {
    let conv = |cin, cout| OpSpec::Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        groups: 1,
        bias: false,
    };
    let bn = OpSpec::BatchNorm {
        channels: 8,
        eps: 1e-5,
    };
    let fc = OpSpec::Linear {
        in_features: 8,
        out_features: classes,
        bias: true,
    };
    let node = |name: &str, inputs: &[&str], op| NodeSpec {
        name: name.into(),
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        op,
    };
    GraphSpec {
        format_version: GRAPH_FORMAT_VERSION,
        input_shape: vec![1, 8, 8],
        nodes: vec![
            node("stem", &["input"], conv(1, 8)),
            node("stem_bn", &["stem"], bn.clone()),
            node("stem_relu", &["stem_bn"], OpSpec::Relu),
            node("block", &["stem_relu"], conv(8, 8)),
            node("block_bn", &["block"], bn),
            node("add", &["block_bn", "stem_relu"], OpSpec::Add),
            node("add_relu", &["add"], OpSpec::Relu),
            node("pool", &["add_relu"], OpSpec::GlobalAvgPool),
            node("flatten", &["pool"], OpSpec::Flatten),
            node("fc", &["flatten"], fc),
        ],
    }
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (train, test) = (bands(512, 1)?, bands(256, 2)?);
    let recipe = TrainConfig {
        epochs: 3,
        batch_size: 32,
        lr: 0.05,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(&my_cnn(3), recipe, BackendKind::Flex)?;
    while !trainer.is_finished() {
        let epoch = trainer.run_epoch(&train, None, &mut |_| {})?;
        println!("epoch {}: loss {:.3}", epoch.epoch, epoch.train_loss);
    }
    let net = trainer.into_model();

    let mut calibrator = Calibrator::new(ObserverSpec::MinMax, QuantScheme::activations_uint8())?;
    let first_128: Vec<usize> = (0..128).collect();
    calibrate(&net, &train, &first_128, 32, &mut calibrator)?;
    let graph = net.to_inference_graph()?; // BatchNorm folded into the convolutions
    let int8 = convert(&graph, &calibrator.table()?, &QuantConfig::default())?;

    let batch = test.gather(&(0..test.len()).collect::<Vec<_>>())?;
    let mut session = int8.session()?;
    let logits = session.run(&batch.images)?;
    let right = logits
        .data()
        .chunks_exact(3)
        .zip(&batch.labels)
        .filter(|(row, label)| argmax(row) == **label as usize)
        .count();
    println!("int8 accuracy: {right}/{}", test.len());
    Ok(())
}

/// `n` noisy images whose class (0, 1 or 2) is their bright band of rows.
fn bands(n: usize, seed: u64) -> Result<InMemoryImages, cinder_model::ModelError> {
    let mut rng = SplitMix64::new(seed);
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let class = rng.below(3);
        for row in 0..8 {
            let level = if row * 3 / 8 == class { 0.8 } else { -0.2 };
            pixels.extend((0..8).map(|_| level + rng.symmetric(0.5)));
        }
        labels.push(class as u32);
    }
    InMemoryImages::new([1, 8, 8], pixels, labels, 3)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}
