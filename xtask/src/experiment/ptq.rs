//! The post-training steps of a PTQ cell (`equalize` and `bias_correction` in its
//! `quant` config, crate `cinder-ptq`): cross-layer equalization of the trained graph,
//! recalibrated with the cell's observer (cached per equalized graph like the trained
//! model's calibrations), then bias correction on the calibration images.

use cinder_model::{GraphNet, ImageSource};
use cinder_ptq::{EqualizeOptions, correct_biases, equalize};
use cinder_runtime::QuantConfig;
use cinder_tensor::TensorBuf;
use cinder_tensor::graph::FloatGraph;

use super::calibration::{Calibrated, Calibrations};
use super::cells::Context;
use super::config::CellConfig;
use super::training::graph_key;
use crate::calibrate::calibration_indices;
use crate::ptq::steps;

/// Whether the cell asks for any post-training step.
pub fn any(graph: &FloatGraph, quant: &QuantConfig) -> bool {
    let (equalize, correct) = steps(graph, quant);
    equalize || correct
}

/// The float graph the cell converts and its calibration: the trained graph after the
/// cell's steps, with `trained` (the trained graph's calibration) unless equalized.
pub fn prepare(
    ctx: &Context<'_>,
    cell: &CellConfig,
    trained: Calibrated,
) -> anyhow::Result<(FloatGraph, Calibrated)> {
    let quant = &cell.quant;
    let (equalizing, correcting) = steps(ctx.graph, quant);
    let (graph, calibrated) = if equalizing {
        let eq = equalize(ctx.graph, &EqualizeOptions::default(), |n| {
            quant.layer(n).equalize
        })?;
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
    if !correcting {
        return Ok((graph, calibrated));
    }
    let c = &ctx.config.calibration;
    let images = ctx.data.train_images();
    let batches = calibration_indices(ctx.data.train.len(), c.images, c.seed)
        .chunks(c.batch_size)
        .map(|chunk| Ok(images.gather(chunk)?.images))
        .collect::<anyhow::Result<Vec<TensorBuf<f32>>>>()?;
    Ok((correct_biases(&graph, &batches, quant)?.graph, calibrated))
}
