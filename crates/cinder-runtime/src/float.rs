//! The float reference forward of a [`FloatGraph`]: what calibration observes and what
//! the quantized model approximates. Nodes run in the graph's (topological) order, each
//! on the tensors it names; a tensor is dropped once its last reader has run.
//!
//! Inputs must be finite, and so must every node's output: finite weights can still
//! overflow (a weight of 1e30 times an activation of 1e10), and a NaN would otherwise
//! pass silently through a ReLU or into an argmax. Either is a typed error naming the
//! input element or the node.

use std::collections::HashMap;

use cinder_tensor::graph::{FloatGraph, INPUT, Node, Op, Pool2d};
use cinder_tensor::{Tensor, TensorBuf};

use crate::arith::{PoolKind, concat_samples, map_samples, pool_forward, weighted_forward};
use crate::error::RunError;
use crate::geometry::{Geometry, Window, batch_size, chw};
use crate::model::Activation;

/// The float reference forward: `input` is `[B, C, H, W]` (NCHW, the graph's input
/// shape per sample); returns the output node's output, `[B, ...]`.
pub fn float_forward(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    float_forward_with(graph, input, |_, _| {})
}

/// [`float_forward`], calling `hook(name, tensor)` with the input (named
/// [`INPUT`]) and every node's output (named after the node), the keys of a calibration
/// table.
pub fn float_forward_with(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
    mut hook: impl FnMut(&str, &TensorBuf<f32>),
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), graph.input_shape())?;
    cinder_observers::min_max(input.data()).map_err(RunError::Input)?;
    let x = TensorBuf::new(input.shape().to_vec(), input.data().to_vec()).expect("same shape");
    hook(INPUT, &x);
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for node in graph.nodes() {
        for i in &node.inputs {
            *readers.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut tensors: HashMap<&str, TensorBuf<f32>> = HashMap::from([(INPUT, x)]);
    for (node, out_shape) in graph.nodes().iter().zip(graph.output_shapes()) {
        let inputs: Vec<(&TensorBuf<f32>, &[usize])> = node
            .inputs
            .iter()
            .map(|i| {
                let shape = graph.shape(i).expect("the graph checked its inputs");
                (&tensors[i.as_str()], shape)
            })
            .collect();
        let out_len = out_shape.iter().product();
        let data = node_forward(node, &inputs, batch, out_len);
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(RunError::NonFiniteOutput {
                node: node.name.clone(),
                index,
                value: data[index],
            });
        }
        let mut shape = vec![batch];
        shape.extend_from_slice(out_shape);
        let y = TensorBuf::new(shape, data).expect("the graph's shapes");
        hook(&node.name, &y);
        for i in &node.inputs {
            let left = readers.get_mut(i.as_str()).expect("counted");
            *left -= 1;
            if *left == 0 {
                tensors.remove(i.as_str());
            }
        }
        tensors.insert(&node.name, y);
    }
    Ok(tensors
        .remove(graph.output().name.as_str())
        .expect("the output is computed last"))
}

/// A graph pooling window.
pub(crate) fn window(p: &Pool2d) -> Window {
    Window {
        kernel: p.kernel,
        stride: p.stride,
        padding: p.padding,
    }
}

