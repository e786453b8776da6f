//! The scalar references of the tile kernels: each step one fused multiply-add, in the order
//! the vector kernels take, so that they agree with them bit for bit.

use super::weight_gradient::PAIRS;
use super::{BLOCK, PANEL};

/// See the parent module's `tile`.
pub(super) fn tile(x: &[f32], plane: usize, taps: &[usize], w: &[f32], out: &mut [f32]) {
    let mut acc = [[0.0f32; BLOCK]; PANEL];
    for (c, channel_weights) in w.chunks_exact(taps.len() * BLOCK).enumerate() {
        for (&offset, tap_weights) in taps.iter().zip(channel_weights.chunks_exact(BLOCK)) {
            let values = &x[c * plane + offset..][..PANEL];
            for (sums, &value) in acc.iter_mut().zip(values) {
                for (sum, &weight) in sums.iter_mut().zip(tap_weights) {
                    *sum = weight.mul_add(value, *sum);
                }
            }
        }
    }
    for (row, sums) in out.chunks_exact_mut(BLOCK).zip(&acc) {
        row.copy_from_slice(sums);
    }
}

/// See the weight-gradient module's `tile`.
pub(super) fn weight_tile(dy: &[f32], x: &[f32], offsets: &[usize], sums: &mut [f32]) {
    for (q, grad) in dy.chunks_exact(BLOCK).enumerate() {
        for (pair_sums, &offset) in sums.chunks_exact_mut(BLOCK).zip(&offsets[..PAIRS]) {
            let value = x[offset + q];
            for (sum, &g) in pair_sums.iter_mut().zip(grad) {
                *sum = g.mul_add(value, *sum);
            }
        }
    }
}
