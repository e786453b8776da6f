//! The one walk over a quantized model's steps: the shape and the domain of every tensor
//! (float, or int8 with its parameters), which tensors each step reads, and the rules
//! that connect them: a quantize step reads float, a static layer reads int8 and writes
//! its own parameters, dynamic and float layers read and write float, activations, pools
//! and flatten keep the domain (and int8 parameters), `Add` and `Concat` read one domain
//! and write their own parameters in int8.
//!
//! Validation ([`crate::model::validate`]) runs it over a whole model, conversion
//! ([`crate::convert`]) as it emits steps, and the plan and the reference interpreter
//! read what it recorded for a validated model.

use std::collections::HashMap;

use cinder_tensor::QuantParams;

use crate::error::Invalid;
use crate::geometry::Window;
use crate::model::{INPUT, Layer, LayerExec, Merge, Step, StepOp};

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

/// Refuses a shape whose element count overflows `usize`, before anything multiplies
/// its dimensions (a model file may declare any shape).
fn countable(field: &str, shape: &[usize]) -> Result<(), Invalid> {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(_) => Ok(()),
        None => Err(Invalid::new(
            field,
            format!("shape {shape:?} has more elements than memory can hold"),
        )),
    }
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

/// The tensors of a model: tensor 0 is its input, tensor `i + 1` what step `i` writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Walk {
    tensors: Vec<TensorInfo>,
    /// The tensors each step reads.
    reads: Vec<Vec<usize>>,
    ids: HashMap<String, usize>,
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
        countable("input_shape", input_shape)?;
        Ok(Self {
            tensors: vec![TensorInfo {
                shape: input_shape.to_vec(),
                domain: Domain::Float,
            }],
            reads: Vec::new(),
            ids: HashMap::from([(INPUT.to_owned(), 0)]),
        })
    }

    /// The tensors step `i` reads (ids: 0 the input, `j + 1` step `j`'s output).
    pub fn reads(&self, i: usize) -> &[usize] {
        &self.reads[i]
    }

    /// Tensor `id`.
    pub fn info(&self, id: usize) -> &TensorInfo {
        &self.tensors[id]
    }

    /// The (first) tensor step `i` reads.
    pub fn input(&self, i: usize) -> &TensorInfo {
        &self.tensors[self.reads[i][0]]
    }

    /// The tensor step `i` writes.
    pub fn output(&self, i: usize) -> &TensorInfo {
        &self.tensors[i + 1]
    }

    /// The model's output: what the last step writes (the input without steps).
    pub fn last(&self) -> &TensorInfo {
        self.tensors.last().expect("the input is always there")
    }

    /// How many steps read each tensor.
    pub fn readers(&self) -> Vec<usize> {
        let mut count = vec![0; self.tensors.len()];
        self.reads.iter().flatten().for_each(|&t| count[t] += 1);
        count
    }

    /// Adds a step (`field` names it in errors): checks that its name is new, that it
    /// reads tensors written before it and fits them, and records the tensor it writes.
    pub fn push(&mut self, field: &str, step: &Step) -> Result<&TensorInfo, Invalid> {
        if self.ids.contains_key(&step.name) {
            return Err(Invalid::new(field, "a tensor of this name comes earlier"));
        }
        let (min, max) = step.op.arity();
        if !(min..=max).contains(&step.inputs.len()) {
            return Err(Invalid::new(
                format!("{field}.inputs"),
                format!("{} inputs, expected {min} to {max}", step.inputs.len()),
            ));
        }
        let reads = step
            .inputs
            .iter()
            .map(|name| {
                self.ids.get(name).copied().ok_or_else(|| {
                    Invalid::new(
                        format!("{field}.inputs"),
                        format!("`{name}` is not the input or an earlier step"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let inputs: Vec<&TensorInfo> = reads.iter().map(|&t| &self.tensors[t]).collect();
        let next = output(field, &step.op, &inputs)?;
        countable(field, &next.shape)?;
        self.ids.insert(step.name.clone(), self.tensors.len());
        self.tensors.push(next);
        self.reads.push(reads);
        Ok(self.last())
    }

    /// Checks that the model ends in float and that every step's output is read (but the
    /// last one's, the model's output).
    pub fn finish(&self, steps: &[Step]) -> Result<(), Invalid> {
        if let Domain::Int(_) = self.last().domain {
            return Err(Invalid::new(
                "steps",
                "the model ends in int8: a dequantize step must end it",
            ));
        }
        let readers = self.readers();
        match (1..readers.len().saturating_sub(1)).find(|&t| readers[t] == 0) {
            Some(t) => Err(Invalid::new(
                format!("steps[{}] ({})", t - 1, steps[t - 1].name),
                "no later step reads this tensor, and it is not the last",
            )),
            None => Ok(()),
        }
    }
}

/// The tensor that `op` writes when it reads `inputs` (as many as its arity).
fn output(field: &str, op: &StepOp, inputs: &[&TensorInfo]) -> Result<TensorInfo, Invalid> {
    let fail = |message: String| Err(Invalid::new(field, message));
    let input = inputs[0];
    let shape = &input.shape;
    let keep = |shape: Vec<usize>| {
        Ok(TensorInfo {
            shape,
            domain: input.domain,
        })
    };
    match op {
        StepOp::Quantize(p) => match input.domain {
            Domain::Float => Ok(TensorInfo {
                shape: shape.clone(),
                domain: Domain::Int(*p),
            }),
            Domain::Int(_) => fail("quantize needs a float input, the tensor here is int8".into()),
        },
        StepOp::Dequantize => match input.domain {
            Domain::Int(_) => Ok(TensorInfo {
                shape: shape.clone(),
                domain: Domain::Float,
            }),
            Domain::Float => {
                fail("dequantize needs an int8 input, the tensor here is float".into())
            }
        },
        StepOp::Activation(_) => keep(shape.clone()),
        StepOp::Flatten => keep(vec![input.len()]),
        StepOp::MaxPool2d(window) | StepOp::AvgPool2d { window, .. } => {
            pool_shape(field, window, shape).and_then(keep)
        }
        StepOp::GlobalAvgPool => match shape[..] {
            [c, _, _] => keep(vec![c, 1, 1]),
            _ => fail(format!("expected a [C, H, W] input, got {shape:?}")),
        },
        StepOp::Conv2d {
            stride,
            padding,
            groups,
            layer,
        } => {
            let w = layer.weight_shape();
            let c = shape.first().copied().unwrap_or(0);
            let fits = w.len() == 4
                && !w.contains(&0)
                && *groups > 0
                && c % groups == 0
                && w[0] % groups == 0
                && w[1] * groups == c;
            if !fits {
                return fail(format!(
                    "weight shape {w:?} with {groups} groups does not fit input {shape:?}: expected [out, {c} / groups, kh, kw], groups dividing in and out"
                ));
            }
            let window = Window {
                kernel: [w[2], w[3]],
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
        StepOp::Add(merge) => {
            if inputs.iter().any(|t| t.shape != *shape) {
                return fail(format!(
                    "add of shapes {:?}: expected equal shapes",
                    inputs.iter().map(|t| &t.shape).collect::<Vec<_>>()
                ));
            }
            merged(field, merge, inputs, shape.clone())
        }
        StepOp::Concat(merge) => {
            let rest = &shape[1..];
            if inputs
                .iter()
                .any(|t| t.shape.len() != shape.len() || t.shape[1..] != *rest)
            {
                return fail(format!(
                    "concat of shapes {:?}: expected equal shapes but for dimension 0",
                    inputs.iter().map(|t| &t.shape).collect::<Vec<_>>()
                ));
            }
            let mut out = shape.clone();
            out[0] = inputs.iter().map(|t| t.shape[0]).sum();
            merged(field, merge, inputs, out)
        }
    }
}

/// The output shape of a pooling window: it must fit, and its padding be at most half
/// of it (so every window holds a tap inside the input).
fn pool_shape(field: &str, window: &Window, shape: &[usize]) -> Result<Vec<usize>, Invalid> {
    if (0..2).any(|i| 2 * window.padding[i] > window.kernel[i]) {
        return Err(Invalid::new(
            field,
            format!("{window:?}: padding must be at most half the kernel"),
        ));
    }
    window.output_shape(field, shape, shape.first().copied().unwrap_or(0))
}

/// The domain of an `Add` or `Concat` of `inputs`: float, or (all int8, with an int8
/// side) its own parameters.
fn merged(
    field: &str,
    merge: &Merge,
    inputs: &[&TensorInfo],
    shape: Vec<usize>,
) -> Result<TensorInfo, Invalid> {
    let all_int = inputs.iter().all(|t| t.int().is_some());
    let all_float = inputs.iter().all(|t| t.int().is_none());
    let domain = match &merge.int {
        Some(int) if all_int => Domain::Int(int.output),
        None if all_float => Domain::Float,
        Some(_) => return Err(Invalid::new(field, "an int8 merge needs int8 inputs only")),
        None => return Err(Invalid::new(field, "a float merge needs float inputs only")),
    };
    Ok(TensorInfo { shape, domain })
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