/// One node over a batch of `batch` samples of its `inputs` (data and per-sample shape).
fn node_forward(
    node: &Node,
    inputs: &[(&TensorBuf<f32>, &[usize])],
    batch: usize,
    out_len: usize,
) -> Vec<f32> {
    let (x, in_shape) = (inputs[0].0.data(), inputs[0].1);
    let act = |a: Activation| x.iter().map(|&v| a.apply(v)).collect();
    let pool = |w: Window, kind| pool_forward(x, batch, (chw(in_shape), w, kind), out_len, 0.0);
    match &node.op {
        Op::Conv2d(conv) => {
            let geometry = Geometry::Conv {
                input: chw(in_shape),
                window: Window {
                    kernel: conv.kernel(),
                    stride: conv.stride,
                    padding: conv.padding,
                },
                groups: conv.groups,
            };
            let bias = conv.bias_or_zeros();
            weighted_forward(geometry, x, batch, out_len, conv.weight.data(), &bias)
        }
        Op::Linear(l) => {
            let bias = l.bias_or_zeros();
            weighted_forward(Geometry::Linear, x, batch, out_len, l.weight.data(), &bias)
        }
        Op::BatchNorm(bn) => {
            let (affine, plane) = (bn.affine(), out_len / bn.channels());
            map_samples(x, batch, out_len, |s, o| {
                for (i, (o, &v)) in o.iter_mut().zip(s).enumerate() {
                    let (a, b) = affine[i / plane];
                    *o = a * v + b;
                }
            })
        }
        Op::Relu => act(Activation::Relu),
        Op::Clip { min, max } => act(Activation::Clip {
            min: *min,
            max: *max,
        }),
        Op::MaxPool2d(p) => pool(window(p), PoolKind::Max),
        Op::AvgPool2d(p) => pool(
            window(&p.window),
            PoolKind::Avg {
                include_pad: p.count_include_pad,
            },
        ),
        Op::GlobalAvgPool => {
            let [_, h, w] = chw(in_shape);
            pool(
                Window::square(1, 1, 0).with_kernel([h, w]),
                PoolKind::Avg { include_pad: true },
            )
        }
        Op::Add => x
            .iter()
            .zip(inputs[1].0.data())
            .map(|(&a, &b)| a + b)
            .collect(),
        Op::Concat => {
            let xs: Vec<&[f32]> = inputs.iter().map(|(t, _)| t.data()).collect();
            concat_samples(&xs, batch)
        }
        Op::Flatten => x.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::{Conv2d, Linear};

    fn buf(shape: Vec<usize>, data: Vec<f32>) -> TensorBuf<f32> {
        TensorBuf::new(shape, data).unwrap()
    }

    #[test]
    fn forward_of_a_tiny_graph_and_its_hook() {
        let node = |name: &str, op| (name.to_owned(), op);
        let graph = FloatGraph::chain(
            vec![1, 2, 2],
            vec![
                node(
                    "conv",
                    Op::Conv2d(Conv2d::dense(
                        buf(vec![1, 1, 1, 1], vec![-2.0]),
                        Some(buf(vec![1], vec![1.0])),
                        1,
                        0,
                    )),
                ),
                node("relu", Op::Relu),
                node("flat", Op::Flatten),
                node(
                    "fc",
                    Op::Linear(Linear {
                        weight: buf(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]),
                        bias: Some(buf(vec![1], vec![0.0])),
                    }),
                ),
            ],
        )
        .unwrap();
        let input = buf(
            vec![2, 1, 2, 2],
            vec![0.0, 1.0, -1.0, 2.0, 0.25, 0.0, 0.0, 0.0],
        );
        let mut seen = vec![];
        let out = float_forward_with(&graph, &input, |name, t| {
            seen.push((name.to_owned(), t.shape().to_vec()))
        })
        .unwrap();
        // Sample 0: conv = 1 - 2x = [1, -1, 3, -3], relu [1, 0, 3, 0], fc 1 + 9 = 10.
        // Sample 1: conv = [0.5, 1, 1, 1], fc 0.5 + 2 + 3 + 4 = 9.5.
        assert_eq!(out.data(), &[10.0, 9.5]);
        assert_eq!(out.shape(), &[2, 1]);
        assert_eq!(seen[0], ("input".to_owned(), vec![2, 1, 2, 2]));
        assert_eq!(seen.last().unwrap().0, "fc");
        assert!(matches!(
            float_forward(&graph, &buf(vec![1, 4], vec![0.0; 4])),
            Err(RunError::InputShape { .. })
        ));
    }
}
