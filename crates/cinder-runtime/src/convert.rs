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

use cinder_observers::{CalibrationTable, GRAPH_INPUT, quantize_weight};
use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{QuantError, QuantParams, Tensor, TensorBuf};

use crate::config::{LayerConfig, Mode, QuantConfig, WeightGranularity};
use crate::error::ConvertError;
use crate::model::{
    DynamicLayer, FloatLayer, Layer, LayerExec, QuantWeights, QuantizedModel, StaticLayer, Step,
    StepOp, WEIGHT_BITS, acc_scale, bias_bound, requant_multiplier, weight_scheme,
};

/// Converts `graph` under `config`, with activation ranges from `table`.
pub fn convert(
    graph: &FloatGraph,
    table: &CalibrationTable,
    config: &QuantConfig,
) -> Result<QuantizedModel, ConvertError> {
    check_config(graph, config)?;
    let nodes = graph.nodes();
    let mut steps = Vec::with_capacity(nodes.len() + 2);
    // The current int8 parameters while in the int8 domain.
    let mut int_params: Option<QuantParams> = None;
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
            steps.push(Step {
                name: node.name.clone(),
                op,
            });
            tensor.clone_from(&node.name);
            i += 1;
            continue;
        };
        let relu = matches!(nodes.get(i + 1).map(|n| &n.op), Some(Op::Relu));
        let output = if relu { &nodes[i + 1].name } else { &node.name };
        let cfg = config.layer(&node.name);
        let exec = if cfg.mode == Mode::Static {
            let input = match int_params {
                Some(p) => p,
                None => {
                    let p = activation(table, &tensor, &node.name)?;
                    steps.push(Step {
                        name: tensor.clone(),
                        op: StepOp::Quantize(p),
                    });
                    p
                }
            };
            let output = activation(table, output, &node.name)?;
            let layer = static_layer(&node.name, weight, bias, &cfg, input, output)?;
            int_params = Some(output);
            LayerExec::Static(layer)
        } else {
            if int_params.take().is_some() {
                steps.push(Step {
                    name: tensor.clone(),
                    op: StepOp::Dequantize,
                });
            }
            float_side_layer(&node.name, weight, bias, &cfg)?
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
        steps.push(Step {
            name: node.name.clone(),
            op,
        });
        tensor.clone_from(output);
        i += 1 + usize::from(relu);
    }
    if int_params.is_some() {
        steps.push(Step {
            name: tensor,
            op: StepOp::Dequantize,
        });
    }
    Ok(QuantizedModel::new(graph.input_shape().to_vec(), steps)?)
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

fn quant_weights(
    layer: &str,
    weight: &TensorBuf<f32>,
    cfg: &LayerConfig,
) -> Result<QuantWeights, ConvertError> {
    let per_channel = cfg.granularity == WeightGranularity::PerChannel;
    let scheme = weight_scheme(cfg.weight_bits, cfg.mapping, per_channel).map_err(|source| {
        ConvertError::Quant {
            layer: layer.to_owned(),
            source,
        }
    })?;
    let q = quantize_weight::<i8>(weight, &scheme).map_err(|source| ConvertError::Weights {
        layer: layer.to_owned(),
        source,
    })?;
    Ok(QuantWeights {
        bits: cfg.weight_bits,
        mapping: cfg.mapping,
        codes: q.codes,
        params: q.params,
    })
}

fn static_layer(
    layer: &str,
    weight: &TensorBuf<f32>,
    bias: &TensorBuf<f32>,
    cfg: &LayerConfig,
    input: QuantParams,
    output: QuantParams,
) -> Result<StaticLayer, ConvertError> {
    let quant = |source: QuantError| ConvertError::Quant {
        layer: layer.to_owned(),
        source,
    };
    check_finite(bias.data()).map_err(quant)?;
    let weights = quant_weights(layer, weight, cfg)?;
    let depth = weight.len() / weight.shape()[0];
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
) -> Result<LayerExec, ConvertError> {
    check_finite(bias.data()).map_err(|source| ConvertError::Quant {
        layer: layer.to_owned(),
        source,
    })?;
    let bias = bias.data().to_vec();
    Ok(match cfg.mode {
        Mode::Dynamic => LayerExec::Dynamic(DynamicLayer {
            weights: quant_weights(layer, weight, cfg)?,
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
