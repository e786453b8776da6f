//! The wgpu backend against flex (`cargo test -p cinder-model --features wgpu`): a forward
//! of the reference ConvNet (max abs difference) and a training step of a tiny model.
//! On a machine without a wgpu adapter (no GPU, no lavapipe) each test says so and passes.

#![cfg(feature = "wgpu")]

mod common;

use std::sync::Mutex;

use burn::tensor::{Device, DeviceType, Tensor};
use cinder_model::{BackendKind, ConvNetConfig, GraphNet, OptimizerConfig, TrainConfig, Trainer};
use common::{host, max_abs_diff, quadrant_images, random_images, tiny_config};

/// wgpu's GLES fallback (taken when no Vulkan driver is found) panics when two threads
/// bring up EGL at once, so the tests here take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The first wgpu device, or `None` (with a message) when there is no adapter.
fn wgpu_device() -> Option<Device> {
    let device = Device::enumerate(DeviceType::Wgpu).into_iter().next();
    if device.is_none() {
        eprintln!(
            "SKIPPED: no wgpu adapter on this machine (install mesa-vulkan-drivers for lavapipe)"
        );
    }
    device
}

#[test]
fn wgpu_forward_matches_flex() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(device) = wgpu_device() else { return };
    let config = ConvNetConfig::reference();
    let (flex, gpu) = (
        GraphNet::init(&config.spec().unwrap(), &Device::flex(), 0).unwrap(),
        GraphNet::init(&config.spec().unwrap(), &device, 0).unwrap(),
    );
    let x = random_images(config.input_shape(), 2, 1, &Device::flex());
    let x_gpu = Tensor::from_data(x.to_data(), &device);
    let diff = max_abs_diff(&host(flex.forward(x)), &host(gpu.forward(x_gpu)));
    eprintln!("wgpu vs flex, reference ConvNet b2 logits: max abs diff {diff:.3e}");
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn wgpu_trains_a_tiny_model_like_flex() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if wgpu_device().is_none() {
        return;
    }
    let data = quadrant_images(32, 1);
    let config = TrainConfig {
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        optimizer: OptimizerConfig::sgd(),
        ..TrainConfig::default()
    };
    let weights = |backend| {
        let mut t = Trainer::new(&tiny_config().spec().unwrap(), config.clone(), backend).unwrap();
        t.run_epoch(&data, None, &mut |_| {}).unwrap();
        host(t.model().fc1.weight.val())
    };
    let diff = max_abs_diff(&weights(BackendKind::Flex), &weights(BackendKind::Wgpu));
    eprintln!("wgpu vs flex, tiny model after 2 SGD steps: fc1 max abs diff {diff:.3e}");
    assert!(diff < 1e-4, "{diff}");
}
