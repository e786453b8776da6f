//! Offline conversion (float arithmetic allowed here): a float graph, its calibration
//! table and a per-layer config become a [`QuantizedModel`].
//!
//! - Nodes are converted in the graph's topological order; each model step names the
//!   steps it reads. A ReLU or clip that is the only reader of a layer, `Add` or
//!   `Concat` is fused into it (its output clamp).
//! - Activation parameters come from the table: a layer's input from the tensor it
//!   reads, its output from the tensor it writes (after a fused activation). Unsigned
//!   8-bit table parameters are shifted by -128 (the same reals on a signed grid,
//!   `u8 ^ 0x80`).
//! - Activations, pools and flatten run in the domain their input is in (int8 when it
//!   has codes, keeping its parameters). `Add` and `Concat` are int8 when any input is
//!   (each input rescaled to the calibrated output parameters by a multiplier
//!   `s_in / s_out`), else float. `BatchNorm` must be folded first.
//! - Weights: signed narrow-range codes (`[-127, 127]` at 8 bits, `[-7, 7]` at 4 bits),
//!   per tensor or per output channel, symmetric or asymmetric (observers' min/max).
//! - Static layers: int32 bias with scale `s_in * s_w[c]` and zero point 0 (rounded
//!   through `QuantParams::quantize`), one Q0.31 multiplier `s_in * s_w[c] / s_out` per
//!   weight channel, and a ReLU that directly follows fused into the output clamp.
//! - Quantize / dequantize steps (`quantize:T`, `dequantize:T` for the graph's tensor
//!   `T`) are emitted where a reader needs the other domain, once per tensor; the model
//!   ends in float.
//! - [`convert_with_weights`] takes given weight parameters for some layers (learned
//!   step sizes from QAT) instead of recomputing them from the weights' min/max; the
//!   codes are then `QuantParams::quantize` of the float weights with those parameters.

use std::collections::{BTreeMap, HashMap, HashSet};

use cinder_observers::{CalibrationTable, quantize_weight};
use cinder_tensor::graph::{FloatGraph, INPUT, Node, Op, OpSpec};
use cinder_tensor::{
    Granularity, Mapping, QuantError, QuantParams, QuantScheme, Tensor, TensorBuf,
    TensorQuantParams,
};

use crate::config::{LayerConfig, Mode, QuantConfig, WeightGranularity};
use crate::error::ConvertError;
use crate::float::window;
use crate::model::rules::{acc_scale, bias_bound, requant_multiplier};
use crate::model::{
    Activation, DynamicLayer, FloatLayer, IntMerge, Layer, LayerExec, Merge, QuantWeights,
    StaticLayer, Step, StepOp, WEIGHT_BITS, weight_scheme,
};
use crate::quantized::QuantizedModel;
use crate::walk::Walk;

/// Converts `graph` under `config`, with activation ranges from `table`.
pub fn convert(
    graph: &FloatGraph,
    table: &CalibrationTable,
    config: &QuantConfig,
) -> Result<QuantizedModel, ConvertError> {
    convert_with_weights(graph, table, config, &BTreeMap::new())
}

/// [`convert`], with the weight parameters of the layers named in `weights` taken as
/// given instead of derived from the weights' min/max. Each must match its layer's
/// config: the grid of `weight_bits` (signed, narrow range: `[-127, 127]` at 8 bits),
/// one parameter set per tensor or one per output channel (axis 0 of the graph's
/// `[out, ...]` weight), and a zero point of 0 for symmetric mappings.
pub fn convert_with_weights(
    graph: &FloatGraph,
    table: &CalibrationTable,
    config: &QuantConfig,
    weights: &BTreeMap<String, TensorQuantParams>,
) -> Result<QuantizedModel, ConvertError> {
    check_config(graph, config)?;
    if let Some(name) = weights
        .keys()
        .find(|n| graph.node(n).and_then(|n| n.op.weight_and_bias()).is_none())
    {
        return Err(ConvertError::UnknownLayer(name.clone()));
    }
    let mut c = Converter {
        graph,
        table,
        out: Emitter::new(graph.input_shape())?,
        tensors: HashMap::from([(INPUT.to_owned(), Repr::float(INPUT))]),
        fused: HashSet::new(),
    };
    for node in graph.nodes() {
        if !c.fused.contains(&node.name) {
            let layer = Choice {
                config: config.layer(&node.name),
                given: weights.get(&node.name),
            };
            c.node(node, layer)?;
        }
    }
    let output = c.float(&graph.output().name)?;
    debug_assert_eq!(c.out.steps.last().map(|s| &s.name), Some(&output));
    Ok(QuantizedModel::new(
        graph.input_shape().to_vec(),
        c.out.steps,
    )?)
}

