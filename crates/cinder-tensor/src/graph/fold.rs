//! Batch-norm folding: the inference graph without batch-norm nodes.
//!
//! A batch-norm `y = a * x + b` (per channel) that reads a convolution or linear layer
//! read by nothing else is folded into it: `W'[c] = a[c] * W[c]`, `bias'[c] = a[c] * bias[c]
//! + b[c]`; readers of the batch-norm then read the layer. Any other batch-norm over a
//! `[C, H, W]` tensor becomes the 1×1 depthwise convolution that computes it, so every
//! graph folds; one over a `[F]` vector that no layer precedes is an error.

use super::ops::{BatchNorm, Conv2d, Linear, Op};
use super::{FloatGraph, GraphError, Node};
use crate::tensor::{Tensor, TensorBuf};

impl FloatGraph {
    /// The same function without batch-norm nodes (see the module docs).
    pub fn fold_batch_norms(&self) -> Result<FloatGraph, GraphError> {
        let mut nodes: Vec<Node> = self.nodes.clone();
        while let Some(i) = nodes.iter().position(|n| matches!(n.op, Op::BatchNorm(_))) {
            let bn_node = nodes.remove(i);
            let Op::BatchNorm(bn) = &bn_node.op else {
                unreachable!("position matched a batch-norm")
            };
            let input = &bn_node.inputs[0];
            let sole_reader = nodes.iter().all(|n| !n.inputs.contains(input));
            let producer = nodes.iter_mut().find(|n| &n.name == input);
            match producer {
                Some(p) if sole_reader && p.op.is_weighted() => {
                    fold_into(&mut p.op, bn);
                    rename_input(&mut nodes, &bn_node.name, input);
                }
                _ => nodes.insert(i, as_depthwise(self, &bn_node, bn)?),
            }
        }
        FloatGraph::new(self.input_shape.clone(), nodes)
    }
}

fn rename_input(nodes: &mut [Node], from: &str, to: &str) {
    for input in nodes.iter_mut().flat_map(|n| n.inputs.iter_mut()) {
        if input == from {
            *input = to.to_owned();
        }
    }
}

/// Scales each output channel's weights and bias by the batch-norm's affine map.
fn fold_into(op: &mut Op, bn: &BatchNorm) {
    let affine = bn.affine();
    let (weight, bias, channels) = match op {
        Op::Conv2d(Conv2d { weight, bias, .. }) | Op::Linear(Linear { weight, bias }) => {
            let channels = weight.shape()[0];
            (weight, bias, channels)
        }
        _ => unreachable!("only weighted ops are folded into"),
    };
    let per_channel = weight.len() / channels;
    for (c, row) in weight.data_mut().chunks_mut(per_channel).enumerate() {
        row.iter_mut().for_each(|w| *w *= affine[c].0);
    }
    let old = bias.take().map(TensorBuf::into_data);
    let folded = (0..channels)
        .map(|c| affine[c].0 * old.as_ref().map_or(0.0, |b| b[c]) + affine[c].1)
        .collect();
    *bias = Some(TensorBuf::from_vec(folded));
}

/// The 1×1 depthwise convolution equal to a batch-norm over `[C, H, W]`.
fn as_depthwise(graph: &FloatGraph, node: &Node, bn: &BatchNorm) -> Result<Node, GraphError> {
    let input_shape = graph.shape(&node.inputs[0]).unwrap_or_default();
    if input_shape.len() != 3 {
        return Err(GraphError::Fold {
            node: node.name.clone(),
            message: format!(
                "its input {input_shape:?} is not produced by a convolution or linear layer \
                 read by nothing else, and is not [C, H, W]"
            ),
        });
    }
    let (scale, shift): (Vec<f32>, Vec<f32>) = bn.affine().into_iter().unzip();
    let channels = scale.len();
    let conv = Conv2d {
        weight: TensorBuf::new(vec![channels, 1, 1, 1], scale).expect("one weight per channel"),
        bias: Some(TensorBuf::from_vec(shift)),
        stride: [1, 1],
        padding: [0, 0],
        groups: channels,
    };
    Ok(Node {
        name: node.name.clone(),
        inputs: node.inputs.clone(),
        op: Op::Conv2d(conv),
    })
}
