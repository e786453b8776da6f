//! Checkpoints: everything a run needs to continue exactly where it stopped.
//!
//! A checkpoint directory holds
//! - `model-eNNNN.bpk`: the model's parameters and BatchNorm running statistics after
//!   epoch NNNN (burn's burnpack module record, parameter ids included),
//! - `optim-eNNNN.bpk`: the optimizer state (momentum / Adam moments, keyed by those ids),
//! - `checkpoint.json`: the manifest — format version, completed epochs, model and
//!   architecture ([`GraphSpec`]), training config (seed included), backend, the two file
//!   names with the SHA-256 of their bytes, and the metrics history.
//!
//! A resume refuses a manifest whose figures disagree, file names that leave the
//! directory, and files whose bytes do not hash to the recorded SHA-256.
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
use sha2::{Digest, Sha256};

use crate::backend::BackendKind;
use crate::error::ModelError;
use crate::net::GraphNet;
use crate::train::{EpochMetrics, TrainConfig, Trainer, build_optimizer};

/// Version of the checkpoint manifest; bumped on incompatible changes.
pub const CHECKPOINT_FORMAT_VERSION: u32 = 3;
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
    /// SHA-256 of `model_file`'s bytes, hex.
    pub model_sha256: String,
    pub optimizer_file: String,
    /// SHA-256 of `optimizer_file`'s bytes, hex.
    pub optimizer_sha256: String,
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
        let (model_file, optimizer_file) = part_names(epoch);
        let model_path = dir.join(&model_file);
        // burn's RunningState keeps a BatchNorm's last statistics update pending until the
        // state is read for inference, and a record does not read it that way: without
        // this the checkpoint would lag one step behind the model it saves. `valid()`
        // settles every running state (the copies share their storage).
        let _ = self.model().valid();
        let model_bytes = self
            .model()
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let optim_path = dir.join(&optimizer_file);
        let optim_bytes = self
            .optimizer()
            .into_bytes()
            .map_err(|e| checkpoint_error(&optim_path, e))?;
        let manifest = Manifest {
            format_version: CHECKPOINT_FORMAT_VERSION,
            epochs_done: epoch,
            model: self.spec.clone(),
            training: self.config.clone(),
            backend: self.backend,
            model_sha256: write_part(&model_path, &model_bytes)?,
            model_file,
            optimizer_sha256: write_part(&optim_path, &optim_bytes)?,
            optimizer_file,
            history: self.history.clone(),
        };
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
        if manifest.history.len() != manifest.epochs_done
            || manifest.epochs_done > manifest.training.epochs
        {
            return Err(checkpoint_error(
                &manifest_path,
                format!(
                    "epochs_done = {} and {} history entries: expected equal and at most training.epochs = {}",
                    manifest.epochs_done,
                    manifest.history.len(),
                    manifest.training.epochs
                ),
            ));
        }
        manifest
            .training
            .validate()
            .map_err(|e| checkpoint_error(&manifest_path, e))?;
        let device = backend.device()?.autodiff();
        let model_path = part_path(dir, &manifest_path, &manifest.model_file)?;
        let record = ModuleRecord::from_bytes(read_part(&model_path, &manifest.model_sha256)?)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let model = GraphNet::init(&manifest.model, &device, manifest.training.seed)?
            .try_load_record(record)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let optim_path = part_path(dir, &manifest_path, &manifest.optimizer_file)?;
        let optimizer = build_optimizer(&manifest.training)
            .from_bytes(read_part(&optim_path, &manifest.optimizer_sha256)?)
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

/// The model and optimizer file names of the checkpoint after `epoch` epochs.
pub fn part_names(epoch: usize) -> (String, String) {
    (
        format!("model-e{epoch:04}.bpk"),
        format!("optim-e{epoch:04}.bpk"),
    )
}

/// The path of part `name` that `manifest` records: a plain file name inside `dir`.
pub fn part_path(dir: &Path, manifest: &Path, name: &str) -> Result<PathBuf, ModelError> {
    let plain = Path::new(name).file_name().is_some_and(|n| n == name);
    if !plain || name == ".." {
        return Err(checkpoint_error(
            manifest,
            format!("file name `{name}`: expected a plain file name inside the directory"),
        ));
    }
    Ok(dir.join(name))
}

/// The SHA-256 of `bytes` in lower-case hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a checkpoint part atomically; returns the SHA-256 of its bytes (hex) for the
/// manifest.
pub fn write_part(path: &Path, bytes: &[u8]) -> Result<String, ModelError> {
    write_atomic(path, bytes)?;
    Ok(sha256_hex(bytes))
}

/// Reads a checkpoint part and checks its bytes against the SHA-256 the manifest
/// recorded, so that a corrupted or edited file is refused rather than resumed.
pub fn read_part(path: &Path, sha256: &str) -> Result<Bytes, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| cinder_tensor::io::FileError::io(path, e))?;
    let actual = sha256_hex(&bytes);
    if actual != sha256 {
        return Err(checkpoint_error(
            path,
            format!("SHA-256 {actual}: the manifest records {sha256} (the file is corrupt)"),
        ));
    }
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