/// A weighted layer's config and its given weight parameters, if any.
struct Choice<'a> {
    config: LayerConfig,
    given: Option<&'a TensorQuantParams>,
}

/// Where a float graph's tensor is in the model: the step holding it in float, and the
/// step holding it in int8 with its parameters (one or both).
#[derive(Debug, Clone)]
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

/// The conversion in progress.
struct Converter<'a> {
    graph: &'a FloatGraph,
    table: &'a CalibrationTable,
    out: Emitter,
    /// Every float graph tensor converted so far.
    tensors: HashMap<String, Repr>,
    /// Activation nodes fused into the layer or merge before them.
    fused: HashSet<String>,
}

impl Converter<'_> {
    fn node(&mut self, node: &Node, choice: Choice<'_>) -> Result<(), ConvertError> {
        let input = &node.inputs[0];
        match &node.op {
            Op::Conv2d(_) | Op::Linear(_) => self.layer(node, choice),
            Op::Add | Op::Concat => self.merge(node),
            Op::BatchNorm(_) => Err(ConvertError::Unsupported {
                node: node.name.clone(),
                what: "BatchNorm nodes: fold them into their layers first (FloatGraph::fold_batch_norms)".into(),
            }),
            op => {
                let op = match op {
                    Op::Relu => StepOp::Activation(Activation::Relu),
                    Op::Clip { min, max } => StepOp::Activation(Activation::Clip {
                        min: *min,
                        max: *max,
                    }),
                    Op::MaxPool2d(p) => StepOp::MaxPool2d(window(p)),
                    Op::AvgPool2d(p) => StepOp::AvgPool2d {
                        window: window(&p.window),
                        count_include_pad: p.count_include_pad,
                    },
                    Op::GlobalAvgPool => StepOp::GlobalAvgPool,
                    _ => StepOp::Flatten,
                };
                // In the domain the input is in (int8 when it has codes): parameters kept.
                let repr = self.tensors[input].clone();
                let (read, params) = match repr.int {
                    Some((step, p)) => (step, Some(p)),
                    None => (repr.float.expect("a tensor is float or int8"), None),
                };
                self.out.emit(&node.name, &[&read], op)?;
                let repr = match params {
                    Some(p) => Repr::int(&node.name, p),
                    None => Repr::float(&node.name),
                };
                self.tensors.insert(node.name.clone(), repr);
                Ok(())
            }
        }
    }

    /// The ReLU or clip that is the only reader of `node`, fused into it: its activation
    /// and the name of the tensor it writes.
    fn fused_activation(&mut self, node: &Node) -> (Activation, String) {
        let readers = self.graph.consumers(&node.name);
        let activation = match readers[..] {
            [r] => Activation::fused_by(&OpSpec::of(&r.op)).map(|a| (a, r)),
            _ => None,
        };
        match activation {
            Some((a, r)) => {
                self.fused.insert(r.name.clone());
                (a, r.name.clone())
            }
            None => (Activation::None, node.name.clone()),
        }
    }

    /// A convolution or linear layer, with the activation that follows it fused.
    fn layer(&mut self, node: &Node, choice: Choice<'_>) -> Result<(), ConvertError> {
        let name = &node.name;
        let (weight, bias) = node.op.weight_and_bias().expect("a weighted node");
        let bias = bias.cloned().unwrap_or_else(|| zeros_like_rows(weight));
        let (activation, output) = self.fused_activation(node);
        let cfg = choice.config;
        let (read, exec) = if cfg.mode == Mode::Static {
            let (read, input) = self.int(&node.inputs[0], name)?;
            let out = calibrated(self.table, &output, name)?;
            let w = quant_weights(name, weight, &cfg, choice.given)?;
            let layer = static_layer(name, w, &bias, input, out)?;
            self.tensors.insert(output, Repr::int(name, out));
            (read, LayerExec::Static(layer))
        } else {
            let read = self.float(&node.inputs[0])?;
            let exec = float_side_layer(name, weight, &bias, &cfg, choice.given)?;
            self.tensors.insert(output, Repr::float(name));
            (read, exec)
        };
        let layer = Layer { activation, exec };
        let op = match &node.op {
            Op::Conv2d(c) => StepOp::Conv2d {
                stride: c.stride,
                padding: c.padding,
                groups: c.groups,
                layer,
            },
            _ => StepOp::Linear(layer),
        };
        self.out.emit(name, &[&read], op)
    }

    /// An `Add` or `Concat`, with the activation that follows it fused: int8 when any
    /// input is int8 (every input then rescaled to the calibrated output parameters),
    /// else float.
    fn merge(&mut self, node: &Node) -> Result<(), ConvertError> {
        let (activation, output) = self.fused_activation(node);
        let int = node.inputs.iter().any(|t| self.tensors[t].int.is_some());
        let (reads, int, repr) = if int {
            let out = calibrated(self.table, &output, &node.name)?;
            let mut reads = Vec::new();
            let mut multipliers = Vec::new();
            for t in &node.inputs {
                let (read, p) = self.int(t, &node.name)?;
                let m = requant_multiplier(p.scale, 1.0, out.scale).map_err(|source| {
                    ConvertError::Quant {
                        layer: node.name.clone(),
                        source,
                    }
                })?;
                reads.push(read);
                multipliers.push(m);
            }
            let int = IntMerge {
                multipliers,
                output: out,
            };
            (reads, Some(int), Repr::int(&node.name, out))
        } else {
            let reads = node
                .inputs
                .iter()
                .map(|t| self.float(t))
                .collect::<Result<Vec<_>, _>>()?;
            (reads, None, Repr::float(&node.name))
        };
        let merge = Merge { int, activation };
        let op = match node.op {
            Op::Add => StepOp::Add(merge),
            _ => StepOp::Concat(merge),
        };
        self.tensors.insert(output, repr);
        let reads: Vec<&str> = reads.iter().map(String::as_str).collect();
        self.out.emit(&node.name, &reads, op)
    }

    /// The step holding `tensor` in int8 and its parameters: its own, or the table's
    /// after a quantize step emitted for `layer`.
    fn int(&mut self, tensor: &str, layer: &str) -> Result<(String, QuantParams), ConvertError> {
        let repr = self.tensors[tensor].clone();
        if let Some(int) = repr.int {
            return Ok(int);
        }
        let p = calibrated(self.table, tensor, layer)?;
        let step = format!("quantize:{tensor}");
        self.out.emit(
            &step,
            &[repr.float.as_deref().expect("float")],
            StepOp::Quantize(p),
        )?;
        self.tensors.get_mut(tensor).expect("known").int = Some((step.clone(), p));
        Ok((step, p))
    }

    /// The step holding `tensor` in float: its own, or a dequantize step.
    fn float(&mut self, tensor: &str) -> Result<String, ConvertError> {
        let repr = self.tensors[tensor].clone();
        if let Some(step) = repr.float {
            return Ok(step);
        }
        let (read, _) = repr.int.expect("a tensor is float or int8");
        let step = format!("dequantize:{tensor}");
        self.out.emit(&step, &[&read], StepOp::Dequantize)?;
        self.tensors.get_mut(tensor).expect("known").float = Some(step.clone());
        Ok(step)
    }
}

