//! Shape inference: the per-sample output shape of a node from its inputs' shapes, with
//! an error naming the node and what it expected.

use super::GraphError;
use super::ops::{Conv2d, Linear, Op, Pool2d};
use crate::tensor::Tensor;

/// Output size of a window of `kernel` with `stride` over `size + 2 * padding` (floor
/// mode), or `None` when the window does not fit.
pub fn window_output(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = padding.checked_mul(2)?.checked_add(size)?;
    (stride > 0 && kernel > 0 && padded >= kernel).then(|| (padded - kernel) / stride + 1)
}

/// Output shape of `op` at node `node` given its inputs' per-sample shapes (one per
/// input, arity already checked).
pub(super) fn infer(node: &str, op: &Op, inputs: &[&[usize]]) -> Result<Vec<usize>, GraphError> {
    let err = |message: String| GraphError::Shape {
        node: node.to_owned(),
        message,
    };
    let first = inputs[0];
    match op {
        Op::Conv2d(c) => conv(c, first).map_err(err),
        Op::Linear(l) => linear(l, first).map_err(err),
        Op::BatchNorm(bn) => {
            let channels = match first {
                [c] | [c, _, _] => *c,
                _ => return Err(err(format!("expected [C, H, W] or [F], got {first:?}"))),
            };
            let stats = [&bn.gamma, &bn.beta, &bn.mean, &bn.var];
            if stats.iter().any(|t| t.shape() != [channels]) {
                return Err(err(format!(
                    "statistics must all be [{channels}] for input {first:?}"
                )));
            }
            if !(bn.eps.is_finite() && bn.eps >= 0.0) {
                return Err(err(format!("eps {} must be finite and >= 0", bn.eps)));
            }
            Ok(first.to_vec())
        }
        Op::Relu => Ok(first.to_vec()),
        Op::Clip { min, max } => {
            if !(min.is_finite() && max.is_finite() && min <= max) {
                return Err(err(format!(
                    "clip bounds [{min}, {max}] must be finite, min <= max"
                )));
            }
            Ok(first.to_vec())
        }
        Op::MaxPool2d(p) => pool(p, first).map_err(err),
        Op::AvgPool2d(a) => pool(&a.window, first).map_err(err),
        Op::GlobalAvgPool => Ok(vec![spatial(first).map_err(err)?[0], 1, 1]),
        Op::Add => {
            if inputs[1] != first {
                return Err(err(format!(
                    "add needs inputs of one shape, got {first:?} and {:?}",
                    inputs[1]
                )));
            }
            Ok(first.to_vec())
        }
        Op::Concat => concat(inputs).map_err(err),
        Op::Flatten => Ok(vec![first.iter().product()]),
    }
}

fn spatial(input: &[usize]) -> Result<[usize; 3], String> {
    match input {
        &[c, h, w] => Ok([c, h, w]),
        _ => Err(format!("expected a [C, H, W] input, got {input:?}")),
    }
}

/// `[c, oh, ow]` of a window over a `[_, h, w]` input.
fn windowed(
    input: &[usize],
    channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Result<Vec<usize>, String> {
    let [_, h, w] = spatial(input)?;
    match (
        window_output(h, kernel[0], stride[0], padding[0]),
        window_output(w, kernel[1], stride[1], padding[1]),
    ) {
        (Some(oh), Some(ow)) => Ok(vec![channels, oh, ow]),
        _ => Err(format!(
            "kernel {kernel:?} stride {stride:?} padding {padding:?} does not fit input {input:?}"
        )),
    }
}

fn conv(c: &Conv2d, input: &[usize]) -> Result<Vec<usize>, String> {
    let w = c.weight.shape();
    if w.len() != 4 || w.contains(&0) {
        return Err(format!("weight {w:?}: expected [out, in / groups, kh, kw]"));
    }
    if c.bias.as_ref().is_some_and(|b| b.shape() != [w[0]]) {
        return Err(format!("bias must be [{}]", w[0]));
    }
    if c.groups == 0 || !w[0].is_multiple_of(c.groups) {
        return Err(format!(
            "groups {} must divide the {} output channels",
            c.groups, w[0]
        ));
    }
    let channels = spatial(input)?[0];
    if channels != c.in_channels() {
        return Err(format!(
            "weight {w:?} with {} groups expects {} input channels, input is {input:?}",
            c.groups,
            c.in_channels()
        ));
    }
    windowed(input, w[0], c.kernel(), c.stride, c.padding)
}

fn pool(p: &Pool2d, input: &[usize]) -> Result<Vec<usize>, String> {
    if p.padding[0] > p.kernel[0] / 2 || p.padding[1] > p.kernel[1] / 2 {
        return Err(format!(
            "padding {:?} must be at most half the window {:?}",
            p.padding, p.kernel
        ));
    }
    let channels = spatial(input)?[0];
    windowed(input, channels, p.kernel, p.stride, p.padding)
}

fn linear(l: &Linear, input: &[usize]) -> Result<Vec<usize>, String> {
    let w = l.weight.shape();
    if w.len() != 2 || w.contains(&0) {
        return Err(format!("weight {w:?}: expected [out, in]"));
    }
    if l.bias.as_ref().is_some_and(|b| b.shape() != [w[0]]) {
        return Err(format!("bias must be [{}]", w[0]));
    }
    if input != [w[1]] {
        return Err(format!(
            "weight {w:?} expects a [{}] input, got {input:?}",
            w[1]
        ));
    }
    Ok(vec![w[0]])
}

fn concat(inputs: &[&[usize]]) -> Result<Vec<usize>, String> {
    let [_, h, w] = spatial(inputs[0])?;
    let mut channels = 0;
    for input in inputs {
        let [c, ih, iw] = spatial(input)?;
        if (ih, iw) != (h, w) {
            return Err(format!(
                "concat needs one spatial size, got {:?} and {input:?}",
                inputs[0]
            ));
        }
        channels += c;
    }
    Ok(vec![channels, h, w])
}
