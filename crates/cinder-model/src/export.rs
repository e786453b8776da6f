//! The hand-off to the crates that do not know burn.
//!
//! - [`BurnData`]: burn's `TensorData` (f32) behind the common [`cinder_tensor::Tensor`]
//!   trait, so observers and the runtime read burn outputs without copying or knowing burn.
//! - [`Activations`]: the graph input and every node's output of one forward pass, keyed
//!   by node name, for calibration.
//! - [`ConvNet::to_float_graph`] / [`ConvNet::from_float_graph`]: the trained model as a
//!   backend-neutral [`FloatGraph`] (conv `[out, in, k, k]`, linear `[out, in]`; burn keeps
//!   linear weights `[in, out]`, so they are transposed on the way out and back).

use burn::nn::PaddingConfig2d;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_tensor::graph::{self, FloatGraph, Op, Pool2d};
use cinder_tensor::{Tensor as _, TensorBuf};

use crate::convnet::{ConvNet, ConvNetConfig, HostLayer, HostWeights, bias_of, host};
use crate::error::ModelError;

/// Name of the graph input in [`Activations`].
pub const INPUT_NAME: &str = "input";

/// The ConvNet's float graph nodes, in order.
pub const NODE_NAMES: [&str; 10] = [
    "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2",
];

/// burn tensor data holding f32, readable through the common tensor trait.
#[derive(Debug, Clone)]
pub struct BurnData {
    data: TensorData,
    shape: Vec<usize>,
}

impl BurnData {
    /// Wraps `data`, converting any float or integer dtype to f32 and checking that the
    /// elements are readable on the host (so [`cinder_tensor::Tensor::data`] cannot fail).
    pub fn new(data: TensorData) -> Result<Self, ModelError> {
        let data = data.convert::<f32>();
        data.as_slice::<f32>()
            .map_err(|e| ModelError::Data(format!("f32 elements not readable: {e:?}")))?;
        let shape = data.shape().as_slice().to_vec();
        Ok(Self { data, shape })
    }

    /// Reads a burn tensor back to the host.
    pub fn from_tensor<const D: usize>(tensor: &Tensor<D>) -> Result<Self, ModelError> {
        Self::new(tensor.to_data())
    }

    pub fn tensor_data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_tensor_data(self) -> TensorData {
        self.data
    }

    /// An owned copy as the workspace's interchange buffer.
    pub fn to_buf(&self) -> TensorBuf<f32> {
        TensorBuf::new(self.shape.clone(), self.data().to_vec())
            .expect("shape and data come from one TensorData")
    }
}

impl cinder_tensor::Tensor<f32> for BurnData {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> &[f32] {
        self.data
            .as_slice::<f32>()
            .expect("checked readable as f32 in BurnData::new")
    }
}

/// Activations of one forward pass in graph order: [`INPUT_NAME`], then each node's output.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    entries: Vec<(String, BurnData)>,
    error: Option<String>,
}

impl Activations {
    pub(crate) fn push(&mut self, name: &str, data: TensorData) {
        match BurnData::new(data) {
            Ok(d) => self.entries.push((name.to_owned(), d)),
            Err(e) => self.error = Some(format!("activation `{name}`: {e}")),
        }
    }

    pub(crate) fn finish(&self) -> Result<(), ModelError> {
        self.error
            .clone()
            .map_or(Ok(()), |e| Err(ModelError::Data(e)))
    }

