//! The calibration driver: observers fed from the burn forward at the runtime's
//! quantization points.

mod common;

use burn::tensor::Device;
use cinder_model::calibrate::{activation_errors, calibrate};
use cinder_model::{GraphNet, ImageSource, InMemoryImages, ModelError};
use cinder_observers::{Calibrator, ObserverSpec};
use cinder_tensor::{QuantScheme, Tensor as _};
use common::{quadrant_images, tiny_net, tiny_spec};

fn setup() -> (GraphNet, InMemoryImages) {
    let model = tiny_net(&tiny_spec(), 3, &Device::flex());
    (model, quadrant_images(20, 5))
}

fn minmax_calibrator() -> Calibrator {
    Calibrator::new(ObserverSpec::MinMax, QuantScheme::activations_uint8()).unwrap()
}

#[test]
fn minmax_table_holds_the_exact_range_of_every_quantization_point() {
    let (model, data) = setup();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut calibrator = minmax_calibrator();
    let timing = calibrate(&model, &data, &all, 6, &mut calibrator).unwrap();
    assert_eq!(timing.samples, 20);
    let table = calibrator.table().unwrap();
    assert_eq!(table.samples, 20);
    let names: Vec<&str> = table.tensors.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "fc2", "flatten", "input", "pool1", "pool2", "relu1", "relu2", "relu3"
        ],
        "pre-ReLU outputs are never quantized, so they are not observed"
    );

    let batch = data.gather(&all).unwrap();
    let (images, _) = batch.to_tensors(&model.device());
    let (_, acts) = model.forward_with_activations(images).unwrap();
    for (name, range) in &table.tensors {
        let values = acts.get(name).unwrap().data();
        let min = values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((range.min, range.max), (min, max), "{name}");
    }
}

#[test]
fn the_table_does_not_depend_on_the_batch_size() {
    let (model, data) = setup();
    let all: Vec<usize> = (0..data.len()).collect();
    let table = |batch| {
        let mut calibrator = minmax_calibrator();
        calibrate(&model, &data, &all, batch, &mut calibrator).unwrap();
        calibrator.table().unwrap()
    };
    assert_eq!(table(3), table(20));
}

#[test]
fn activation_errors_cover_every_calibrated_tensor() {
    let (model, data) = setup();
    let all: Vec<usize> = (0..data.len()).collect();
    let mut calibrator = minmax_calibrator();
    calibrate(&model, &data, &all, 8, &mut calibrator).unwrap();
    let table = calibrator.table().unwrap();
    let errors = activation_errors(&model, &data, &all, 8, &table)
        .unwrap()
        .metrics();
    assert_eq!(errors.len(), table.tensors.len());
    for (name, m) in &errors {
        assert!(m.mean_abs_error > 0.0, "{name}");
        // 8 bits over the observed range: ~6 dB per bit, minus the range's crest factor.
        assert!(m.sqnr_db.unwrap() > 25.0, "{name}: {m:?}");
    }
}

#[test]
fn empty_and_out_of_range_calibration_sets_are_errors() {
    let (model, data) = setup();
    let mut calibrator = minmax_calibrator();
    assert!(matches!(
        calibrate(&model, &data, &[], 4, &mut calibrator),
        Err(ModelError::Batch(_))
    ));
    let err = calibrate(&model, &data, &[0, 99], 4, &mut calibrator).unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");
}