/// The steps of a model as they are emitted, walked as they come.
struct Emitter {
    walk: Walk,
    steps: Vec<Step>,
}

impl Emitter {
    fn new(input_shape: &[usize]) -> Result<Self, ConvertError> {
        Ok(Self {
            walk: Walk::new(input_shape)?,
            steps: Vec::new(),
        })
    }

    fn emit(&mut self, name: &str, inputs: &[&str], op: StepOp) -> Result<(), ConvertError> {
        let step = Step {
            name: name.to_owned(),
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            op,
        };
        let field = format!("steps[{}] ({name})", self.steps.len());
        self.walk.push(&field, &step)?;
        self.steps.push(step);
        Ok(())
    }
}

/// A zero bias for a layer without one: one per output row of `weight`.
fn zeros_like_rows(weight: &TensorBuf<f32>) -> TensorBuf<f32> {
    TensorBuf::from_vec(vec![0.0; weight.shape()[0]])
}

/// Every configured layer exists and is weighted; quantized layers have 8 or 4 bits.
fn check_config(graph: &FloatGraph, config: &QuantConfig) -> Result<(), ConvertError> {
    for name in config.layers.keys() {
        if graph
            .node(name)
            .and_then(|n| n.op.weight_and_bias())
            .is_none()
        {
            return Err(ConvertError::UnknownLayer(name.clone()));
        }
    }
    for node in graph
        .nodes()
        .iter()
        .filter(|n| n.op.weight_and_bias().is_some())
    {
        let cfg = config.layer(&node.name);
        if cfg.mode != Mode::Float && !WEIGHT_BITS.contains(&cfg.weight_bits) {
            return Err(ConvertError::UnsupportedBits {
                layer: node.name.clone(),
                bits: cfg.weight_bits,
            });
        }
    }
    Ok(())
}

