//! What can go wrong reading or writing an ONNX model: every error names the file, the
//! node (with its operator) or the tensor, and what was expected.

use std::path::PathBuf;

use cinder_tensor::graph::GraphError;
use cinder_tensor::io::FileError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum OnnxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, more than the {max} bytes an ONNX file may hold")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("not a valid ONNX model (truncated or corrupt protobuf): {0}")]
    Decode(String),
    #[error("the model imports opset {found} of the default ONNX domain; supported: {supported}")]
    Opset {
        found: String,
        supported: &'static str,
    },
    /// A problem of the model as a whole: its inputs, outputs or version fields.
    #[error("model {field}: {message}")]
    Model {
        field: &'static str,
        message: String,
    },
    #[error("tensor `{name}`: {message}")]
    Tensor { name: String, message: String },
    #[error("node `{node}` ({op_type}): {message}")]
    Node {
        node: String,
        op_type: String,
        message: String,
    },
    #[error("node `{node}`: operator `{op_type}` is not supported; supported: {supported}")]
    UnsupportedOp {
        node: String,
        op_type: String,
        supported: &'static str,
    },
    /// A step of a quantized model that has no QDQ form.
    #[error("step `{step}` cannot be exported as QDQ ONNX: {message}")]
    NotExportable { step: String, message: String },
    #[error("the imported graph is invalid: {0}")]
    Graph(#[from] GraphError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<OnnxError>,
    },
}

impl OnnxError {
    /// The error with the file it came from.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            e @ (Self::Io { .. } | Self::TooLarge { .. } | Self::InFile { .. }) => e,
            e => Self::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
        }
    }
}
