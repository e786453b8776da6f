//! The fake-quant forward of a [`QatPlan`]: the network's nodes run on centred codes
//! `q - zp` where the runtime runs int8, with its rounding, so that training sees what
//! the runtime computes.
//!
//! - A quantize step fake-quantizes a float tensor at its point (observing it first
//!   while observers are live).
//! - A weighted layer multiplies centred codes by its fake-quantized weights (per-channel
//!   or per-tensor params) and adds its bias snapped to the runtime's int32 grid
//!   (`s_in·s_w`, zero point 0): `(Σ codes_in·codes_w + bias codes) · s_in·s_w`, an
//!   exact integer sum in f32 and then one scaling, as the runtime does. Mathematically
//!   this is the layer on fake-quantized values, so the gradients are those of the STE;
//!   numerically it avoids the rounding noise of summing thousands of f32 products.
//!   After the fused activation, the output is fake-quantized at its point.
//! - An int8 `Add` or `Concat` sums (or joins) its inputs' real values and
//!   fake-quantizes the result at its point, after the fused activation.
//! - On codes, max-pooling and flatten commute with the affine map; an average pool
//!   rounds the mean of the codes half to even (the runtime's exact integer rounding);
//!   an unfused ReLU or clip clamps the codes to the activation's bounds.
//!
//! With a deployed model, every quantizer, each layer's requantization (int32 bias,
//! Q0.31 multipliers, clamps) and each int8 merge's rescaling are the deployed model's,
//! applied on the host to the exact integer values (an inference-only path: it is not
//! differentiable).

use std::collections::HashMap;

use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::GraphNet;
use cinder_model::export::host;
use cinder_model::net::{Value, parameter_free_forward};
use cinder_observers::Observer;
use cinder_runtime::{Activation, QuantizedModel, StepOp};
use cinder_tensor::QuantParams;
use cinder_tensor::graph::{INPUT, NodeSpec};
use cinder_tensor::params::MIN_SCALE;

use crate::config::QatConfig;
use crate::error::QatError;
use crate::fake_quant::{FakeQuantGrid, lsq_gradient_scale, quantize_centred, scaled_gradient};
use crate::model::{LsqScales, Parts, QuantState, current_params, missing};
use crate::plan::{QatPlan, QatStep};

mod codes;
mod layer;

use codes::on_codes;

/// A tensor in the int8 domain: centred codes `q - zp` (integer-valued f32), the scale
/// `[1]` (a learned one keeps its gradient) and the params of its grid.
#[derive(Debug, Clone)]
struct Codes {
    x: Value,
    scale: Tensor<1>,
    params: QuantParams,
}

impl Codes {
    /// The real values `codes · scale`.
    fn real(self) -> Value {
        let s = self.scale;
        self.x.unary(
            |t| t * s.clone().reshape([1, 1, 1, 1]),
            |t| t * s.clone().reshape([1, 1]),
        )
    }
}

/// A graph tensor in the forward: float, int8, or both once quantized.
#[derive(Debug, Clone, Default)]
struct Slot {
    float: Option<Value>,
    int: Option<Codes>,
}

/// One forward pass's view of the network and its quantization state.
struct Pass<'a> {
    net: &'a GraphNet,
    plan: &'a QatPlan,
    config: &'a QatConfig,
    state: &'a mut QuantState,
    /// The learned scales, once they are in use (LSQ after the freeze).
    lsq: Option<&'a LsqScales>,
    observe: bool,
    /// Requantize with this converted model's integer arithmetic instead of in f32.
    deployed: Option<&'a QuantizedModel>,
}

/// A weighted layer's exact integer sums `Σ codes_in·codes_w` (no bias yet), its
/// accumulator scale `s_in·s_w` per output channel and its bias codes on that grid.
struct Sums<const D: usize> {
    acc: Tensor<D>,
    s_acc: Tensor<1>,
    bias: Tensor<1>,
}