/// The table's parameters of `tensor` on a signed grid.
fn calibrated(
    table: &CalibrationTable,
    tensor: &str,
    layer: &str,
) -> Result<QuantParams, ConvertError> {
    let entry = table
        .get(tensor)
        .ok_or_else(|| ConvertError::MissingCalibration {
            tensor: tensor.to_owned(),
            layer: layer.to_owned(),
        })?;
    let p = entry.params;
    let bad = |message: String| ConvertError::BadCalibration {
        tensor: tensor.to_owned(),
        message,
    };
    let shift = if p.qmin >= 0 && p.qmax <= 255 {
        128
    } else if p.qmin >= -128 && p.qmax <= 127 {
        0
    } else {
        return Err(bad(format!(
            "grid [{}, {}] does not fit 8 bits",
            p.qmin, p.qmax
        )));
    };
    QuantParams::new(
        p.scale,
        p.zero_point - shift,
        p.qmin - shift,
        p.qmax - shift,
    )
    .map_err(|e| bad(e.to_string()))
}

/// The layer's weight codes: with `given` parameters when there are some (checked
/// against the layer's scheme), else with the min/max parameters of the weights.
fn quant_weights(
    layer: &str,
    weight: &TensorBuf<f32>,
    cfg: &LayerConfig,
    given: Option<&TensorQuantParams>,
) -> Result<QuantWeights, ConvertError> {
    let per_channel = cfg.granularity == WeightGranularity::PerChannel;
    let scheme = weight_scheme(cfg.weight_bits, cfg.mapping, per_channel).map_err(|source| {
        ConvertError::Quant {
            layer: layer.to_owned(),
            source,
        }
    })?;
    let (params, codes) = match given {
        None => {
            let q =
                quantize_weight::<i8>(weight, &scheme).map_err(|source| ConvertError::Weights {
                    layer: layer.to_owned(),
                    source,
                })?;
            (q.params, q.codes)
        }
        Some(params) => {
            check_given(layer, weight, &scheme, params)?;
            let codes = cinder_tensor::quantize::<i8>(weight, params).map_err(|source| {
                ConvertError::Quant {
                    layer: layer.to_owned(),
                    source,
                }
            })?;
            (params.clone(), codes)
        }
    };
    Ok(QuantWeights {
        bits: cfg.weight_bits,
        mapping: cfg.mapping,
        codes,
        params,
    })
}

