//! Quantization-aware training for burn models: fake-quantization with a
//! straight-through estimator, learned step sizes (LSQ), and fine-tuning that converts
//! to the int8 runtime with nothing lost.

pub mod fake_quant;

pub use fake_quant::{FakeQuantGrid, fake_quantize, lsq_gradient_scale, scaled_gradient};
