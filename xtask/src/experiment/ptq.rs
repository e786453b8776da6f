//! The post-training steps of a PTQ cell (`equalize`, `adaround` and `bias_correction`
//! in its `quant` config, crate `cinder-ptq`): cross-layer equalization of the trained
//! graph (through ReLU6 taken as ReLU where the cell says `relu6_as_relu`), recalibrated
//! with the cell's observer (cached per equalized graph like the trained model's
//! calibrations), then AdaRound and bias correction on the calibration images.

use std::collections::BTreeMap;

use cinder_model::{GraphNet, ImageSource};
use cinder_ptq::{EqualizeOptions, adaround, correct_biases_rounded, equalize};
use cinder_runtime::QuantConfig;
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::{TensorBuf, TensorQuantParams};

use super::calibration::{Calibrated, Calibrations};
use super::config::CellConfig;
use super::context::Context;
use super::training::graph_key;
use crate::dataset::calibration_indices;
use crate::ptq::{clip_policy, steps};

/// Whether the cell asks for any post-training step.
pub fn any(graph: &FloatGraph, quant: &QuantConfig) -> bool {
    steps(graph, quant).any()
}

/// What a cell converts after its steps.
pub struct Prepared {
    /// The float graph after the steps, float weights (what weight errors compare with).
    pub float: FloatGraph,
    /// The graph to convert: rounded layers' weights on their grids.
    pub graph: FloatGraph,
    /// The rounded layers' weight parameters (`convert_with_weights`).
    pub weights: BTreeMap<String, TensorQuantParams>,
    pub calibrated: Calibrated,
}

/// The float graph the cell converts and its calibration: the trained graph after the
/// cell's steps, with `trained` (the trained graph's calibration) unless equalized.
pub fn prepare(
    ctx: &Context<'_>,
    cell: &CellConfig,
    trained: Calibrated,
) -> anyhow::Result<Prepared> {
    let quant = &cell.quant;
    let steps = steps(ctx.graph, quant);
    let (graph, calibrated) = if steps.equalize {
        let options = EqualizeOptions {
            clip: clip_policy(cell.relu6_as_relu),
            ..EqualizeOptions::default()
        };
        let eq = equalize(ctx.graph, &options, |n| quant.layer(n).equalize)?;
        let net = GraphNet::from_float_graph(&eq.graph, &ctx.model.device())?;
        let key = graph_key(&eq.graph)?;
        let dir = ctx.out.join("calibration").join("equalized");
        let mut calibrations =
            Calibrations::new(&net, &key, ctx.data, &ctx.config.calibration, dir)?;
        let calibrated = calibrations.get(cell.observer)?.clone();
        (eq.graph, calibrated)
    } else {
        (ctx.graph.clone(), trained)
    };
    let batches = if steps.correct || steps.adaround {
        calibration_batches(ctx)?
    } else {
        Vec::new()
    };
    let rounded = adaround(&graph, &batches, quant, &ctx.config.adaround)?;
    let float = if steps.correct {
        correct_biases_rounded(&graph, &batches, quant, &rounded)?.graph
    } else {
        graph
    };
    let (graph, weights) = rounded.apply(&float)?;
    Ok(Prepared {
        float,
        graph,
        weights,
        calibrated,
    })
}

/// The calibration images, in batches.
fn calibration_batches(ctx: &Context<'_>) -> anyhow::Result<Vec<TensorBuf<f32>>> {
    let c = &ctx.config.calibration;
    let images = ctx.data.train_images();
    calibration_indices(ctx.data.train.len(), c.images, c.seed)
        .chunks(c.batch_size)
        .map(|chunk| Ok(images.gather(chunk)?.images))
        .collect()
}
