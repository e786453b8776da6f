//! The steps and layers of a quantized model (see [`crate::model`] for the domains they
//! work in), and what each layer answers about its weights.

use cinder_tensor::{
    Mapping, QuantParams, RequantMultiplier, Tensor, TensorBuf, TensorQuantParams,
};

use super::rules::clamp_bounds;
use crate::config::Mode;
use crate::geometry::{Geometry, Window, chw};

/// One step of a quantized model.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The graph node's name; for quantize steps the name of the tensor quantized.
    pub name: String,
    pub op: StepOp,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOp {
    /// float -> int8 with these calibrated parameters.
    Quantize(QuantParams),
    /// int8 -> float with the current parameters.
    Dequantize,
    Conv2d {
        stride: usize,
        padding: usize,
        layer: Layer,
    },
    Linear(Layer),
    Relu,
    MaxPool2d {
        kernel: usize,
        stride: usize,
    },
    Flatten,
}

/// A convolution's or linear layer's weights and execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// A following ReLU fused into the output stage.
    pub relu: bool,
    pub exec: LayerExec,
}

/// How a layer runs, with the weights that mode needs.
#[derive(Debug, Clone, PartialEq)]
pub enum LayerExec {
    Static(StaticLayer),
    Dynamic(DynamicLayer),
    Float(FloatLayer),
}

/// Integer weight codes on the narrow signed grid of `bits` bits, per tensor or per
/// output channel (axis 0).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantWeights {
    pub bits: u8,
    pub mapping: Mapping,
    pub codes: TensorBuf<i8>,
    pub params: TensorQuantParams,
}

/// Integer only: `acc = bias + sum (q_in - zp_in)(q_w - zp_w)`, then
/// `clamp(multiplier.apply(acc) + zp_out, lo, hi)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticLayer {
    pub weights: QuantWeights,
    /// Scale `s_in * s_w[c]`, zero point 0.
    pub bias: Vec<i32>,
    /// `s_in * s_w[c] / s_out` per weight channel (one for per-tensor weights).
    pub multipliers: Vec<RequantMultiplier>,
    pub output: QuantParams,
}

/// Input quantized with the range of each batch; `y = (s_in * s_w[c]) * acc + bias`.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicLayer {
    pub weights: QuantWeights,
    pub bias: Vec<f32>,
}

/// Plain f32.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatLayer {
    pub weight: TensorBuf<f32>,
    pub bias: Vec<f32>,
}

impl StepOp {
    /// The layer of a convolution or linear step.
    pub fn layer(&self) -> Option<&Layer> {
        match self {
            StepOp::Conv2d { layer, .. } | StepOp::Linear(layer) => Some(layer),
            _ => None,
        }
    }

    /// What a weighted step does to a sample of shape `in_shape`.
    pub(crate) fn geometry(&self, in_shape: &[usize]) -> Geometry {
        match self {
            StepOp::Conv2d {
                stride,
                padding,
                layer,
            } => Geometry::Conv {
                input: chw(in_shape),
                window: Window {
                    kernel: layer.weight_shape()[2],
                    stride: *stride,
                    padding: *padding,
                },
            },
            _ => Geometry::Linear,
        }
    }
}

impl Layer {
    /// `[out, in, k, k]` or `[out, in]`.
    pub fn weight_shape(&self) -> &[usize] {
        match &self.exec {
            LayerExec::Static(s) => s.weights.codes.shape(),
            LayerExec::Dynamic(d) => d.weights.codes.shape(),
            LayerExec::Float(f) => f.weight.shape(),
        }
    }

    pub fn out_features(&self) -> usize {
        self.weight_shape()[0]
    }

    /// Taps per output: `in * k * k` or `in`.
    pub fn depth(&self) -> usize {
        self.weight_shape()[1..].iter().product()
    }

    pub fn mode(&self) -> Mode {
        match self.exec {
            LayerExec::Static(_) => Mode::Static,
            LayerExec::Dynamic(_) => Mode::Dynamic,
            LayerExec::Float(_) => Mode::Float,
        }
    }

    pub fn quant_weights(&self) -> Option<&QuantWeights> {
        match &self.exec {
            LayerExec::Static(s) => Some(&s.weights),
            LayerExec::Dynamic(d) => Some(&d.weights),
            LayerExec::Float(_) => None,
        }
    }
}

impl StaticLayer {
    /// The output code of channel `c` for an accumulator `acc` that includes the bias:
    /// the plain definition, which the fast output stage equals bit for bit.
    pub fn requantize(&self, c: usize, acc: i32, relu: bool) -> i32 {
        let (lo, hi) = clamp_bounds(&self.output, relu);
        let offset = i64::from(self.multipliers[c % self.multipliers.len()].apply(acc));
        (offset + i64::from(self.output.zero_point)).clamp(i64::from(lo), i64::from(hi)) as i32
    }
}

impl QuantWeights {
    /// The zero point of output channel `c`.
    pub fn zero_point(&self, c: usize) -> i32 {
        self.params.channel(c).zero_point
    }

    /// The scale of output channel `c`.
    pub fn scale(&self, c: usize) -> f32 {
        self.params.channel(c).scale
    }

    /// The real weights, canonical layout.
    pub fn dequantized(&self) -> TensorBuf<f32> {
        let depth = self.codes.len() / self.codes.shape()[0].max(1);
        let data = self
            .codes
            .data()
            .chunks_exact(depth)
            .enumerate()
            .flat_map(|(c, row)| {
                let p = *self.params.channel(c);
                row.iter().map(move |&q| p.dequantize(i32::from(q)))
            })
            .collect();
        TensorBuf::new(self.codes.shape().to_vec(), data).expect("same shape")
    }
}
