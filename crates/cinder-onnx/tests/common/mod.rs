//! Graphs and a float evaluator shared by the integration tests.
//!
//! cinder-runtime's `float_forward` runs chains only, so the DAG graphs here are checked
//! against [`evaluate`], a direct, unoptimised evaluator of every float-graph operator.
#![allow(dead_code)]

use std::collections::HashMap;

use cinder_runtime::synthetic::{Rng, conv_node, linear_node};
use cinder_tensor::graph::{AvgPool2d, BatchNorm, Conv2d, FloatGraph, INPUT, Node, Op, Pool2d};
use cinder_tensor::{Tensor, TensorBuf};

/// A small chain over `[3, 8, 8]`: conv, batch-norm, relu, max-pool, conv, global
/// average pool, flatten, linear.
pub fn small_chain(seed: u64) -> FloatGraph {
    let mut rng = Rng::new(seed);
    let nodes = vec![
        named(conv_node(&mut rng, "conv1", 3, 4, 3, 1, 1)),
        Node::new("bn1", &["conv1"], batch_norm(&mut rng, 4)),
        Node::new("relu1", &["bn1"], Op::Relu),
        Node::new("pool1", &["relu1"], Op::MaxPool2d(Pool2d::square(2, 2))),
        Node {
            inputs: vec!["pool1".into()],
            ..named(conv_node(&mut rng, "conv2", 4, 8, 3, 1, 1))
        },
        Node::new("gap", &["conv2"], Op::GlobalAvgPool),
        Node::new("flatten", &["gap"], Op::Flatten),
        Node {
            inputs: vec!["flatten".into()],
            ..named(linear_node(&mut rng, "fc", 8, 10))
        },
    ];
    FloatGraph::new(vec![3, 8, 8], nodes).expect("valid graph")
}

/// A residual, depthwise DAG over `[3, 16, 16]` using every operator: stem conv + BN +
/// ReLU6, a depthwise block with a residual add, a strided conv, a two-branch concat
/// (max-pool with padding, average pool with and without counted padding), global
/// average pool, flatten, linear.
pub fn residual_depthwise(seed: u64) -> FloatGraph {
    let mut rng = Rng::new(seed);
    let depthwise = Conv2d {
        weight: rng.tensor(vec![8, 1, 3, 3], 1.0 / 3.0),
        bias: Some(rng.tensor(vec![8], 0.3)),
        stride: [1, 1],
        padding: [1, 1],
        groups: 8,
    };
    let grouped = Conv2d {
        weight: rng.tensor(vec![8, 4, 1, 3], 0.4),
        bias: None,
        stride: [2, 1],
        padding: [0, 1],
        groups: 2,
    };
    let window = Pool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
    };
    let nodes = vec![
        named(conv_node(&mut rng, "stem", 3, 8, 3, 1, 1)),
        Node::new("stem_bn", &["stem"], batch_norm(&mut rng, 8)),
        Node::new("stem_act", &["stem_bn"], Op::RELU6),
        Node::new("dw", &["stem_act"], Op::Conv2d(depthwise)),
        Node::new("dw_act", &["dw"], Op::Relu),
        Node::new("residual", &["dw_act", "stem_act"], Op::Add),
        Node::new("down", &["residual"], Op::Conv2d(grouped)),
        Node::new("max", &["down"], Op::MaxPool2d(window)),
        Node::new(
            "avg",
            &["down"],
            Op::AvgPool2d(AvgPool2d {
                window,
                count_include_pad: false,
            }),
        ),
        Node::new(
            "avg_pad",
            &["down"],
            Op::AvgPool2d(AvgPool2d {
                window,
                count_include_pad: true,
            }),
        ),
        Node::new("cat", &["max", "avg", "avg_pad"], Op::Concat),
        Node::new("gap", &["cat"], Op::GlobalAvgPool),
        Node::new("flatten", &["gap"], Op::Flatten),
        Node {
            inputs: vec!["flatten".into()],
            ..named(linear_node(&mut rng, "fc1", 24, 16))
        },
        Node::new("fc1_bn", &["fc1"], batch_norm(&mut rng, 16)),
        Node::new(
            "fc1_act",
            &["fc1_bn"],
            Op::Clip {
                min: -1.0,
                max: 1.0,
            },
        ),
        Node {
            inputs: vec!["fc1_act".into()],
            ..named(linear_node(&mut rng, "fc2", 16, 10))
        },
    ];
    FloatGraph::new(vec![3, 16, 16], nodes).expect("valid graph")
}

fn named((name, op): (String, Op)) -> Node {
    Node {
        inputs: vec![INPUT.into()],
        name,
        op,
    }
}

fn batch_norm(rng: &mut Rng, c: usize) -> Op {
    let positive = rng.tensor(vec![c], 0.5).map(|v| v + 1.0);
    Op::BatchNorm(BatchNorm {
        gamma: rng.tensor(vec![c], 0.5).map(|v| v + 1.0),
        beta: rng.tensor(vec![c], 0.5),
        mean: rng.tensor(vec![c], 0.5),
        var: positive,
        eps: 1e-5,
    })
}

