//! The one walk over a quantized model's steps: the shape and the domain of every tensor
//! (float, or int8 with its parameters), and the rules that connect them: a quantize step
//! reads float, a static layer reads int8 and writes its own parameters, dynamic and
//! float layers read and write float, ReLU, max-pool and flatten keep the domain.
//!
//! Validation ([`crate::model::validate`]) runs it over a whole model, conversion
//! ([`crate::convert`]) as it emits steps, and the plan and the reference interpreter
//! read what it recorded for a validated model.

use cinder_tensor::QuantParams;

use crate::error::Invalid;
use crate::geometry::Window;
use crate::model::{Layer, LayerExec, StepOp};

/// Where a tensor's values live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Domain {
    /// f32, canonical NCHW.
    Float,
    /// int8 codes with these parameters.
    Int(QuantParams),
}

/// A tensor's per-sample shape and its domain.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TensorInfo {
    pub shape: Vec<usize>,
    pub domain: Domain,
}

impl TensorInfo {
    /// Elements per sample.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The int8 parameters, when the tensor is int8.
    pub fn int(&self) -> Option<QuantParams> {
        match self.domain {
            Domain::Int(p) => Some(p),
            Domain::Float => None,
        }
    }
}

/// The tensors of a model in execution order: its input, then each step's output.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Walk {
    tensors: Vec<TensorInfo>,
}

impl Walk {
    /// The walk of a model with per-sample input shape `input_shape` (`[C, H, W]` or
    /// `[F]`, no zero), before any step.
    pub fn new(input_shape: &[usize]) -> Result<Self, Invalid> {
        if !matches!(input_shape.len(), 1 | 3) || input_shape.contains(&0) {
            return Err(Invalid::new(
                "input_shape",
                format!("{input_shape:?} is not a non-empty [C, H, W] or [F]"),
            ));
        }
        Ok(Self {
            tensors: vec![TensorInfo {
                shape: input_shape.to_vec(),
                domain: Domain::Float,
            }],
        })
    }

    /// The tensor the next step reads.
    pub fn current(&self) -> &TensorInfo {
        self.tensors.last().expect("the input is always there")
    }

    /// The tensor step `i` reads.
    pub fn input(&self, i: usize) -> &TensorInfo {
        &self.tensors[i]
    }

    /// The tensor step `i` writes.
    pub fn output(&self, i: usize) -> &TensorInfo {
        &self.tensors[i + 1]
    }

    /// The model's output: what the last step writes.
    pub fn last(&self) -> &TensorInfo {
        self.current()
    }

    /// Adds a step (`field` names it in errors): checks that it fits the tensor it reads,
    /// and records the tensor it writes.
    pub fn push(&mut self, field: &str, op: &StepOp) -> Result<&TensorInfo, Invalid> {
        let next = output(field, op, self.current())?;
        self.tensors.push(next);
        Ok(self.current())
    }

    /// Checks that the model ends in float.
    pub fn finish(&self) -> Result<(), Invalid> {
        match self.last().domain {
            Domain::Float => Ok(()),
            Domain::Int(_) => Err(Invalid::new(
                "steps",
                "the model ends in int8: a dequantize step must end it",
            )),
        }
    }
}

/// The tensor that `op` writes when it reads `input`.
fn output(field: &str, op: &StepOp, input: &TensorInfo) -> Result<TensorInfo, Invalid> {
    let fail = |message: String| Err(Invalid::new(field, message));
    let shape = &input.shape;
    let same = |domain| {
        Ok(TensorInfo {
            shape: shape.clone(),
            domain,
        })
    };
    match op {
        StepOp::Quantize(p) => match input.domain {
            Domain::Float => same(Domain::Int(*p)),
            Domain::Int(_) => fail("quantize needs a float input, the tensor here is int8".into()),
        },
        StepOp::Dequantize => match input.domain {
            Domain::Int(_) => same(Domain::Float),
            Domain::Float => {
                fail("dequantize needs an int8 input, the tensor here is float".into())
            }
        },
        StepOp::Relu => same(input.domain),
        StepOp::Flatten => Ok(TensorInfo {
            shape: vec![input.len()],
            domain: input.domain,
        }),
        StepOp::MaxPool2d { kernel, stride } => {
            let window = Window {
                kernel: *kernel,
                stride: *stride,
                padding: 0,
            };
            let channels = shape.first().copied().unwrap_or(0);
            Ok(TensorInfo {
                shape: window.output_shape(field, shape, channels)?,
                domain: input.domain,
            })
        }
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
            let window = Window {
                kernel: w[2],
                stride: *stride,
                padding: *padding,
            };
            Ok(TensorInfo {
                shape: window.output_shape(field, shape, w[0])?,
                domain: layer_domain(field, layer, input.domain)?,
            })
        }
        StepOp::Linear(layer) => {
            let w = layer.weight_shape();
            if w.len() != 2 || w[0] == 0 || shape[..] != [w[1]] {
                return fail(format!(
                    "weight shape {w:?} does not fit input {shape:?}: expected [out, in]"
                ));
            }
            Ok(TensorInfo {
                shape: vec![w[0]],
                domain: layer_domain(field, layer, input.domain)?,
            })
        }
    }
}

/// The domain a layer writes, when it can read `input`.
fn layer_domain(field: &str, layer: &Layer, input: Domain) -> Result<Domain, Invalid> {
    match (&layer.exec, input) {
        (LayerExec::Static(s), Domain::Int(_)) => Ok(Domain::Int(s.output)),
        (LayerExec::Dynamic(_) | LayerExec::Float(_), Domain::Float) => Ok(Domain::Float),
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
