//! The operators a float graph is built from, with their weights.
//!
//! Weights use the layout every other framework uses: convolution
//! `[out, in / groups, kh, kw]`, linear `[out, in]`, batch-norm statistics `[channels]`.

use crate::tensor::{Tensor, TensorBuf};

/// A 2-D convolution with symmetric zero padding; depthwise when `groups` equals the
/// input and output channel counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// `[out_channels, in_channels / groups, kh, kw]`
    pub weight: TensorBuf<f32>,
    /// `[out_channels]`, or none (a convolution followed by batch-norm usually has none).
    pub bias: Option<TensorBuf<f32>>,
    /// `[vertical, horizontal]`
    pub stride: [usize; 2],
    /// `[vertical, horizontal]` zeros added on each side.
    pub padding: [usize; 2],
    /// Channel groups: 1 for a dense convolution, the channel count for a depthwise one.
    pub groups: usize,
}

impl Conv2d {
    /// A dense convolution with square kernel, equal strides and equal padding.
    pub fn dense(
        weight: TensorBuf<f32>,
        bias: Option<TensorBuf<f32>>,
        stride: usize,
        padding: usize,
    ) -> Self {
        Self {
            weight,
            bias,
            stride: [stride; 2],
            padding: [padding; 2],
            groups: 1,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Input channels: the weight's second dimension times the group count.
    pub fn in_channels(&self) -> usize {
        self.weight.shape()[1] * self.groups
    }

    /// `[kh, kw]`
    pub fn kernel(&self) -> [usize; 2] {
        let s = self.weight.shape();
        [s[2], s[3]]
    }

    /// One input channel per output channel and per group.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels() && self.groups == self.out_channels()
    }

    /// The bias, or zeros when there is none.
    pub fn bias_or_zeros(&self) -> Vec<f32> {
        bias_or_zeros(self.bias.as_ref(), self.out_channels())
    }
}

/// A fully connected layer `y = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[out_features, in_features]`
    pub weight: TensorBuf<f32>,
    /// `[out_features]`, or none.
    pub bias: Option<TensorBuf<f32>>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// The bias, or zeros when there is none.
    pub fn bias_or_zeros(&self) -> Vec<f32> {
        bias_or_zeros(self.bias.as_ref(), self.out_features())
    }
}

fn bias_or_zeros(bias: Option<&TensorBuf<f32>>, len: usize) -> Vec<f32> {
    bias.map_or_else(|| vec![0.0; len], |b| b.data().to_vec())
}

/// A pooling window: floor mode, symmetric padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2d {
    /// `[kh, kw]`
    pub kernel: [usize; 2],
    /// `[vertical, horizontal]`
    pub stride: [usize; 2],
    /// `[vertical, horizontal]` on each side (max-pool pads with -inf).
    pub padding: [usize; 2],
}

impl Pool2d {
    /// A square window with equal strides and no padding.
    pub fn square(kernel: usize, stride: usize) -> Self {
        Self {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [0; 2],
        }
    }
}

/// Average pooling over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2d {
    pub window: Pool2d,
    /// Whether padded positions count in the divisor (PyTorch's default) or not (ONNX's).
    pub count_include_pad: bool,
}

/// Batch normalization with running statistics: `gamma * (x - mean) / sqrt(var + eps) + beta`
/// per channel. Training graphs only: [`super::FloatGraph::fold_batch_norms`] folds it
/// into the convolution or linear layer it follows before quantization.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// `[channels]` scale
    pub gamma: TensorBuf<f32>,
    /// `[channels]` shift
    pub beta: TensorBuf<f32>,
    /// `[channels]` running mean
    pub mean: TensorBuf<f32>,
    /// `[channels]` running variance
    pub var: TensorBuf<f32>,
    pub eps: f32,
}

impl BatchNorm {
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    /// Per channel `(a, b)` with `bn(x) = a * x + b`.
    pub fn affine(&self) -> Vec<(f32, f32)> {
        let (g, b, m, v) = (
            self.gamma.data(),
            self.beta.data(),
            self.mean.data(),
            self.var.data(),
        );
        (0..self.channels())
            .map(|c| {
                let a = g[c] / (v[c] + self.eps).sqrt();
                (a, b[c] - a * m[c])
            })
            .collect()
    }
}

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv2d(Conv2d),
    /// Training graphs only; folded before quantization.
    BatchNorm(BatchNorm),
    Relu,
    /// `min(max(x, min), max)`; ReLU6 is `Clip { min: 0.0, max: 6.0 }`.
    Clip {
        min: f32,
        max: f32,
    },
    MaxPool2d(Pool2d),
    AvgPool2d(AvgPool2d),
    /// `[C, H, W] -> [C, 1, 1]`, the mean of each channel.
    GlobalAvgPool,
    /// Element-wise sum of two inputs of one shape (a residual connection).
    Add,
    /// Two or more `[C_i, H, W]` inputs stacked along channels.
    Concat,
    /// `[C, H, W] -> [C * H * W]` in channel-major (NCHW) order.
    Flatten,
    Linear(Linear),
}

impl Op {
    /// ReLU6, the clamp to `[0, 6]` of MobileNetV2.
    pub const RELU6: Op = Op::Clip { min: 0.0, max: 6.0 };

    /// The operator's name in the on-disk format and in messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv2d(_) => "conv2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::Relu => "relu",
            Op::Clip { .. } => "clip",
            Op::MaxPool2d(_) => "max_pool2d",
            Op::AvgPool2d(_) => "avg_pool2d",
            Op::GlobalAvgPool => "global_avg_pool",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Flatten => "flatten",
            Op::Linear(_) => "linear",
        }
    }

    /// The weight and bias of a convolution or linear layer.
    pub fn weight_and_bias(&self) -> Option<(&TensorBuf<f32>, Option<&TensorBuf<f32>>)> {
        match self {
            Op::Conv2d(c) => Some((&c.weight, c.bias.as_ref())),
            Op::Linear(l) => Some((&l.weight, l.bias.as_ref())),
            _ => None,
        }
    }

    /// Whether the node has weights that quantization maps to integers.
    pub fn is_weighted(&self) -> bool {
        self.weight_and_bias().is_some()
    }

    /// How many inputs the operator takes: `(min, max)`.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Add => (2, 2),
            Op::Concat => (2, usize::MAX),
            _ => (1, 1),
        }
    }
}
