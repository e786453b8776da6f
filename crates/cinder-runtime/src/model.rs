//! The quantized model: what a model file holds, what the reference interpreter and the
//! float simulation read, and what the fast plan is built from.
//!
//! A model is an ordered list of [`Step`]s over one sample of shape `input_shape`
//! (`[C, H, W]` or `[F]`). Tensors flow in one of two domains:
//!
//! - **float**: f32, canonical NCHW (the float graph's layout);
//! - **int8**: integer codes `q` with the current parameters, `real = scale * (q - zp)`,
//!   on a signed grid within `[-128, 127]`.
//!
//! [`StepOp::Quantize`] enters the int8 domain with calibrated parameters,
//! [`StepOp::Dequantize`] leaves it. A static layer reads and writes int8 (its input
//! parameters are the current ones, its output parameters are its own); dynamic and float
//! layers read and write float. ReLU, max-pool and flatten work in either domain (in
//! int8, ReLU is `max(q, zp)` and max-pool keeps the parameters).
//!
//! Weights are stored in the float graph's canonical layout (`[out, in, k, k]`,
//! `[out, in]`, a linear layer's columns in NCHW flatten order); the fast plan permutes
//! them for its NHWC execution, the reference interpreter does not.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use cinder_tensor::{
    Granularity, Mapping, QuantError, QuantParams, QuantScheme, RequantMultiplier, Signedness,
    Tensor, TensorBuf, TensorQuantParams,
};

use crate::config::Mode;
use crate::error::{Invalid, RunError};
use crate::float::{Geometry, Window, chw};
use crate::plan::Plan;

/// The int8 activation grid: every activation code fits an `i8`.
pub const ACTIVATION_GRID: (i32, i32) = (-128, 127);

/// Weight bit widths the runtime executes. Every width runs as int8 codes; the model
/// file packs narrow ones ([`codes_per_byte`]).
pub const WEIGHT_BITS: RangeInclusive<u8> = 2..=8;

/// How many `bits`-bit weight codes the model file stores per byte: one for 5–8 bits,
/// two (nibbles) for 3–4 bits, four for 2 bits.
pub fn codes_per_byte(bits: u8) -> usize {
    match bits {
        ..=2 => 4,
        3..=4 => 2,
        _ => 1,
    }
}

/// The largest `|a - za| * |w - zw|` summand bound the accumulator analysis uses: the
/// kernel's raw sum and the three zero-point correction terms are each at most
/// `128 * 127` per tap, so `4 * 128 * 127` per tap bounds every partial sum.
const ACC_PER_TAP: i64 = 4 * 128 * 127;

/// One step of a quantized model.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The graph node's name; for quantize steps the name of the tensor quantized.
    pub name: String,
    pub op: StepOp,
}

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

/// The grid of `bits`-bit weights: signed and narrow, `[-(2^(b-1) - 1), 2^(b-1) - 1]`, so
/// that int8 codes stay in `[-127, 127]` as the exact kernels require.
pub fn weight_grid(bits: u8) -> (i32, i32) {
    let max = (1i32 << (bits - 1)) - 1;
    (-max, max)
}

/// The weight scheme of a layer config.
pub fn weight_scheme(
    bits: u8,
    mapping: Mapping,
    per_channel: bool,
) -> Result<QuantScheme, QuantError> {
    let granularity = if per_channel {
        Granularity::PerChannel { axis: 0 }
    } else {
        Granularity::PerTensor
    };
    QuantScheme::new(bits, Signedness::Signed, mapping, true, granularity)
}

/// The activation scheme of dynamic layers: signed, asymmetric, the full int8 grid.
fn dynamic_scheme() -> QuantScheme {
    QuantScheme::new(
        8,
        Signedness::Signed,
        Mapping::Asymmetric,
        false,
        Granularity::PerTensor,
    )
    .expect("8 bits are supported")
}

/// A dynamic layer's input parameters for a batch whose values span `range`.
pub(crate) fn dynamic_params(layer: &str, range: (f32, f32)) -> Result<QuantParams, RunError> {
    QuantParams::from_range(range.0, range.1, &dynamic_scheme()).map_err(|e| {
        RunError::DynamicRange {
            layer: layer.to_owned(),
            message: e.to_string(),
        }
    })
}

/// The range of a dynamic layer's whole input batch, by the observers' min/max scan.
pub(crate) fn scan_range(layer: &str, data: &[f32]) -> Result<(f32, f32), RunError> {
    cinder_observers::min_max(data).map_err(|e| RunError::DynamicRange {
        layer: layer.to_owned(),
        message: e.to_string(),
    })
}

/// The real value of one accumulator unit, `s_in * s_w` in f32: the scale of a static
/// layer's int32 bias and of a dynamic layer's accumulators.
pub(crate) fn acc_scale(s_in: f32, s_w: f32) -> f32 {
    s_in * s_w
}

