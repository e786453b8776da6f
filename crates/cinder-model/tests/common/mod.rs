//! Shared helpers of the integration tests: tiny models and a learnable tiny data set.

#![allow(dead_code)]

pub mod reference;

use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::rng::SplitMix64;
use cinder_model::{ConvNetConfig, GraphNet, InMemoryImages};
use cinder_tensor::graph::GraphSpec;

/// 3×8×8 input, 4 and 8 channels, 16 hidden, 4 classes: fast on any backend.
pub fn tiny_config() -> ConvNetConfig {
    ConvNetConfig {
        in_channels: 3,
        channels: [4, 8],
        hidden: 16,
        classes: 4,
        input_size: 8,
        batch_norm: false,
    }
}

/// The tiny ConvNet's architecture.
pub fn tiny_spec() -> GraphSpec {
    tiny_config().spec().unwrap()
}

/// A freshly initialised network of architecture `spec`.
pub fn tiny_net(spec: &GraphSpec, seed: u64, device: &Device) -> GraphNet {
    GraphNet::init(spec, device, seed).unwrap()
}

/// Random images `[n, C, H, W]` in [-1, 1).
pub fn random_images(shape: [usize; 3], n: usize, seed: u64, device: &Device) -> Tensor<4> {
    let [c, h, w] = shape;
    let mut rng = SplitMix64::new(seed);
    let values: Vec<f32> = (0..n * c * h * w).map(|_| rng.symmetric(1.0)).collect();
    Tensor::from_data(TensorData::new(values, [n, c, h, w]), device)
}

/// `n` noisy images whose class (0..4) is the quadrant holding a bright square.
pub fn quadrant_images(n: usize, seed: u64) -> InMemoryImages {
    let (c, s) = (3, 8);
    let mut rng = SplitMix64::new(seed);
    let mut images = Vec::with_capacity(n * c * s * s);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let label = rng.below(4);
        let (qy, qx) = (label / 2 * 4, label % 2 * 4);
        for _ in 0..c {
            for y in 0..s {
                for x in 0..s {
                    let inside = (qy..qy + 4).contains(&y) && (qx..qx + 4).contains(&x);
                    images.push(if inside { 0.8 } else { -0.5 } + rng.symmetric(0.4));
                }
            }
        }
        labels.push(label as u32);
    }
    InMemoryImages::new([c, s, s], images, labels, 4).unwrap()
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
