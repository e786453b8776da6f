//! Random small models for the integration tests: a proptest strategy over graph shapes
//! and per-layer configs, built with seeded weights and calibrated by min/max.

#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

use cinder_runtime::synthetic::{Rng, conv_node, linear_node, minmax_table, node};
use cinder_runtime::{
    LayerOverride, Mode, QuantConfig, QuantizedModel, WeightGranularity, convert,
};
use cinder_tensor::graph::{FloatGraph, Op, Pool2d};
use cinder_tensor::{Mapping, TensorBuf};
use proptest::prelude::*;
use std::ops::RangeInclusive;

pub mod dag;

#[derive(Debug, Clone)]
pub struct ConvSpec {
    pub out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub relu: bool,
    pub pool: bool,
}

#[derive(Debug, Clone)]
pub struct LayerChoice {
    pub mode: Mode,
    pub bits: u8,
    pub per_channel: bool,
    pub symmetric: bool,
}

#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub input: [usize; 3],
    pub convs: Vec<ConvSpec>,
    /// Output sizes of the linear layers; a ReLU between consecutive ones when set.
    pub linears: Vec<(usize, bool)>,
    pub choices: Vec<LayerChoice>,
    pub seed: u64,
}

/// Channels of an input or a convolution's output: few, or (a quarter of the time) enough
/// for a following 3×3 stride-1 convolution to take Winograd.
fn channels(few: RangeInclusive<usize>) -> impl Strategy<Value = usize> {
    prop_oneof![3 => few, 1 => 16usize..=18]
}

/// Convolutions; 3×3 and stride 1 (Winograd's windows) more often than the rest.
fn conv_spec() -> impl Strategy<Value = ConvSpec> {
    (
        channels(1..=6),
        prop_oneof![2 => 1usize..=3, 1 => Just(3)],
        prop_oneof![2 => 1usize..=2, 1 => Just(1)],
        0usize..=1,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(out, kernel, stride, padding, relu, pool)| ConvSpec {
            out,
            kernel,
            stride,
            padding,
            relu,
            pool,
        })
}

/// Static most of the time, every mode, width, granularity and mapping represented.
pub fn layer_choice() -> impl Strategy<Value = LayerChoice> {
    (
        prop_oneof![3 => Just(Mode::Static), 1 => Just(Mode::Dynamic), 1 => Just(Mode::Float)],
        2u8..=8,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mode, bits, per_channel, symmetric)| LayerChoice {
            mode,
            bits,
            per_channel,
            symmetric,
        })
}

pub fn model_spec() -> impl Strategy<Value = ModelSpec> {
    (
        (channels(1..=4), 3usize..=9, 3usize..=9),
        prop::collection::vec(conv_spec(), 0..=2),
        prop::collection::vec((1usize..=12, any::<bool>()), 1..=2),
        prop::collection::vec(layer_choice(), 4),
        any::<u64>(),
    )
        .prop_map(|((c, h, w), convs, linears, choices, seed)| ModelSpec {
            input: [c, h, w],
            convs,
            linears,
            choices,
            seed,
        })
}

impl ModelSpec {
    /// The float graph; convolutions that would not fit the shrinking image are dropped.
    pub fn graph(&self) -> FloatGraph {
        let mut rng = Rng::new(self.seed);
        let [mut c, mut h, mut w] = self.input;
        let mut nodes = Vec::new();
        for (i, s) in self.convs.iter().enumerate() {
            if h + 2 * s.padding < s.kernel || w + 2 * s.padding < s.kernel {
                continue;
            }
            nodes.push(conv_node(
                &mut rng,
                &format!("conv{i}"),
                c,
                s.out,
                s.kernel,
                s.stride,
                s.padding,
            ));
            (c, h, w) = (
                s.out,
                (h + 2 * s.padding - s.kernel) / s.stride + 1,
                (w + 2 * s.padding - s.kernel) / s.stride + 1,
            );
            if s.relu {
                nodes.push(node(&format!("relu{i}"), Op::Relu));
            }
            if s.pool && h >= 2 && w >= 2 {
                nodes.push(node(
                    &format!("pool{i}"),
                    Op::MaxPool2d(Pool2d::square(2, 2)),
                ));
                (h, w) = (h / 2, w / 2);
            }
        }
        nodes.push(node("flatten", Op::Flatten));
        let mut features = c * h * w;
        for (i, &(out, relu)) in self.linears.iter().enumerate() {
            nodes.push(linear_node(&mut rng, &format!("fc{i}"), features, out));
            features = out;
            if relu && i + 1 < self.linears.len() {
                nodes.push(node(&format!("fc_relu{i}"), Op::Relu));
            }
        }
        FloatGraph::chain(self.input.to_vec(), nodes).expect("spec shapes chain")
    }

    /// The per-layer config: the i-th weighted layer takes the i-th choice.
    pub fn config(&self, graph: &FloatGraph) -> QuantConfig {
        config(graph, &self.choices)
    }

    /// Graph, calibrated (on other inputs than `input`) and converted (see
    /// [`calibrate_and_convert`] for `None`).
    pub fn model(&self) -> Option<(FloatGraph, QuantizedModel)> {
        let graph = self.graph();
        let model = calibrate_and_convert(&graph, &self.config(&graph), self.seed)?;
        Some((graph, model))
    }
}

/// The per-layer config of `graph`: its i-th weighted layer takes the i-th choice (the
/// rest the default).
pub fn config(graph: &FloatGraph, choices: &[LayerChoice]) -> QuantConfig {
    let weighted = graph.nodes().iter().filter(|n| n.op.is_weighted());
    weighted
        .zip(choices)
        .fold(QuantConfig::default(), |cfg, (n, ch)| {
            cfg.with_layer(
                n.name.clone(),
                LayerOverride {
                    mode: Some(ch.mode),
                    weight_bits: Some(ch.bits),
                    granularity: Some(if ch.per_channel {
                        WeightGranularity::PerChannel
                    } else {
                        WeightGranularity::PerTensor
                    }),
                    mapping: Some(if ch.symmetric {
                        Mapping::Symmetric
                    } else {
                        Mapping::Asymmetric
                    }),
                    ..LayerOverride::default()
                },
            )
        })
}

/// Calibrated on seeded inputs other than the tests' and converted under `config`;
/// `None` when conversion refuses a bias whose int32 code leaves the accumulator's room
/// (`ConvertError::BiasOutOfRange`: a drawn layer whose input range is almost zero, so
/// that `s_in * s_w` is tiny), a case the tests skip.
pub fn calibrate_and_convert(
    graph: &FloatGraph,
    config: &QuantConfig,
    seed: u64,
) -> Option<QuantizedModel> {
    let table = minmax_table(graph, &input(graph, 8, seed ^ 0x5eed)).expect("finite calibration");
    match convert(graph, &table, config) {
        Ok(model) => Some(model),
        Err(cinder_runtime::ConvertError::BiasOutOfRange { .. }) => None,
        Err(e) => panic!("conversion: {e:?}"),
    }
}

/// `batch` inputs in `[-1.2, 1.2)` (a little beyond the calibration range of `[-1, 1)`).
pub fn input(graph: &FloatGraph, batch: usize, seed: u64) -> TensorBuf<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(graph.input_shape());
    let scale = if seed & 1 == 0 { 1.2 } else { 1.0 };
    Rng::new(seed).tensor(shape, scale)
}

/// Bit patterns, so that equality is exact (and -0.0 differs from 0.0).
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}