/// A dynamic layer's output: `acc * (s_in * s_w) + bias`, with a fused ReLU.
#[inline]
pub(crate) fn dynamic_output(acc: i32, scale: f32, bias: f32, relu: bool) -> f32 {
    let y = acc as f32 * scale + bias;
    if relu { crate::float::relu(y) } else { y }
}

/// The requantization multiplier `s_in * s_w / s_out`, computed in f64.
pub(crate) fn requant_multiplier(
    s_in: f32,
    s_w: f32,
    s_out: f32,
) -> Result<RequantMultiplier, QuantError> {
    RequantMultiplier::from_real(f64::from(s_in) * f64::from(s_w) / f64::from(s_out))
}

/// The largest bias magnitude with which no partial sum of a layer of `depth` taps can
/// overflow int32, or `None` when the layer is too deep for int32 accumulation.
pub(crate) fn bias_bound(depth: usize) -> Option<i32> {
    let worst = i64::try_from(depth).ok()?.checked_mul(ACC_PER_TAP)?;
    i32::try_from(i64::from(i32::MAX) - worst)
        .ok()
        .filter(|b| *b >= 0)
}

/// The output clamp of a static layer: the grid, floored at real 0 with a fused ReLU.
pub(crate) fn clamp_bounds(output: &QuantParams, relu: bool) -> (i32, i32) {
    let lo = if relu {
        output.zero_point.max(output.qmin)
    } else {
        output.qmin
    };
    (lo, output.qmax)
}

/// A fully checked quantized model, with its execution plan prepared.
pub struct QuantizedModel {
    input_shape: Vec<usize>,
    steps: Vec<Step>,
    /// Per-sample shape before every step, then after the last.
    shapes: Vec<Vec<usize>>,
    plan: Plan,
}

impl std::fmt::Debug for QuantizedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedModel")
            .field("input_shape", &self.input_shape)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl PartialEq for QuantizedModel {
    fn eq(&self, other: &Self) -> bool {
        self.input_shape == other.input_shape && self.steps == other.steps
    }
}

impl QuantizedModel {
    /// Checks every rule of the format (shapes chain, domains match, codes on their
    /// grids, multipliers consistent with the scales, no int32 overflow possible) and
    /// prepares the fast plan.
    pub fn new(input_shape: Vec<usize>, steps: Vec<Step>) -> Result<Self, Invalid> {
        let shapes = validate(&input_shape, &steps)?;
        let plan = Plan::build(&steps, &shapes)?;
        Ok(Self {
            input_shape,
            steps,
            shapes,
            plan,
        })
    }

    /// Per-sample input shape.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Per-sample output shape.
    pub fn output_shape(&self) -> &[usize] {
        self.shapes.last().expect("the input shape is always there")
    }

    /// Per-sample shape before every step, then after the last.
    pub(crate) fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.plan
    }
}

#[derive(Clone, Copy)]
enum Domain {
    Float,
    Int(QuantParams),
}

/// Validates a model; returns the per-sample shape before every step and after the last.
fn validate(input_shape: &[usize], steps: &[Step]) -> Result<Vec<Vec<usize>>, Invalid> {
    if !matches!(input_shape.len(), 1 | 3) || input_shape.contains(&0) {
        return Err(Invalid::new(
            "input_shape",
            format!("{input_shape:?} is not a non-empty [C, H, W] or [F]"),
        ));
    }
    let mut shapes = vec![input_shape.to_vec()];
    let mut domain = Domain::Float;
    let mut names = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let field = format!("steps[{i}] ({})", step.name);
        if matches!(step.op, StepOp::Conv2d { .. } | StepOp::Linear(_)) && !names.insert(&step.name)
        {
            return Err(Invalid::new(field, "a layer of this name comes earlier"));
        }
        let (shape, next) = step_output(&field, step, &shapes[i], domain)?;
        shapes.push(shape);
        domain = next;
    }
    if let Domain::Int(_) = domain {
        return Err(Invalid::new(
            "steps",
            "the model ends in int8: a dequantize step must end it",
        ));
    }
    Ok(shapes)
}

