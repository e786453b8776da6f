//! One ONNX operator to one float-graph operator: attributes checked, constant operands
//! (weights, shapes, clip bounds) read, and anything not mapped exactly refused.

use cinder_tensor::graph::{AvgPool2d, BatchNorm, Conv2d, Linear, Op, Pool2d};
use cinder_tensor::{Tensor, TensorBuf};

use crate::attrs::Attrs;
use crate::error::OnnxError;
use crate::proto::{NodeProto, TensorProto};
use crate::tensor;

/// A node's input, resolved by the importer.
pub(super) enum Input<'g> {
    /// An activation: the cinder tensor it is and its ONNX rank (batch included).
    Activation { tensor: String, rank: usize },
    /// An initializer or the value of a `Constant` node.
    Constant(&'g TensorProto),
    /// An optional input left empty.
    Absent,
}

/// The float-graph node an ONNX node becomes.
pub(super) struct Lowered {
    pub op: Op,
    /// The cinder tensors it reads.
    pub inputs: Vec<String>,
    /// The ONNX rank of its output (batch included).
    pub rank: usize,
    /// For a `Reshape`: the feature count it asked for, checked once shapes are known.
    pub features: Option<usize>,
}

impl Lowered {
    fn new(op: Op, inputs: Vec<String>, rank: usize) -> Self {
        Self {
            op,
            inputs,
            rank,
            features: None,
        }
    }
}

/// Maps a compute node (not `Constant`, `Identity`, `Dropout` or a bias `Add`, which the
/// importer handles), or returns `None` for an operator it does not know.
pub(super) fn lower(
    node: &NodeProto,
    name: &str,
    inputs: &[Input],
) -> Result<Option<Lowered>, OnnxError> {
    let lowered = match node.op_type.as_str() {
        "Conv" => conv(node, name, inputs)?,
        "BatchNormalization" => batch_norm(node, name, inputs)?,
        "Relu" => elementwise(node, name, inputs, Op::Relu)?,
        "Clip" => clip(node, name, inputs)?,
        "MaxPool" => pool(node, name, inputs, true)?,
        "AveragePool" => pool(node, name, inputs, false)?,
        "GlobalAveragePool" => global_avg_pool(node, name, inputs)?,
        "Add" => add(node, name, inputs)?,
        "Concat" => concat(node, name, inputs)?,
        "Flatten" => flatten(node, name, inputs)?,
        "Reshape" => reshape(node, name, inputs)?,
        "Gemm" => gemm(node, name, inputs)?,
        "MatMul" => matmul(node, name, inputs)?,
        _ => return Ok(None),
    };
    Ok(Some(lowered))
}

fn arity(a: &Attrs, inputs: &[Input], min: usize, max: usize) -> Result<(), OnnxError> {
    if (min..=max).contains(&inputs.len()) {
        return Ok(());
    }
    Err(a.error(format!("{} inputs, expected {min} to {max}", inputs.len())))
}

fn activation(a: &Attrs, inputs: &[Input], i: usize) -> Result<(String, usize), OnnxError> {
    match inputs.get(i) {
        Some(Input::Activation { tensor, rank }) => Ok((tensor.clone(), *rank)),
        Some(Input::Constant(_)) => Err(a.error(format!(
            "input {i} is a constant; only weights may be constants"
        ))),
        _ => Err(a.error(format!("input {i} is missing"))),
    }
}

fn constant<'g>(
    a: &Attrs,
    inputs: &[Input<'g>],
    i: usize,
    what: &str,
) -> Result<&'g TensorProto, OnnxError> {
    match inputs.get(i) {
        Some(Input::Constant(t)) => Ok(t),
        Some(Input::Activation { .. }) => Err(a.error(format!(
            "the {what} (input {i}) is computed; it must be an initializer or a Constant"
        ))),
        _ => Err(a.error(format!("the {what} (input {i}) is missing"))),
    }
}

fn optional<'g>(inputs: &[Input<'g>], i: usize) -> Option<&'g TensorProto> {
    match inputs.get(i) {
        Some(Input::Constant(t)) => Some(t),
        _ => None,
    }
}

/// A non-negative integer attribute value (at least `min`) as `usize`.
fn count(a: &Attrs, what: &str, value: i64, min: usize) -> Result<usize, OnnxError> {
    usize::try_from(value)
        .ok()
        .filter(|&v| v >= min)
        .ok_or_else(|| a.error(format!("{what} {value} must be at least {min}")))
}

