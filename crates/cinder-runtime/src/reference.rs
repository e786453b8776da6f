//! The reference interpreter: the quantized model's arithmetic written out plainly, in
//! canonical NCHW layout with the stored (canonical) weights, exact integer sums in i64
//! and no packing, layout change, fusion trick or threading. Slow and obviously correct;
//! the fast [`Session`](crate::Session) must equal it bit for bit.
//!
//! Static layer, output channel `c`:
//! `acc = bias[c] + sum (q_in - zp_in) * (q_w - zp_w[c])` (padding taps add nothing),
//! `q_out = clamp(multiplier[c].apply(acc) + zp_out, lo, hi)`.
//! Dynamic layer: the input is quantized with parameters from the min/max of the whole
//! batch, `y = acc * (s_in * s_w[c]) + bias[c]`.

use cinder_tensor::{Tensor, TensorBuf};

use crate::arith::{pool_forward, relu, weighted_forward};
use crate::error::RunError;
use crate::geometry::batch_size;
use crate::model::rules::{acc_scale, clamp_bounds, dynamic_output, dynamic_params, scan_range};
use crate::model::{LayerExec, QuantWeights, StepOp};
use crate::quantized::QuantizedModel;
use crate::walk::TensorInfo;

/// A batch in flight: floats, or int8 codes (held as i32; their parameters are the
/// walk's).
enum Value {
    Float(Vec<f32>),
    Int(Vec<i32>),
}

/// How a static layer turns its int32 accumulator into an output code offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescale {
    /// The integer path: the layer's Q0.31 multiplier and rounding shift.
    FixedPoint,
    /// Real arithmetic: `acc * s_in * s_w / s_out` in f64, rounded half to even.
    Exact,
}

/// Runs `model` on `input` (`[B, ...input_shape]`, NCHW) and returns its output.
pub fn reference_forward(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    interpret(model, input, Rescale::FixedPoint)
}

/// The interpreter behind [`reference_forward`] and [`crate::simulate`].
pub(crate) fn interpret(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
    rescale: Rescale,
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), model.input_shape())?;
    cinder_observers::min_max(input.data()).map_err(RunError::Input)?;
    let walk = model.walk();
    let mut value = Value::Float(input.data().to_vec());
    for (i, step) in model.steps().iter().enumerate() {
        let (info, in_shape) = (walk.input(i), &walk.input(i).shape);
        let out_len = walk.output(i).len();
        let zero_point = || info.int().expect("validated: int8 here").zero_point;
        value = match (&step.op, value) {
            (StepOp::Quantize(p), Value::Float(x)) => {
                Value::Int(x.iter().map(|&v| p.quantize(v)).collect())
            }
            (StepOp::Dequantize, Value::Int(q)) => {
                let p = info.int().expect("validated: dequantize reads int8");
                Value::Float(q.iter().map(|&c| p.dequantize(c)).collect())
            }
            (StepOp::Relu, Value::Float(x)) => Value::Float(x.into_iter().map(relu).collect()),
            (StepOp::Relu, Value::Int(q)) => {
                Value::Int(q.into_iter().map(|c| c.max(zero_point())).collect())
            }
            (StepOp::MaxPool2d { kernel, stride }, Value::Float(x)) => {
                Value::Float(pool_forward(&x, batch, in_shape, out_len, *kernel, *stride))
            }
            (StepOp::MaxPool2d { kernel, stride }, Value::Int(q)) => {
                Value::Int(pool_forward(&q, batch, in_shape, out_len, *kernel, *stride))
            }
            (StepOp::Flatten, v) => v,
            (op, v) => layer_forward(&step.name, op, info, batch, out_len, v, rescale)?,
        };
    }
    let Value::Float(x) = value else {
        unreachable!("a validated model ends in float")
    };
    let mut shape = vec![batch];
    shape.extend_from_slice(model.output_shape());
    Ok(TensorBuf::new(shape, x).expect("shapes chain"))
}

/// `acc * s_in * s_w / s_out` rounded half to even, in f64 (error ~2^-51 relative).
fn exact_rescale(acc: i32, s_in: f32, s_w: f32, s_out: f32) -> i64 {
    let real = f64::from(acc) * (f64::from(s_in) * f64::from(s_w) / f64::from(s_out));
    real.round_ties_even() as i64
}

/// Weight codes minus their channel's zero point.
fn centered(w: &QuantWeights) -> Vec<i64> {
    let depth = w.codes.len() / w.codes.shape()[0];
    w.codes
        .data()
        .iter()
        .enumerate()
        .map(|(i, &q)| i64::from(i32::from(q) - w.zero_point(i / depth)))
        .collect()
}

