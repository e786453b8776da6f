//! The AVX2 output stage: 8 channels per vector, rescaled as two vectors of four 64-bit
//! products (`vpmuldq`), rounded by one logical shift of a non-negative sum.

use std::arch::x86_64::*;
use std::ops::Range;

use super::Avx2;
use crate::kernels::generic;
use crate::kernels::output::OutputStage;

/// Channels whose multipliers are unpacked into lanes at a time.
const CHANNEL_BLOCK: usize = 128;

/// Requantization constants of a block of channels. Each group of 8 channels is rescaled
/// as two vectors of four 64-bit products, its even channels and its odd ones; the `i64`
/// arrays hold, for the group at `g`, the even channels' constants at `g..g + 4` and the
/// odd ones' at `g + 4..g + 8`.
struct ChannelLanes {
    /// Q0.31 mantissa per `i32` lane; `odd` holds channel `j + 1`'s at even `j`, for
    /// `vpmuldq`.
    mult: [i32; CHANNEL_BLOCK],
    odd: [i32; CHANNEL_BLOCK],
    /// The right shift `s = 31 - exponent` (in `1..=62`).
    shift: [i64; CHANNEL_BLOCK],
    /// `2^62 + 2^(s-1)`: the rounding term plus an offset that makes the sum non-negative,
    /// so that a logical shift (AVX2 has no arithmetic 64-bit one) divides exactly.
    round: [i64; CHANNEL_BLOCK],
    /// `2^(62-s)`: the offset once shifted, subtracted after.
    offset: [i64; CHANNEL_BLOCK],
    /// Whether any channel of the block has a positive exponent: only then can a result
    /// exceed int32, so that it must be clamped in 64 bits.
    any_left: bool,
}

impl ChannelLanes {
    fn new(stage: &OutputStage<'_>, channels: Range<usize>) -> Self {
        let mut lanes = Self {
            mult: [0; CHANNEL_BLOCK],
            odd: [0; CHANNEL_BLOCK],
            shift: [0; CHANNEL_BLOCK],
            round: [0; CHANNEL_BLOCK],
            offset: [0; CHANNEL_BLOCK],
            any_left: false,
        };
        for (j, c) in channels.enumerate() {
            let m = stage.multiplier(c);
            let shift = m.right_shift();
            lanes.mult[j] = m.multiplier;
            if j % 2 == 1 {
                lanes.odd[j - 1] = m.multiplier;
            }
            let lane = j / 8 * 8 + j % 2 * 4 + j % 8 / 2;
            lanes.shift[lane] = i64::from(shift);
            lanes.round[lane] = (1 << 62) + (1 << (shift - 1));
            lanes.offset[lane] = 1 << (62 - shift);
            lanes.any_left |= m.exponent > 0;
        }
        lanes
    }
}

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
        for j0 in (0..vec_n).step_by(CHANNEL_BLOCK) {
            let width = CHANNEL_BLOCK.min(vec_n - j0);
            let lanes = ChannelLanes::new(stage, j0..j0 + width);
            for i in 0..rows {
                let acc_row = &acc[i * acc_ld + j0..][..width];
                let out_row = &mut out[i * out_ld + j0..][..width];
                let bias = &stage.bias[j0..][..width];
                // SAFETY: the token proves AVX2 support; the slices have `width` elements,
                // a multiple of 8 and at most `CHANNEL_BLOCK`.
                unsafe {
                    if lanes.any_left {
                        requantize_block::<true>(stage, &lanes, acc_row, bias, out_row);
                    } else {
                        requantize_block::<false>(stage, &lanes, acc_row, bias, out_row);
                    }
                }
            }
        }
        generic::requantize_rows(stage, acc, acc_ld, rows, vec_n, out, out_ld);
    }
}

/// One row of one channel block; without `LEFT` the (all zero) left shifts are skipped.
///
/// # Safety
/// AVX2 must be available; `acc.len()` a multiple of 8, at most `CHANNEL_BLOCK` and at
/// most `bias.len()` and `out.len()`.
#[target_feature(enable = "avx2")]
unsafe fn requantize_block<const LEFT: bool>(
    stage: &OutputStage<'_>,
    lanes: &ChannelLanes,
    acc: &[i32],
    bias: &[i32],
    out: &mut [i8],
) {
    let (lo, hi) = (stage.lo - stage.zp_out, stage.hi - stage.zp_out);
    let bounds = (
        _mm256_set1_epi64x(i64::from(lo)),
        _mm256_set1_epi64x(i64::from(hi)),
    );
    let (lo, hi) = (_mm256_set1_epi32(lo), _mm256_set1_epi32(hi));
    let zp = _mm256_set1_epi32(stage.zp_out);
    let gather = _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0);
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

/// `RequantMultiplier::apply`'s rounding shift of four 64-bit products with the
/// constants at `lanes[at..at + 4]`: `((p + 2^62 + 2^(s-1)) >>> s) - 2^(62-s)`, which is
/// `floor((p + 2^(s-1)) / 2^s)` because `|p| < 2^62` keeps the sum in `(0, 2^64)`.
///
/// # Safety
/// AVX2 must be available and `at + 4 <= CHANNEL_BLOCK`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn round_shift(p: __m256i, lanes: &ChannelLanes, at: usize) -> __m256i {
    debug_assert!(at + 4 <= CHANNEL_BLOCK);
    // SAFETY: in bounds by the caller's contract; the loads are unaligned.
    let (shift, round, offset) = unsafe {
        (
            _mm256_loadu_si256(lanes.shift.as_ptr().add(at).cast()),
            _mm256_loadu_si256(lanes.round.as_ptr().add(at).cast()),
            _mm256_loadu_si256(lanes.offset.as_ptr().add(at).cast()),
        )
    };
    let shifted = _mm256_srlv_epi64(_mm256_add_epi64(p, round), shift);
    _mm256_sub_epi64(shifted, offset)
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
