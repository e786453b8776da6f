//! Offline conversion (float arithmetic allowed here): a float graph, its calibration
//! table and a per-layer config become a [`QuantizedModel`].
//!
//! - Activation parameters come from the table: a layer's input from the tensor before
//!   it, its output from the tensor after it (after a fused ReLU). Unsigned 8-bit table
//!   parameters are shifted by -128 (the same reals on a signed grid, `u8 ^ 0x80`).
//! - Weights: signed narrow-range codes (`[-127, 127]` at 8 bits, `[-7, 7]` at 4 bits),
//!   per tensor or per output channel, symmetric or asymmetric (observers' min/max).
//! - Static layers: int32 bias with scale `s_in * s_w[c]` and zero point 0 (rounded
//!   through `QuantParams::quantize`), one Q0.31 multiplier `s_in * s_w[c] / s_out` per
//!   weight channel, and a ReLU that directly follows fused into the output clamp.
//! - Quantize / dequantize steps are placed where the int8 domain starts and ends.
//! - [`convert_with_weights`] takes given weight parameters for some layers (learned
//!   step sizes from QAT) instead of recomputing them from the weights' min/max; the
//!   codes are then `QuantParams::quantize` of the float weights with those parameters.

use std::collections::BTreeMap;

use cinder_observers::{CalibrationTable, GRAPH_INPUT, quantize_weight};
use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{
    Granularity, Mapping, QuantError, QuantParams, QuantScheme, Tensor, TensorBuf,
    TensorQuantParams,
};

use crate::config::{LayerConfig, Mode, QuantConfig, WeightGranularity};
use crate::error::ConvertError;
use crate::model::rules::{acc_scale, bias_bound, requant_multiplier};
use crate::model::{
    DynamicLayer, FloatLayer, Layer, LayerExec, QuantWeights, StaticLayer, Step, StepOp,
    WEIGHT_BITS, weight_scheme,
};
use crate::quantized::QuantizedModel;
use crate::walk::{Domain, Walk};

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
    let nodes = graph.nodes();
    let mut out = Emitter::new(graph.input_shape())?;
    // The name of the float graph's tensor the next node reads.
    let mut tensor = GRAPH_INPUT.to_owned();
    let mut i = 0;
    while i < nodes.len() {
        let node = &nodes[i];
        let Some((weight, bias)) = node.op.weight_and_bias() else {
            let op = match node.op {
                Op::Relu => StepOp::Relu,
                Op::MaxPool2d { kernel, stride } => StepOp::MaxPool2d { kernel, stride },
                _ => StepOp::Flatten,
            };
            out.emit(&node.name, op)?;
            tensor.clone_from(&node.name);
            i += 1;
            continue;
        };
        let relu = matches!(nodes.get(i + 1).map(|n| &n.op), Some(Op::Relu));
        let output = if relu { &nodes[i + 1].name } else { &node.name };
        let cfg = config.layer(&node.name);
        let given = weights.get(&node.name);
        let exec = if cfg.mode == Mode::Static {
            let input = out.int_input(table, &tensor, &node.name)?;
            let output = activation(table, output, &node.name)?;
            let w = quant_weights(&node.name, weight, &cfg, given)?;
            LayerExec::Static(static_layer(&node.name, w, bias, input, output)?)
        } else {
            out.float_input(&tensor)?;
            float_side_layer(&node.name, weight, bias, &cfg, given)?
        };
        let layer = Layer { relu, exec };
        let op = match &node.op {
            Op::Conv2d(c) => StepOp::Conv2d {
                stride: c.stride,
                padding: c.padding,
                layer,
            },
            _ => StepOp::Linear(layer),
        };
        out.emit(&node.name, op)?;
        tensor.clone_from(output);
        i += 1 + usize::from(relu);
    }
    out.float_input(&tensor)?;
    Ok(QuantizedModel::new(
        graph.input_shape().to_vec(),
        out.steps,
    )?)
}

/// The steps of a model as they are emitted, walked as they come (so the domain of the
/// current tensor is known).
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

    fn emit(&mut self, name: &str, op: StepOp) -> Result<(), ConvertError> {
        let field = format!("steps[{}] ({name})", self.steps.len());
        self.walk.push(&field, &op)?;
        self.steps.push(Step {
            name: name.to_owned(),
            op,
        });
        Ok(())
    }

    /// The parameters of the current tensor (the float graph's `tensor`) in int8: its
    /// own, or the table's after a quantize step emitted for `layer`.
    fn int_input(
        &mut self,
        table: &CalibrationTable,
        tensor: &str,
        layer: &str,
    ) -> Result<QuantParams, ConvertError> {
        if let Some(p) = self.walk.current().int() {
            return Ok(p);
        }
        let p = activation(table, tensor, layer)?;
        self.emit(tensor, StepOp::Quantize(p))?;
        Ok(p)
    }

    /// Makes the current tensor (the float graph's `tensor`) float: a dequantize step
    /// when it is int8.
    fn float_input(&mut self, tensor: &str) -> Result<(), ConvertError> {
        match self.walk.current().domain {
            Domain::Int(_) => self.emit(tensor, StepOp::Dequantize),
            Domain::Float => Ok(()),
        }
    }
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
fn activation(
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

fn static_layer(
    layer: &str,
    weights: QuantWeights,
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
    let bias = bias
        .data()
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            let p = QuantParams::new(acc_scale(input.scale, weights.scale(c)), 0, -bound, bound)?;
            Ok(p.quantize(b))
        })
        .collect::<Result<Vec<i32>, QuantError>>()
        .map_err(quant)?;
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
        let graph = FloatGraph::new(
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
        let p = QuantParams::new(0.01, 0, -127, 127).unwrap();
        let given = BTreeMap::from([(
            "fc2".to_owned(),
            TensorQuantParams::PerChannel {
                axis: 0,
                channels: vec![p; 3],
            },
        )]);
        let model = convert_with_weights(&graph, &table, &config, &given).unwrap();
        let w = weight(&graph, "fc2");
        let fc2 = model.steps().iter().find(|s| s.name == "fc2").unwrap();
        let q = fc2.op.layer().unwrap().quant_weights().unwrap();
        let want: Vec<i8> = w.data().iter().map(|&v| p.quantize(v) as i8).collect();
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
}
