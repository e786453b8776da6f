//! The tile kernels on AVX2 + FMA: [`BLOCK`] output channels as two 8-lane vectors times
//! [`PANEL`] positions (the convolution) or [`PAIRS`] (input channel, tap) pairs (its weight
//! gradient), computed as two halves of six positions or pairs: twelve accumulators, two
//! vector loads and a broadcast per step (15 of the 16 vector registers).

use std::arch::x86_64::{
    __m256, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps,
    _mm256_storeu_ps,
};

use super::weight_gradient::PAIRS;
use super::{BLOCK, PANEL};

/// Positions or pairs per half tile.
const HALF: usize = 6;

const _: () = assert!(
    PANEL == 2 * HALF && BLOCK == 16 && PAIRS == 2 * HALF,
    "the kernels are written for tiles of two 6 × 16 halves"
);

/// See the parent module's `tile`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` must hold `(C − 1)·plane + max(taps) + PANEL`
/// values for `C = w.len() / (taps.len()·BLOCK)`, and `out` `PANEL·BLOCK`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn tile(x: &[f32], plane: usize, taps: &[usize], w: &[f32], out: &mut [f32]) {
    let (first, second) = out.split_at_mut(HALF * BLOCK);
    // SAFETY: the caller's bounds, of which each half needs a part.
    unsafe {
        half_tile(x, plane, taps, w, first);
        half_tile(&x[HALF..], plane, taps, w, second);
    }
}

/// [`tile`] for `HALF` positions.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_tile(x: &[f32], plane: usize, taps: &[usize], w: &[f32], out: &mut [f32]) {
    // Named accumulators: LLVM keeps these in registers, an array of them it shuffles.
    let [mut a0, mut a1, mut b0, mut b1, mut c0, mut c1] = [_mm256_setzero_ps(); 6];
    let [mut d0, mut d1, mut e0, mut e1, mut f0, mut f1] = [_mm256_setzero_ps(); 6];
    let x = x.as_ptr();
    for (c, channel_weights) in w.chunks_exact(taps.len() * BLOCK).enumerate() {
        for (&offset, tap) in taps.iter().zip(channel_weights.chunks_exact(BLOCK)) {
            // SAFETY: the caller's bounds on `x`; `tap` holds `BLOCK` = 16 values.
            let at = unsafe { x.add(c * plane + offset) };
            let w0 = unsafe { _mm256_loadu_ps(tap.as_ptr()) };
            let w1 = unsafe { _mm256_loadu_ps(tap.as_ptr().add(8)) };
            let value = |r: usize| unsafe { _mm256_broadcast_ss(&*at.add(r)) };
            let v = value(0);
            (a0, a1) = (fma(w0, v, a0), fma(w1, v, a1));
            let v = value(1);
            (b0, b1) = (fma(w0, v, b0), fma(w1, v, b1));
            let v = value(2);
            (c0, c1) = (fma(w0, v, c0), fma(w1, v, c1));
            let v = value(3);
            (d0, d1) = (fma(w0, v, d0), fma(w1, v, d1));
            let v = value(4);
            (e0, e1) = (fma(w0, v, e0), fma(w1, v, e1));
            let v = value(5);
            (f0, f1) = (fma(w0, v, f0), fma(w1, v, f1));
        }
    }
    let positions = [[a0, a1], [b0, b1], [c0, c1], [d0, d1], [e0, e1], [f0, f1]];
    for (row, sums) in out.chunks_exact_mut(BLOCK).zip(positions) {
        for (dst, sum) in row.chunks_exact_mut(8).zip(sums) {
            // SAFETY: `dst` holds 8 values.
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), sum) };
        }
    }
}

/// See the weight-gradient module's `tile`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `offsets` must hold `PAIRS` offsets, each with
/// `dy.len() / BLOCK` values of `x` from it, and `sums` `PAIRS·BLOCK` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn weight_tile(dy: &[f32], x: &[f32], offsets: &[usize], sums: &mut [f32]) {
    let (first, second) = sums.split_at_mut(HALF * BLOCK);
    // SAFETY: the caller's bounds, of which each half needs a part.
    unsafe {
        half_weight_tile(dy, x, &offsets[..HALF], first);
        half_weight_tile(dy, x, &offsets[HALF..], second);
    }
}

/// [`weight_tile`] for `HALF` pairs.
#[target_feature(enable = "avx2,fma")]
unsafe fn half_weight_tile(dy: &[f32], x: &[f32], offsets: &[usize], sums: &mut [f32]) {
    let s = sums.as_mut_ptr();
    // SAFETY (every pointer below): the caller's bounds.
    let load = |at: usize| unsafe { _mm256_loadu_ps(s.add(at)) };
    let [mut a0, mut a1, mut b0, mut b1, mut c0, mut c1] =
        [load(0), load(8), load(16), load(24), load(32), load(40)];
    let [mut d0, mut d1, mut e0, mut e1, mut f0, mut f1] =
        [load(48), load(56), load(64), load(72), load(80), load(88)];
    let x = x.as_ptr();
    let [pa, pb, pc, pd, pe, pf] = [0, 1, 2, 3, 4, 5].map(|p| unsafe { x.add(offsets[p]) });
    for (q, grad) in dy.chunks_exact(BLOCK).enumerate() {
        let g0 = unsafe { _mm256_loadu_ps(grad.as_ptr()) };
        let g1 = unsafe { _mm256_loadu_ps(grad.as_ptr().add(8)) };
        let value = |p: *const f32| unsafe { _mm256_broadcast_ss(&*p.add(q)) };
        let v = value(pa);
        (a0, a1) = (fma(g0, v, a0), fma(g1, v, a1));
        let v = value(pb);
        (b0, b1) = (fma(g0, v, b0), fma(g1, v, b1));
        let v = value(pc);
        (c0, c1) = (fma(g0, v, c0), fma(g1, v, c1));
        let v = value(pd);
        (d0, d1) = (fma(g0, v, d0), fma(g1, v, d1));
        let v = value(pe);
        (e0, e1) = (fma(g0, v, e0), fma(g1, v, e1));
        let v = value(pf);
        (f0, f1) = (fma(g0, v, f0), fma(g1, v, f1));
    }
    let all = [a0, a1, b0, b1, c0, c1, d0, d1, e0, e1, f0, f1];
    for (v, sum) in all.into_iter().enumerate() {
        unsafe { _mm256_storeu_ps(s.add(8 * v), sum) };
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn fma(w: __m256, x: __m256, sum: __m256) -> __m256 {
    _mm256_fmadd_ps(w, x, sum)
}
