//! The 4-bit-weight GEMV on 256 bits that the AVX-VNNI path and AVX-512 VNNI's ymm path
//! share ([`crate::kernels::gemv_s4`]): a 64-byte panel row (16 columns × 8 depths) as two
//! loads of 8 columns, each unpacked by two `vpand`s into the low and the high nibbles,
//! the unsigned operand of the path's `vpdpbusd` ([`YmmDot`]) against the broadcast
//! activation codes (see [`crate::kernels::nibbles`] for the layout and the bounds).

use std::arch::x86_64::*;

use crate::kernels::nibbles::{NIBBLE_DEPTH, NibbleRow};
use crate::kernels::pack::{NR, QuadRow};
use crate::kernels::x86::ymm::YmmDot;

/// The 16 sums of one panel: `whole` holds 8 activation codes per whole row (the first
/// `whole.len() / 8` rows of `panel`), `tail` those of the partial last row, if any.
///
/// # Safety
/// AVX2 and `D`'s instruction set must be available; `panel` has `whole.len() / 8` rows,
/// plus one when the depth has a partial last row.
#[inline(always)]
pub(super) unsafe fn panel_sums<D: YmmDot<QuadRow>>(
    whole: &[i8],
    tail: &[i8; NIBBLE_DEPTH],
    panel: &[NibbleRow],
    a_sum: i32,
) -> [i32; NR] {
    // SAFETY (whole body): the instruction sets by the caller's contract; a row is 64
    // bytes aligned to 64, `codes` holds 8 values and `out` 16 i32 (two vectors of 8).
    unsafe {
        let (low, high) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0xf0_u8 as i8));
        // Columns 0-7 and 8-15, low and high nibbles.
        let mut lo = [_mm256_setzero_si256(); 2];
        let mut hi = [_mm256_setzero_si256(); 2];
        // A partial last row of depths has a panel row more than `whole` has codes for.
        let codes = whole.chunks_exact(NIBBLE_DEPTH).chain([&tail[..]]);
        for (row, codes) in panel.iter().zip(codes) {
            let ptr = row.0.as_ptr().cast::<__m256i>();
            let group = |at: usize| codes.as_ptr().add(at).cast::<i32>().read_unaligned();
            let (a_lo, a_hi) = (_mm256_set1_epi32(group(0)), _mm256_set1_epi32(group(4)));
            for half in 0..2 {
                let v = _mm256_load_si256(ptr.add(half));
                lo[half] = D::dot(lo[half], _mm256_and_si256(v, low), a_lo);
                hi[half] = D::dot(hi[half], _mm256_and_si256(v, high), a_hi);
            }
        }
        let offset = _mm256_set1_epi32(8 * a_sum);
        let mut out = [0i32; NR];
        for half in 0..2 {
            // `hi` holds 16 Σ u·a exactly: the arithmetic shift divides it exactly.
            let sums = _mm256_add_epi32(lo[half], _mm256_srai_epi32(hi[half], 4));
            let sums = _mm256_sub_epi32(sums, offset);
            _mm256_storeu_si256(out.as_mut_ptr().add(8 * half).cast(), sums);
        }
        out
    }
}
