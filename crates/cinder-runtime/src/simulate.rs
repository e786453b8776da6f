//! The fake-quant simulation of a quantized model: every tensor that the integer path
//! quantizes is snapped to its grid (ties to even), weights are dequantized from their
//! codes and int32 biases taken at `s_in * s_w`, and the network is then evaluated in
//! real arithmetic, exactly.
//!
//! Exactly, because on dequantized values a layer's sum of products is an exact
//! multiple of `s_in * s_w`, namely `s_in * s_w * acc` with the integer accumulator
//! `acc`; so the simulation computes `acc` in integers and snaps `acc * s_in * s_w /
//! s_out` (f64) to the output grid. The one place where the integer path departs from
//! real arithmetic is its requantization (the multiplier rounded to Q0.31, relative
//! error below 2^-31, then one rounding shift), and agreement with this simulation
//! checks exactly that. (An f32 evaluation adds rounding noise of its own, from sums of
//! thousands of products, which this comparison would then have to tell apart.)
//!
//! Both sides snap logits to the output grid, so where the two top logits are within a
//! step, a one-code difference anywhere upstream can change the argmax. With gemmlowp's
//! two roundings (format version 1) the runtime and this simulation disagreed on 3 of
//! the 10,000 Fashion-MNIST test images; with one rounding they agree on all 10,000
//! (`cargo xtask infer --simulate 10000`).

use cinder_tensor::{Tensor, TensorBuf};

use crate::error::RunError;
use crate::quantized::QuantizedModel;
use crate::reference::{Rescale, interpret};

/// Runs the fake-quant simulation of `model` on `input` (`[B, ...input_shape]`, NCHW).
pub fn simulate(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    interpret(model, input, Rescale::Exact)
}
