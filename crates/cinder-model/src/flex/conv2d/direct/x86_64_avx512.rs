//! The tile kernels on AVX-512: [`BLOCK`] output channels as one 16-lane vector times
//! [`PANEL`] positions (the convolution) or [`PAIRS`] (input channel, tap) pairs (its weight
//! gradient): twelve accumulators, one vector load and a broadcast per accumulator per step.
//! Half the instructions of the AVX2 kernel for the same multiply-adds, and on CPUs with two
//! 512-bit FMA units twice its arithmetic per cycle.

use std::arch::x86_64::{
    __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::weight_gradient::PAIRS;
use super::{BLOCK, PANEL};

const _: () = assert!(
    PANEL == 12 && BLOCK == 16 && PAIRS == 12,
    "the kernels are written for 12 × 16 tiles"
);

/// See the parent module's `tile`.
///
/// # Safety
/// The CPU must have AVX-512F; `x` must hold `(C − 1)·plane + max(taps) + PANEL` values for
/// `C = w.len() / (taps.len()·BLOCK)`, and `out` `PANEL·BLOCK`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn tile(x: &[f32], plane: usize, taps: &[usize], w: &[f32], out: &mut [f32]) {
    // Named accumulators: LLVM keeps these in registers, an array of them it shuffles.
    let [mut s0, mut s1, mut s2, mut s3, mut s4, mut s5] = [_mm512_setzero_ps(); 6];
    let [mut s6, mut s7, mut s8, mut s9, mut s10, mut s11] = [_mm512_setzero_ps(); 6];
    let x = x.as_ptr();
    for (c, channel_weights) in w.chunks_exact(taps.len() * BLOCK).enumerate() {
        for (&offset, tap) in taps.iter().zip(channel_weights.chunks_exact(BLOCK)) {
            // SAFETY: the caller's bounds on `x`; `tap` holds `BLOCK` = 16 values.
            let at = unsafe { x.add(c * plane + offset) };
            let w = unsafe { _mm512_loadu_ps(tap.as_ptr()) };
            let value = |r: usize| unsafe { _mm512_set1_ps(*at.add(r)) };
            s0 = fma(w, value(0), s0);
            s1 = fma(w, value(1), s1);
            s2 = fma(w, value(2), s2);
            s3 = fma(w, value(3), s3);
            s4 = fma(w, value(4), s4);
            s5 = fma(w, value(5), s5);
            s6 = fma(w, value(6), s6);
            s7 = fma(w, value(7), s7);
            s8 = fma(w, value(8), s8);
            s9 = fma(w, value(9), s9);
            s10 = fma(w, value(10), s10);
            s11 = fma(w, value(11), s11);
        }
    }
    let positions = [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11];
    for (row, sum) in out.chunks_exact_mut(BLOCK).zip(positions) {
        // SAFETY: `row` holds 16 values.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr(), sum) };
    }
}

/// See the weight-gradient module's `tile`.
///
/// # Safety
/// The CPU must have AVX-512F; `offsets` must hold `PAIRS` offsets, each with
/// `dy.len() / BLOCK` values of `x` from it, and `sums` `PAIRS·BLOCK` values.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weight_tile(dy: &[f32], x: &[f32], offsets: &[usize], sums: &mut [f32]) {
    let s = sums.as_mut_ptr();
    // SAFETY (every pointer below): the caller's bounds.
    let load = |pair: usize| unsafe { _mm512_loadu_ps(s.add(pair * BLOCK)) };
    let [mut s0, mut s1, mut s2, mut s3, mut s4, mut s5] = [0, 1, 2, 3, 4, 5].map(load);
    let [mut s6, mut s7, mut s8, mut s9, mut s10, mut s11] = [6, 7, 8, 9, 10, 11].map(load);
    let x = x.as_ptr();
    let p: [*const f32; PAIRS] = std::array::from_fn(|pair| unsafe { x.add(offsets[pair]) });
    for (q, grad) in dy.chunks_exact(BLOCK).enumerate() {
        let g = unsafe { _mm512_loadu_ps(grad.as_ptr()) };
        let value = |pair: usize| unsafe { _mm512_set1_ps(*p[pair].add(q)) };
        s0 = fma(g, value(0), s0);
        s1 = fma(g, value(1), s1);
        s2 = fma(g, value(2), s2);
        s3 = fma(g, value(3), s3);
        s4 = fma(g, value(4), s4);
        s5 = fma(g, value(5), s5);
        s6 = fma(g, value(6), s6);
        s7 = fma(g, value(7), s7);
        s8 = fma(g, value(8), s8);
        s9 = fma(g, value(9), s9);
        s10 = fma(g, value(10), s10);
        s11 = fma(g, value(11), s11);
    }
    let all = [s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11];
    for (pair, sum) in all.into_iter().enumerate() {
        unsafe { _mm512_storeu_ps(s.add(pair * BLOCK), sum) };
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn fma(w: __m512, x: __m512, sum: __m512) -> __m512 {
    _mm512_fmadd_ps(w, x, sum)
}
