//! The float side of cinder: CNNs written in burn, their training and evaluation,
//! BatchNorm folding, and the export of trained weights as a backend-neutral float graph.
//!
//! - [`convnet`]: the reference ConvNet (and its BatchNorm variant, and folding).
//! - [`train`]: SGD/Adam training with schedules, evaluation, metrics.
//! - [`checkpoint`]: atomic per-epoch checkpoints and exact resume.
//! - [`data`]: the batch interface training reads ([`data::ImageSource`]).
//! - [`export`]: the float graph hand-off, activations for calibration, and the common
//!   tensor trait on burn data.
//! - [`calibrate`]: the calibration driver (observers fed from the burn forward).
//! - [`backend`]: `flex` / `ndarray` / `wgpu` chosen at run time.

pub mod backend;
pub mod calibrate;
pub mod checkpoint;
pub mod convnet;
pub mod data;
pub mod error;
pub mod export;
pub mod rng;
pub mod train;

pub use backend::BackendKind;
pub use convnet::{ConvNet, ConvNetConfig};
pub use data::{Batch, ImageSource, InMemoryImages};
pub use error::ModelError;
pub use export::{Activations, BurnData, INPUT_NAME, NODE_NAMES};
pub use train::{
    EpochMetrics, Evaluation, LrSchedule, OptimizerConfig, StepProgress, TrainConfig, Trainer,
    evaluate,
};
