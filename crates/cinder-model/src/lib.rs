//! The float side of cinder: CNNs written in burn, their training and evaluation,
//! BatchNorm folding, and the export of trained weights as a backend-neutral float graph.
//!
//! - [`net`]: [`GraphNet`], the burn module that trains and runs any graph architecture.
//! - [`zoo`]: the architectures by name (`convnet`, `resnet20`, `mobilenetv2-tiny`).
//! - [`train`]: SGD/Adam training with schedules, evaluation, metrics.
//! - [`augment`]: random crop and flip of training images.
//! - [`stopping`]: early stopping on a validation set.
//! - [`checkpoint`]: atomic per-epoch checkpoints and exact resume.
//! - [`data`]: the batch interface training reads ([`data::ImageSource`]).
//! - [`export`]: the float graph hand-off, activations for calibration, and the common
//!   tensor trait on burn data.
//! - [`calibrate`]: the calibration driver (observers fed from the burn forward).
//! - [`backend`]: `flex` / `ndarray` / `wgpu` chosen at run time.
//! - [`flex`]: convolution (im2col + GEMM) and BatchNorm with hand-written backward steps on flex.

pub mod augment;
pub mod backend;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod export;
pub mod flex;
pub mod net;
pub mod rng;
pub mod stopping;
pub mod train;
pub mod zoo;

pub use augment::Augmentation;
pub use backend::BackendKind;
pub use data::{Batch, ImageSource, InMemoryImages};
pub use error::ModelError;
pub use export::{Activations, BurnData, INPUT_NAME};
pub use net::GraphNet;
pub use stopping::EarlyStopping;
pub use train::{
    EpochMetrics, Evaluation, LrSchedule, OptimizerConfig, StepProgress, TrainConfig, Trainer,
    evaluate,
};
pub use zoo::ConvNetConfig;