fn step_output(
    field: &str,
    step: &Step,
    shape: &[usize],
    domain: Domain,
) -> Result<(Vec<usize>, Domain), Invalid> {
    let fail = |message: String| Err(Invalid::new(field, message));
    match &step.op {
        StepOp::Quantize(p) => {
            if let Domain::Int(_) = domain {
                return fail("quantize needs a float input, the tensor here is int8".into());
            }
            check_activation(field, p)?;
            Ok((shape.to_vec(), Domain::Int(*p)))
        }
        StepOp::Dequantize => match domain {
            Domain::Int(_) => Ok((shape.to_vec(), Domain::Float)),
            Domain::Float => {
                fail("dequantize needs an int8 input, the tensor here is float".into())
            }
        },
        StepOp::Relu => Ok((shape.to_vec(), domain)),
        StepOp::Flatten => Ok((vec![shape.iter().product()], domain)),
        StepOp::MaxPool2d { kernel, stride } => Ok((
            spatial(
                field,
                shape,
                shape.first().copied().unwrap_or(0),
                *kernel,
                *stride,
                0,
            )?,
            domain,
        )),
        StepOp::Conv2d {
            stride,
            padding,
            layer,
        } => {
            let w = layer.weight_shape();
            if w.len() != 4 || w.contains(&0) || w[2] != w[3] || shape.first() != Some(&w[1]) {
                return fail(format!(
                    "weight shape {w:?} does not fit input {shape:?}: expected [out, {}, k, k]",
                    shape.first().copied().unwrap_or(0)
                ));
            }
            let out = spatial(field, shape, w[0], w[2], *stride, *padding)?;
            Ok((out, check_layer(field, layer, domain)?))
        }
        StepOp::Linear(layer) => {
            let w = layer.weight_shape();
            if w.len() != 2 || w[0] == 0 || shape != [w[1]] {
                return fail(format!(
                    "weight shape {w:?} does not fit input {shape:?}: expected [out, in]"
                ));
            }
            Ok((vec![w[0]], check_layer(field, layer, domain)?))
        }
    }
}

/// `[channels, oh, ow]` after a window over a `[C, H, W]` shape.
fn spatial(
    field: &str,
    shape: &[usize],
    channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Vec<usize>, Invalid> {
    let window = |size: usize| {
        let padded = size + 2 * padding;
        (stride > 0 && kernel > 0 && padded >= kernel).then(|| (padded - kernel) / stride + 1)
    };
    match shape {
        [_, h, w] => match (window(*h), window(*w)) {
            (Some(oh), Some(ow)) => Ok(vec![channels, oh, ow]),
            _ => Err(Invalid::new(
                field,
                format!(
                    "kernel {kernel} stride {stride} padding {padding} does not fit input {shape:?}"
                ),
            )),
        },
        _ => Err(Invalid::new(
            field,
            format!("expected a [C, H, W] input, got {shape:?}"),
        )),
    }
}

fn check_activation(field: &str, p: &QuantParams) -> Result<(), Invalid> {
    QuantParams::new(p.scale, p.zero_point, p.qmin, p.qmax)
        .map_err(|e| Invalid::new(field, e.to_string()))?;
    let (lo, hi) = ACTIVATION_GRID;
    if p.qmin < lo || p.qmax > hi || p.qmin >= p.qmax {
        return Err(Invalid::new(
            field,
            format!(
                "activation grid [{}, {}] is not a grid inside [{lo}, {hi}]",
                p.qmin, p.qmax
            ),
        ));
    }
    Ok(())
}

fn check_layer(field: &str, layer: &Layer, domain: Domain) -> Result<Domain, Invalid> {
    let out = layer.out_features();
    let depth = layer.depth();
    let bias_len = |len: usize| {
        if len == out {
            Ok(())
        } else {
            Err(Invalid::new(
                format!("{field}.bias"),
                format!("{len} values for {out} outputs"),
            ))
        }
    };
    match (&layer.exec, domain) {
        (LayerExec::Static(s), Domain::Int(input)) => {
            check_weights(field, &s.weights, depth)?;
            bias_len(s.bias.len())?;
            let bound = bias_bound(depth).expect("checked with the weights");
            if let Some(i) = s
                .bias
                .iter()
                .position(|b| b.unsigned_abs() > bound.unsigned_abs())
            {
                return Err(Invalid::new(
                    format!("{field}.bias[{i}]"),
                    format!(
                        "{} exceeds ±{bound}, beyond which int32 accumulation could overflow",
                        s.bias[i]
                    ),
                ));
            }
            check_activation(&format!("{field}.output"), &s.output)?;
            check_multipliers(field, s, &input)?;
            Ok(Domain::Int(s.output))
        }
        (LayerExec::Dynamic(d), Domain::Float) => {
            check_weights(field, &d.weights, depth)?;
            bias_len(d.bias.len())?;
            check_finite(&format!("{field}.bias"), &d.bias)?;
            Ok(Domain::Float)
        }
        (LayerExec::Float(f), Domain::Float) => {
            bias_len(f.bias.len())?;
            check_finite(&format!("{field}.weight"), f.weight.data())?;
            check_finite(&format!("{field}.bias"), &f.bias)?;
            Ok(Domain::Float)
        }
        (LayerExec::Static(_), Domain::Float) => Err(Invalid::new(
            field,
            "a static layer needs an int8 input, the tensor here is float (no quantize step before it)",
        )),
        (_, Domain::Int(_)) => Err(Invalid::new(
            field,
            "a dynamic or float layer needs a float input, the tensor here is int8 (no dequantize step before it)",
        )),
    }
}

fn check_finite(field: &str, values: &[f32]) -> Result<(), Invalid> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Invalid::new(
            format!("{field}[{i}]"),
            format!("{} is not finite", values[i]),
        )),
        None => Ok(()),
    }
}

