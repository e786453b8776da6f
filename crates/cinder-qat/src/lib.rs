//! Quantization-aware training for any float graph: fake quantization with a
//! straight-through estimator at exactly the tensors the int8 runtime quantizes,
//! observers in the loop, learned step sizes (LSQ), and a conversion to the int8 runtime
//! that keeps exactly the simulated grids.
//!
//! The API, in the order a caller uses it:
//!
//! - [`QatConfig`]: weight quantization (a `cinder_runtime::QuantConfig`, every layer
//!   static; bits 2..=8, per channel or per tensor), the activation scheme, LSQ, when
//!   observers freeze, the fine-tuning recipe (`cinder_model::TrainConfig`), and
//!   `fake_quant: false` for the control ([`QatConfig::control`]).
//! - [`fine_tune`]: a trained `GraphNet` + training images + config → the fine-tuned
//!   [`QatModel`] (BatchNorm folded first). [`QatTrainer`] is the same run epoch by
//!   epoch, with checkpoints and resume.
//! - [`QatPlan`] ([`QatModel::plan`]): where the graph is quantized, read off its
//!   architecture by the runtime's conversion rules: the activation points, the
//!   weighted layers, the steps of the fake-quant forward.
//! - [`QatModel::forward`] / [`evaluate`]: the fake-quant forward (float for a control);
//!   [`QatModel::net`]: the fine-tuned float network (what a control hands to PTQ).
//! - [`QatModel::export`] → [`QatExport`] (float graph, calibration table with the QAT
//!   activation params, weight params) → [`QatExport::convert`]: the int8
//!   `QuantizedModel`, on exactly the grids the fake-quant forward used.
//! - [`QatModel::forward_deployed`]: the fake-quant forward with the converted model's
//!   requantization (its input quantizer, int32 biases, Q0.31 multipliers and clamps on
//!   the exact integer sums). Its logits equal the runtime's bit for bit, which is what
//!   proves the conversion loses nothing. The plain [`QatModel::forward`] rescales in
//!   f32 as training does; its rounding errors move the odd value one code from the
//!   runtime's exactly rounded fixed point, which flips the rare image whose top two
//!   logits are within a step.

pub mod config;
pub mod error;
pub mod export;
pub mod fake_quant;
mod forward;
pub mod model;
pub mod plan;
pub mod train;

use cinder_model::{BackendKind, GraphNet, ImageSource, StepProgress};

pub use config::QatConfig;
pub use error::QatError;
pub use export::QatExport;
pub use fake_quant::{
    FakeQuantGrid, fake_quantize, lsq_gradient_scale, quantize_centred, round_ste, scaled_gradient,
};
pub use model::{QatModel, QuantState};
pub use plan::{QatPlan, QatStep};
pub use train::{QatTrainer, evaluate};

/// Fine-tunes a copy of `model` on `train` under `config` (all its epochs, on `backend`)
/// and returns the result; `progress` sees every step. For the control, pass
/// `config.control()` and quantize `result.net()` with PTQ.
pub fn fine_tune(
    model: &GraphNet,
    train: &dyn ImageSource,
    config: &QatConfig,
    backend: BackendKind,
    progress: &mut dyn FnMut(&StepProgress),
) -> Result<QatModel, QatError> {
    let mut trainer = QatTrainer::new(model, config.clone(), backend)?;
    while !trainer.is_finished() {
        trainer.run_epoch(train, None, progress)?;
    }
    Ok(trainer.into_model())
}
