//! The errors of the post-training steps, each naming the layer or input concerned.

use cinder_runtime::RunError;
use cinder_tensor::graph::GraphError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PtqError {
    #[error(
        "the graph holds batch-norm node `{0}`: fold batch norms first \
         (FloatGraph::fold_batch_norms)"
    )]
    BatchNorm(String),
    #[error("layer `{layer}`: {message}")]
    Layer { layer: String, message: String },
    #[error("bias correction and AdaRound need at least one calibration image")]
    NoImages,
    #[error("AdaRound options: {0}")]
    Options(String),
    #[error("calibration batch {batch}: {source}")]
    Batch {
        batch: usize,
        #[source]
        source: RunError,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Run(#[from] RunError),
}
