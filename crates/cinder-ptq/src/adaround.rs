//! AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training
//! Quantization") over a batch-norm-folded graph: every quantized layer whose config says
//! `adaround`, in graph order, learns for each weight whether it rounds up or down so that
//! the layer's output on calibration images stays as close as possible to the float
//! layer's (the reconstruction objective and the rounding optimizer, private modules).
//!
//! Parameters (scale, zero point, grid) are the ones conversion derives: min/max of the
//! weights under the layer's bits, granularity and mapping. Only the rounding changes.
//! The result hands conversion exactly the learned codes: [`AdaRounded::apply`] replaces
//! each rounded layer's weights by their dequantized codes `s (q − z)` and returns the
//! parameters, which [`cinder_runtime::convert_with_weights()`] takes as given; it
//! quantizes `s (q − z)` back to `q` (the round trip is exact for the 2–8-bit grids,
//! `|q − z| <= 255`, and is checked for every weight).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use cinder_observers::weight_params;
use cinder_runtime::model::weight_scheme;
use cinder_runtime::{Mode, QuantConfig, WeightGranularity, float_forward_with};
use cinder_tensor::graph::{FloatGraph, Node, Op};
use cinder_tensor::{Tensor, TensorBuf, TensorQuantParams, dequantize, quantize};
use serde::{Deserialize, Serialize};

use crate::error::PtqError;
use crate::patches::Patches;
use crate::reconstruction::Capture;
use crate::rounding::{AdaRoundOptions, round};

/// One rounded layer: its weight parameters and the learned codes (`[out, ...]`, the
/// weight's shape).
#[derive(Debug, Clone, PartialEq)]
pub struct RoundedLayer {
    pub params: TensorQuantParams,
    pub codes: TensorBuf<i8>,
}

/// What AdaRound did to one layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRounding {
    pub layer: String,
    /// `gram` (exact over all calibration patches) or `sampled` (mini-batches).
    pub objective: String,
    pub weights: usize,
    /// The reconstruction objective over all calibration patches (squared output error
    /// summed over channels, mean over patches) with nearest rounding and with the
    /// learned rounding.
    pub nearest_error: f64,
    pub learned_error: f64,
    /// Whether the nearest rounding was kept because the learned one did worse on the
    /// objective (the layer never ends worse than nearest rounding).
    pub kept_nearest: bool,
    /// Share of the kept codes that differ from nearest rounding.
    pub flipped: f64,
    /// Weights whose relaxed rounding had not reached 0 or 1 at the last step.
    pub undecided: usize,
    pub seconds: f64,
}

/// The rounded layers by name, and the report in graph order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdaRounded {
    pub layers: BTreeMap<String, RoundedLayer>,
    pub report: Vec<LayerRounding>,
}

impl AdaRounded {
    /// The learned weights of `layer` in real units, `s (q − z)`.
    pub fn dequantized(&self, layer: &str) -> Option<TensorBuf<f32>> {
        let l = self.layers.get(layer)?;
        dequantize(&l.codes, &l.params).ok()
    }

    /// `graph` with every rounded layer's weight replaced by its learned weights, and
    /// their parameters for [`cinder_runtime::convert_with_weights()`], which then
    /// quantizes each layer to exactly the learned codes.
    pub fn apply(
        &self,
        graph: &FloatGraph,
    ) -> Result<(FloatGraph, BTreeMap<String, TensorQuantParams>), PtqError> {
        let mut nodes = graph.nodes().to_vec();
        for node in &mut nodes {
            let Some(rounded) = self.layers.get(&node.name) else {
                continue;
            };
            let weight = on_grid(&node.name, rounded)?;
            match &mut node.op {
                Op::Conv2d(c) => c.weight = weight,
                Op::Linear(l) => l.weight = weight,
                op => {
                    return Err(layer_error(
                        &node.name,
                        format!("{} has no weights", op.kind()),
                    ));
                }
            }
        }
        let params = self
            .layers
            .iter()
            .map(|(name, l)| (name.clone(), l.params.clone()))
            .collect();
        Ok((
            FloatGraph::new(graph.input_shape().to_vec(), nodes)?,
            params,
        ))
    }
}

fn layer_error(layer: &str, message: String) -> PtqError {
    PtqError::Layer {
        layer: layer.to_owned(),
        message,
    }
}

/// The dequantized codes, checked to quantize back to themselves.
fn on_grid(layer: &str, rounded: &RoundedLayer) -> Result<TensorBuf<f32>, PtqError> {
    let fail = |e: cinder_tensor::QuantError| layer_error(layer, e.to_string());
    let weight = dequantize(&rounded.codes, &rounded.params).map_err(fail)?;
    let back = quantize::<i8>(&weight, &rounded.params).map_err(fail)?;
    if back.data() != rounded.codes.data() {
        return Err(layer_error(
            layer,
            "the learned codes do not survive dequantization (scale too small)".into(),
        ));
    }
    Ok(weight)
}

