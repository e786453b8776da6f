//! The steps and layers of a quantized model (see [`crate::model`] for the domains they
//! work in), and what each layer answers about its weights.

use cinder_tensor::graph::OpSpec;
use cinder_tensor::{
    Mapping, QuantParams, RequantMultiplier, Tensor, TensorBuf, TensorQuantParams, round_sum,
};
use serde::{Deserialize, Serialize};

use crate::arith::PoolKind;
use crate::config::Mode;
use crate::geometry::{Geometry, Window, chw};

/// One step of a quantized model: it reads the tensors `inputs` and writes the tensor
/// named after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step's output tensor: the graph node's name for the steps of nodes (a layer
    /// with a fused activation keeps the layer's name), `quantize:T` / `dequantize:T`
    /// for the domain borders of the float graph's tensor `T`.
    pub name: String,
    /// The tensors read: [`INPUT`](crate::model::INPUT) or earlier steps' names.
    pub inputs: Vec<String>,
    pub op: StepOp,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOp {
    /// float -> int8 with these calibrated parameters.
    Quantize(QuantParams),
    /// int8 -> float with the input's parameters.
    Dequantize,
    /// A convolution; weights `[out, in / groups, kh, kw]`, symmetric zero padding.
    Conv2d {
        stride: [usize; 2],
        padding: [usize; 2],
        /// 1, or the channel count (depthwise), or any common divisor of both.
        groups: usize,
        layer: Layer,
    },
    Linear(Layer),
    /// ReLU or a clip on its own (in int8 a clamp of the codes; the parameters stay).
    Activation(Activation),
    /// Max over each window; padding taps are left out.
    MaxPool2d(Window),
    /// Mean over each window; int8 keeps the parameters (rounding: [`crate::kernels`]
    /// `pool`).
    AvgPool2d {
        window: Window,
        /// Padding taps count (as 0) in the divisor.
        count_include_pad: bool,
    },
    /// `[C, H, W] -> [C, 1, 1]`, the mean of each channel.
    GlobalAvgPool,
    /// The elementwise sum of two tensors of the same shape and domain.
    Add(Merge),
    /// Tensors of the same domain joined along channels (dimension 0).
    Concat(Merge),
    /// `[C, H, W] -> [C * H * W]` (NCHW order).
    Flatten,
}

/// A clamp after an operation: fused into a layer's output stage, or a step of its own.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Activation {
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, min), max)` (ReLU6 is `Clip { min: 0, max: 6 }`).
    Clip {
        min: f32,
        max: f32,
    },
}

impl Activation {
    /// The activation an operator is, when it can be fused into the layer it reads
    /// (ReLU and clips); `None` for every other operator.
    pub fn fused_by(op: &OpSpec) -> Option<Self> {
        match *op {
            OpSpec::Relu => Some(Activation::Relu),
            OpSpec::Clip { min, max } => Some(Activation::Clip { min, max }),
            _ => None,
        }
    }

    /// The activation of a float value.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Clip { min, max } => x.max(min).min(max),
        }
    }

    /// [`Self::apply`] to every value, the variant chosen once (so each loop vectorizes).
    pub fn apply_all(self, values: &mut [f32]) {
        match self {
            Activation::None => {}
            Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Clip { min, max } => {
                values.iter_mut().for_each(|v| *v = v.max(min).min(max))
            }
        }
    }

    /// The clamp of codes with parameters `p`: the grid, narrowed to the codes of the
    /// activation's bounds (`quantize(0)` is the zero point for ReLU).
    pub fn bounds(self, p: &QuantParams) -> (i32, i32) {
        match self {
            Activation::None => (p.qmin, p.qmax),
            Activation::Relu => (p.zero_point.max(p.qmin), p.qmax),
            Activation::Clip { min, max } => (p.quantize(min), p.quantize(max)),
        }
    }
}

/// An `Add` or `Concat`: float, or int8 with every input rescaled to the output's
/// parameters, and a fused activation.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// `Some` when the inputs and the output are int8.
    pub int: Option<IntMerge>,
    pub activation: Activation,
}

/// The integer side of a merge: `q_out = clamp(zp_out + Σ M_i (q_i - zp_i))` (`Add`), or
/// each input's `zp_out + M_i (q_i - zp_i)` in its channels (`Concat`), rounded once
/// ([`IntMerge::output_code`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IntMerge {
    /// `s_in[i] / s_out`, one per input.
    pub multipliers: Vec<RequantMultiplier>,
    pub output: QuantParams,
}

impl IntMerge {
    /// The output code of centred input codes `(input, q - zp_in)`: one input (a
    /// `Concat`'s) rescaled by its multiplier, or the sum of several (an `Add`'s), each
    /// rescaled with [`cinder_tensor::SUM_FRACTION_BITS`] fractional bits; either rounded
    /// once, then the output zero point added and the result clamped to `activation`'s
    /// bounds. The plain definition, which the fast path equals bit for bit.
    pub fn output_code(&self, terms: &[(usize, i32)], activation: Activation) -> i32 {
        let offset = match terms {
            [(i, c)] => self.multipliers[*i].apply(*c),
            _ => round_sum(
                terms
                    .iter()
                    .map(|&(i, c)| self.multipliers[i].apply_fraction(c))
                    .fold(0, i64::saturating_add),
            ),
        };
        let (lo, hi) = activation.bounds(&self.output);
        (i64::from(offset) + i64::from(self.output.zero_point)).clamp(i64::from(lo), i64::from(hi))
            as i32
    }
}

/// A convolution's or linear layer's weights and execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// A following ReLU or clip fused into the output stage.
    pub activation: Activation,
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
                groups,
                layer,
            } => {
                let w = layer.weight_shape();
                Geometry::Conv {
                    input: chw(in_shape),
                    window: Window {
                        kernel: [w[2], w[3]],
                        stride: *stride,
                        padding: *padding,
                    },
                    groups: *groups,
                }
            }
            _ => Geometry::Linear,
        }
    }

    /// The window and reduction of a pooling step over an input of `in_shape` (a global
    /// average is a window over the whole image).
    pub(crate) fn pool(&self, in_shape: &[usize]) -> Option<(Window, PoolKind)> {
        match *self {
            StepOp::MaxPool2d(window) => Some((window, PoolKind::Max)),
            StepOp::AvgPool2d {
                window,
                count_include_pad,
            } => Some((
                window,
                PoolKind::Avg {
                    include_pad: count_include_pad,
                },
            )),
            StepOp::GlobalAvgPool => {
                let [_, h, w] = chw(in_shape);
                Some((
                    Window::square(1, 1, 0).with_kernel([h, w]),
                    PoolKind::Avg { include_pad: true },
                ))
            }
            _ => None,
        }
    }

    /// How many inputs the step reads: at least, and at most.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            StepOp::Add(_) => (2, 2),
            StepOp::Concat(_) => (2, usize::MAX),
            _ => (1, 1),
        }
    }
}

impl Layer {
    /// `[out, in / groups, kh, kw]` or `[out, in]`.
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

    /// Taps per output: `in / groups * kh * kw` or `in`.
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
    pub fn requantize(&self, c: usize, acc: i32, activation: Activation) -> i32 {
        let (lo, hi) = activation.bounds(&self.output);
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
