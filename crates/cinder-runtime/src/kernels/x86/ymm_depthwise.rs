//! The 256-bit depthwise kernel that the AVX2, AVX-VNNI and AVX-512 VNNI (ymm) paths
//! share: blocks of 16 channels, two taps' codes interleaved byte by byte within 16 bytes
//! (`vpunpcklbw` / `vpunpckhbw`, channels 0–7 then 8–15) and sign-extended to i16 pairs
//! (`vpmovsxbw`), so the pair layout is the natural channel order; one multiply-add per
//! vector ([`YmmDot`]: `vpmaddwd` + `vpaddd`, or `vpdpwssd`). A block shorter than 16
//! channels goes through stack copies. Each path calls [`depthwise`] from a function
//! compiled with its own target features.

use std::arch::x86_64::*;

use crate::kernels::depthwise::{DepthwiseJob, MAX_BLOCK, TapSource};
use crate::kernels::pack::WidePairRow;
use crate::kernels::x86::ymm::YmmDot;

/// Channels per block.
const WIDTH: usize = 16;
const _: () = assert!(WIDTH <= MAX_BLOCK, "a tap source holds MAX_BLOCK codes");

/// The depthwise sums of a job.
///
/// # Safety
/// AVX2 and `D`'s instruction set must be available; the job's filter must be packed in
/// blocks of 16 channels in natural order.
#[inline(always)]
pub(super) unsafe fn depthwise<D: YmmDot<WidePairRow>>(job: DepthwiseJob<'_>) {
    let filter = job.filter;
    debug_assert_eq!(filter.width, WIDTH);
    let c = job.shape.input[2];
    let minus_zp = -i32::from(job.zp_in);
    // SAFETY (whole body): the instruction sets by the contract; a tap source holds
    // `width` codes from `c0` ([`TapSource::at`]), 32 i16 per weight row, 16 i32 start
    // factors per block.
    job.for_each_pass(
        #[inline(always)]
        |sums, taps, first_pair| unsafe {
            for (block, c0) in (0..c).step_by(WIDTH).enumerate() {
                let width = (c - c0).min(WIDTH);
                let weights = filter.rows(block, first_pair..first_pair + taps.len() / 2);
                let mut acc = [_mm256_setzero_si256(); 2];
                for (pair, w) in taps.chunks_exact(2).zip(weights.chunks_exact(2 * WIDTH)) {
                    let (x0, x1) = (load(pair[0], c0, width), load(pair[1], c0, width));
                    let lo = _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x0, x1));
                    let hi = _mm256_cvtepi8_epi16(_mm_unpackhi_epi8(x0, x1));
                    let w = w.as_ptr().cast::<__m256i>();
                    acc[0] = D::dot(acc[0], lo, _mm256_loadu_si256(w));
                    acc[1] = D::dot(acc[1], hi, _mm256_loadu_si256(w.add(1)));
                }
                if first_pair == 0 {
                    let start = filter.sums(block).as_ptr().cast::<__m256i>();
                    for (i, a) in acc.iter_mut().enumerate() {
                        let factors = _mm256_loadu_si256(start.add(i));
                        let minus_zp = _mm256_set1_epi32(minus_zp);
                        *a = _mm256_add_epi32(*a, _mm256_mullo_epi32(factors, minus_zp));
                    }
                }
                store(acc, &mut sums[c0..c0 + width], first_pair > 0);
            }
        },
    );
}

/// 16 codes of `tap` from channel `c0` (fewer, `width`, through a stack copy, the rest 0).
///
/// # Safety
/// AVX2 must be available; the tap holds `width` codes from `c0`.
#[inline(always)]
unsafe fn load(tap: TapSource, c0: usize, width: usize) -> __m128i {
    let src = tap.at(c0);
    // SAFETY: `width` readable codes by the contract; AVX2 by the contract.
    unsafe {
        if width == WIDTH {
            return _mm_loadu_si128(src.cast());
        }
        let mut copy = [0i8; WIDTH];
        copy[..width].copy_from_slice(std::slice::from_raw_parts(src, width));
        _mm_loadu_si128(copy.as_ptr().cast())
    }
}
/// Writes (or adds, wrapping) the block's sums `acc` to `dst` (16 values or fewer).
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn store(acc: [__m256i; 2], dst: &mut [i32], add: bool) {
    if dst.len() == WIDTH && !add {
        // SAFETY: 16 i32; AVX2 by the contract.
        unsafe {
            let ptr = dst.as_mut_ptr().cast::<__m256i>();
            _mm256_storeu_si256(ptr, acc[0]);
            _mm256_storeu_si256(ptr.add(1), acc[1]);
        }
        return;
    }
    let mut block = [0i32; WIDTH];
    // SAFETY: 16 i32; AVX2 by the contract.
    unsafe {
        let ptr = block.as_mut_ptr().cast::<__m256i>();
        _mm256_storeu_si256(ptr, acc[0]);
        _mm256_storeu_si256(ptr.add(1), acc[1]);
    }
    if add {
        dst.iter_mut()
            .zip(block)
            .for_each(|(d, v)| *d = d.wrapping_add(v));
    } else {
        dst.copy_from_slice(&block[..dst.len()]);
    }
}
