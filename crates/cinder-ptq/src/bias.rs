//! Empirical bias correction (Nagel et al. 2019, section 4.2): quantizing a layer's
//! weights `W` to `Q(W)` shifts the mean of its output by `E[(W - Q(W)) x]`, a bias
//! that later layers do not average away. Over calibration images this expectation is
//! measured per output channel and added to the layer's bias, so that the quantized
//! layer's output has the float layer's mean.
//!
//! The layer's input `x` is the float network's (each layer is corrected for its own
//! weight error, independently of the others). The layer being linear, the expectation
//! over images and output positions is the layer's error weights `W - Q(W)` applied to
//! the mean input image, averaged over output positions: one small forward per layer
//! instead of one per image. `Q(W)` is exactly what [`cinder_runtime::convert()`]
//! quantizes (the layer's bits, granularity and mapping from the config, min/max
//! parameters), dequantized; after AdaRound ([`correct_biases_rounded`]), the learned
//! codes dequantized.

use std::collections::HashMap;

use cinder_observers::weight_params;
use cinder_runtime::model::weight_scheme;
use cinder_runtime::{
    LayerConfig, Mode, QuantConfig, WeightGranularity, float_forward, float_forward_with,
};
use cinder_tensor::graph::{FloatGraph, Node};
use cinder_tensor::{ErrorMetrics, Tensor, TensorBuf, fake_quantize};
use serde::{Deserialize, Serialize};

use crate::adaround::AdaRounded;
use crate::error::PtqError;
use crate::layer::{add_to_bias, linear_part};

/// One corrected layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerCorrection {
    pub layer: String,
    /// SQNR of `Q(W)` against `W`, dB (none when exact).
    pub weight_sqnr_db: Option<f64>,
    /// Mean and largest `|correction|` over output channels: the mean output error of
    /// the quantized layer before the correction.
    pub mean_abs: f32,
    pub max_abs: f32,
    /// Mean `|E[W x + b]|` over output channels: the scale the correction compares to.
    pub output_mean_abs: f32,
}

/// The corrected graph and each corrected layer's figures, in graph order.
#[derive(Debug, Clone)]
pub struct BiasCorrection {
    pub graph: FloatGraph,
    pub layers: Vec<LayerCorrection>,
}

/// The layer's weights quantized as conversion under `config` quantizes them, then
/// dequantized: `Q(W)`.
pub fn quantized_weight(
    layer: &str,
    weight: &TensorBuf<f32>,
    config: &LayerConfig,
) -> Result<TensorBuf<f32>, PtqError> {
    let per_channel = config.granularity == WeightGranularity::PerChannel;
    let failed = |message: String| PtqError::Layer {
        layer: layer.to_owned(),
        message,
    };
    let scheme = weight_scheme(config.weight_bits, config.mapping, per_channel)
        .map_err(|e| failed(e.to_string()))?;
    let params = weight_params(weight, &scheme).map_err(|e| failed(e.to_string()))?;
    fake_quantize(weight, &params).map_err(|e| failed(e.to_string()))
}

/// Corrects the bias of every quantized layer of `graph` whose config says
/// `bias_correction`, with the mean inputs over the calibration `batches`
/// (`[B, ...input_shape]` each).
pub fn correct_biases<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = &'a TensorBuf<f32>>,
    config: &QuantConfig,
) -> Result<BiasCorrection, PtqError> {
    correct_biases_rounded(graph, batches, config, &AdaRounded::default())
}

/// [`correct_biases`], where `Q(W)` of the layers in `rounded` is AdaRound's (the float
/// `graph` still holds the float weights `W`).
pub fn correct_biases_rounded<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = &'a TensorBuf<f32>>,
    config: &QuantConfig,
    rounded: &AdaRounded,
) -> Result<BiasCorrection, PtqError> {
    let layers: Vec<&Node> = graph
        .nodes()
        .iter()
        .filter(|n| {
            let c = config.layer(&n.name);
            n.op.is_weighted() && c.bias_correction && c.mode != Mode::Float
        })
        .collect();
    if layers.is_empty() {
        return Ok(BiasCorrection {
            graph: graph.clone(),
            layers: Vec::new(),
        });
    }
    let means = mean_tensors(graph, batches, &layers)?;
    let mut nodes = graph.nodes().to_vec();
    let mut report = Vec::with_capacity(layers.len());
    for layer in layers {
        let (weight, _) = layer.op.weight_and_bias().expect("a weighted layer");
        let quantized = match rounded.dequantized(&layer.name) {
            Some(q) => q,
            None => quantized_weight(&layer.name, weight, &config.layer(&layer.name))?,
        };
        let (correction, figures) = correction(graph, layer, &means, quantized)?;
        let node = nodes
            .iter_mut()
            .find(|n| n.name == layer.name)
            .expect("the layer is a node of the graph");
        add_to_bias(&mut node.op, &correction);
        report.push(figures);
    }
    Ok(BiasCorrection {
        graph: FloatGraph::new(graph.input_shape().to_vec(), nodes)?,
        layers: report,
    })
}