/// Given weight parameters agree with the layer's scheme and weight shape.
fn check_given(
    layer: &str,
    weight: &TensorBuf<f32>,
    scheme: &QuantScheme,
    params: &TensorQuantParams,
) -> Result<(), ConvertError> {
    let invalid = |message: String| {
        ConvertError::Invalid(crate::error::Invalid::new(
            format!("{layer}.weight (given parameters)"),
            message,
        ))
    };
    let channels = match (params, scheme.granularity) {
        (TensorQuantParams::PerTensor(_), Granularity::PerTensor) => 1,
        (TensorQuantParams::PerChannel { axis: 0, channels }, Granularity::PerChannel { .. })
            if channels.len() == weight.shape()[0] =>
        {
            channels.len()
        }
        _ => {
            return Err(invalid(format!(
                "{} parameter sets do not match {:?} over a weight of shape {:?}",
                params.as_slice().len(),
                scheme.granularity,
                weight.shape()
            )));
        }
    };
    let symmetric = scheme.mapping == Mapping::Symmetric;
    for (c, p) in params.as_slice().iter().enumerate() {
        QuantParams::new(p.scale, p.zero_point, p.qmin, p.qmax)
            .map_err(|e| invalid(format!("channel {c}: {e}")))?;
        if (p.qmin, p.qmax) != (scheme.qmin(), scheme.qmax()) || (symmetric && p.zero_point != 0) {
            return Err(invalid(format!(
                "channel {c} of {channels}: grid [{}, {}] zero point {}, expected [{}, {}]{}",
                p.qmin,
                p.qmax,
                p.zero_point,
                scheme.qmin(),
                scheme.qmax(),
                if symmetric { " with zero point 0" } else { "" }
            )));
        }
    }
    Ok(())
}

/// A per-channel weight row whose codes all equal its zero point (its real weights are
/// all 0) is exact at any scale: such a row gets the smallest scale at which its bias
/// fits half the int32 bias grid, so that a dead channel with a large bias (a BatchNorm
/// folded over zero weights) converts exactly instead of failing.
fn fit_dead_channels(weights: &mut QuantWeights, bias: &[f32], s_in: f32, bound: i32) {
    let TensorQuantParams::PerChannel { channels, .. } = &mut weights.params else {
        return;
    };
    let depth = weights.codes.len() / channels.len().max(1);
    let rows = weights.codes.data().chunks_exact(depth.max(1));
    for ((p, row), &b) in channels.iter_mut().zip(rows).zip(bias) {
        let dead = row.iter().all(|&q| i32::from(q) == p.zero_point);
        let needed = f64::from(b.abs()) / (f64::from(s_in) * f64::from(bound / 2));
        if dead && needed > f64::from(p.scale) && needed < f64::from(f32::MAX) {
            p.scale = needed as f32;
        }
    }
}

fn static_layer(
    layer: &str,
    mut weights: QuantWeights,
    bias: &TensorBuf<f32>,
    input: QuantParams,
    output: QuantParams,
) -> Result<StaticLayer, ConvertError> {
    let quant = |source: QuantError| ConvertError::Quant {
        layer: layer.to_owned(),
        source,
    };
    check_finite(bias.data()).map_err(quant)?;
    let depth = weights.codes.len() / weights.codes.shape()[0];
    let bound = bias_bound(depth).ok_or_else(|| {
        ConvertError::Invalid(crate::error::Invalid::new(
            format!("{layer}.weight"),
            format!("{depth} taps per output overflow int32 accumulation"),
        ))
    })?;
    fit_dead_channels(&mut weights, bias.data(), input.scale, bound);
    let bias = bias
        .data()
        .iter()
        .enumerate()
        .map(|(channel, &value)| {
            let scale = acc_scale(input.scale, weights.scale(channel));
            let p = QuantParams::new(scale, 0, -bound, bound).map_err(quant)?;
            p.quantize_exact(value)
                .ok_or_else(|| ConvertError::BiasOutOfRange {
                    layer: layer.to_owned(),
                    channel,
                    value,
                    scale,
                    bound,
                })
        })
        .collect::<Result<Vec<i32>, ConvertError>>()?;
    let multipliers = weights
        .params
        .as_slice()
        .iter()
        .map(|p| requant_multiplier(input.scale, p.scale, output.scale))
        .collect::<Result<Vec<_>, _>>()
        .map_err(quant)?;
    Ok(StaticLayer {
        weights,
        bias,
        multipliers,
        output,
    })
}

