//! The second half of QDQ import: the float graph of a QDQ model and its quantization
//! become the steps of a cinder int8 model with the model's own scales, zero points and
//! codes.
//!
//! - A layer with int8 weights is static: its input and output are the quantized
//!   activations around it (an error names it when either has no parameters), its weight
//!   codes and parameters are the model's, its int32 bias codes are the model's (their
//!   scale must be `s_in * s_w`, as cinder defines it), and its requantization multiplier
//!   is `s_in * s_w / s_out`. A layer with float weights stays float.
//! - ReLU, clip, max pool and flatten run on int8 codes when their input is int8 (they
//!   commute with quantization); average pools do when their output has the input's
//!   parameters, else they run in float as the QDQ model computes them. An output
//!   quantized with other parameters than the input's is dequantized and quantized again.
//! - `Add` and `Concat` are int8 when their output is quantized, every input rescaled to
//!   its parameters, else float.
//! - Quantize and dequantize steps (`quantize:T`, `dequantize:T`) are emitted where a
//!   reader needs the other domain; the model ends in float.

use std::collections::{HashMap, HashSet};

use cinder_runtime::model::INPUT;
use cinder_runtime::{
    Activation, FloatLayer, IntMerge, Layer, LayerExec, Merge, QuantWeights, QuantizedModel,
    StaticLayer, Step, StepOp, Window,
};
use cinder_tensor::graph::{FloatGraph, Node, Op, OpSpec, Pool2d};
use cinder_tensor::{
    Mapping, QuantParams, RequantMultiplier, Tensor, TensorBuf, TensorQuantParams,
};

use super::strip::LayerQuant;
use crate::error::OnnxError;

/// The largest relative difference accepted between a bias scale and `s_in * s_w`.
const BIAS_SCALE_TOLERANCE: f32 = 1e-6;

/// Builds the int8 model of `graph` with the parameters `activations` (by graph tensor)
/// and the int8 `layers` (by node).
pub(super) fn build(
    graph: &FloatGraph,
    activations: &HashMap<String, QuantParams>,
    layers: &HashMap<String, LayerQuant>,
) -> Result<QuantizedModel, OnnxError> {
    let mut b = Builder {
        graph,
        fused: HashSet::new(),
        activations,
        steps: Vec::new(),
        tensors: HashMap::from([(INPUT.to_owned(), Repr::float(INPUT))]),
    };
    for node in graph.nodes() {
        if !b.fused.contains(&node.name) {
            b.node(node, layers.get(&node.name))?;
        }
    }
    b.float(&graph.output().name);
    QuantizedModel::new(graph.input_shape().to_vec(), b.steps).map_err(|e| OnnxError::Model {
        field: "quantization",
        message: format!("the imported int8 model is not one cinder runs: {e}"),
    })
}

/// Where a graph tensor is in the model: the step holding it in float, and the step
/// holding it in int8 with its parameters (one or both).
#[derive(Debug, Clone, Default)]
struct Repr {
    float: Option<String>,
    int: Option<(String, QuantParams)>,
}

impl Repr {
    fn float(step: &str) -> Self {
        Self {
            float: Some(step.to_owned()),
            int: None,
        }
    }

    fn int(step: &str, params: QuantParams) -> Self {
        Self {
            float: None,
            int: Some((step.to_owned(), params)),
        }
    }
}

struct Builder<'a> {
    graph: &'a FloatGraph,
    /// ReLU and clip nodes fused into the layer or merge before them.
    fused: HashSet<String>,
    activations: &'a HashMap<String, QuantParams>,
    steps: Vec<Step>,
    tensors: HashMap<String, Repr>,
}