/// `rank` 4 (`[N, C, H, W]`) is what windows, global pooling and concatenation act on.
fn expect_rank(a: &Attrs, rank: usize, expected: usize) -> Result<(), OnnxError> {
    if rank == expected {
        return Ok(());
    }
    Err(a.error(format!(
        "input of rank {rank}, only rank {expected} is supported"
    )))
}

/// Strides and symmetric padding of a 2-D window, refusing dilations, automatic padding
/// other than `NOTSET` / `VALID`, and asymmetric pads.
fn window(a: &Attrs, kernel: [usize; 2]) -> Result<([usize; 2], [usize; 2]), OnnxError> {
    if let Some(shape) = a.ints("kernel_shape")?
        && shape != [kernel[0] as i64, kernel[1] as i64]
    {
        return Err(a.error(format!(
            "kernel_shape {shape:?}, expected a 2-D window matching {kernel:?}"
        )));
    }
    if let Some(d) = a.ints("dilations")?
        && d.iter().any(|&d| d != 1)
    {
        return Err(a.error(format!("dilations {d:?} are not supported (only 1)")));
    }
    let pads = a.ints("pads")?.unwrap_or(&[0, 0, 0, 0]);
    let auto_pad = a.string("auto_pad", "NOTSET")?;
    match auto_pad.as_str() {
        "NOTSET" => {}
        "VALID" if pads.iter().all(|&p| p == 0) => {}
        _ => {
            return Err(a.error(format!(
                "auto_pad = {auto_pad} is not supported (NOTSET with explicit pads, or VALID)"
            )));
        }
    }
    let &[top, left, bottom, right] = pads else {
        return Err(a.error(format!("pads {pads:?}, expected 4 values")));
    };
    if (top, left) != (bottom, right) {
        return Err(a.error(format!(
            "asymmetric pads {pads:?} are not supported (begin must equal end)"
        )));
    }
    let strides = a.ints("strides")?.unwrap_or(&[1, 1]);
    let &[sh, sw] = strides else {
        return Err(a.error(format!("strides {strides:?}, expected 2 values")));
    };
    Ok((
        [count(a, "stride", sh, 1)?, count(a, "stride", sw, 1)?],
        [count(a, "pad", top, 0)?, count(a, "pad", left, 0)?],
    ))
}

fn conv(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let known = [
        "auto_pad",
        "dilations",
        "group",
        "kernel_shape",
        "pads",
        "strides",
    ];
    let a = Attrs::new(node, name, &known)?;
    arity(&a, inputs, 2, 3)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    let weight = tensor::to_f32(constant(&a, inputs, 1, "weight")?)?;
    let &[_, _, kh, kw] = weight.shape() else {
        return Err(a.error(format!(
            "weight {:?}: only 2-D convolutions ([out, in / group, kh, kw]) are supported",
            weight.shape()
        )));
    };
    expect_rank(&a, rank, 4)?;
    let bias = optional(inputs, 2).map(tensor::to_f32).transpose()?;
    let (stride, padding) = window(&a, [kh, kw])?;
    let groups = count(&a, "group", a.int("group", 1)?, 1)?;
    let conv = Conv2d {
        weight,
        bias,
        stride,
        padding,
        groups,
    };
    Ok(Lowered::new(Op::Conv2d(conv), vec![x], 4))
}

fn batch_norm(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &["epsilon", "momentum", "training_mode"])?;
    a.require("training_mode", 0, 0)?;
    arity(&a, inputs, 5, 5)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    let stat = |i, what| constant(&a, inputs, i, what).and_then(tensor::to_f32);
    let bn = BatchNorm {
        gamma: stat(1, "scale")?,
        beta: stat(2, "bias")?,
        mean: stat(3, "mean")?,
        var: stat(4, "variance")?,
        eps: a.float("epsilon", 1e-5)?,
    };
    if !matches!(rank, 2 | 4) {
        return Err(a.error(format!("input of rank {rank}, expected 2 or 4")));
    }
    Ok(Lowered::new(Op::BatchNorm(bn), vec![x], rank))
}

fn elementwise(
    node: &NodeProto,
    name: &str,
    inputs: &[Input],
    op: Op,
) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &[])?;
    arity(&a, inputs, 1, 1)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    Ok(Lowered::new(op, vec![x], rank))
}

