//! The model zoo by stable name: the architectures of [`cinder_tensor::graph::zoo`]
//! (`convnet`, `resnet20`, `mobilenetv2-tiny`) that [`crate::GraphNet`] trains, with the
//! reference ConvNet's sizes as a checked config ([`ConvNetConfig`]).

use cinder_tensor::Tensor as _;
pub use cinder_tensor::graph::zoo::{mobilenetv2_tiny, resnet20};
use cinder_tensor::graph::{FloatGraph, GraphSpec, Op, zoo};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The zoo's model names.
pub const MODELS: [&str; 3] = ["convnet", "resnet20", "mobilenetv2-tiny"];

/// The architecture `name` for images `input` (`[C, H, W]`) and `classes` classes; the
/// convnet is the reference one ([`ConvNetConfig::reference`]) with its BatchNorm
/// variant when `batch_norm`.
pub fn by_name(
    name: &str,
    input: [usize; 3],
    classes: usize,
    batch_norm: bool,
) -> Result<GraphSpec, ModelError> {
    match name {
        "convnet" => ConvNetConfig {
            in_channels: input[0],
            classes,
            input_size: input[1],
            ..ConvNetConfig::reference().with_batch_norm(batch_norm)
        }
        .spec(),
        "resnet20" => Ok(resnet20(input, classes)),
        "mobilenetv2-tiny" => Ok(mobilenetv2_tiny(input, classes)),
        other => Err(ModelError::Config(format!(
            "unknown model `{other}` (expected one of {MODELS:?})"
        ))),
    }
}

/// Sizes of the reference ConvNet: `conv(3→64,k3,p1) → ReLU → maxpool2 →
/// conv(64→128,k3,p1) → ReLU → maxpool2 → flatten → fc(8192→1024) → ReLU → fc(1024→10)`,
/// optionally with a BatchNorm after each convolution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvNetConfig {
    pub in_channels: usize,
    /// Output channels of `conv1` and `conv2`.
    pub channels: [usize; 2],
    /// Width of the hidden fully connected layer `fc1`.
    pub hidden: usize,
    pub classes: usize,
    /// Height and width of the (square) input image.
    pub input_size: usize,
    /// A BatchNorm (`bn1`, `bn2`) after each convolution.
    pub batch_norm: bool,
}

impl Default for ConvNetConfig {
    fn default() -> Self {
        Self::reference()
    }
}

impl ConvNetConfig {
    /// The article's model: 3×32×32 input, 64 and 128 channels, 1024 hidden, 10 classes.
    pub fn reference() -> Self {
        Self {
            in_channels: 3,
            channels: [64, 128],
            hidden: 1024,
            classes: 10,
            input_size: 32,
            batch_norm: false,
        }
    }

    pub fn with_batch_norm(mut self, batch_norm: bool) -> Self {
        self.batch_norm = batch_norm;
        self
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let sizes = [
            self.in_channels,
            self.channels[0],
            self.channels[1],
            self.hidden,
            self.classes,
        ];
        if sizes.contains(&0) {
            return Err(ModelError::Config(format!(
                "all sizes must be positive, got {self:?}"
            )));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(4) {
            return Err(ModelError::Config(format!(
                "input_size {} must be a positive multiple of 4 (two 2x2 max-pools)",
                self.input_size
            )));
        }
        Ok(())
    }

    /// Features after the second pool: `channels[1] · (input_size/4)²`.
    pub fn flat_features(&self) -> usize {
        self.channels[1] * (self.input_size / 4).pow(2)
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_channels, self.input_size, self.input_size]
    }

    /// The architecture.
    pub fn spec(&self) -> Result<GraphSpec, ModelError> {
        self.validate()?;
        Ok(zoo::convnet(
            self.input_shape(),
            self.channels,
            self.hidden,
            self.classes,
            self.batch_norm,
        ))
    }
}

/// Multiply-accumulates of one sample's forward pass through `graph` (convolutions and
/// linear layers).
pub fn multiply_accumulates(graph: &FloatGraph) -> u64 {
    graph
        .nodes()
        .iter()
        .zip(graph.output_shapes())
        .map(|(node, out)| match &node.op {
            Op::Conv2d(c) => {
                let per_output: usize = c.weight.shape()[1..].iter().product();
                (out.iter().product::<usize>() * per_output) as u64
            }
            Op::Linear(l) => (l.in_features() * l.out_features()) as u64,
            _ => 0,
        })
        .sum()
}
