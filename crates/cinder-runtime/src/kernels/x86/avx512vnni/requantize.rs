//! The AVX-512 output stage: 16 channels per vector, rescaled as two vectors of eight
//! 64-bit products (`vpmuldq`), rounded by one arithmetic shift (`vpsravq`), clamped and
//! narrowed to bytes (`vpmovdb`); the last `n % 16` channels under a lane mask, so no
//! channel takes the scalar path. A block walks one vector of channels over all its rows
//! with that vector's constants in registers: walking each row over all its vectors
//! reloaded seven constant vectors per vector of sums, and with a run-time count of
//! vectors a row (four for 64 channels) ran 1.6× slower still on Zen 4.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::output::OutputStage;
use crate::kernels::x86::channel_lanes::{BlockRows, ChannelLanes, by_channel_blocks};

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
/// A vector of 16 channels at a time over all rows, its constants held in registers: a
/// row at a time reloaded seven constant vectors for every vector of sums.
///
/// # Safety
/// AVX-512 F, BW and VL must be available; the block at most `CHANNEL_BLOCK` wide.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn requantize_block<const LEFT: bool>(
    stage: &OutputStage<'_>,
    mut block: BlockRows<'_, 16>,
) {
    let consts = Consts::new(stage);
    let width = block.bias.len();
    for g in (0..width).step_by(16) {
        let mask: __mmask16 = match width - g {
            16.. => !0,
            left => (1 << left) - 1,
        };
        // SAFETY: the mask's lanes lie below the block's width, at most the lane arrays'
        // length, a multiple of 16.
        unsafe {
            let channels = Channels::new(block.lanes, block.bias, g, mask);
            for i in 0..block.rows {
                let (acc, out) = block.row(i);
                vector::<LEFT>(consts, &channels, acc, g, out);
            }
        }
    }
}

/// The constants of the 16 channels from `g`, in registers.
struct Channels {
    mask: __mmask16,
    bias: __m512i,
    mult: __m512i,
    odd: __m512i,
    /// Even and odd channels' right shifts and rounding terms.
    shift: (__m512i, __m512i),
    round: (__m512i, __m512i),
}

impl Channels {
    /// # Safety
    /// AVX-512 F must be available; the masked lanes of `g ..` lie inside `bias`, and
    /// `g + 16` is at most the lane arrays' length.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn new(lanes: &Lanes, bias: &[i32], g: usize, mask: __mmask16) -> Self {
        // SAFETY: in bounds by the contract.
        unsafe {
            let lane32 = |s: &[i32]| _mm512_maskz_loadu_epi32(mask, s.as_ptr().add(g).cast());
            let lane64 = |s: &[i64], at: usize| _mm512_loadu_si512(s.as_ptr().add(at).cast());
            Self {
                mask,
                bias: lane32(bias),
                mult: lane32(&lanes.mult),
                odd: lane32(&lanes.odd),
                shift: (lane64(&lanes.shift, g), lane64(&lanes.shift, g + 8)),
                round: (lane64(&lanes.round, g), lane64(&lanes.round, g + 8)),
            }
        }
    }
}

/// The codes of `channels`' 16 channels (from `g`) of one row under their mask (a full
/// mask compiles to plain loads and stores).
///
/// # Safety
/// AVX-512 F, BW and VL must be available; the masked lanes of `g ..` lie inside `acc`
/// and `out`.
#[inline(always)]
unsafe fn vector<const LEFT: bool>(
    consts: Consts,
    channels: &Channels,
    acc: &[i32],
    g: usize,
    out: &mut [i8],
) {
    // SAFETY (whole body): the instruction sets and bounds by the contract.
    unsafe {
        let mask = channels.mask;
        let x = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(g).cast());
        let x = _mm512_add_epi32(x, channels.bias);
        let even = _mm512_mul_epi32(x, channels.mult);
        let odd = _mm512_mul_epi32(_mm512_srli_epi64(x, 32), channels.odd);
        let (shift, round) = (channels.shift, channels.round);
        let mut even = _mm512_srav_epi64(_mm512_add_epi64(even, round.0), shift.0);
        let mut odd = _mm512_srav_epi64(_mm512_add_epi64(odd, round.1), shift.1);
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
