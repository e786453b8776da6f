//! Random small graphs (not chains) for the integration tests: a stem convolution, then
//! blocks drawn among residual adds, depthwise-separable pairs with ReLU6, strided
//! rectangular convolutions, pools (max with padding, average) and concatenations, then
//! a head (a global average pool or a flatten, the flattened image through a ReLU or a
//! residual add) and a linear layer.

use cinder_runtime::QuantizedModel;
use cinder_runtime::synthetic::Rng;
use cinder_tensor::graph::{AvgPool2d, Conv2d, FloatGraph, Linear, Node, Op, Pool2d};
use proptest::prelude::*;

use super::{LayerChoice, calibrate_and_convert, config, layer_choice};

/// One block of a drawn graph.
#[derive(Debug, Clone)]
pub enum Block {
    /// conv 3×3 + ReLU, conv 3×3, add to the block's input, ReLU.
    Residual,
    /// Depthwise `k`×`k` at `stride` + ReLU6, then a 1×1 to `out` channels.
    Separable {
        kernel: usize,
        stride: usize,
        out: usize,
    },
    /// A dense convolution with a rectangular window.
    Strided {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        out: usize,
    },
    /// Max (padded by 1) or average (3×3, padded by 1, stride 2) pooling.
    Pool { average: bool, include_pad: bool },
    /// Two 1×1 branches joined along channels.
    Concat { left: usize, right: usize },
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        3 => Just(Block::Residual),
        3 => (1usize..=3, 1usize..=2, 1usize..=6)
            .prop_map(|(kernel, stride, out)| Block::Separable { kernel, stride, out }),
        1 => ([1usize..=3, 1usize..=3], [1usize..=2, 1usize..=2], [0usize..=1, 0usize..=1], 1usize..=5)
            .prop_map(|(kernel, stride, padding, out)| Block::Strided { kernel, stride, padding, out }),
        1 => (any::<bool>(), any::<bool>())
            .prop_map(|(average, include_pad)| Block::Pool { average, include_pad }),
        1 => (1usize..=4, 1usize..=4).prop_map(|(left, right)| Block::Concat { left, right }),
    ]
}

/// How a drawn graph ends, before its last linear layer.
#[derive(Debug, Clone, Copy)]
pub enum Head {
    /// Global average pool, then flatten.
    GlobalPool,
    /// Flatten.
    Flatten,
    /// Flatten, then ReLU.
    FlattenRelu,
    /// The flattened image added to a linear layer of it.
    FlattenAdd,
}

fn head() -> impl Strategy<Value = Head> {
    prop_oneof![
        Just(Head::GlobalPool),
        Just(Head::Flatten),
        Just(Head::FlattenRelu),
        Just(Head::FlattenAdd),
    ]
}

/// A drawn graph and its per-layer choices.
#[derive(Debug, Clone)]
pub struct DagSpec {
    pub input: [usize; 3],
    pub stem: usize,
    pub blocks: Vec<Block>,
    pub head: Head,
    pub classes: usize,
    pub choices: Vec<LayerChoice>,
    pub seed: u64,
}

pub fn dag_spec() -> impl Strategy<Value = DagSpec> {
    (
        (1usize..=3, 4usize..=9, 4usize..=9),
        1usize..=6,
        prop::collection::vec(block(), 1..=3),
        head(),
        1usize..=5,
        prop::collection::vec(layer_choice(), 12),
        any::<u64>(),
    )
        .prop_map(
            |((c, h, w), stem, blocks, head, classes, choices, seed)| DagSpec {
                input: [c, h, w],
                stem,
                blocks,
                head,
                classes,
                choices,
                seed,
            },
        )
}

/// Builds the graph node by node, tracking the current tensor and its shape.
struct Builder {
    rng: Rng,
    nodes: Vec<Node>,
    at: String,
    shape: [usize; 3],
}

impl Builder {
    fn push(&mut self, name: String, inputs: &[&str], op: Op) -> String {
        self.nodes.push(Node::new(name.clone(), inputs, op));
        name
    }

    /// A convolution reading `from` (of `c` channels), PyTorch's init range.
    fn conv(
        &mut self,
        name: String,
        from: &str,
        out: usize,
        window: ([usize; 2], [usize; 2], [usize; 2]),
        groups: usize,
    ) -> String {
        let (kernel, stride, padding) = window;
        let c = self.shape[0];
        let fan_in = c / groups * kernel[0] * kernel[1];
        let bound = 1.0 / (fan_in as f32).sqrt();
        let weight = self
            .rng
            .tensor(vec![out, c / groups, kernel[0], kernel[1]], bound);
        let bias =
            (!self.rng.next_u64().is_multiple_of(4)).then(|| self.rng.tensor(vec![out], bound));
        let conv = Conv2d {
            weight,
            bias,
            stride,
            padding,
            groups,
        };
        self.push(name, &[from], Op::Conv2d(conv))
    }

    /// A linear layer reading `from` (of `features` values), PyTorch's init range.
    fn linear(&mut self, name: String, from: &str, features: usize, out: usize) -> String {
        let bound = 1.0 / (features as f32).sqrt();
        let fc = Linear {
            weight: self.rng.tensor(vec![out, features], bound),
            bias: Some(self.rng.tensor(vec![out], bound)),
        };
        self.push(name, &[from], Op::Linear(fc))
    }