/// Every node's output over a batch `input` of shape `[N, ...input_shape]`; returns the
/// graph output `[N, ...]`.
pub fn evaluate(graph: &FloatGraph, input: &TensorBuf<f32>) -> TensorBuf<f32> {
    let batch = input.shape()[0];
    let mut values: HashMap<&str, (Vec<usize>, Vec<f32>)> = HashMap::new();
    values.insert(INPUT, (graph.input_shape().to_vec(), input.data().to_vec()));
    for node in graph.nodes() {
        let out_shape = graph.shape(&node.name).expect("node").to_vec();
        let out_len: usize = out_shape.iter().product();
        let mut out = Vec::with_capacity(batch * out_len);
        for n in 0..batch {
            let sample: Vec<(&[usize], &[f32])> = node
                .inputs
                .iter()
                .map(|i| {
                    let (shape, data) = &values[i.as_str()];
                    let len: usize = shape.iter().product();
                    (shape.as_slice(), &data[n * len..(n + 1) * len])
                })
                .collect();
            out.extend(eval_op(&node.op, &sample, &out_shape));
        }
        values.insert(&node.name, (out_shape, out));
    }
    let (shape, data) = values.remove(graph.output().name.as_str()).expect("output");
    let mut full = vec![batch];
    full.extend(shape);
    TensorBuf::new(full, data).expect("shape")
}

fn eval_op(op: &Op, inputs: &[(&[usize], &[f32])], out: &[usize]) -> Vec<f32> {
    let (shape, x) = inputs[0];
    match op {
        Op::Conv2d(c) => conv(c, shape, x, out),
        Op::BatchNorm(bn) => {
            let plane = x.len() / bn.channels();
            let affine = bn.affine();
            x.iter()
                .enumerate()
                .map(|(i, v)| affine[i / plane].0 * v + affine[i / plane].1)
                .collect()
        }
        Op::Relu => x.iter().map(|v| v.max(0.0)).collect(),
        Op::Clip { min, max } => x.iter().map(|v| v.max(*min).min(*max)).collect(),
        Op::MaxPool2d(p) => pool(p, shape, x, out, |w: &[Option<f32>]| {
            w.iter().flatten().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
        }),
        Op::AvgPool2d(a) => pool(&a.window, shape, x, out, |w: &[Option<f32>]| {
            let inside: Vec<f32> = w.iter().flatten().copied().collect();
            let divisor = if a.count_include_pad {
                w.len()
            } else {
                inside.len()
            };
            inside.iter().sum::<f32>() / divisor as f32
        }),
        Op::GlobalAvgPool => x
            .chunks(shape[1] * shape[2])
            .map(|c| c.iter().sum::<f32>() / c.len() as f32)
            .collect(),
        Op::Add => x.iter().zip(inputs[1].1).map(|(a, b)| a + b).collect(),
        Op::Concat => inputs.iter().flat_map(|(_, d)| d.iter().copied()).collect(),
        Op::Flatten => x.to_vec(),
        Op::Linear(l) => {
            let bias = l.bias_or_zeros();
            l.weight
                .data()
                .chunks(l.in_features())
                .zip(bias)
                .map(|(row, b)| b + row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>())
                .collect()
        }
    }
}

/// Input value at `(c, y, x)` of a `[C, H, W]` sample, `None` outside (padding).
fn at(shape: &[usize], x: &[f32], c: usize, y: isize, xx: isize) -> Option<f32> {
    let (h, w) = (shape[1] as isize, shape[2] as isize);
    ((0..h).contains(&y) && (0..w).contains(&xx))
        .then(|| x[(c * shape[1] + y as usize) * shape[2] + xx as usize])
}

fn conv(c: &Conv2d, shape: &[usize], x: &[f32], out: &[usize]) -> Vec<f32> {
    let [kh, kw] = c.kernel();
    let per_group_in = c.weight.shape()[1];
    let per_group_out = c.out_channels() / c.groups;
    let bias = c.bias_or_zeros();
    let w = c.weight.data();
    let mut y = Vec::with_capacity(out.iter().product());
    for o in 0..out[0] {
        let group = o / per_group_out;
        for oy in 0..out[1] {
            for ox in 0..out[2] {
                let mut acc = bias[o];
                for ci in 0..per_group_in {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * c.stride[0] + ky) as isize - c.padding[0] as isize;
                            let ix = (ox * c.stride[1] + kx) as isize - c.padding[1] as isize;
                            if let Some(v) = at(shape, x, group * per_group_in + ci, iy, ix) {
                                acc += v * w[((o * per_group_in + ci) * kh + ky) * kw + kx];
                            }
                        }
                    }
                }
                y.push(acc);
            }
        }
    }
    y
}

fn pool(
    p: &Pool2d,
    shape: &[usize],
    x: &[f32],
    out: &[usize],
    reduce: impl Fn(&[Option<f32>]) -> f32,
) -> Vec<f32> {
    let mut y = Vec::with_capacity(out.iter().product());
    for c in 0..out[0] {
        for oy in 0..out[1] {
            for ox in 0..out[2] {
                let window: Vec<Option<f32>> = (0..p.kernel[0])
                    .flat_map(|ky| (0..p.kernel[1]).map(move |kx| (ky, kx)))
                    .map(|(ky, kx)| {
                        let iy = (oy * p.stride[0] + ky) as isize - p.padding[0] as isize;
                        let ix = (ox * p.stride[1] + kx) as isize - p.padding[1] as isize;
                        at(shape, x, c, iy, ix)
                    })
                    .collect();
                y.push(reduce(&window));
            }
        }
    }
    y
}

/// The largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