/// `Clip` with its bounds as inputs (opset 11 on): `[0, +inf)` is a ReLU, finite bounds
/// a clamp (ReLU6 is `[0, 6]`).
fn clip(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &[])?;
    arity(&a, inputs, 1, 3)?;
    let bound = |i, what, default| match inputs.get(i) {
        None | Some(Input::Absent) => Ok(default),
        Some(_) => constant(&a, inputs, i, what).and_then(tensor::to_scalar),
    };
    let min = bound(1, "min", f32::NEG_INFINITY)?;
    let max = bound(2, "max", f32::INFINITY)?;
    let op = if min == 0.0 && max == f32::INFINITY {
        Op::Relu
    } else if min.is_finite() && max.is_finite() && min <= max {
        Op::Clip { min, max }
    } else {
        return Err(a.error(format!(
            "bounds [{min}, {max}] are not supported (finite min <= max, or [0, inf) as a ReLU)"
        )));
    };
    let (x, rank) = activation(&a, inputs, 0)?;
    Ok(Lowered::new(op, vec![x], rank))
}

fn pool(node: &NodeProto, name: &str, inputs: &[Input], max: bool) -> Result<Lowered, OnnxError> {
    let known: &[&str] = if max {
        &[
            "auto_pad",
            "ceil_mode",
            "dilations",
            "kernel_shape",
            "pads",
            "storage_order",
            "strides",
        ]
    } else {
        &[
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
            "dilations",
            "kernel_shape",
            "pads",
            "strides",
        ]
    };
    let a = Attrs::new(node, name, known)?;
    arity(&a, inputs, 1, 1)?;
    a.require("ceil_mode", 0, 0)?;
    a.require("storage_order", 0, 0)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    expect_rank(&a, rank, 4)?;
    let kernel = match a.ints("kernel_shape")? {
        Some(&[kh, kw]) => [count(&a, "kernel", kh, 1)?, count(&a, "kernel", kw, 1)?],
        other => {
            return Err(a.error(format!("kernel_shape {other:?}, expected 2 values")));
        }
    };
    let (stride, padding) = window(&a, kernel)?;
    let window = Pool2d {
        kernel,
        stride,
        padding,
    };
    let op = if max {
        Op::MaxPool2d(window)
    } else {
        let count_include_pad = a.int("count_include_pad", 0)? != 0;
        Op::AvgPool2d(AvgPool2d {
            window,
            count_include_pad,
        })
    };
    Ok(Lowered::new(op, vec![x], 4))
}

fn global_avg_pool(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &[])?;
    let lowered = elementwise(node, name, inputs, Op::GlobalAvgPool)?;
    expect_rank(&a, lowered.rank, 4)?;
    Ok(lowered)
}

/// The sum of two activations (a constant operand is a bias, which the importer fuses).
fn add(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &[])?;
    arity(&a, inputs, 2, 2)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    let (y, _) = activation(&a, inputs, 1)?;
    Ok(Lowered::new(Op::Add, vec![x, y], rank))
}

/// The axis `axis` of a rank-`rank` tensor, negative values counting from the end.
fn axis(a: &Attrs, axis: i64, rank: usize) -> Result<i64, OnnxError> {
    let normalized = if axis < 0 { axis + rank as i64 } else { axis };
    if !(0..rank as i64).contains(&normalized) {
        return Err(a.error(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(normalized)
}

fn concat(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &["axis"])?;
    arity(&a, inputs, 2, usize::MAX)?;
    let tensors = (0..inputs.len())
        .map(|i| {
            let (t, rank) = activation(&a, inputs, i)?;
            expect_rank(&a, rank, 4)?;
            Ok(t)
        })
        .collect::<Result<Vec<_>, OnnxError>>()?;
    let raw = a.int("axis", i64::MIN)?;
    if raw == i64::MIN || axis(&a, raw, 4)? != 1 {
        return Err(a.error(format!(
            "axis {raw} is not supported (only the channel axis 1)"
        )));
    }
    Ok(Lowered::new(Op::Concat, tensors, 4))
}

fn flatten(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &["axis"])?;
    arity(&a, inputs, 1, 1)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    let raw = a.int("axis", 1)?;
    if axis(&a, raw, rank)? != 1 {
        return Err(a.error(format!(
            "axis {raw} is not supported (only 1: one row per sample)"
        )));
    }
    Ok(Lowered::new(Op::Flatten, vec![x], 2))
}

/// `Reshape` to `[batch, features]`: the batch kept (`0`, `-1` or the model's batch
/// size) and one row per sample (`-1` or the feature count, checked later).
fn reshape(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &["allowzero"])?;
    arity(&a, inputs, 2, 2)?;
    let (x, _) = activation(&a, inputs, 0)?;
    let shape = tensor::to_i64(constant(&a, inputs, 1, "shape")?)?;
    let allowzero = a.int("allowzero", 0)? != 0;
    let unsupported = || {
        a.error(format!(
            "target shape {shape:?} is not supported (only [batch, features] with batch 0 or -1 \
             and features -1 or the flattened size)"
        ))
    };
    let &[batch, features] = shape.as_slice() else {
        return Err(unsupported());
    };
    let batch_kept = (batch == 0 && !allowzero) || (batch == -1 && features != -1);
    if !batch_kept {
        return Err(unsupported());
    }
    let features = match features {
        -1 => None,
        f => Some(
            usize::try_from(f)
                .ok()
                .filter(|&f| f > 0)
                .ok_or_else(unsupported)?,
        ),
    };
    let mut lowered = Lowered::new(Op::Flatten, vec![x], 2);
    lowered.features = features;
    Ok(lowered)
}

