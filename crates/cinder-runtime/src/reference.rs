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

use crate::arith::{PoolKind, concat_samples, pool_forward, weighted_forward};
use crate::error::RunError;
use crate::geometry::{Window, batch_size, chw};
use crate::model::rules::{acc_scale, dynamic_output, dynamic_params};
use crate::model::{Activation, IntMerge, LayerExec, QuantWeights, Step, StepOp};
use crate::quantized::QuantizedModel;
use crate::walk::TensorInfo;

/// A batch in flight: floats, or int8 codes (held as i32; their parameters are the
/// walk's).
#[derive(Debug, Clone)]
enum Value {
    Float(Vec<f32>),
    Int(Vec<i32>),
}

/// How a static layer or an int8 merge turns its integer sum into an output code offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rescale {
    /// The integer path: Q0.31 multipliers and rounding shifts.
    FixedPoint,
    /// Real arithmetic in f64, rounded half to even.
    Exact,
}

/// Runs `model` on `input` (`[B, ...input_shape]`, NCHW) and returns its output.
pub fn reference_forward(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    interpret(model, input, Rescale::FixedPoint)
}

/// The interpreter behind [`reference_forward`] and [`crate::simulate`]: every tensor
/// kept until the end, each step computed from the tensors it reads.
pub(crate) fn interpret(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
    rescale: Rescale,
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), model.input_shape())?;
    cinder_observers::min_max(input.data()).map_err(RunError::Input)?;
    let walk = model.walk();
    let mut values = vec![Value::Float(input.data().to_vec())];
    for (i, step) in model.steps().iter().enumerate() {
        let inputs: Vec<(&Value, &TensorInfo)> = walk
            .reads(i)
            .iter()
            .map(|&t| (&values[t], walk.info(t)))
            .collect();
        let ctx = Context {
            batch,
            output: walk.output(i),
            rescale,
        };
        let value = ctx.step(step, &inputs)?;
        values.push(value);
    }
    let Some(Value::Float(x)) = values.pop() else {
        unreachable!("a validated model ends in float")
    };
    if let Some(index) = x.iter().position(|v| !v.is_finite()) {
        return Err(crate::session::non_finite_output(model, index, x[index]));
    }
    let mut shape = vec![batch];
    shape.extend_from_slice(model.output_shape());
    Ok(TensorBuf::new(shape, x).expect("the walk's shapes"))
}

/// What every step of a run needs besides its inputs.
struct Context<'a> {
    batch: usize,
    output: &'a TensorInfo,
    rescale: Rescale,
}

