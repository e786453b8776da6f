//! The AVX2 output stage: 8 channels per vector, rescaled as two vectors of four 64-bit
//! products (`vpmuldq`), rounded by one logical shift of a non-negative sum.

use std::arch::x86_64::*;

use super::Avx2;
use crate::kernels::generic;
use crate::kernels::output::OutputStage;
use crate::kernels::x86::channel_lanes::{
    BlockRows, CHANNEL_BLOCK, ChannelLanes, by_channel_blocks,
};

/// The constants in AVX2's lane order.
type Lanes = ChannelLanes<8>;

impl Avx2 {
    /// [`crate::kernels::requantize_s8_rows`] with AVX2: 8 channels per vector, the last
    /// `n % 8` channels through the scalar code. Sizes are checked by the caller.
    pub(in crate::kernels) fn requantize_rows(
        self,
        stage: &OutputStage<'_>,
        acc: &[i32],
        acc_ld: usize,
        rows: usize,
        out: &mut [i8],
        out_ld: usize,
    ) {
        let vec_n = stage.channels() / 8 * 8;
        let (acc_rows, out_rows) = ((acc, acc_ld), (&mut *out, out_ld));
        by_channel_blocks::<8>(stage, vec_n, acc_rows, rows, out_rows, |block| {
            // SAFETY: the token proves AVX2 support; a block's width is a multiple of 8 and
            // at most `CHANNEL_BLOCK`.
            unsafe {
                match block.lanes.any_left {
                    true => requantize_block::<true>(stage, block),
                    false => requantize_block::<false>(stage, block),
                }
            }
        });
        generic::requantize_rows(stage, acc, acc_ld, rows, vec_n, out, out_ld);
    }
}

/// Every row of one channel block; without `LEFT` the (all zero) left shifts are skipped.
///
/// # Safety
/// AVX2 must be available; the block's width a multiple of 8 and at most
/// `CHANNEL_BLOCK`.
#[target_feature(enable = "avx2")]
unsafe fn requantize_block<const LEFT: bool>(stage: &OutputStage<'_>, mut block: BlockRows<'_, 8>) {
    let (lo, hi) = (stage.lo - stage.zp_out, stage.hi - stage.zp_out);
    let bounds = (
        _mm256_set1_epi64x(i64::from(lo)),
        _mm256_set1_epi64x(i64::from(hi)),
    );
    let (lo, hi) = (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi));
    let zp = _mm256_set1_epi32(stage.zp_out);
    let gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
    let (lanes, bias) = (block.lanes, block.bias);
    for i in 0..block.rows {
        let (acc, out) = block.row(i);
        for g in (0..acc.len()).step_by(8) {
            // SAFETY: `g + 8 <= acc.len()`, which bounds every slice read and `out`; the
            // `i64` arrays hold `CHANNEL_BLOCK >= acc.len()` lanes.
            unsafe {
                let x = _mm256_add_epi32(load8(acc, g), load8(bias, g));
                let even = _mm256_mul_epi32(x, load8(&lanes.mult, g));
                let odd = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), load8(&lanes.odd, g));
                let mut even = round_shift(even, lanes, g);
                let mut odd = round_shift(odd, lanes, g + 4);
                if LEFT {
                    even = clamp_i64(even, bounds);
                    odd = clamp_i64(odd, bounds);
                }
                // Every result fits int32 now: its low half is exact.
                let y = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0b1010_1010);
                let y = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(y, lo), hi), zp);
                // Values lie in [-128, 127]: the saturating packs are exact.
                let words = _mm256_packs_epi32(y, y);
                let bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(words, words), gather);
                _mm_storel_epi64(
                    out.as_mut_ptr().add(g).cast(),
                    _mm256_castsi256_si128(bytes),
                );
            }
        }
    }
}

/// `RequantMultiplier::apply`'s rounding shift of four 64-bit products with the
/// constants at `lanes[at..at + 4]`: `((p + 2^62 + 2^(s-1)) >>> s) - 2^(62-s)`, which is
/// `floor((p + 2^(s-1)) / 2^s)` because `|p| < 2^62` keeps the sum in `(0, 2^64)`: a
/// logical shift divides it exactly (AVX2 has no arithmetic 64-bit one).
///
/// # Safety
/// AVX2 must be available and `at + 4 <= CHANNEL_BLOCK`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn round_shift(p: __m256i, lanes: &Lanes, at: usize) -> __m256i {
    debug_assert!(at + 4 <= CHANNEL_BLOCK);
    // SAFETY: in bounds by the caller's contract; the loads are unaligned.
    let (shift, round, offset) = unsafe {
        (
            _mm256_loadu_si256(lanes.shift.as_ptr().add(at).cast()),
            _mm256_loadu_si256(lanes.round.as_ptr().add(at).cast()),
            _mm256_loadu_si256(lanes.offset.as_ptr().add(at).cast()),
        )
    };
    let biased = _mm256_add_epi64(_mm256_add_epi64(p, _mm256_set1_epi64x(1 << 62)), round);
    _mm256_sub_epi64(_mm256_srlv_epi64(biased, shift), offset)
}

/// Clamps four i64 lanes to `[lo, hi]`.
#[target_feature(enable = "avx2")]
#[inline]
fn clamp_i64(x: __m256i, (lo, hi): (__m256i, __m256i)) -> __m256i {
    let x = _mm256_blendv_epi8(x, lo, _mm256_cmpgt_epi64(lo, x));
    _mm256_blendv_epi8(x, hi, _mm256_cmpgt_epi64(x, hi))
}

/// `s[g .. g + 8]` as one vector.
///
/// # Safety
/// AVX2 must be available and `g + 8 <= s.len()`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load8(s: &[i32], g: usize) -> __m256i {
    debug_assert!(g + 8 <= s.len());
    // SAFETY: in bounds by the caller's contract; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().add(g).cast()) }
}