/// `Gemm` `alpha * A B' + beta * C` with constant `B` (either orientation) and `C`.
fn gemm(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &["alpha", "beta", "transA", "transB"])?;
    arity(&a, inputs, 2, 3)?;
    a.require("transA", 0, 0)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    expect_rank(&a, rank, 2)?;
    let b = tensor::to_f32(constant(&a, inputs, 1, "weight")?)?;
    let mut weight = match a.int("transB", 0)? {
        0 => transpose(&a, &b)?,
        _ => matrix(&a, b)?,
    };
    let alpha = a.float("alpha", 1.0)?;
    let beta = a.float("beta", 1.0)?;
    if alpha != 1.0 {
        weight.data_mut().iter_mut().for_each(|w| *w *= alpha);
    }
    let out = weight.shape()[0];
    let bias = match optional(inputs, 2) {
        Some(c) => {
            let mut bias = bias_vector(&a, tensor::to_f32(c)?, out)?;
            bias.data_mut().iter_mut().for_each(|b| *b *= beta);
            Some(bias)
        }
        None => None,
    };
    Ok(Lowered::new(
        Op::Linear(Linear { weight, bias }),
        vec![x],
        2,
    ))
}

/// `MatMul` of an activation by a constant `[in, out]` matrix: a linear layer without
/// bias (a following `Add` of a constant becomes its bias).
fn matmul(node: &NodeProto, name: &str, inputs: &[Input]) -> Result<Lowered, OnnxError> {
    let a = Attrs::new(node, name, &[])?;
    arity(&a, inputs, 2, 2)?;
    let (x, rank) = activation(&a, inputs, 0)?;
    expect_rank(&a, rank, 2)?;
    let weight = transpose(&a, &tensor::to_f32(constant(&a, inputs, 1, "weight")?)?)?;
    let linear = Linear { weight, bias: None };
    Ok(Lowered::new(Op::Linear(linear), vec![x], 2))
}

fn matrix(a: &Attrs, t: TensorBuf<f32>) -> Result<TensorBuf<f32>, OnnxError> {
    match t.shape() {
        [_, _] => Ok(t),
        s => Err(a.error(format!("weight {s:?}, expected a matrix"))),
    }
}

/// `[rows, cols]` to `[cols, rows]`.
fn transpose(a: &Attrs, t: &TensorBuf<f32>) -> Result<TensorBuf<f32>, OnnxError> {
    let &[rows, cols] = t.shape() else {
        return Err(a.error(format!("weight {:?}, expected a matrix", t.shape())));
    };
    let d = t.data();
    let data = (0..cols)
        .flat_map(|c| (0..rows).map(move |r| d[r * cols + c]))
        .collect();
    Ok(TensorBuf::new(vec![cols, rows], data).expect("same element count"))
}

/// A bias of shape `[out]` or `[1, out]`, as `[out]`.
pub(super) fn bias_vector(
    a: &Attrs,
    t: TensorBuf<f32>,
    out: usize,
) -> Result<TensorBuf<f32>, OnnxError> {
    if t.shape() == [out] || t.shape() == [1, out] {
        return Ok(TensorBuf::from_vec(t.into_data()));
    }
    Err(a.error(format!(
        "bias {:?}, expected [{out}] or [1, {out}]",
        t.shape()
    )))
}
