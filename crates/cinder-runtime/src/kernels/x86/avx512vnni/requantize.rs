//! The AVX-512 output stage: 16 channels per vector, rescaled as two vectors of eight
//! 64-bit products (`vpmuldq`), rounded by one arithmetic shift (`vpsravq`), clamped and
//! narrowed to bytes (`vpmovdb`); the last `n % 16` channels under a lane mask, so no
//! channel takes the scalar path. A block of whole vectors (at most 8) walks each row with
//! a count known at compile time: a row loop of a few vectors with a run-time count
//! measured 1.6× slower on Zen 4 (64 channels).

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::output::OutputStage;
use crate::kernels::x86::channel_lanes::{
    BlockRows, CHANNEL_BLOCK, ChannelLanes, by_channel_blocks,
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

/// [`Avx512Vnni::requantize_rows`] compiled with AVX-512.
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
    by_channel_blocks::<16>(stage, stage.channels(), acc_rows, rows, out_rows, |block| {
        // SAFETY: this function's contract; a block is at most `CHANNEL_BLOCK` wide.
        unsafe {
            match block.lanes.any_left {
                true => requantize_block::<true>(stage, block),
                false => requantize_block::<false>(stage, block),
            }
        }
    });
}

/// The values every row of a block uses, in registers.
#[derive(Clone, Copy)]
struct Consts {
    /// `lo - zp_out` and `hi - zp_out` as i64 lanes, for results that may exceed i32.
    bounds: (__m512i, __m512i),
    lo: __m512i,
    hi: __m512i,
    zp: __m512i,
}

impl Consts {
    #[target_feature(enable = "avx512f")]
    fn new(stage: &OutputStage<'_>) -> Self {
        let (lo, hi) = (stage.lo - stage.zp_out, stage.hi - stage.zp_out);
        Self {
            bounds: (
                _mm512_set1_epi64(i64::from(lo)),
                _mm512_set1_epi64(i64::from(hi)),
            ),
            lo: _mm512_set1_epi32(lo),
            hi: _mm512_set1_epi32(hi),
            zp: _mm512_set1_epi32(stage.zp_out),
        }
    }
}

/// Every row of one channel block; without `LEFT` the (all zero) left shifts are skipped.
///
/// # Safety
/// AVX-512 F, BW and VL must be available; the block at most `CHANNEL_BLOCK` wide.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn requantize_block<const LEFT: bool>(stage: &OutputStage<'_>, block: BlockRows<'_, 16>) {
    let consts = Consts::new(stage);
    let width = block.bias.len();
    // SAFETY (every arm): this function's contract; the fixed counts cover the width.
    unsafe {
        match (width % 16, width / 16) {
            (0, 1) => whole_vectors::<LEFT, 1>(consts, block),
            (0, 2) => whole_vectors::<LEFT, 2>(consts, block),
            (0, 3) => whole_vectors::<LEFT, 3>(consts, block),
            (0, 4) => whole_vectors::<LEFT, 4>(consts, block),
            (0, 5) => whole_vectors::<LEFT, 5>(consts, block),
            (0, 6) => whole_vectors::<LEFT, 6>(consts, block),
            (0, 7) => whole_vectors::<LEFT, 7>(consts, block),
            (0, 8) => whole_vectors::<LEFT, 8>(consts, block),
            _ => any_width::<LEFT>(consts, block),
        }
    }
}

/// [`requantize_block`] of a block of `V` whole vectors (`16 V` channels).
///
/// # Safety
/// As [`requantize_block`], the block `16 V` wide.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn whole_vectors<const LEFT: bool, const V: usize>(
    consts: Consts,
    mut block: BlockRows<'_, 16>,
) {
    let (lanes, bias) = (block.lanes, block.bias);
    for i in 0..block.rows {
        let (acc, out) = block.row(i);
        for g in (0..16 * V).step_by(16) {
            // SAFETY: `g + 16 <= 16 V`, the block's width.
            unsafe { vector::<LEFT>(consts, lanes, (bias, acc), g, !0, out) };
        }
    }
}

/// [`requantize_block`] of a block of any width: the last vector under a lane mask.
///
/// # Safety
/// As [`requantize_block`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn any_width<const LEFT: bool>(consts: Consts, mut block: BlockRows<'_, 16>) {
    let (lanes, bias) = (block.lanes, block.bias);
    for i in 0..block.rows {
        let (acc, out) = block.row(i);
        for g in (0..acc.len()).step_by(16) {
            let mask: __mmask16 = match acc.len() - g {
                16.. => !0,
                left => (1 << left) - 1,
            };
            // SAFETY: the mask's lanes lie below the block's width.
            unsafe { vector::<LEFT>(consts, lanes, (bias, acc), g, mask, out) };
        }
    }
}

/// The codes of channels `g .. g + 16` of one row under `mask` (a full mask compiles to
/// plain loads and stores).
///
/// # Safety
/// AVX-512 F, BW and VL must be available; the masked lanes of `g ..` lie inside `bias`,
/// `acc` and `out`, and `g + 16 <= CHANNEL_BLOCK` (a multiple of 16).
#[inline(always)]
unsafe fn vector<const LEFT: bool>(
    consts: Consts,
    lanes: &Lanes,
    (bias, acc): (&[i32], &[i32]),
    g: usize,
    mask: __mmask16,
    out: &mut [i8],
) {
    // SAFETY (whole body): the instruction sets and bounds by the contract; the lane
    // arrays hold `CHANNEL_BLOCK` values.
    unsafe {
        let load = |s: &[i32]| _mm512_maskz_loadu_epi32(mask, s.as_ptr().add(g).cast());
        let x = _mm512_add_epi32(load(acc), load(bias));
        let even = _mm512_mul_epi32(x, load(&lanes.mult));
        let odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), load(&lanes.odd));
        let mut even = round_shift(even, lanes, g);
        let mut odd = round_shift(odd, lanes, g + 8);
        if LEFT {
            let (lo, hi) = consts.bounds;
            even = _mm512_min_epi64(_mm512_max_epi64(even, lo), hi);
            odd = _mm512_min_epi64(_mm512_max_epi64(odd, lo), hi);
        }
        // Every result fits int32 now: its low half is exact.
        let y = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
        let y = _mm512_min_epi32(_mm512_max_epi32(y, consts.lo), consts.hi);
        let y = _mm512_add_epi32(y, consts.zp);
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