/// A dynamic or float layer (both read and write float).
fn float_side_layer(
    layer: &str,
    weight: &TensorBuf<f32>,
    bias: &TensorBuf<f32>,
    cfg: &LayerConfig,
    given: Option<&TensorQuantParams>,
) -> Result<LayerExec, ConvertError> {
    check_finite(bias.data()).map_err(|source| ConvertError::Quant {
        layer: layer.to_owned(),
        source,
    })?;
    let bias = bias.data().to_vec();
    Ok(match cfg.mode {
        Mode::Dynamic => LayerExec::Dynamic(DynamicLayer {
            weights: quant_weights(layer, weight, cfg, given)?,
            bias,
        }),
        _ => LayerExec::Float(FloatLayer {
            weight: weight.clone(),
            bias,
        }),
    })
}

fn check_finite(values: &[f32]) -> Result<(), QuantError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(QuantError::NonFiniteValue {
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::{Rng, linear_node, minmax_table, node, random_input};

    fn small() -> (FloatGraph, CalibrationTable) {
        let mut rng = Rng::new(3);
        let graph = FloatGraph::chain(
            vec![6],
            vec![
                linear_node(&mut rng, "fc1", 6, 5),
                node("relu1", Op::Relu),
                linear_node(&mut rng, "fc2", 5, 3),
            ],
        )
        .unwrap();
        let table = minmax_table(&graph, &random_input(&graph, 16, 4)).unwrap();
        (graph, table)
    }

    fn weight(graph: &FloatGraph, name: &str) -> TensorBuf<f32> {
        graph
            .node(name)
            .unwrap()
            .op
            .weight_and_bias()
            .unwrap()
            .0
            .clone()
    }

    #[test]
    fn given_min_max_params_reproduce_convert() {
        let (graph, table) = small();
        let config = QuantConfig::default();
        let scheme = weight_scheme(8, Mapping::Symmetric, true).unwrap();
        let given: BTreeMap<String, TensorQuantParams> = ["fc1", "fc2"]
            .iter()
            .map(|&n| {
                let q = quantize_weight::<i8>(&weight(&graph, n), &scheme).unwrap();
                (n.to_owned(), q.params)
            })
            .collect();
        assert_eq!(
            convert_with_weights(&graph, &table, &config, &given).unwrap(),
            convert(&graph, &table, &config).unwrap()
        );
    }

    #[test]
    fn given_params_set_the_codes() {
        let (graph, table) = small();
        let config = QuantConfig::default();
        let given = fc2_given();
        let model = convert_with_weights(&graph, &table, &config, &given).unwrap();
        let w = weight(&graph, "fc2");
        let fc2 = model.steps().iter().find(|s| s.name == "fc2").unwrap();
        let q = fc2.op.layer().unwrap().quant_weights().unwrap();
        let want: Vec<i8> = w
            .data()
            .iter()
            .map(|&v| given["fc2"].as_slice()[0].quantize(v) as i8)
            .collect();
        assert_eq!(q.codes.data(), &want[..]);
        assert_eq!(q.params, given["fc2"]);
    }

    #[test]
    fn mismatched_given_params_are_rejected() {
        let (graph, table) = small();
        let config = QuantConfig::default();
        let p4 = QuantParams::new(0.01, 0, -7, 7).unwrap();
        let cases = [
            ("fc2", TensorQuantParams::PerTensor(p4)),
            (
                "fc2",
                TensorQuantParams::PerChannel {
                    axis: 0,
                    channels: vec![p4; 3],
                },
            ),
            (
                "relu1",
                TensorQuantParams::PerTensor(QuantParams::new(0.01, 0, -127, 127).unwrap()),
            ),
        ];
        for (name, params) in cases {
            let given = BTreeMap::from([(name.to_owned(), params)]);
            assert!(convert_with_weights(&graph, &table, &config, &given).is_err());
        }
    }

    /// Given weight parameters for `fc2`: scale 0.01 per channel, symmetric 8-bit.
    fn fc2_given() -> BTreeMap<String, TensorQuantParams> {
        let p = QuantParams::new(0.01, 0, -127, 127).unwrap();
        BTreeMap::from([(
            "fc2".to_owned(),
            TensorQuantParams::PerChannel {
                axis: 0,
                channels: vec![p; 3],
            },
        )])
    }

    /// `small()`'s graph with `edit` applied to `fc2`.
    fn with_fc2(edit: impl Fn(&mut cinder_tensor::graph::Linear)) -> FloatGraph {
        let (graph, _) = small();
        let nodes = graph
            .nodes()
            .iter()
            .cloned()
            .map(|mut n| {
                if let (true, Op::Linear(l)) = (n.name == "fc2", &mut n.op) {
                    edit(l);
                }
                n
            })
            .collect();
        FloatGraph::new(graph.input_shape().to_vec(), nodes).unwrap()
    }

    /// `small()`'s graph with the bias of `fc2`'s channel 1 set to `value`.
    fn with_fc2_bias(value: f32) -> FloatGraph {
        with_fc2(|l| l.bias.as_mut().unwrap().data_mut()[1] = value)
    }

    /// A channel of zero weights with a bias far beyond what its weight scale puts on the
    /// int32 grid converts, its bias code standing for the bias.
    #[test]
    fn a_dead_channel_with_a_large_bias_converts_exactly() {
        let (_, table) = small();
        let graph = with_fc2(|l| {
            l.bias.as_mut().unwrap().data_mut()[1] = 1e6;
            let width = l.weight.shape()[1];
            l.weight.data_mut()[width..2 * width].fill(0.0);
        });
        let model = convert(&graph, &table, &QuantConfig::default()).unwrap();
        let fc2 = model.steps().iter().find(|s| s.name == "fc2").unwrap();
        let StepOp::Linear(Layer {
            exec: LayerExec::Static(s),
            ..
        }) = &fc2.op
        else {
            panic!("fc2 is static: {fc2:?}");
        };
        let s_in =
            s.multipliers[1].to_real() * f64::from(s.output.scale) / f64::from(s.weights.scale(1));
        let real = f64::from(s.bias[1]) * s_in * f64::from(s.weights.scale(1));
        assert!((real - 1e6).abs() <= 1e6 * 1e-6, "{real}");
    }

    #[test]
    fn a_bias_beyond_int32_codes_is_refused_naming_layer_and_channel() {
        let (_, table) = small();
        let config = QuantConfig::default();
        assert!(convert(&with_fc2_bias(0.75), &table, &config).is_ok());
        let given = fc2_given();
        for value in [3e38f32, -3e38, 1e12] {
            let graph = with_fc2_bias(value);
            // Min/max weights (PTQ) and given weight params (QAT's export) alike.
            for result in [
                convert(&graph, &table, &config),
                convert_with_weights(&graph, &table, &config, &given),
            ] {
                match result {
                    Err(ConvertError::BiasOutOfRange { layer, channel, .. }) => {
                        assert_eq!((layer.as_str(), channel), ("fc2", 1), "{value}");
                    }
                    other => panic!("{value}: expected BiasOutOfRange, got {other:?}"),
                }
            }
        }
        let message = convert(&with_fc2_bias(3e38), &table, &config)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("`fc2`") && message.contains("channel 1"),
            "{message}"
        );
    }
}