fn check_weights(field: &str, w: &QuantWeights, depth: usize) -> Result<(), Invalid> {
    let field = format!("{field}.weight");
    if !WEIGHT_BITS.contains(&w.bits) {
        return Err(Invalid::new(
            field,
            format!("{} bits: expected {WEIGHT_BITS:?}", w.bits),
        ));
    }
    if bias_bound(depth).is_none() {
        return Err(Invalid::new(
            field,
            format!("{depth} taps per output overflow int32 accumulation"),
        ));
    }
    let out = w.codes.shape()[0];
    let channels = match &w.params {
        TensorQuantParams::PerTensor(_) => 1,
        TensorQuantParams::PerChannel { axis: 0, channels } => channels.len(),
        TensorQuantParams::PerChannel { axis, .. } => {
            return Err(Invalid::new(
                field,
                format!("per-channel axis {axis}: expected 0"),
            ));
        }
    };
    if channels != 1 && channels != out {
        return Err(Invalid::new(
            field,
            format!("{channels} channel parameters for {out} outputs"),
        ));
    }
    let (qmin, qmax) = weight_grid(w.bits);
    for (c, p) in w.params.as_slice().iter().enumerate() {
        let pfield = format!("{field}_params[{c}]");
        QuantParams::new(p.scale, p.zero_point, p.qmin, p.qmax)
            .map_err(|e| Invalid::new(&pfield, e.to_string()))?;
        if (p.qmin, p.qmax) != (qmin, qmax) {
            return Err(Invalid::new(
                pfield,
                format!(
                    "grid [{}, {}], expected [{qmin}, {qmax}] for {} bits",
                    p.qmin, p.qmax, w.bits
                ),
            ));
        }
        if w.mapping == Mapping::Symmetric && p.zero_point != 0 {
            return Err(Invalid::new(
                pfield,
                format!("zero point {} of symmetric weights", p.zero_point),
            ));
        }
    }
    let bad = w
        .codes
        .data()
        .iter()
        .position(|&q| !(qmin..=qmax).contains(&i32::from(q)));
    if let Some(i) = bad {
        return Err(Invalid::new(
            format!("{field}[{i}]"),
            format!("code {} is outside [{qmin}, {qmax}]", w.codes.data()[i]),
        ));
    }
    Ok(())
}

fn check_multipliers(field: &str, s: &StaticLayer, input: &QuantParams) -> Result<(), Invalid> {
    let params = s.weights.params.as_slice();
    if s.multipliers.len() != params.len() {
        return Err(Invalid::new(
            format!("{field}.multiplier"),
            format!(
                "{} multipliers for {} weight channels",
                s.multipliers.len(),
                params.len()
            ),
        ));
    }
    for (c, (m, p)) in s.multipliers.iter().zip(params).enumerate() {
        let mfield = format!("{field}.multiplier[{c}]");
        let expected = requant_multiplier(input.scale, p.scale, s.output.scale)
            .map_err(|e| Invalid::new(&mfield, e.to_string()))?;
        if *m != expected {
            return Err(Invalid::new(
                mfield,
                format!(
                    "{m:?} does not match the scales (input {} x weight {} / output {} gives {expected:?})",
                    input.scale, p.scale, s.output.scale
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_and_bounds() {
        assert_eq!(weight_grid(8), (-127, 127));
        assert_eq!(weight_grid(4), (-7, 7));
        assert_eq!(weight_grid(2), (-1, 1));
        let per_byte: Vec<usize> = WEIGHT_BITS.map(codes_per_byte).collect();
        assert_eq!(per_byte, [4, 2, 2, 1, 1, 1, 1]);
        assert_eq!(bias_bound(1), Some(i32::MAX - 65024));
        assert!(bias_bound(40_000).is_none());
        let p = QuantParams::new(0.1, -100, -128, 127).unwrap();
        assert_eq!(clamp_bounds(&p, true), (-100, 127));
        assert_eq!(clamp_bounds(&p, false), (-128, 127));
    }

    #[test]
    fn dynamic_params_cover_the_range() {
        let p = dynamic_params("fc", (-1.0, 3.0)).unwrap();
        assert_eq!((p.qmin, p.qmax), ACTIVATION_GRID);
        assert_eq!(p.quantize(0.0), p.zero_point);
        assert_eq!(p.quantize(3.0), 127);
        assert_eq!(p.quantize(-1.0), -128);
    }
}
