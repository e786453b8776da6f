//! The zmm depthwise kernel of the AVX-512 VNNI path: blocks of 32 channels, two taps'
//! codes (32 each) interleaved byte by byte within 128-bit lanes and sign-extended to two
//! zmm of i16 pairs (channels 0–7 and 16–23, then 8–15 and 24–31: the filter's slot
//! order), `vpdpwssd` into two zmm accumulators, put back in channel order by two
//! `vshufi64x2` at the end. A block shorter than 32 channels loads and stores under a
//! mask.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::depthwise::{DepthwiseJob, MAX_BLOCK};
use crate::kernels::isa::Isa;

/// Channels per block.
const WIDTH: usize = 32;
const _: () = assert!(WIDTH <= MAX_BLOCK, "a tap source holds MAX_BLOCK codes");

impl Avx512Vnni {
    /// The depthwise sums of `job` (its filter packed in blocks of 32, slot order).
    pub(in crate::kernels) fn depthwise(self, job: DepthwiseJob<'_>) -> Isa {
        // SAFETY: `self` proves the features; the job's operands are checked.
        unsafe { depthwise_zmm(job) };
        Isa::Avx512Vnni
    }
}

/// The depthwise sums of a job.
///
/// # Safety
/// The features must be available; the filter packed in blocks of 32 channels in slot
/// order.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn depthwise_zmm(job: DepthwiseJob<'_>) {
    let filter = job.filter;
    debug_assert_eq!(filter.width, WIDTH);
    let c = job.shape.input[2];
    let minus_zp = _mm512_set1_epi32(-i32::from(job.zp_in));
    job.for_each_pass(
        #[inline(always)]
        |sums, taps, first_pair| {
            for (block, c0) in (0..c).step_by(WIDTH).enumerate() {
                let width = (c - c0).min(WIDTH);
                let mask = u32::MAX >> (WIDTH - width);
                let weights = filter.rows(block, first_pair..first_pair + taps.len() / 2);
                let mut acc = [_mm512_setzero_si512(); 2];
                for (pair, w) in taps.chunks_exact(2).zip(weights.chunks_exact(2 * WIDTH)) {
                    // SAFETY: the masked loads read `width` codes, which a tap source
                    // holds from `c0` ([`TapSource::at`]); 64 i16 weights.
                    unsafe {
                        let x0 = _mm256_maskz_loadu_epi8(mask, pair[0].at(c0));
                        let x1 = _mm256_maskz_loadu_epi8(mask, pair[1].at(c0));
                        let lo = _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(x0, x1));
                        let hi = _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(x0, x1));
                        let w = w.as_ptr();
                        acc[0] = _mm512_dpwssd_epi32(acc[0], lo, _mm512_loadu_si512(w.cast()));
                        let w1 = _mm512_loadu_si512(w.add(WIDTH).cast());
                        acc[1] = _mm512_dpwssd_epi32(acc[1], hi, w1);
                    }
                }
                if first_pair == 0 {
                    let start = filter.sums(block).as_ptr();
                    for (i, a) in acc.iter_mut().enumerate() {
                        // SAFETY: 32 start factors per block.
                        let factors = unsafe { _mm512_loadu_si512(start.add(16 * i).cast()) };
                        *a = _mm512_add_epi32(*a, _mm512_mullo_epi32(factors, minus_zp));
                    }
                }
                let low = _mm512_shuffle_i64x2::<0x44>(acc[0], acc[1]);
                let high = _mm512_shuffle_i64x2::<0xee>(acc[0], acc[1]);
                let dst = &mut sums[c0..c0 + width];
                // SAFETY: the masked stores write `width` sums, inside `dst`.
                unsafe { store([low, high], dst, mask, first_pair > 0) };
            }
        },
    );
}

/// Writes (or adds, wrapping) the block's sums, in channel order, to the channels of
/// `dst` that `mask` selects.
///
/// # Safety
/// The features must be available; `mask` selects at most `dst.len()` channels from 0.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn store(mut sums: [__m512i; 2], dst: &mut [i32], mask: u32, add: bool) {
    let masks = [mask as u16, (mask >> 16) as u16];
    let dst = dst.as_mut_ptr();
    for (i, (s, m)) in sums.iter_mut().zip(masks).enumerate() {
        // SAFETY: lanes under the mask lie inside `dst`, by the contract.
        unsafe {
            let at = dst.wrapping_add(16 * i);
            if add {
                *s = _mm512_add_epi32(*s, _mm512_maskz_loadu_epi32(m, at));
            }
            _mm512_mask_storeu_epi32(at, m, *s);
        }
    }
}
