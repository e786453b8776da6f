//! The float reference forward of a [`FloatGraph`]: what calibration observes and what
//! the quantized model approximates.

use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{Tensor, TensorBuf};

use crate::arith::{pool_forward, relu, weighted_forward};
use crate::error::RunError;
use crate::geometry::{Geometry, Window, batch_size, chw};

/// The float reference forward: `input` is `[B, C, H, W]` (NCHW, the graph's input
/// shape per sample); returns the last node's output, `[B, ...]`.
pub fn float_forward(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    float_forward_with(graph, input, |_, _| {})
}

/// [`float_forward`], calling `hook(name, tensor)` with the input (named
/// `cinder_observers::GRAPH_INPUT`) and every node's output (named after the node), the
/// keys of a calibration table.
pub fn float_forward_with(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
    mut hook: impl FnMut(&str, &TensorBuf<f32>),
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), graph.input_shape())?;
    let shapes = graph.output_shapes().expect("a FloatGraph's shapes chain");
    let mut x = TensorBuf::new(input.shape().to_vec(), input.data().to_vec()).expect("same shape");
    hook(cinder_observers::GRAPH_INPUT, &x);
    let mut in_shape = graph.input_shape().to_vec();
    for (node, out_shape) in graph.nodes().iter().zip(shapes) {
        let out_len = out_shape.iter().product();
        let data = match &node.op {
            Op::Conv2d(conv) => {
                let geometry = Geometry::Conv {
                    input: chw(&in_shape),
                    window: Window {
                        kernel: conv.kernel(),
                        stride: conv.stride,
                        padding: conv.padding,
                    },
                };
                weighted_forward(
                    geometry,
                    x.data(),
                    batch,
                    out_len,
                    conv.weight.data(),
                    conv.bias.data(),
                )
            }
            Op::Linear(l) => weighted_forward(
                Geometry::Linear,
                x.data(),
                batch,
                out_len,
                l.weight.data(),
                l.bias.data(),
            ),
            Op::MaxPool2d { kernel, stride } => {
                pool_forward(x.data(), batch, &in_shape, out_len, *kernel, *stride)
            }
            Op::Relu => x.data().iter().map(|&v| relu(v)).collect(),
            Op::Flatten => x.data().to_vec(),
        };
        let mut shape = vec![batch];
        shape.extend_from_slice(&out_shape);
        x = TensorBuf::new(shape, data).expect("shapes chain");
        hook(&node.name, &x);
        in_shape = out_shape;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::{Conv2d, Linear, Node};

    fn buf(shape: Vec<usize>, data: Vec<f32>) -> TensorBuf<f32> {
        TensorBuf::new(shape, data).unwrap()
    }

    #[test]
    fn forward_of_a_tiny_graph_and_its_hook() {
        let node = |name: &str, op| Node {
            name: name.into(),
            op,
        };
        let graph = FloatGraph::new(
            vec![1, 2, 2],
            vec![
                node(
                    "conv",
                    Op::Conv2d(Conv2d {
                        weight: buf(vec![1, 1, 1, 1], vec![-2.0]),
                        bias: buf(vec![1], vec![1.0]),
                        stride: 1,
                        padding: 0,
                    }),
                ),
                node("relu", Op::Relu),
                node("flat", Op::Flatten),
                node(
                    "fc",
                    Op::Linear(Linear {
                        weight: buf(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]),
                        bias: buf(vec![1], vec![0.0]),
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
