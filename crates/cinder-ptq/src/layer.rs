//! Per-channel views of a weighted layer (convolution or linear): the ranges of its
//! output channels and of the input channels it reads from one producer tensor, their
//! rescaling, and the layer alone as a one-node graph.

use cinder_tensor::graph::{FloatGraph, Node, Op};
use cinder_tensor::{Tensor, TensorBuf};

use crate::error::PtqError;

/// How a layer's flat weight index maps to the channel of the tensor it reads: the
/// channel of index `i` is `(i % period) / block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InputMap {
    period: usize,
    block: usize,
}

impl InputMap {
    /// The map of `op` reading a tensor of `channels` channels (possibly flattened), or
    /// none when its weights do not split by input channel (grouped, not depthwise).
    pub(crate) fn of(op: &Op, channels: usize) -> Option<Self> {
        match op {
            Op::Conv2d(c) if c.groups == 1 || c.is_depthwise() => {
                let [kh, kw] = c.kernel();
                let per_output = c.weight.len() / c.out_channels();
                let period = if c.groups == 1 {
                    per_output
                } else {
                    c.weight.len()
                };
                (c.in_channels() == channels).then_some(Self {
                    period,
                    block: kh * kw,
                })
            }
            Op::Linear(l) if l.in_features().is_multiple_of(channels) => Some(Self {
                period: l.in_features(),
                block: l.in_features() / channels,
            }),
            _ => None,
        }
    }

    fn channel(&self, index: usize) -> usize {
        (index % self.period) / self.block
    }
}

/// The weight of a convolution or linear layer.
fn weight(op: &Op) -> &TensorBuf<f32> {
    op.weight_and_bias()
        .map(|(w, _)| w)
        .expect("only weighted layers are viewed per channel")
}

fn weight_and_bias_mut(op: &mut Op) -> (&mut TensorBuf<f32>, &mut Option<TensorBuf<f32>>) {
    match op {
        Op::Conv2d(c) => (&mut c.weight, &mut c.bias),
        Op::Linear(l) => (&mut l.weight, &mut l.bias),
        _ => unreachable!("only weighted layers are viewed per channel"),
    }
}

/// The number of output channels (rows of the weight).
pub(crate) fn output_channels(op: &Op) -> usize {
    weight(op).shape()[0]
}

/// `max |w|` of each output channel's weights.
pub(crate) fn output_ranges(op: &Op) -> Vec<f32> {
    let w = weight(op);
    let row = w.len() / w.shape()[0];
    w.data().chunks(row).map(max_abs).collect()
}

/// `max |w|` of the weights reading each input channel.
pub(crate) fn input_ranges(op: &Op, map: InputMap, channels: usize) -> Vec<f32> {
    let mut ranges = vec![0.0f32; channels];
    for (i, w) in weight(op).data().iter().enumerate() {
        let c = map.channel(i);
        ranges[c] = ranges[c].max(w.abs());
    }
    ranges
}

/// Divides each output channel's weights and bias by `scale[c]`.
pub(crate) fn divide_outputs(op: &mut Op, scale: &[f32]) {
    let (w, bias) = weight_and_bias_mut(op);
    let row = w.len() / scale.len();
    for (values, s) in w.data_mut().chunks_mut(row).zip(scale) {
        values.iter_mut().for_each(|v| *v /= s);
    }
    if let Some(b) = bias {
        b.data_mut()
            .iter_mut()
            .zip(scale)
            .for_each(|(v, s)| *v /= s);
    }
}

/// Multiplies the weights reading input channel `c` by `scale[c]`.
pub(crate) fn multiply_inputs(op: &mut Op, map: InputMap, scale: &[f32]) {
    let (w, _) = weight_and_bias_mut(op);
    for (i, v) in w.data_mut().iter_mut().enumerate() {
        *v *= scale[map.channel(i)];
    }
}

/// Adds `delta[c]` to each output channel's bias, creating a zero bias first if the
/// layer has none.
pub(crate) fn add_to_bias(op: &mut Op, delta: &[f32]) {
    let (_, bias) = weight_and_bias_mut(op);
    let b = bias.get_or_insert_with(|| TensorBuf::from_vec(vec![0.0; delta.len()]));
    b.data_mut()
        .iter_mut()
        .zip(delta)
        .for_each(|(v, d)| *v += d);
}

/// `node` alone as a graph over its input shape `input_shape`, with the weight
/// replaced by `weight` and no bias: the linear map `x -> weight * x` of the layer.
pub(crate) fn linear_part(
    node: &Node,
    input_shape: &[usize],
    weight: TensorBuf<f32>,
) -> Result<FloatGraph, PtqError> {
    let op = match &node.op {
        Op::Conv2d(c) => Op::Conv2d(cinder_tensor::graph::Conv2d {
            weight,
            bias: None,
            ..c.clone()
        }),
        Op::Linear(_) => Op::Linear(cinder_tensor::graph::Linear { weight, bias: None }),
        _ => {
            return Err(PtqError::Layer {
                layer: node.name.clone(),
                message: format!("{} has no weights", node.op.kind()),
            });
        }
    };
    Ok(FloatGraph::chain(
        input_shape.to_vec(),
        vec![(node.name.clone(), op)],
    )?)
}

fn max_abs(values: &[f32]) -> f32 {
    values.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::{Conv2d, Linear};

    fn conv(shape: [usize; 4], groups: usize) -> Op {
        let len = shape.iter().product();
        let data = (0..len).map(|i| i as f32 - 7.0).collect();
        Op::Conv2d(Conv2d {
            weight: TensorBuf::new(shape.to_vec(), data).unwrap(),
            bias: None,
            stride: [1, 1],
            padding: [0, 0],
            groups,
        })
    }

    #[test]
    fn input_channels_of_dense_depthwise_and_flattened_linear() {
        let dense = InputMap::of(&conv([2, 3, 2, 2], 1), 3).unwrap();
        assert_eq!(
            (0..24).map(|i| dense.channel(i)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2].repeat(2)
        );
        let dw = InputMap::of(&conv([3, 1, 2, 2], 3), 3).unwrap();
        assert_eq!(
            (0..12).map(|i| dw.channel(i)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
        );
        assert_eq!(InputMap::of(&conv([4, 2, 1, 1], 2), 4), None);
        let linear = Op::Linear(Linear {
            weight: TensorBuf::zeros(vec![2, 6]).unwrap(),
            bias: None,
        });
        let flat = InputMap::of(&linear, 3).unwrap();
        assert_eq!(
            (0..12).map(|i| flat.channel(i)).collect::<Vec<_>>(),
            [0, 0, 1, 1, 2, 2].repeat(2)
        );
    }

    #[test]
    fn ranges_and_scaling_of_a_dense_convolution() {
        let mut op = conv([2, 3, 1, 1], 1);
        assert_eq!(output_ranges(&op), [7.0, 4.0]);
        let map = InputMap::of(&op, 3).unwrap();
        assert_eq!(input_ranges(&op, map, 3), [7.0, 6.0, 5.0]);
        multiply_inputs(&mut op, map, &[1.0, 2.0, 0.5]);
        divide_outputs(&mut op, &[1.0, 2.0]);
        add_to_bias(&mut op, &[0.5, -1.0]);
        let Op::Conv2d(c) = &op else { unreachable!() };
        assert_eq!(c.weight.data(), &[-7.0, -12.0, -2.5, -2.0, -3.0, -0.5]);
        assert_eq!(c.bias.as_ref().unwrap().data(), &[0.5, -1.0]);
    }
}
