//! Deterministic synthetic models for tests and benchmarks: graphs of any shape with
//! seeded random weights (no training), seeded inputs, and min/max calibration tables
//! computed through the float reference forward.

use cinder_observers::{CalibrationTable, Calibrator, ObserverError, ObserverSpec};
use cinder_tensor::graph::{Conv2d, FloatGraph, GraphError, GraphSpec, Linear, Op, Pool2d};
use cinder_tensor::{QuantScheme, Tensor, TensorBuf};

use crate::error::RunError;
use crate::float::float_forward_with;

/// xorshift64*: small, seeded, good enough for weights and inputs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * unit
    }

    /// A tensor of `shape` uniform in `[-bound, bound)`.
    pub fn tensor(&mut self, shape: Vec<usize>, bound: f32) -> TensorBuf<f32> {
        let len = shape.iter().product();
        let data = (0..len).map(|_| self.uniform(-bound, bound)).collect();
        TensorBuf::new(shape, data).expect("length matches")
    }
}

/// A convolution node with PyTorch's default init range `±1/sqrt(fan_in)`.
pub fn conv_node(
    rng: &mut Rng,
    name: &str,
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> (String, Op) {
    let bound = 1.0 / ((in_c * kernel * kernel) as f32).sqrt();
    let conv = Conv2d::dense(
        rng.tensor(vec![out_c, in_c, kernel, kernel], bound),
        Some(rng.tensor(vec![out_c], bound)),
        stride,
        padding,
    );
    (name.to_owned(), Op::Conv2d(conv))
}

/// A linear node with PyTorch's default init range.
pub fn linear_node(rng: &mut Rng, name: &str, in_f: usize, out_f: usize) -> (String, Op) {
    let bound = 1.0 / (in_f as f32).sqrt();
    let linear = Linear {
        weight: rng.tensor(vec![out_f, in_f], bound),
        bias: Some(rng.tensor(vec![out_f], bound)),
    };
    (name.to_owned(), Op::Linear(linear))
}

/// A node without weights, as a link of a chain.
pub fn node(name: &str, op: Op) -> (String, Op) {
    (name.to_owned(), op)
}

/// The reference ConvNet with random weights of the real shapes:
/// `conv1(3->64, k3, p1) relu1 pool1 conv2(64->128, k3, p1) relu2 pool2 flatten
/// fc1(8192->1024) relu3 fc2(1024->10)` over `[3, 32, 32]`.
pub fn reference_convnet(seed: u64) -> FloatGraph {
    let mut rng = Rng::new(seed);
    let pool = Op::MaxPool2d(Pool2d::square(2, 2));
    FloatGraph::chain(
        vec![3, 32, 32],
        vec![
            conv_node(&mut rng, "conv1", 3, 64, 3, 1, 1),
            node("relu1", Op::Relu),
            node("pool1", pool.clone()),
            conv_node(&mut rng, "conv2", 64, 128, 3, 1, 1),
            node("relu2", Op::Relu),
            node("pool2", pool),
            node("flatten", Op::Flatten),
            linear_node(&mut rng, "fc1", 8192, 1024),
            node("relu3", Op::Relu),
            linear_node(&mut rng, "fc2", 1024, 10),
        ],
    )
    .expect("the reference shapes chain")
}

/// The architecture `spec` with seeded random tensors: weights in PyTorch's default range
/// `±1/sqrt(fan_in)`, batch-norm scales in `[0.1, 2)` and variances in `[0.5, 2)` (so that
/// channels differ in range, as in trained networks), biases, means and shifts in `±0.5`.
pub fn random_graph(spec: GraphSpec, seed: u64) -> Result<FloatGraph, GraphError> {
    let mut rng = Rng::new(seed);
    FloatGraph::from_spec(spec, |name, shape| {
        let len = shape.iter().product();
        let fan_in: usize = shape[1..].iter().product();
        let (lo, hi) = if shape.len() > 1 {
            let bound = 1.0 / (fan_in as f32).sqrt();
            (-bound, bound)
        } else if name.ends_with("running_var") {
            (0.5, 2.0)
        } else if name.ends_with(".weight") {
            (0.1, 2.0)
        } else {
            (-0.5, 0.5)
        };
        let data = (0..len).map(|_| rng.uniform(lo, hi)).collect();
        Ok(TensorBuf::new(shape.to_vec(), data).expect("length matches"))
    })
}

/// `batch` seeded inputs in `[-1, 1)` for `graph`.
pub fn random_input(graph: &FloatGraph, batch: usize, seed: u64) -> TensorBuf<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(graph.input_shape());
    Rng::new(seed).tensor(shape, 1.0)
}

/// Why a synthetic calibration failed.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Observer(#[from] ObserverError),
}

/// A min/max calibration table (uint8 asymmetric activations) of `graph` over `input`.
pub fn minmax_table(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
) -> Result<CalibrationTable, CalibrateError> {
    let mut calibrator = Calibrator::new(ObserverSpec::MinMax, QuantScheme::activations_uint8())?;
    let mut first_error = None;
    float_forward_with(graph, input, |name, t| {
        if let Err(e) = calibrator.observe(name, t) {
            first_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = first_error {
        return Err(e.into());
    }
    calibrator.add_samples(input.shape()[0]);
    Ok(calibrator.table()?)
}