impl Context<'_> {
    fn step(&self, step: &Step, inputs: &[(&Value, &TensorInfo)]) -> Result<Value, RunError> {
        let (value, info) = inputs[0];
        let int = || info.int().expect("validated: int8 here");
        Ok(match (&step.op, value) {
            (StepOp::Quantize(p), Value::Float(x)) => {
                Value::Int(x.iter().map(|&v| p.quantize(v)).collect())
            }
            (StepOp::Dequantize, Value::Int(q)) => {
                Value::Float(q.iter().map(|&c| int().dequantize(c)).collect())
            }
            (StepOp::Activation(a), Value::Float(x)) => {
                Value::Float(x.iter().map(|&v| a.apply(v)).collect())
            }
            (StepOp::Activation(a), Value::Int(q)) => {
                let (lo, hi) = a.bounds(&int());
                Value::Int(q.iter().map(|&c| c.clamp(lo, hi)).collect())
            }
            (StepOp::Flatten, v) => v.clone(),
            (StepOp::MaxPool2d(_) | StepOp::AvgPool2d { .. } | StepOp::GlobalAvgPool, v) => {
                let (window, kind) = step.op.pool(&info.shape).expect("a pool");
                self.pool(v, info, window, kind)
            }
            (StepOp::Add(merge) | StepOp::Concat(merge), _) => {
                let concat = matches!(step.op, StepOp::Concat(_));
                match &merge.int {
                    None => self.float_merge(inputs, concat, merge.activation),
                    Some(int) => self.int_merge(inputs, concat, int, merge.activation),
                }
            }
            (op, v) => self.layer(&step.name, op, info, v)?,
        })
    }

    /// A pool of `value` (`info`) of `kind` over `window`.
    fn pool(&self, value: &Value, info: &TensorInfo, window: Window, kind: PoolKind) -> Value {
        let (geometry, out_len) = ((chw(&info.shape), window, kind), self.output.len());
        match value {
            Value::Float(x) => Value::Float(pool_forward(x, self.batch, geometry, out_len, 0.0)),
            Value::Int(q) => {
                let zp = info.int().expect("validated: int8").zero_point;
                Value::Int(pool_forward(q, self.batch, geometry, out_len, zp))
            }
        }
    }

    /// A float `Add` (then its activation) or `Concat`.
    fn float_merge(
        &self,
        inputs: &[(&Value, &TensorInfo)],
        concat: bool,
        activation: Activation,
    ) -> Value {
        let xs: Vec<&[f32]> = inputs
            .iter()
            .map(|(v, _)| match v {
                Value::Float(x) => &x[..],
                Value::Int(_) => unreachable!("validated: float inputs"),
            })
            .collect();
        let y = match concat {
            true => concat_samples(&xs, self.batch),
            false => xs[0].iter().zip(xs[1]).map(|(&a, &b)| a + b).collect(),
        };
        Value::Float(y.into_iter().map(|v| activation.apply(v)).collect())
    }

    /// An int8 `Add` (one sum of rescaled codes) or `Concat` (each input rescaled),
    /// clamped to the activation's bounds.
    fn int_merge(
        &self,
        inputs: &[(&Value, &TensorInfo)],
        concat: bool,
        int: &IntMerge,
        activation: Activation,
    ) -> Value {
        let out = &int.output;
        let params = |i: usize| inputs[i].1.int().expect("validated: int8 inputs");
        // The output code of the terms `(input, code)`.
        let code = |terms: &[(usize, i32)]| -> i32 {
            let centred = terms.iter().map(|&(i, q)| (i, q - params(i).zero_point));
            match self.rescale {
                Rescale::FixedPoint => {
                    let centred: Vec<(usize, i32)> = centred.collect();
                    int.output_code(&centred, activation)
                }
                Rescale::Exact => {
                    let (lo, hi) = activation.bounds(out);
                    let real: f64 = centred
                        .map(|(i, c)| f64::from(params(i).scale) * f64::from(c))
                        .sum();
                    let offset = (real / f64::from(out.scale)).round_ties_even() as i64;
                    (offset + i64::from(out.zero_point)).clamp(i64::from(lo), i64::from(hi)) as i32
                }
            }
        };
        let codes = |i: usize| match inputs[i].0 {
            Value::Int(q) => q,
            Value::Float(_) => unreachable!("validated: int8 inputs"),
        };
        Value::Int(match concat {
            true => {
                let each: Vec<Vec<i32>> = (0..inputs.len())
                    .map(|i| codes(i).iter().map(|&q| code(&[(i, q)])).collect())
                    .collect();
                let each: Vec<&[i32]> = each.iter().map(|v| &v[..]).collect();
                concat_samples(&each, self.batch)
            }
            false => codes(0)
                .iter()
                .zip(codes(1))
                .map(|(&a, &b)| code(&[(0, a), (1, b)]))
                .collect(),
        })
    }
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

