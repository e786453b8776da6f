//! Typed errors of the model crate: each names what was wrong and where.

use std::path::PathBuf;

use cinder_tensor::graph::GraphError;
use cinder_tensor::io::FileError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("training config: {0}")]
    Training(String),
    #[error(
        "training diverged: the loss of epoch {epoch}, step {step} is {loss} (expected a finite \
         number; lower the learning rate); nothing of this epoch was saved"
    )]
    Diverged {
        epoch: usize,
        step: usize,
        loss: f64,
    },
    #[error("unknown backend `{0}` (expected flex, ndarray or wgpu)")]
    UnknownBackend(String),
    #[error("backend `{0}` is not compiled in (rebuild with `--features wgpu`)")]
    BackendUnavailable(String),
    #[error("batch: {0}")]
    Batch(String),
    #[error("float graph layout: {0}")]
    GraphLayout(String),
    #[error("tensor data: {0}")]
    Data(String),
    #[error("{path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Observer(#[from] cinder_observers::ObserverError),
    #[error(transparent)]
    Tensor(#[from] cinder_tensor::TensorError),
}