/// Learns the rounding of every quantized layer of `graph` whose config says
/// `adaround`, from the calibration `batches` (`[B, ...input_shape]` each).
pub fn adaround(
    graph: &FloatGraph,
    batches: &[TensorBuf<f32>],
    config: &QuantConfig,
    options: &AdaRoundOptions,
) -> Result<AdaRounded, PtqError> {
    if let Some(problem) = options.problem() {
        return Err(PtqError::Options(problem));
    }
    if let Some(bn) = graph
        .nodes()
        .iter()
        .find(|n| matches!(n.op, Op::BatchNorm(_)))
    {
        return Err(PtqError::BatchNorm(bn.name.clone()));
    }
    let layers: Vec<&Node> = graph
        .nodes()
        .iter()
        .filter(|n| {
            let c = config.layer(&n.name);
            n.op.is_weighted() && c.adaround && c.mode != Mode::Float
        })
        .collect();
    let mut rounded = AdaRounded::default();
    if layers.is_empty() {
        return Ok(rounded);
    }
    let samples: usize = batches
        .iter()
        .map(|b| b.shape().first().copied().unwrap_or(0))
        .sum();
    if samples == 0 {
        return Err(PtqError::NoImages);
    }
    if options.asymmetric {
        for &layer in &layers {
            let seen = rounded.apply(graph)?.0;
            let mut captures = capture_inputs(graph, Some(&seen), &[layer], batches, samples)?;
            let capture = captures.pop().expect("one capture per layer");
            round_layer(&mut rounded, layer, capture, config, options)?;
        }
    } else {
        let captures = capture_inputs(graph, None, &layers, batches, samples)?;
        for (&layer, capture) in layers.iter().zip(captures) {
            round_layer(&mut rounded, layer, capture, config, options)?;
        }
    }
    Ok(rounded)
}

/// The patches of every layer of `layers` over all batches: the float graph's, and
/// the inputs of `seen` (the graph as the layers see it) when given.
fn capture_inputs(
    graph: &FloatGraph,
    seen: Option<&FloatGraph>,
    layers: &[&Node],
    batches: &[TensorBuf<f32>],
    samples: usize,
) -> Result<Vec<Capture>, PtqError> {
    let mut captures = layers
        .iter()
        .map(|n| {
            let shape = graph
                .shape(&n.inputs[0])
                .expect("the graph checked its inputs");
            let patches = Patches::of(&n.op, shape)
                .ok_or_else(|| layer_error(&n.name, format!("input of shape {shape:?}")))?;
            Ok(Capture::new(
                patches,
                samples * patches.per_sample(),
                seen.is_some(),
            ))
        })
        .collect::<Result<Vec<_>, PtqError>>()?;
    let inputs =
        |g: &FloatGraph, batch: usize| -> Result<HashMap<String, TensorBuf<f32>>, PtqError> {
            let mut found = HashMap::new();
            float_forward_with(g, &batches[batch], |name, t| {
                if layers.iter().any(|n| n.inputs[0] == name) {
                    found.insert(name.to_owned(), t.clone());
                }
            })
            .map_err(|source| PtqError::Batch { batch, source })?;
            Ok(found)
        };
    for b in 0..batches.len() {
        let float = inputs(graph, b)?;
        let hat = seen.map(|s| inputs(s, b)).transpose()?;
        for (layer, capture) in layers.iter().zip(&mut captures) {
            let input = layer.inputs[0].as_str();
            let (w, _) = layer.op.weight_and_bias().expect("a weighted layer");
            capture.add(&float[input], hat.as_ref().map(|h| &h[input]), w.data());
        }
    }
    Ok(captures)
}

/// Learns `layer`'s rounding from its captured patches and records it.
fn round_layer(
    rounded: &mut AdaRounded,
    layer: &Node,
    capture: Capture,
    config: &QuantConfig,
    options: &AdaRoundOptions,
) -> Result<(), PtqError> {
    let start = Instant::now();
    let name = &layer.name;
    let config = config.layer(name);
    let (weight, _) = layer.op.weight_and_bias().expect("a weighted layer");
    let per_channel = config.granularity == WeightGranularity::PerChannel;
    let scheme = weight_scheme(config.weight_bits, config.mapping, per_channel)
        .map_err(|e| layer_error(name, e.to_string()))?;
    let params = weight_params(weight, &scheme).map_err(|e| layer_error(name, e.to_string()))?;
    let objective = capture.finish(weight.data(), options.batch);
    let rounding = round(weight.data(), &params, &objective, options);
    let learned =
        TensorBuf::new(weight.shape().to_vec(), rounding.codes).expect("the weight's shape");
    let nearest = quantize::<i8>(weight, &params).map_err(|e| layer_error(name, e.to_string()))?;
    let error = |codes: &TensorBuf<i8>| -> Result<f64, PtqError> {
        let w = dequantize(codes, &params).map_err(|e| layer_error(name, e.to_string()))?;
        Ok(objective.loss(w.data()))
    };
    let (nearest_error, learned_error) = (error(&nearest)?, error(&learned)?);
    let kept_nearest = learned_error > nearest_error;
    let codes = if kept_nearest {
        nearest.clone()
    } else {
        learned
    };
    let flipped = codes
        .data()
        .iter()
        .zip(nearest.data())
        .filter(|(a, b)| a != b)
        .count();
    rounded.report.push(LayerRounding {
        layer: name.clone(),
        objective: objective.form().to_owned(),
        weights: weight.len(),
        nearest_error,
        learned_error,
        kept_nearest,
        flipped: flipped as f64 / weight.len().max(1) as f64,
        undecided: rounding.undecided,
        seconds: start.elapsed().as_secs_f64(),
    });
    rounded
        .layers
        .insert(name.clone(), RoundedLayer { params, codes });
    Ok(())
}