/// The network's forward: fake quantization as planned, unless the run is a control.
/// While `training` and the observers are live, they see every point first (and the
/// state in `parts` is updated).
pub(crate) fn forward(
    parts: Parts<'_>,
    images: Tensor<4>,
    training: bool,
    deployed: Option<&QuantizedModel>,
) -> Result<Tensor<2>, QatError> {
    let Parts {
        net,
        plan,
        config,
        state,
    } = parts;
    if !config.fake_quant {
        return Ok(net.net.forward(images));
    }
    let observe = training && state.frozen.is_none();
    let lsq = net.lsq.as_ref().filter(|_| state.frozen.is_some());
    let mut pass = Pass {
        net: &net.net,
        plan,
        config,
        state,
        lsq,
        observe,
        deployed,
    };
    let input = Slot {
        float: Some(Value::Map(images)),
        int: None,
    };
    let mut slots = HashMap::from([(INPUT.to_owned(), input)]);
    for (i, step) in plan.steps().iter().enumerate() {
        pass.step(step, &mut slots)?;
        for tensor in plan.drops(i) {
            slots.remove(tensor);
        }
    }
    let output = slots.remove(plan.output()).unwrap_or_default();
    match (output.float, output.int) {
        (Some(x), _) => Ok(x.vector()),
        (None, Some(codes)) => Ok(codes.real().vector()),
        (None, None) => Err(unknown(plan.output())),
    }
}

fn unknown(tensor: &str) -> QatError {
    QatError::State(format!("the forward has no tensor `{tensor}`"))
}

fn float_of(slots: &HashMap<String, Slot>, tensor: &str) -> Result<Value, QatError> {
    slots
        .get(tensor)
        .and_then(|s| s.float.clone())
        .ok_or_else(|| unknown(tensor))
}

fn int_of(slots: &HashMap<String, Slot>, tensor: &str) -> Result<Codes, QatError> {
    slots
        .get(tensor)
        .and_then(|s| s.int.clone())
        .ok_or_else(|| unknown(tensor))
}

fn int_slot(codes: Codes) -> Slot {
    Slot {
        float: None,
        int: Some(codes),
    }
}

