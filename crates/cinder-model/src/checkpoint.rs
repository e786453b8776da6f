//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint directory holds
//! - `model-eNNNN.bpk`: the model's parameters and BatchNorm running statistics after
//!   epoch NNNN (burn's burnpack module record, parameter ids included),
//! - `optim-eNNNN.bpk`: the optimizer state (momentum / Adam moments, keyed by those ids),
//! - `checkpoint.json`: the manifest — format version, completed epochs, model and
//!   architecture ([`GraphSpec`]), training config (seed included), backend, the two file names and the metrics history.
//!
//! Each file is written atomically and the manifest last, so it is the commit point: a
//! run killed at any moment leaves the previous complete checkpoint. Files of older epochs
//! are removed after the commit. No generator state needs saving: initial weights come
//! from the seed and each epoch's sample order from (seed, epoch), see [`crate::data`].

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use cinder_tensor::graph::GraphSpec;
use cinder_tensor::io::{read_json, write_atomic, write_json_atomic};
use serde::{Deserialize, Serialize};

use crate::backend::BackendKind;
use crate::error::ModelError;
use crate::net::GraphNet;
use crate::train::{EpochMetrics, TrainConfig, Trainer, build_optimizer};

/// Version of the checkpoint manifest; bumped on incompatible changes.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 2;
/// The manifest's file name inside a checkpoint directory.
pub const MANIFEST: &str = "checkpoint.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub epochs_done: usize,
    /// The architecture.
    pub model: GraphSpec,
    pub training: TrainConfig,
    pub backend: BackendKind,
    pub model_file: String,
    pub optimizer_file: String,
    pub history: Vec<EpochMetrics>,
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

impl Trainer {
    /// Writes the current state to `dir` (created if needed).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), ModelError> {
        let epoch = self.epochs_done();
        let manifest = Manifest {
            format_version: CHECKPOINT_FORMAT_VERSION,
            epochs_done: epoch,
            model: self.spec.clone(),
            training: self.config.clone(),
            backend: self.backend,
            model_file: format!("model-e{epoch:04}.bpk"),
            optimizer_file: format!("optim-e{epoch:04}.bpk"),
            history: self.history.clone(),
        };
        let model_path = dir.join(&manifest.model_file);
        let model_bytes = self
            .model()
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| checkpoint_error(&model_path, e))?;
        write_atomic(&model_path, &model_bytes)?;
        let optim_path = dir.join(&manifest.optimizer_file);
        let optim_bytes = self
            .optimizer()
            .into_bytes()
            .map_err(|e| checkpoint_error(&optim_path, e))?;
        write_atomic(&optim_path, &optim_bytes)?;
        write_json_atomic(&dir.join(MANIFEST), &manifest)?;
        remove_stale(dir, &manifest)
    }

    /// Restores the run saved in `dir` on `backend` (which may differ from the one that
    /// wrote it). Fails with the file and the reason when anything is missing or corrupt.
    pub fn resume(dir: &Path, backend: BackendKind) -> Result<Self, ModelError> {
        let manifest_path = dir.join(MANIFEST);
        let manifest: Manifest = read_json(&manifest_path)?;
        if manifest.format_version != CHECKPOINT_FORMAT_VERSION {
            return Err(checkpoint_error(
                &manifest_path,
                format!(
                    "format version {} (expected {CHECKPOINT_FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        if manifest.history.len() != manifest.epochs_done {
            return Err(checkpoint_error(
                &manifest_path,
                "history length differs from epochs_done",
            ));
        }
        manifest.training.validate()?;
        let device = backend.device()?.autodiff();
        let model_path = dir.join(&manifest.model_file);
        let record = ModuleRecord::from_bytes(read_bytes(&model_path)?)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let model = GraphNet::init(&manifest.model, &device, manifest.training.seed)?
            .try_load_record(record)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let optim_path = dir.join(&manifest.optimizer_file);
        let optimizer = build_optimizer(&manifest.training)
            .from_bytes(read_bytes(&optim_path)?)
            .map_err(|e| checkpoint_error(&optim_path, e))?;
        Ok(Trainer::from_parts(
            model,
            optimizer,
            manifest.training,
            backend,
            manifest.history,
        ))
    }
}

/// Reads the manifest of a checkpoint directory, if there is one.
pub fn read_manifest(dir: &Path) -> Result<Option<Manifest>, ModelError> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(read_json(&path)?))
}

fn read_bytes(path: &Path) -> Result<Bytes, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| cinder_tensor::io::FileError::io(path, e))?;
    Ok(Bytes::from_bytes_vec(bytes))
}

/// Deletes model/optimizer files of other epochs than the committed one.
fn remove_stale(dir: &Path, manifest: &Manifest) -> Result<(), ModelError> {
    let entries = std::fs::read_dir(dir).map_err(|e| cinder_tensor::io::FileError::io(dir, e))?;
    let keep = [
        manifest.model_file.as_str(),
        manifest.optimizer_file.as_str(),
    ];
    let stale: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = (name.starts_with("model-e") || name.starts_with("optim-e"))
                && name.ends_with(".bpk");
            ours && !keep.contains(&name)
        })
        .collect();
    for path in stale {
        std::fs::remove_file(&path).map_err(|e| cinder_tensor::io::FileError::io(&path, e))?;
    }
    Ok(())
}
