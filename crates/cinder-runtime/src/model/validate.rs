//! The rules of a valid quantized model beyond its shapes and domains (which the walk
//! checks, [`crate::walk`]): activation and weight grids, zero points, finite floats,
//! bias bounds that rule out int32 overflow, and multipliers consistent with the scales.

use std::collections::HashSet;

use cinder_tensor::{Mapping, QuantParams, Tensor, TensorQuantParams};

use super::rules::{ACTIVATION_GRID, WEIGHT_BITS, bias_bound, requant_multiplier, weight_grid};
use super::types::{Activation, Layer, LayerExec, Merge, QuantWeights, StaticLayer, Step, StepOp};
use crate::error::Invalid;
use crate::walk::{TensorInfo, Walk};

/// Validates a model: walks it (names, inputs, shapes and domains), then checks every
/// step's contents.
pub(crate) fn validate(input_shape: &[usize], steps: &[Step]) -> Result<Walk, Invalid> {
    let mut walk = Walk::new(input_shape)?;
    let mut layers = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let field = format!("steps[{i}] ({})", step.name);
        if step.op.layer().is_some() && !layers.insert(&step.name) {
            return Err(Invalid::new(field, "a layer of this name comes earlier"));
        }
        walk.push(&field, step)?;
        let inputs: Vec<&TensorInfo> = walk.reads(i).iter().map(|&t| walk.info(t)).collect();
        check_step(&field, &step.op, &inputs)?;
    }
    walk.finish(steps)?;
    Ok(walk)
}

/// The contents of one step that reads `inputs` (checked by the walk to fit it).
fn check_step(field: &str, op: &StepOp, inputs: &[&TensorInfo]) -> Result<(), Invalid> {
    match op {
        StepOp::Quantize(p) => check_activation(field, p),
        StepOp::Activation(a) => check_clip(field, a),
        StepOp::Add(merge) | StepOp::Concat(merge) => check_merge(field, merge, inputs),
        _ => match op.layer() {
            Some(layer) => {
                check_clip(field, &layer.activation)?;
                check_layer(field, layer, inputs[0])
            }
            None => Ok(()),
        },
    }
}

/// A clip's bounds are finite and ordered.
fn check_clip(field: &str, activation: &Activation) -> Result<(), Invalid> {
    match *activation {
        Activation::Clip { min, max } if !(min.is_finite() && max.is_finite() && min <= max) => {
            Err(Invalid::new(
                format!("{field}.activation"),
                format!("clip [{min}, {max}]: expected finite bounds, min <= max"),
            ))
        }
        _ => Ok(()),
    }
}

/// An int8 merge has valid output parameters and one multiplier per input, each
/// `s_in / s_out`.
fn check_merge(field: &str, merge: &Merge, inputs: &[&TensorInfo]) -> Result<(), Invalid> {
    check_clip(field, &merge.activation)?;
    let Some(int) = &merge.int else {
        return Ok(());
    };
    check_activation(&format!("{field}.output"), &int.output)?;
    if int.multipliers.len() != inputs.len() {
        return Err(Invalid::new(
            format!("{field}.multiplier"),
            format!(
                "{} multipliers for {} inputs",
                int.multipliers.len(),
                inputs.len()
            ),
        ));
    }
    for (i, (m, input)) in int.multipliers.iter().zip(inputs).enumerate() {
        let s_in = input.int().expect("the walk checked: int8 inputs").scale;
        let mfield = format!("{field}.multiplier[{i}]");
        let expected = requant_multiplier(s_in, 1.0, int.output.scale)
            .map_err(|e| Invalid::new(&mfield, e.to_string()))?;
        if *m != expected {
            return Err(Invalid::new(
                mfield,
                format!(
                    "{m:?} does not match the scales (input {s_in} / output {} gives {expected:?})",
                    int.output.scale
                ),
            ));
        }
    }
    Ok(())
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

fn check_layer(field: &str, layer: &Layer, input: &TensorInfo) -> Result<(), Invalid> {
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
    match &layer.exec {
        LayerExec::Static(s) => {
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
            let input = input
                .int()
                .expect("the walk checked: static layers read int8");
            check_multipliers(field, s, &input)
        }
        LayerExec::Dynamic(d) => {
            check_weights(field, &d.weights, depth)?;
            bias_len(d.bias.len())?;
            check_finite(&format!("{field}.bias"), &d.bias)
        }
        LayerExec::Float(f) => {
            bias_len(f.bias.len())?;
            check_finite(&format!("{field}.weight"), f.weight.data())?;
            check_finite(&format!("{field}.bias"), &f.bias)
        }
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