    /// Ends the image in `head`; returns the features it leaves.
    fn head(&mut self, head: Head) -> usize {
        let at = self.at.clone();
        let features: usize = self.shape.iter().product();
        if let Head::GlobalPool = head {
            let g = self.push("gap".into(), &[&at], Op::GlobalAvgPool);
            self.at = self.push("flatten".into(), &[&g], Op::Flatten);
            return self.shape[0];
        }
        let flat = self.push("flatten".into(), &[&at], Op::Flatten);
        let (end, features) = match head {
            Head::GlobalPool | Head::Flatten => (flat, features),
            Head::FlattenRelu => (self.push("flat_relu".into(), &[&flat], Op::Relu), features),
            Head::FlattenAdd => {
                let side = self.linear("side".into(), &flat, features, features);
                (
                    self.push("flat_add".into(), &[&flat, &side], Op::Add),
                    features,
                )
            }
        };
        self.at = end;
        features
    }

    fn fits(&self, kernel: [usize; 2], padding: [usize; 2]) -> bool {
        (0..2).all(|i| self.shape[i + 1] + 2 * padding[i] >= kernel[i])
    }

    fn advance(&mut self, out: usize, kernel: [usize; 2], stride: [usize; 2], padding: [usize; 2]) {
        let size = |i: usize| (self.shape[i + 1] + 2 * padding[i] - kernel[i]) / stride[i] + 1;
        self.shape = [out, size(0), size(1)];
    }

    fn block(&mut self, i: usize, block: &Block) {
        let at = self.at.clone();
        let c = self.shape[0];
        match *block {
            Block::Residual => {
                let same = ([3, 3], [1, 1], [1, 1]);
                let a = self.conv(format!("b{i}_conv_a"), &at, c, same, 1);
                let a = self.push(format!("b{i}_relu_a"), &[&a], Op::Relu);
                let b = self.conv(format!("b{i}_conv_b"), &a, c, same, 1);
                let sum = self.push(format!("b{i}_add"), &[&at, &b], Op::Add);
                self.at = self.push(format!("b{i}_relu"), &[&sum], Op::Relu);
            }
            Block::Separable {
                kernel,
                stride,
                out,
            } => {
                let padding = kernel / 2;
                let dw = self.conv(
                    format!("b{i}_dw"),
                    &at,
                    c,
                    ([kernel; 2], [stride; 2], [padding; 2]),
                    c,
                );
                self.advance(c, [kernel; 2], [stride; 2], [padding; 2]);
                let dw = self.push(format!("b{i}_relu6"), &[&dw], Op::RELU6);
                self.at = self.conv(format!("b{i}_pw"), &dw, out, ([1, 1], [1, 1], [0, 0]), 1);
                self.shape[0] = out;
            }
            Block::Strided {
                kernel,
                stride,
                padding,
                out,
            } => {
                if self.fits(kernel, padding) {
                    self.at =
                        self.conv(format!("b{i}_conv"), &at, out, (kernel, stride, padding), 1);
                    self.advance(out, kernel, stride, padding);
                }
            }
            Block::Pool {
                average,
                include_pad,
            } => {
                let window = Pool2d {
                    kernel: [3, 3],
                    stride: [2, 2],
                    padding: [1, 1],
                };
                let op = match average {
                    true => Op::AvgPool2d(AvgPool2d {
                        window,
                        count_include_pad: include_pad,
                    }),
                    false => Op::MaxPool2d(window),
                };
                self.at = self.push(format!("b{i}_pool"), &[&at], op);
                self.advance(c, [3, 3], [2, 2], [1, 1]);
            }
            Block::Concat { left, right } => {
                let one = ([1, 1], [1, 1], [0, 0]);
                let l = self.conv(format!("b{i}_left"), &at, left, one, 1);
                let r = self.conv(format!("b{i}_right"), &at, right, one, 1);
                let r = self.push(format!("b{i}_right_relu"), &[&r], Op::Relu);
                self.at = self.push(format!("b{i}_concat"), &[&l, &r], Op::Concat);
                self.shape[0] = left + right;
            }
        }
    }
}

impl DagSpec {
    pub fn graph(&self) -> FloatGraph {
        let mut b = Builder {
            rng: Rng::new(self.seed),
            nodes: Vec::new(),
            at: "input".to_owned(),
            shape: self.input,
        };
        let stem = b.conv(
            "stem".into(),
            "input",
            self.stem,
            ([3, 3], [1, 1], [1, 1]),
            1,
        );
        b.shape[0] = self.stem;
        b.at = b.push("stem_relu".into(), &[&stem], Op::Relu);
        for (i, block) in self.blocks.iter().enumerate() {
            b.block(i, block);
        }
        let features = b.head(self.head);
        let at = b.at.clone();
        b.linear("fc".into(), &at, features, self.classes);
        FloatGraph::new(self.input.to_vec(), b.nodes).expect("the drawn graph is valid")
    }

    /// Graph, calibrated and converted with the drawn choices (see
    /// [`calibrate_and_convert`] for `None`).
    pub fn model(&self) -> Option<(FloatGraph, QuantizedModel)> {
        let graph = self.graph();
        let model = calibrate_and_convert(&graph, &config(&graph, &self.choices), self.seed)?;
        Some((graph, model))
    }
}
