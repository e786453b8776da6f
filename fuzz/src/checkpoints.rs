//! The fuzz targets that need burn: training and QAT checkpoint manifests beside real
//! model and optimizer files of a tiny ConvNet, and the experiment config (whose types
//! live beside the model).

use std::path::Path;
use std::sync::OnceLock;

use cinder_model::checkpoint::read_manifest;
use cinder_model::{BackendKind, ConvNetConfig, InMemoryImages, TrainConfig, Trainer};
use cinder_qat::QatTrainer;

use crate::{put, scratch};

// The experiment config belongs to the xtask binary; the fuzzer compiles the very same
// source.
#[path = "../../xtask/src/experiment/config.rs"]
#[allow(dead_code)]
mod experiment_config;

/// A scratch directory `sub` holding what `write` puts there, less the manifests (the
/// checkpoint targets write their input as the manifest).
fn checkpoint_dir(sub: &str, write: impl FnOnce(&Path)) -> &'static Path {
    let dir = scratch().join(sub);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    write(&dir);
    let _ = std::fs::remove_file(dir.join(cinder_model::checkpoint::MANIFEST));
    let _ = std::fs::remove_file(dir.join(cinder_qat::train::QAT_MANIFEST));
    Box::leak(dir.into_boxed_path())
}

/// A tiny ConvNet (1x4x4 inputs, 3 classes) and a two-epoch recipe, before training.
fn tiny_trainer() -> Trainer {
    let model = ConvNetConfig {
        in_channels: 1,
        channels: [2, 2],
        hidden: 4,
        classes: 3,
        input_size: 4,
        batch_norm: false,
    };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let spec = model.spec().expect("tiny spec");
    Trainer::new(&spec, config, BackendKind::Flex).expect("tiny trainer")
}

/// 8 images for the tiny ConvNet.
fn tiny_images() -> InMemoryImages {
    let pixels: Vec<f32> = (0..8 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    let labels: Vec<u32> = (0..8).map(|i| i % 3).collect();
    InMemoryImages::new([1, 4, 4], pixels, labels, 3).expect("tiny images")
}

/// Writes the checkpoint of the tiny trainer before its first epoch to `dir` (the seed
/// of the `checkpoint` target; deterministic, so its files match the seed's SHA-256).
pub fn write_tiny_checkpoint(dir: &Path) {
    tiny_trainer()
        .save_checkpoint(dir)
        .expect("tiny checkpoint");
}

/// Writes a QAT checkpoint of the tiny ConvNet after one of two epochs on 8 images,
/// observers frozen after the first step (the seed of the `qat_checkpoint` target).
pub fn write_tiny_qat_checkpoint(dir: &Path) {
    let mut config = cinder_qat::QatConfig::default();
    config.training.epochs = 2;
    config.training.batch_size = 4;
    config.freeze_observers_after = Some(1);
    let net = tiny_trainer().into_model();
    let mut qat = QatTrainer::new(&net, config, BackendKind::Flex).expect("tiny QAT");
    qat.run_epoch(&tiny_images(), None, &mut |_| {})
        .expect("tiny QAT epoch");
    qat.save_checkpoint(dir).expect("tiny QAT checkpoint");
}

/// A training checkpoint manifest (`checkpoint.json`) beside real model and optimizer
/// files.
pub fn checkpoint(data: &[u8]) {
    static DIR: OnceLock<&'static Path> = OnceLock::new();
    let dir = DIR.get_or_init(|| checkpoint_dir("checkpoint", write_tiny_checkpoint));
    let path = dir.join(cinder_model::checkpoint::MANIFEST);
    std::fs::write(&path, data).expect("scratch file");
    if let Ok(Some(_)) = read_manifest(dir) {
        let _ = Trainer::resume(dir, BackendKind::Flex);
    }
}

/// A QAT checkpoint manifest (`qat.json`: configs and quantization state) beside real
/// model and optimizer files; a resumed run also trains a step and evaluates.
pub fn qat_checkpoint(data: &[u8]) {
    static DIR: OnceLock<&'static Path> = OnceLock::new();
    let dir = DIR.get_or_init(|| checkpoint_dir("qat", write_tiny_qat_checkpoint));
    let path = dir.join(cinder_qat::train::QAT_MANIFEST);
    std::fs::write(&path, data).expect("scratch file");
    if !matches!(cinder_qat::train::read_qat_manifest(dir), Ok(Some(_))) {
        return;
    }
    if let Ok(mut trainer) = QatTrainer::resume(dir, BackendKind::Flex)
        && !trainer.is_finished()
    {
        let data = tiny_images();
        let _ = trainer.run_epoch(&data, Some(&data), &mut |_| {});
    }
}

/// An experiment config (TOML), parsed and checked as `cargo xtask experiment` does.
pub fn experiment_config(data: &[u8]) {
    let path = put("experiment", "config.toml", data);
    if let Ok(config) = experiment_config::load(&path) {
        let _ = config.with_dataset(&[]);
    }
}
