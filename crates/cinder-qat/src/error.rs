//! Typed errors of QAT: configuration, the model and data underneath, observers, the
//! checkpoint files and the conversion to the runtime.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum QatError {
    #[error("QAT config: {0}")]
    Config(String),
    #[error("QAT state: {0}")]
    State(String),
    #[error("QAT state: {field} has no entry `{key}`")]
    MissingEntry { field: &'static str, key: String },
    #[error("QAT checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] cinder_model::ModelError),
    #[error(transparent)]
    Observer(#[from] cinder_observers::ObserverError),
    #[error(transparent)]
    Quant(#[from] cinder_tensor::QuantError),
    #[error(transparent)]
    Tensor(#[from] cinder_tensor::TensorError),
    #[error(transparent)]
    Graph(#[from] cinder_tensor::graph::GraphError),
    #[error(transparent)]
    File(#[from] cinder_tensor::io::FileError),
    #[error(transparent)]
    Convert(#[from] cinder_runtime::ConvertError),
}
