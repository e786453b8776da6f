//! The calibration driver: runs calibration batches through the float model and feeds
//! a [`Calibrator`] every tensor the int8 runtime may quantize
//! ([`quantization_points`]), timing the burn forward and the observers apart. A second
//! pass, [`activation_errors`], measures each of those tensors' quantization error under
//! a finished calibration table.

use std::time::{Duration, Instant};

use burn::module::Module;

use cinder_observers::{
    ActivationErrors, CalibrationTable, Calibrator, ObserverError, quantization_points,
};
use serde::Serialize;

use cinder_tensor::Tensor;

use crate::GraphNet;
use crate::data::{ImageSource, prefetch};
use crate::error::ModelError;

/// Where the time of a calibration went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CalibrationTiming {
    /// The float forward passes, including the copy of activations to the host.
    pub forward: Duration,
    /// The observers alone.
    pub observe: Duration,
    /// Images seen.
    pub samples: usize,
}

/// Feeds `calibrator` the quantization points of `model` on the images `indices` of
/// `data`, `batch_size` at a time, in order. The table is `calibrator.table()`.
pub fn calibrate(
    model: &GraphNet,
    data: &dyn ImageSource,
    indices: &[usize],
    batch_size: usize,
    calibrator: &mut Calibrator,
) -> Result<CalibrationTiming, ModelError> {
    if indices.is_empty() {
        return Err(ModelError::Batch(
            "calibration needs at least one image".into(),
        ));
    }
    let mut observe = Duration::ZERO;
    let forward = for_each_point(model, data, indices, batch_size, |name, t| {
        let start = Instant::now();
        calibrator.observe(name, t)?;
        observe += start.elapsed();
        Ok(())
    })?;
    calibrator.add_samples(indices.len());
    Ok(CalibrationTiming {
        forward,
        observe,
        samples: indices.len(),
    })
}

/// The quantization error of every tensor `table` calibrated, fake-quantized with its
/// table parameters, over the images `indices` of `data`.
pub fn activation_errors(
    model: &GraphNet,
    data: &dyn ImageSource,
    indices: &[usize],
    batch_size: usize,
    table: &CalibrationTable,
) -> Result<ActivationErrors, ModelError> {
    let mut errors = ActivationErrors::new();
    for_each_point(model, data, indices, batch_size, |name, t| {
        match table.get(name) {
            Some(_) => errors.observe_with_table(name, t, table),
            None => Ok(()),
        }
    })?;
    Ok(errors)
}

/// Runs the batches of `indices` through `model` in inference mode and hands `visit`
/// each quantization point's activation by name. Returns the time spent outside `visit`.
fn for_each_point(
    model: &GraphNet,
    data: &dyn ImageSource,
    indices: &[usize],
    batch_size: usize,
    mut visit: impl FnMut(&str, &dyn Tensor<f32>) -> Result<(), ObserverError>,
) -> Result<Duration, ModelError> {
    let model = model.valid();
    let device = model.device().without_autodiff();
    let points = quantization_points(&model.to_inference_graph()?);
    let plan: Vec<Vec<usize>> = indices
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut forward = Duration::ZERO;
    prefetch(data, &plan, |_, batch| {
        let start = Instant::now();
        let (images, _) = batch.to_tensors(&device);
        let (_, acts) = model.forward_with_activations(images)?;
        forward += start.elapsed();
        for name in &points {
            let t = acts.get(name).ok_or_else(|| {
                ModelError::Data(format!("the forward pass produced no `{name}` activation"))
            })?;
            visit(name, t)?;
        }
        Ok(())
    })?;
    Ok(forward)
}