impl Builder<'_> {
    fn emit(&mut self, name: &str, inputs: &[&str], op: StepOp) {
        self.steps.push(Step {
            name: name.to_owned(),
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            op,
        });
    }

    fn node(&mut self, node: &Node, quant: Option<&LayerQuant>) -> Result<(), OnnxError> {
        let error = |message: String| OnnxError::Node {
            node: node.name.clone(),
            op_type: format!("{:?}", OpSpec::of(&node.op)),
            message,
        };
        match &node.op {
            Op::Conv2d(_) | Op::Linear(_) => match quant {
                Some(q) => self.static_layer(node, q).map_err(error),
                None => {
                    self.float_layer(node);
                    Ok(())
                }
            },
            Op::Add | Op::Concat => self.merge(node).map_err(error),
            Op::BatchNorm(_) => Err(error(
                "BatchNormalization in a QDQ model; fold it into the convolution before \
                 quantizing"
                    .into(),
            )),
            Op::Relu => self.keeping(node, StepOp::Activation(Activation::Relu), true),
            Op::Clip { min, max } => self.keeping(
                node,
                StepOp::Activation(Activation::Clip {
                    min: *min,
                    max: *max,
                }),
                true,
            ),
            Op::MaxPool2d(p) => self.keeping(node, StepOp::MaxPool2d(window(p)), true),
            Op::Flatten => self.keeping(node, StepOp::Flatten, true),
            Op::AvgPool2d(a) => self.keeping(
                node,
                StepOp::AvgPool2d {
                    window: window(&a.window),
                    count_include_pad: a.count_include_pad,
                },
                false,
            ),
            Op::GlobalAvgPool => self.keeping(node, StepOp::GlobalAvgPool, false),
        }
    }

    /// A step that keeps its input's parameters in int8. `exact`: it commutes with
    /// quantization (ReLU, clip, max pool, flatten), so it runs on int8 codes whatever
    /// parameters its output is quantized with; an average runs on codes only when the
    /// output keeps the input's parameters.
    fn keeping(&mut self, node: &Node, op: StepOp, exact: bool) -> Result<(), OnnxError> {
        let input = &node.inputs[0];
        let repr = self.tensors[input].clone();
        let out = self.activations.get(&node.name).copied();
        let int = repr.int.filter(|(_, p)| exact || out == Some(*p));
        let repr = match int {
            Some((read, p)) => {
                self.emit(&node.name, &[&read], op);
                if out.is_some_and(|o| o != p) {
                    let step = format!("dequantize:{}", node.name);
                    self.emit(&step, &[&node.name], StepOp::Dequantize);
                    Repr::float(&step)
                } else {
                    Repr::int(&node.name, p)
                }
            }
            None => {
                let read = self.float(input);
                self.emit(&node.name, &[&read], op);
                Repr::float(&node.name)
            }
        };
        self.tensors.insert(node.name.clone(), repr);
        Ok(())
    }

    fn float_layer(&mut self, node: &Node) {
        let (weight, bias) = node.op.weight_and_bias().expect("a weighted node");
        let read = self.float(&node.inputs[0]);
        let layer = Layer {
            activation: Activation::None,
            exec: LayerExec::Float(FloatLayer {
                weight: weight.clone(),
                bias: bias.map_or_else(|| vec![0.0; weight.shape()[0]], |b| b.data().to_vec()),
            }),
        };
        self.emit(&node.name, &[&read], layer_op(&node.op, layer));
        self.tensors
            .insert(node.name.clone(), Repr::float(&node.name));
    }

    fn static_layer(&mut self, node: &Node, q: &LayerQuant) -> Result<(), String> {
        let (weight, bias) = node.op.weight_and_bias().expect("a weighted node");
        let (read, input) = self.int(&node.inputs[0], "its input")?;
        let (activation, written) = self.fused_activation(node);
        let output = self.params(&written, "its output")?;
        let codes = weight_codes(weight, &q.weights)?;
        let bias = bias_codes(
            q,
            bias.is_some(),
            input.scale,
            &q.weights,
            weight.shape()[0],
        )?;
        let multipliers = q
            .weights
            .as_slice()
            .iter()
            .map(|w| multiplier(input.scale, w.scale, output.scale))
            .collect::<Result<Vec<_>, _>>()?;
        let layer = Layer {
            activation,
            exec: LayerExec::Static(StaticLayer {
                weights: QuantWeights {
                    bits: 8,
                    mapping: Mapping::Symmetric,
                    codes,
                    params: q.weights.clone(),
                },
                bias,
                multipliers,
                output,
            }),
        };
        self.emit(&node.name, &[&read], layer_op(&node.op, layer));
        self.tensors.insert(written, Repr::int(&node.name, output));
        Ok(())
    }

    fn merge(&mut self, node: &Node) -> Result<(), String> {
        let (activation, written) = self.fused_activation(node);
        let (reads, int, repr) = match self.activations.get(&written).copied() {
            Some(output) => {
                let mut reads = Vec::new();
                let mut multipliers = Vec::new();
                for (i, t) in node.inputs.iter().enumerate() {
                    let (read, p) = self.int(t, &format!("its input {i}"))?;
                    reads.push(read);
                    multipliers.push(multiplier(p.scale, 1.0, output.scale)?);
                }
                let int = IntMerge {
                    multipliers,
                    output,
                };
                (reads, Some(int), Repr::int(&node.name, output))
            }
            None => {
                let reads = node.inputs.iter().map(|t| self.float(t)).collect();
                (reads, None, Repr::float(&node.name))
            }
        };
        let merge = Merge { int, activation };
        let op = match node.op {
            Op::Add => StepOp::Add(merge),
            _ => StepOp::Concat(merge),
        };
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        self.emit(&node.name, &reads, op);
        self.tensors.insert(written, repr);
        Ok(())
    }

    /// The ReLU or clip fused into `node` and the tensor the pair writes: when `node`'s
    /// own output is not quantized and its only reader is a ReLU or clip whose output is
    /// (the QDQ form of a fused activation), that reader; else none.
    fn fused_activation(&mut self, node: &Node) -> (Activation, String) {
        if self.activations.contains_key(&node.name) {
            return (Activation::None, node.name.clone());
        }
        let readers = self.graph.consumers(&node.name);
        let fused = match readers[..] {
            [r] if self.activations.contains_key(&r.name) => {
                Activation::fused_by(&OpSpec::of(&r.op)).map(|a| (a, r))
            }
            _ => None,
        };
        match fused {
            Some((a, r)) => {
                self.fused.insert(r.name.clone());
                (a, r.name.clone())
            }
            None => (Activation::None, node.name.clone()),
        }
    }

    /// The quantization parameters of the graph tensor `tensor` (`what` of the node).
    fn params(&self, tensor: &str, what: &str) -> Result<QuantParams, String> {
        self.activations.get(tensor).copied().ok_or_else(|| {
            format!(
                "{what} (`{tensor}`) is not quantized; a layer with int8 weights reads and \
                 writes quantized activations"
            )
        })
    }

    /// The step holding `tensor` in int8 and its parameters: its own, or a quantize step
    /// with the model's parameters for it.
    fn int(&mut self, tensor: &str, what: &str) -> Result<(String, QuantParams), String> {
        let repr = self.tensors[tensor].clone();
        if let Some(int) = repr.int {
            return Ok(int);
        }
        let p = self.params(tensor, what)?;
        let step = format!("quantize:{tensor}");
        let read = repr.float.expect("a tensor is float or int8");
        self.emit(&step, &[&read], StepOp::Quantize(p));
        self.tensors.get_mut(tensor).expect("known").int = Some((step.clone(), p));
        Ok((step, p))
    }

    /// The step holding `tensor` in float: its own, or a dequantize step.
    fn float(&mut self, tensor: &str) -> String {
        let repr = self.tensors[tensor].clone();
        if let Some(step) = repr.float {
            return step;
        }
        let (read, _) = repr.int.expect("a tensor is float or int8");
        let step = format!("dequantize:{tensor}");
        self.emit(&step, &[&read], StepOp::Dequantize);
        self.tensors.get_mut(tensor).expect("known").float = Some(step.clone());
        step
    }
}