impl Context<'_> {
    /// A convolution or linear layer.
    fn layer(
        &self,
        name: &str,
        op: &StepOp,
        info: &TensorInfo,
        value: &Value,
    ) -> Result<Value, RunError> {
        let (batch, out_len, rescale) = (self.batch, self.output.len(), self.rescale);
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
                let acc =
                    weighted_forward(geometry, &x, batch, out_len, &centered(&s.weights), &bias);
                let (lo, hi) = layer.activation.bounds(&s.output);
                let codes = acc
                    .iter()
                    .enumerate()
                    .map(|(i, &a)| {
                        let c = channel(i);
                        let a =
                            i32::try_from(a).expect("validation bounds every accumulator to int32");
                        match rescale {
                            Rescale::FixedPoint => s.requantize(c, a, layer.activation),
                            Rescale::Exact => {
                                let offset = exact_rescale(
                                    a,
                                    input.scale,
                                    s.weights.scale(c),
                                    s.output.scale,
                                );
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
                let p = dynamic_params(name, x, None)?;
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
                        let a =
                            i32::try_from(a).expect("validation bounds every accumulator to int32");
                        dynamic_output(
                            a,
                            acc_scale(p.scale, d.weights.scale(c)),
                            d.bias[c],
                            layer.activation,
                        )
                    })
                    .collect();
                Value::Float(y)
            }
            (LayerExec::Float(f), Value::Float(x)) => {
                let y = weighted_forward(geometry, x, batch, out_len, f.weight.data(), &f.bias);
                Value::Float(y.into_iter().map(|v| layer.activation.apply(v)).collect())
            }
            _ => unreachable!("validation matched every layer's domain"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IntMerge, Layer, Merge, StaticLayer};
    use cinder_tensor::{Mapping, QuantParams, RequantMultiplier, TensorQuantParams};

    fn step(name: &str, inputs: &[&str], op: StepOp) -> Step {
        Step {
            name: name.into(),
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            op,
        }
    }

    fn params(scale: f32, zero_point: i32) -> QuantParams {
        QuantParams::new(scale, zero_point, -128, 127).unwrap()
    }

    /// A 1x1 convolution worked by hand: input scale 0.5, weight code 2 at scale 0.25,
    /// bias code 3 (scale 0.125), output scale 1 with zero point -10.
    fn one_by_one(activation: Activation) -> QuantizedModel {
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
            output: params(1.0, -10),
        };
        let conv = StepOp::Conv2d {
            stride: [1, 1],
            padding: [0, 0],
            groups: 1,
            layer: Layer {
                activation,
                exec: LayerExec::Static(layer),
            },
        };
        QuantizedModel::new(
            vec![1, 1, 2],
            vec![
                step(
                    "quantize:input",
                    &["input"],
                    StepOp::Quantize(params(0.5, 0)),
                ),
                step("conv", &["quantize:input"], conv),
                step("dequantize:conv", &["conv"], StepOp::Dequantize),
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
            reference_forward(&one_by_one(Activation::None), &x)
                .unwrap()
                .data(),
            &[1.0, -1.0]
        );
        // A fused ReLU clamps at the zero point: real 0.
        let model = one_by_one(Activation::Relu);
        assert_eq!(reference_forward(&model, &x).unwrap().data(), &[1.0, 0.0]);
        assert_eq!(
            model.session().unwrap().run(&x).unwrap().data(),
            &[1.0, 0.0]
        );
    }

    /// A residual add of two int8 tensors with different scales, worked by hand, and its
    /// global average: `x` at scale 0.5 and `x` at scale 0.25, summed at scale 1.
    #[test]
    fn int_add_and_global_average_by_hand() {
        let (a, b, out) = (params(0.5, 0), params(0.25, 4), params(1.0, -3));
        let m = |s: f64| RequantMultiplier::from_real(s).unwrap();
        let add = StepOp::Add(Merge {
            int: Some(IntMerge {
                multipliers: vec![m(0.5), m(0.25)],
                output: out,
            }),
            activation: Activation::Relu,
        });
        let model = QuantizedModel::new(
            vec![1, 1, 4],
            vec![
                step("qa", &["input"], StepOp::Quantize(a)),
                step("qb", &["input"], StepOp::Quantize(b)),
                step("add", &["qa", "qb"], add),
                step("gap", &["add"], StepOp::GlobalAvgPool),
                step("out", &["gap"], StepOp::Dequantize),
            ],
        )
        .unwrap();
        // x = [1, 2.5, -1, 3]: qa = [2, 5, -2, 6], qb = [8, 14, 0, 16];
        // 0.5 * qa = [1, 2.5, -1, 3], 0.25 * (qb - 4) = [1, 2.5, -1, 3]; their sums
        // [2, 5, -2, 6] are rounded once (rounding each operand would give 6 for 5);
        // + zp -3 = [-1, 2, -5, 3], ReLU at -3: [-1, 2, -3, 3];
        // mean of (q + 3) = [2, 5, 0, 6] is 3.25 -> 3 -> code 0 -> real 3.
        let x = TensorBuf::new(vec![1, 1, 1, 4], vec![1.0, 2.5, -1.0, 3.0]).unwrap();
        assert_eq!(reference_forward(&model, &x).unwrap().data(), &[3.0]);
        assert_eq!(model.session().unwrap().run(&x).unwrap().data(), &[3.0]);
    }

    /// A model without steps is the identity, in both paths.
    #[test]
    fn a_model_without_steps_returns_its_input() {
        let model = QuantizedModel::new(vec![3], vec![]).unwrap();
        let x = TensorBuf::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 4.0, -1.0]).unwrap();
        assert_eq!(reference_forward(&model, &x).unwrap().data(), x.data());
        assert_eq!(model.session().unwrap().run(&x).unwrap().data(), x.data());
    }
}
