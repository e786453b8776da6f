//! The int8 operators without weights in the fake-quant forward: `Add` and `Concat`
//! (fake-quantized at their point, or rescaled by the deployed model's multipliers) and
//! the unary operators on codes (clamps, pools, flatten), which keep their input's
//! parameters.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use cinder_model::export::host;
use cinder_model::net::{Value, parameter_free_forward};
use cinder_runtime::{Activation, IntMerge, StepOp};
use cinder_tensor::graph::{NodeSpec, OpSpec};

use super::{Codes, Pass, activate, map_host, not_on};
use crate::error::QatError;
use crate::fake_quant::round_ste;

impl Pass<'_> {
    /// The int8 `Add` or `Concat` `node` of `xs`, with `activation` fused, at `point`.
    pub(super) fn merge(
        &mut self,
        node: &str,
        concat: bool,
        xs: Vec<Codes>,
        activation: Activation,
        point: usize,
    ) -> Result<Codes, QatError> {
        let op = if concat { OpSpec::Concat } else { OpSpec::Add };
        let Some(deployed) = self.deployed else {
            let reals = xs.into_iter().map(Codes::real).collect();
            let y = parameter_free_forward(&op, reals).ok_or_else(|| {
                QatError::State(format!("node `{node}`: {op:?} of this many inputs"))
            })?;
            let y = y.unary(|t| activate(t, activation), |t| activate(t, activation));
            return self.fake_quantize(point, y);
        };
        let step = deployed.steps().iter().find(|s| s.name == node);
        let (int, activation) = match step.map(|s| &s.op) {
            Some(StepOp::Add(m) | StepOp::Concat(m)) => match &m.int {
                Some(int) if int.multipliers.len() == xs.len() => (int, m.activation),
                _ => return Err(no_merge(node)),
            },
            _ => return Err(no_merge(node)),
        };
        let codes = match concat {
            true => {
                let parts = xs
                    .into_iter()
                    .enumerate()
                    .map(|(i, x)| map_host(x.x, |_, v| Ok(requantize(int, activation, [(i, v)]))))
                    .collect::<Result<Vec<_>, _>>()?;
                parameter_free_forward(&op, parts).ok_or_else(|| no_merge(node))?
            }
            false => deployed_add(int, activation, xs, node)?,
        };
        Ok(self.deployed_codes(codes, int.output))
    }
}

fn no_merge(node: &str) -> QatError {
    QatError::State(format!(
        "the deployed model has no int8 merge `{node}` of these inputs"
    ))
}

/// The output code offset of an int8 merge of inputs `(index, centred code)`, as the
/// runtime computes it ([`IntMerge::output_code`]).
fn requantize<const N: usize>(
    int: &IntMerge,
    activation: Activation,
    terms: [(usize, f32); N],
) -> f32 {
    let terms = terms.map(|(i, c)| (i, c as i32));
    (int.output_code(&terms, activation) - int.output.zero_point) as f32
}

/// A deployed two-input `Add` on the host.
fn deployed_add(
    int: &IntMerge,
    activation: Activation,
    xs: Vec<Codes>,
    node: &str,
) -> Result<Value, QatError> {
    let [a, b]: [Codes; 2] = xs.try_into().map_err(|_| no_merge(node))?;
    let other = host_values(b.x)?;
    map_host(a.x, |j, v| {
        let w = *other.get(j).ok_or_else(|| no_merge(node))?;
        Ok(requantize(int, activation, [(0, v), (1, w)]))
    })
}

fn host_values(x: Value) -> Result<Vec<f32>, QatError> {
    Ok(match x {
        Value::Map(t) => host(t)?,
        Value::Vector(t) => host(t)?,
    })
}

/// A ReLU, clip, pool or flatten `node` on the codes of `x`, which keep its parameters.
pub(super) fn on_codes(node: &NodeSpec, x: Codes) -> Result<Codes, QatError> {
    let clamp = |activation: Activation, x: Codes| {
        let (lo, hi) = activation.bounds(&x.params);
        let zp = x.params.zero_point;
        let (lo, hi) = ((lo - zp) as f32, (hi - zp) as f32);
        Codes {
            x: x.x.unary(|t| t.clamp(lo, hi), |t| t.clamp(lo, hi)),
            ..x
        }
    };
    Ok(match node.op {
        OpSpec::Relu => clamp(Activation::Relu, x),
        OpSpec::Clip { min, max } => clamp(Activation::Clip { min, max }, x),
        OpSpec::AvgPool2d {
            kernel,
            stride,
            padding,
            count_include_pad,
        } => Codes {
            x: Value::Map(average_codes(
                x.x.map(),
                (kernel, stride, padding),
                count_include_pad,
            )),
            ..x
        },
        OpSpec::GlobalAvgPool => {
            let t = x.x.map();
            let [_, _, h, w] = t.dims();
            Codes {
                x: Value::Map(average_codes(t, ([h, w], [1, 1], [0, 0]), true)),
                ..x
            }
        }
        OpSpec::MaxPool2d { .. } | OpSpec::Flatten => {
            let y = parameter_free_forward(&node.op, vec![x.x]).ok_or_else(|| not_on(node))?;
            Codes { x: y, ..x }
        }
        _ => return Err(not_on(node)),
    })
}

/// The average of each pooling window of centred codes, rounded half to even as the
/// runtime rounds it: exact integer window sums (a depthwise convolution with ones),
/// divided by the window's size (`include_pad`) or by its taps inside the input. The
/// quotient of two exact integers is correctly rounded in f32, far closer than the
/// distance between a non-tie and a tie, so the rounding is the runtime's.
fn average_codes(
    x: Tensor<4>,
    (kernel, stride, padding): ([usize; 2], [usize; 2], [usize; 2]),
    include_pad: bool,
) -> Tensor<4> {
    let [_, c, h, w] = x.dims();
    let device = x.device();
    let ones = |shape: [usize; 4]| {
        let n = shape.iter().product();
        Tensor::<4>::from_data(TensorData::new(vec![1.0f32; n], shape), &device)
    };
    let sums = conv2d(
        x,
        ones([c, 1, kernel[0], kernel[1]]),
        None,
        ConvOptions::new(stride, padding, [1, 1], c),
    );
    let counts = match include_pad {
        true => {
            let [_, _, oh, ow] = sums.dims();
            ones([1, 1, oh, ow]).mul_scalar((kernel[0] * kernel[1]) as f32)
        }
        false => conv2d(
            ones([1, 1, h, w]),
            ones([1, 1, kernel[0], kernel[1]]),
            None,
            ConvOptions::new(stride, padding, [1, 1], 1),
        ),
    };
    round_ste(sums / counts)
}
