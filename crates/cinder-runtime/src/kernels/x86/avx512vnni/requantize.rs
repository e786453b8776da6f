//! The AVX-512 output stage: 16 channels per vector, rescaled as two vectors of eight
//! 64-bit products (`vpmuldq`), rounded by one arithmetic shift (`vpsravq`), clamped and
//! narrowed to bytes (`vpmovdb`); the last `n % 16` channels under a lane mask, so no
//! channel takes the scalar path.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::output::OutputStage;
use crate::kernels::x86::channel_lanes::{
    BlockRow, CHANNEL_BLOCK, ChannelLanes, by_channel_blocks,
};

/// The constants in AVX-512's lane order.
type Lanes = ChannelLanes<16>;

impl Avx512Vnni {
    /// [`crate::kernels::requantize_s8_rows`] with AVX-512: 16 channels per vector, a
    /// masked vector for the rest. Sizes are checked by the caller.
    pub(in crate::kernels) fn requantize_rows(
        self,
        stage: &OutputStage<'_>,
        acc: &[i32],
        acc_ld: usize,
        rows: usize,
        out: &mut [i8],
        out_ld: usize,
    ) {
        // SAFETY: the token proves AVX-512 F, BW and VL.
        unsafe { requantize_rows_zmm(stage, (acc, acc_ld), rows, (out, out_ld)) }
    }
}

/// [`Avx512Vnni::requantize_rows`] compiled with AVX-512, so that the row loop and the
/// blocks inline into one function.
///
/// # Safety
/// AVX-512 F, BW and VL must be available; sizes checked as for `requantize_rows`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn requantize_rows_zmm(
    stage: &OutputStage<'_>,
    acc_rows: (&[i32], usize),
    rows: usize,
    out_rows: (&mut [i8], usize),
) {
    by_channel_blocks::<16>(stage, stage.channels(), acc_rows, rows, out_rows, |row| {
        // SAFETY: this function's contract; the slices have the block's width, at most
        // `CHANNEL_BLOCK`.
        unsafe {
            match row.lanes.any_left {
                true => requantize_block::<true>(stage, row),
                false => requantize_block::<false>(stage, row),
            }
        }
    });
}

/// One row of one channel block; without `LEFT` the (all zero) left shifts are skipped.
///
/// # Safety
/// AVX-512 F, BW and VL must be available; `row.acc.len()` at most `CHANNEL_BLOCK`,
/// `row.bias.len()` and `row.out.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn requantize_block<const LEFT: bool>(stage: &OutputStage<'_>, row: BlockRow<'_, 16>) {
    let BlockRow {
        lanes,
        acc,
        bias,
        out,
    } = row;
    let (lo, hi) = (stage.lo - stage.zp_out, stage.hi - stage.zp_out);
    let bounds = (
        _mm512_set1_epi64(i64::from(lo)),
        _mm512_set1_epi64(i64::from(hi)),
    );
    let (lo, hi) = (_mm512_set1_epi32(lo), _mm512_set1_epi32(hi));
    let zp = _mm512_set1_epi32(stage.zp_out);
    for g in (0..acc.len()).step_by(16) {
        let mask: __mmask16 = match acc.len() - g {
            16.. => !0,
            left => (1 << left) - 1,
        };
        // SAFETY: the masked lanes are below `acc.len() - g`, which bounds every slice
        // read and `out`; the lane arrays hold `CHANNEL_BLOCK >= acc.len()` values and
        // `g + 16 <= CHANNEL_BLOCK` (both multiples of 16).
        unsafe {
            let load = |s: &[i32]| _mm512_maskz_loadu_epi32(mask, s.as_ptr().add(g).cast());
            let x = _mm512_add_epi32(load(acc), load(bias));
            let even = _mm512_mul_epi32(x, load(&lanes.mult));
            let odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), load(&lanes.odd));
            let mut even = round_shift(even, lanes, g);
            let mut odd = round_shift(odd, lanes, g + 8);
            if LEFT {
                even = _mm512_min_epi64(_mm512_max_epi64(even, bounds.0), bounds.1);
                odd = _mm512_min_epi64(_mm512_max_epi64(odd, bounds.0), bounds.1);
            }
            // Every result fits int32 now: its low half is exact.
            let y = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
            let y = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(y, lo), hi), zp);
            // Values lie in [-128, 127]: the truncating narrowing is exact. Narrowed in a
            // register and then stored: the memory form of `vpmovdb` measured slower on Zen 4.
            let (bytes, at) = (_mm512_cvtepi32_epi8(y), out.as_mut_ptr().add(g));
            if mask == !0 {
                _mm_storeu_si128(at.cast(), bytes);
            } else {
                _mm_mask_storeu_epi8(at, mask, bytes);
            }
        }
    }
}

/// `RequantMultiplier::apply`'s rounding shift of eight 64-bit products with the
/// constants at `lanes[at..at + 8]`: `(p + 2^(s-1)) >> s`, arithmetic, which is
/// `floor((p + 2^(s-1)) / 2^s)`.
///
/// # Safety
/// AVX-512 F must be available and `at + 8 <= CHANNEL_BLOCK`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round_shift(p: __m512i, lanes: &Lanes, at: usize) -> __m512i {
    debug_assert!(at + 8 <= CHANNEL_BLOCK);
    // SAFETY: in bounds by the caller's contract; the loads are unaligned.
    let (shift, round) = unsafe {
        (
            _mm512_loadu_si512(lanes.shift.as_ptr().add(at).cast()),
            _mm512_loadu_si512(lanes.round.as_ptr().add(at).cast()),
        )
    };
    _mm512_srav_epi64(_mm512_add_epi64(p, round), shift)
}