fn layer_forward(
    name: &str,
    op: &StepOp,
    info: &TensorInfo,
    batch: usize,
    out_len: usize,
    value: Value,
    rescale: Rescale,
) -> Result<Value, RunError> {
    let layer = op.layer().expect("every other step is matched before");
    let geometry = op.geometry(&info.shape);
    let outputs = layer.out_features();
    let inner = out_len / outputs;
    // The output channel of flat index `i` of the batch's output.
    let channel = |i: usize| (i / inner) % outputs;
    Ok(match (&layer.exec, value) {
        (LayerExec::Static(s), Value::Int(q)) => {
            let input = info.int().expect("validated: static layers read int8");
            let x: Vec<i64> = q.iter().map(|&c| i64::from(c - input.zero_point)).collect();
            let bias: Vec<i64> = s.bias.iter().map(|&b| i64::from(b)).collect();
            let acc = weighted_forward(geometry, &x, batch, out_len, &centered(&s.weights), &bias);
            let (lo, hi) = clamp_bounds(&s.output, layer.relu);
            let codes = acc
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let c = channel(i);
                    let a = i32::try_from(a).expect("validation bounds every accumulator to int32");
                    match rescale {
                        Rescale::FixedPoint => s.requantize(c, a, layer.relu),
                        Rescale::Exact => {
                            let offset =
                                exact_rescale(a, input.scale, s.weights.scale(c), s.output.scale);
                            (offset + i64::from(s.output.zero_point))
                                .clamp(i64::from(lo), i64::from(hi))
                                as i32
                        }
                    }
                })
                .collect();
            Value::Int(codes)
        }
        (LayerExec::Dynamic(d), Value::Float(x)) => {
            let p = dynamic_params(name, scan_range(name, &x)?)?;
            let xq: Vec<i64> = x
                .iter()
                .map(|&v| i64::from(p.quantize(v) - p.zero_point))
                .collect();
            let zeros = vec![0i64; outputs];
            let acc =
                weighted_forward(geometry, &xq, batch, out_len, &centered(&d.weights), &zeros);
            let y = acc
                .iter()
                .enumerate()
                .map(|(i, &a)| {
                    let c = channel(i);
                    let a = i32::try_from(a).expect("validation bounds every accumulator to int32");
                    dynamic_output(
                        a,
                        acc_scale(p.scale, d.weights.scale(c)),
                        d.bias[c],
                        layer.relu,
                    )
                })
                .collect();
            Value::Float(y)
        }
        (LayerExec::Float(f), Value::Float(x)) => {
            let y = weighted_forward(geometry, &x, batch, out_len, f.weight.data(), &f.bias);
            Value::Float(if layer.relu {
                y.into_iter().map(relu).collect()
            } else {
                y
            })
        }
        _ => unreachable!("validation matched every layer's domain"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Layer, QuantWeights, StaticLayer, Step};
    use cinder_tensor::{Mapping, QuantParams, RequantMultiplier, TensorQuantParams};

    /// A 1x1 convolution worked by hand: input scale 0.5, weight code 2 at scale 0.25,
    /// bias code 3 (scale 0.125), output scale 1 with zero point -10.
    fn one_by_one(relu: bool) -> QuantizedModel {
        let weights = QuantWeights {
            bits: 8,
            mapping: Mapping::Symmetric,
            codes: TensorBuf::new(vec![1, 1, 1, 1], vec![2]).unwrap(),
            params: TensorQuantParams::PerTensor(QuantParams::new(0.25, 0, -127, 127).unwrap()),
        };
        let layer = StaticLayer {
            weights,
            bias: vec![3],
            multipliers: vec![RequantMultiplier::from_real(0.125).unwrap()],
            output: QuantParams::new(1.0, -10, -128, 127).unwrap(),
        };
        let step = |name: &str, op| Step {
            name: name.into(),
            op,
        };
        let conv = StepOp::Conv2d {
            stride: 1,
            padding: 0,
            layer: Layer {
                relu,
                exec: LayerExec::Static(layer),
            },
        };
        QuantizedModel::new(
            vec![1, 1, 2],
            vec![
                step(
                    "input",
                    StepOp::Quantize(QuantParams::new(0.5, 0, -128, 127).unwrap()),
                ),
                step("conv", conv),
                step("conv", StepOp::Dequantize),
            ],
        )
        .unwrap()
    }

    #[test]
    fn static_conv_by_hand() {
        // x = [1, -3] -> codes [2, -6]; acc = 3 + 2 * code = [7, -9]; * 0.125 = [0.875,
        // -1.125] -> [1, -1]; + zp -10 = [-9, -11] -> reals [1, -1].
        let x = TensorBuf::new(vec![1, 1, 1, 2], vec![1.0, -3.0]).unwrap();
        assert_eq!(
            reference_forward(&one_by_one(false), &x).unwrap().data(),
            &[1.0, -1.0]
        );
        // A fused ReLU clamps at the zero point: real 0.
        let model = one_by_one(true);
        assert_eq!(reference_forward(&model, &x).unwrap().data(), &[1.0, 0.0]);
        assert_eq!(
            model.session().unwrap().run(&x).unwrap().data(),
            &[1.0, 0.0]
        );
    }
}