impl Pass<'_> {
    fn step(&mut self, step: &QatStep, slots: &mut HashMap<String, Slot>) -> Result<(), QatError> {
        match step {
            QatStep::Quantize { tensor, point } => {
                let codes = self.quantize(tensor, *point, float_of(slots, tensor)?)?;
                let slot = slots.get_mut(tensor).ok_or_else(|| unknown(tensor))?;
                slot.int = Some(codes);
            }
            QatStep::Layer {
                layer,
                input,
                activation,
                output,
                point,
            } => {
                let x = int_of(slots, input)?;
                let codes = self.layer(*layer, x, *activation, *point)?;
                slots.insert(output.clone(), int_slot(codes));
            }
            QatStep::Merge {
                node,
                concat,
                inputs,
                activation,
                output,
                point,
            } => {
                let xs = inputs
                    .iter()
                    .map(|t| int_of(slots, t))
                    .collect::<Result<Vec<_>, _>>()?;
                let codes = self.merge(node, *concat, xs, *activation, *point)?;
                slots.insert(output.clone(), int_slot(codes));
            }
            QatStep::Float(node) => {
                let xs = node
                    .inputs
                    .iter()
                    .map(|t| float_of(slots, t))
                    .collect::<Result<Vec<_>, _>>()?;
                let y = parameter_free_forward(&node.op, xs).ok_or_else(|| not_on(node))?;
                let slot = Slot {
                    float: Some(y),
                    int: None,
                };
                slots.insert(node.name.clone(), slot);
            }
            QatStep::Codes(node) => {
                let codes = on_codes(node, int_of(slots, &node.inputs[0])?)?;
                slots.insert(node.name.clone(), int_slot(codes));
            }
        }
        Ok(())
    }

    /// The float tensor `tensor` quantized at `point`: fake-quantized, or with the
    /// deployed model's own quantizer.
    fn quantize(&mut self, tensor: &str, point: usize, x: Value) -> Result<Codes, QatError> {
        let Some(deployed) = self.deployed else {
            return self.fake_quantize(point, x);
        };
        let name = format!("quantize:{tensor}");
        let step = deployed.steps().iter().find(|s| s.name == name);
        let Some(StepOp::Quantize(p)) = step.map(|s| &s.op) else {
            return Err(QatError::State(format!(
                "the deployed model has no quantize step `{name}`"
            )));
        };
        let p = *p;
        let x = map_host(x, |_, v| Ok((p.quantize(v) - p.zero_point) as f32))?;
        Ok(self.deployed_codes(x, p))
    }

    fn deployed_codes(&self, x: Value, params: QuantParams) -> Codes {
        let device = match &x {
            Value::Map(t) => t.device(),
            Value::Vector(t) => t.device(),
        };
        Codes {
            x,
            scale: constant(vec![params.scale], &device),
            params,
        }
    }

    /// Fake-quantizes `x` at `point` (observed first while observers are live).
    fn fake_quantize(&mut self, point: usize, x: Value) -> Result<Codes, QatError> {
        Ok(match x {
            Value::Map(t) => {
                let (codes, scale, params) = self.activation(point, t)?;
                Codes {
                    x: Value::Map(codes),
                    scale,
                    params,
                }
            }
            Value::Vector(t) => {
                let (codes, scale, params) = self.activation(point, t)?;
                Codes {
                    x: Value::Vector(codes),
                    scale,
                    params,
                }
            }
        })
    }

    /// Quantizes activation point `point`: its centred codes, its scale `[1]` (with
    /// LSQ's scaled gradient when learned) and its params (with the learned scale).
    fn activation<const D: usize>(
        &mut self,
        point: usize,
        x: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<1>, QuantParams), QatError> {
        let name = &self.plan.points()[point];
        let device = x.device();
        if self.observe {
            let lo = x.clone().detach().min().into_scalar::<f32>();
            let hi = x.clone().detach().max().into_scalar::<f32>();
            let observer = self
                .state
                .observers
                .get_mut(name)
                .ok_or_else(|| missing("state.observers", name))?;
            observer.observe(&cinder_tensor::TensorBuf::from_vec(vec![lo, hi]))?;
        }
        let mut p = current_params(self.state, self.config, name)?;
        let grid = FakeQuantGrid {
            qmin: p.qmin,
            qmax: p.qmax,
        };
        let scale = match self.lsq {
            Some(lsq) => {
                let features: usize = x.dims()[1..].iter().product();
                let g = lsq_gradient_scale(features, p.qmax - p.zero_point);
                let learned = lsq.activations.get(point).ok_or_else(|| no_scale(name))?;
                let scale = scaled_gradient(learned.val().clamp_min(MIN_SCALE), g);
                p.scale = host(scale.clone().detach())?[0];
                scale
            }
            None => constant(vec![p.scale], &device),
        };
        let zero_point = constant(vec![p.zero_point as f32], &device);
        let codes = quantize_centred(
            x,
            scale.clone().reshape([1; D]),
            zero_point.reshape([1; D]),
            grid,
        );
        Ok((codes, scale, p))
    }
}

fn no_scale(name: &str) -> QatError {
    QatError::State(format!("no learned scale for `{name}`"))
}

fn not_on(node: &NodeSpec) -> QatError {
    QatError::State(format!(
        "node `{}` ({:?}) cannot run on {} inputs here",
        node.name,
        node.op,
        node.inputs.len()
    ))
}

/// `x` read to the host, `f(flat index, value)` applied to each element, and put back in
/// the same shape on the same device.
fn map_host(x: Value, f: impl Fn(usize, f32) -> Result<f32, QatError>) -> Result<Value, QatError> {
    fn apply<const D: usize>(
        t: Tensor<D>,
        f: impl Fn(usize, f32) -> Result<f32, QatError>,
    ) -> Result<Tensor<D>, QatError> {
        let (dims, device) = (t.dims(), t.device());
        let values = host(t)?
            .into_iter()
            .enumerate()
            .map(|(i, v)| f(i, v))
            .collect::<Result<Vec<f32>, _>>()?;
        Ok(Tensor::from_data(TensorData::new(values, dims), &device))
    }
    Ok(match x {
        Value::Map(t) => Value::Map(apply(t, f)?),
        Value::Vector(t) => Value::Vector(apply(t, f)?),
    })
}

/// `x` after `activation` (in real values).
fn activate<const D: usize>(x: Tensor<D>, activation: Activation) -> Tensor<D> {
    match activation {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Clip { min, max } => x.clamp(min, max),
    }
}

fn constant(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}