    pub fn get(&self, name: &str) -> Option<&BurnData> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// `(name, activation)` pairs in graph order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BurnData)> {
        self.entries.iter().map(|(n, d)| (n.as_str(), d))
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn into_entries(self) -> Vec<(String, BurnData)> {
        self.entries
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

fn graph_conv(conv: &burn::nn::conv::Conv2d) -> Result<graph::Conv2d, ModelError> {
    let dims = conv.weight.dims();
    Ok(graph::Conv2d {
        weight: TensorBuf::new(dims.to_vec(), host(conv.weight.val())?)?,
        bias: Some(TensorBuf::from_vec(bias_of(&conv.bias, dims[0])?)),
        stride: conv.stride,
        padding: [symmetric_padding(&conv.padding)?; 2],
        groups: conv.groups,
    })
}

fn symmetric_padding(padding: &PaddingConfig2d) -> Result<usize, ModelError> {
    match *padding {
        PaddingConfig2d::Valid => Ok(0),
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Ok(t),
        ref other => Err(ModelError::GraphLayout(format!(
            "padding {other:?} is not one symmetric amount"
        ))),
    }
}

fn graph_linear(linear: &burn::nn::Linear) -> Result<graph::Linear, ModelError> {
    let [d_in, d_out] = linear.weight.dims();
    let weight = transpose(&host(linear.weight.val())?, d_in, d_out);
    Ok(graph::Linear {
        weight: TensorBuf::new(vec![d_out, d_in], weight)?,
        bias: Some(TensorBuf::from_vec(bias_of(&linear.bias, d_out)?)),
    })
}

impl ConvNet {
    /// The model as a float graph named [`NODE_NAMES`], BatchNorm folded in (eval mode).
    pub fn to_float_graph(&self) -> Result<FloatGraph, ModelError> {
        let model = self.fold_batchnorm()?;
        let pool = || Op::MaxPool2d(Pool2d::square(2, 2));
        let ops = [
            Op::Conv2d(graph_conv(&model.conv1)?),
            Op::Relu,
            pool(),
            Op::Conv2d(graph_conv(&model.conv2)?),
            Op::Relu,
            pool(),
            Op::Flatten,
            Op::Linear(graph_linear(&model.fc1)?),
            Op::Relu,
            Op::Linear(graph_linear(&model.fc2)?),
        ];
        let nodes = NODE_NAMES
            .iter()
            .zip(ops)
            .map(|(name, op)| ((*name).to_owned(), op))
            .collect();
        Ok(FloatGraph::chain(
            self.config.input_shape().to_vec(),
            nodes,
        )?)
    }

    /// Rebuilds a (BatchNorm-free) ConvNet from a float graph with the layout that
    /// [`ConvNet::to_float_graph`] writes, on `device`.
    pub fn from_float_graph(graph: &FloatGraph, device: &Device) -> Result<ConvNet, ModelError> {
        let nodes = graph.nodes();
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        if names != NODE_NAMES || !graph.is_chain() {
            return Err(ModelError::GraphLayout(format!(
                "nodes {names:?}, expected {NODE_NAMES:?}"
            )));
        }
        let kind_error = |i: usize, expected: &str| {
            ModelError::GraphLayout(format!(
                "node `{}` is {:?}, expected {expected}",
                NODE_NAMES[i], nodes[i].op
            ))
        };
        let conv = |i: usize| match &nodes[i].op {
            Op::Conv2d(c)
                if c.kernel() == [3, 3]
                    && c.stride == [1, 1]
                    && c.padding == [1, 1]
                    && c.groups == 1 =>
            {
                Ok(c)
            }
            _ => Err(kind_error(i, "a 3x3 convolution, stride 1, padding 1")),
        };
        let linear = |i: usize| match &nodes[i].op {
            Op::Linear(l) => Ok(l),
            _ => Err(kind_error(i, "a linear layer")),
        };
        for (i, expected) in [
            (1, Op::Relu),
            (2, Op::MaxPool2d(Pool2d::square(2, 2))),
            (4, Op::Relu),
        ]
        .into_iter()
        .chain([
            (5, Op::MaxPool2d(Pool2d::square(2, 2))),
            (6, Op::Flatten),
            (8, Op::Relu),
        ]) {
            if nodes[i].op != expected {
                return Err(kind_error(i, &format!("{expected:?}")));
            }
        }
        let (conv1, conv2, fc1, fc2) = (conv(0)?, conv(3)?, linear(7)?, linear(9)?);
        let input = graph.input_shape();
        if input.len() != 3 || input[1] != input[2] {
            return Err(ModelError::GraphLayout(format!(
                "input shape {input:?} is not [C, S, S]"
            )));
        }
        let config = ConvNetConfig {
            in_channels: input[0],
            channels: [conv1.out_channels(), conv2.out_channels()],
            hidden: fc1.out_features(),
            classes: fc2.out_features(),
            input_size: input[1],
            batch_norm: false,
        };
        config.validate()?;
        let weights = HostWeights {
            conv1: host_conv(conv1),
            conv2: host_conv(conv2),
            fc1: host_linear(fc1),
            fc2: host_linear(fc2),
        };
        Ok(ConvNet::assemble(&config, weights, device))
    }
}

fn host_conv(c: &graph::Conv2d) -> HostLayer<4> {
    let s = c.weight.shape();
    HostLayer {
        weight: c.weight.data().to_vec(),
        weight_shape: [s[0], s[1], s[2], s[3]],
        bias: c.bias_or_zeros(),
    }
}

fn host_linear(l: &graph::Linear) -> HostLayer<2> {
    let (d_out, d_in) = (l.out_features(), l.in_features());
    HostLayer {
        weight: transpose(l.weight.data(), d_out, d_in),
        weight_shape: [d_in, d_out],
        bias: l.bias_or_zeros(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