/// The mean over all calibration samples of each layer's input tensor and output
/// tensor (per element of one sample), keyed by tensor name.
fn mean_tensors<'a>(
    graph: &FloatGraph,
    batches: impl IntoIterator<Item = &'a TensorBuf<f32>>,
    layers: &[&Node],
) -> Result<HashMap<String, Vec<f32>>, PtqError> {
    let wanted: Vec<&str> = layers
        .iter()
        .flat_map(|n| [n.inputs[0].as_str(), n.name.as_str()])
        .collect();
    let mut sums: HashMap<String, Vec<f64>> = HashMap::new();
    let mut samples = 0usize;
    for (i, batch) in batches.into_iter().enumerate() {
        float_forward_with(graph, batch, |name, t| {
            if wanted.contains(&name) {
                accumulate(sums.entry(name.to_owned()).or_default(), t);
            }
        })
        .map_err(|source| PtqError::Batch { batch: i, source })?;
        samples += batch.shape()[0];
    }
    if samples == 0 {
        return Err(PtqError::NoImages);
    }
    Ok(sums
        .into_iter()
        .map(|(name, s)| {
            (
                name,
                s.iter().map(|v| (v / samples as f64) as f32).collect(),
            )
        })
        .collect())
}

/// Adds each sample of `t` (`[B, ...]`) into `sum` element by element.
fn accumulate(sum: &mut Vec<f64>, t: &TensorBuf<f32>) {
    let per_sample = t.len() / t.shape()[0];
    sum.resize(per_sample, 0.0);
    for sample in t.data().chunks(per_sample) {
        sum.iter_mut()
            .zip(sample)
            .for_each(|(s, &v)| *s += f64::from(v));
    }
}

/// `E[(W - Q(W)) x]` per output channel of `layer` with `quantized` = `Q(W)`, and its
/// report line.
fn correction(
    graph: &FloatGraph,
    layer: &Node,
    means: &HashMap<String, Vec<f32>>,
    quantized: TensorBuf<f32>,
) -> Result<(Vec<f32>, LayerCorrection), PtqError> {
    let (weight, _) = layer.op.weight_and_bias().expect("a weighted layer");
    let error: Vec<f32> = weight
        .data()
        .iter()
        .zip(quantized.data())
        .map(|(w, q)| w - q)
        .collect();
    let error = TensorBuf::new(weight.shape().to_vec(), error).expect("the weight's shape");
    let input = &layer.inputs[0];
    let input_shape = graph.shape(input).expect("the graph checked its inputs");
    let mut batch_shape = vec![1];
    batch_shape.extend_from_slice(input_shape);
    let mean_input = TensorBuf::new(batch_shape, means[input.as_str()].clone())
        .expect("one sample of the input's shape");
    let shifted = float_forward(&linear_part(layer, input_shape, error)?, &mean_input)?;
    let correction = channel_means(shifted.data(), weight.shape()[0]);
    let output = channel_means(&means[layer.name.as_str()], weight.shape()[0]);
    let abs_mean = |v: &[f32]| v.iter().map(|x| x.abs()).sum::<f32>() / v.len() as f32;
    let figures = LayerCorrection {
        layer: layer.name.clone(),
        weight_sqnr_db: ErrorMetrics::between(weight.data(), quantized.data())
            .ok()
            .and_then(|m| m.sqnr_db),
        mean_abs: abs_mean(&correction),
        max_abs: correction.iter().fold(0.0, |m, c| m.max(c.abs())),
        output_mean_abs: abs_mean(&output),
    };
    Ok((correction, figures))
}

/// The mean of each of `channels` equal, consecutive blocks of `values` (NCHW order).
fn channel_means(values: &[f32], channels: usize) -> Vec<f32> {
    let per_channel = values.len() / channels;
    values
        .chunks(per_channel)
        .map(|c| (c.iter().map(|&v| f64::from(v)).sum::<f64>() / per_channel as f64) as f32)
        .collect()
}