fn window(p: &Pool2d) -> Window {
    Window {
        kernel: p.kernel,
        stride: p.stride,
        padding: p.padding,
    }
}

fn layer_op(op: &Op, layer: Layer) -> StepOp {
    match op {
        Op::Conv2d(c) => StepOp::Conv2d {
            stride: c.stride,
            padding: c.padding,
            groups: c.groups,
            layer,
        },
        _ => StepOp::Linear(layer),
    }
}

/// The requantization multiplier `s_in * s_w / s_out`, computed in f64 as cinder does.
fn multiplier(s_in: f32, s_w: f32, s_out: f32) -> Result<RequantMultiplier, String> {
    RequantMultiplier::from_real(f64::from(s_in) * f64::from(s_w) / f64::from(s_out))
        .map_err(|e| e.to_string())
}

/// The int8 codes of `weight`, the real values of the model's codes: dividing by their
/// scale gives the codes back exactly.
fn weight_codes(
    weight: &TensorBuf<f32>,
    params: &TensorQuantParams,
) -> Result<TensorBuf<i8>, String> {
    let depth = weight.len() / weight.shape()[0].max(1);
    let codes = weight
        .data()
        .chunks_exact(depth)
        .enumerate()
        .flat_map(|(c, row)| {
            let p = *params.channel(c);
            row.iter().map(move |&w| p.quantize(w) as i8)
        })
        .collect();
    TensorBuf::new(weight.shape().to_vec(), codes).map_err(|e| e.to_string())
}

/// The model's int32 bias codes, checked against cinder's bias scale `s_in * s_w[c]`
/// (zeros for a layer without bias).
fn bias_codes(
    q: &LayerQuant,
    graph_has_bias: bool,
    s_in: f32,
    weights: &TensorQuantParams,
    channels: usize,
) -> Result<Vec<i32>, String> {
    let Some((codes, scales)) = &q.bias else {
        if graph_has_bias {
            return Err(format!(
                "the {} has int8 weights and a float bias; cinder needs int32 bias codes",
                q.op_type
            ));
        }
        return Ok(vec![0; channels]);
    };
    if codes.len() != channels {
        return Err(format!("{} bias codes for {channels} outputs", codes.len()));
    }
    for c in 0..channels {
        let expected = s_in * weights.channel(c).scale;
        let scale = scales[c % scales.len()];
        if (scale - expected).abs() > BIAS_SCALE_TOLERANCE * expected {
            return Err(format!(
                "bias scale {scale} of output {c} is not s_in * s_w = {expected}, the scale \
                 cinder's int32 bias has"
            ));
        }
    }
    Ok(codes.clone())
}
