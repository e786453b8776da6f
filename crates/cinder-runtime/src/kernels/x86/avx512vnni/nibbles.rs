//! The 4-bit-weight GEMV on zmm ([`crate::kernels::gemv_s4`]): per panel row one load of
//! 16 columns × 8 depths, two `vpand`s and two `vpdpbusd` with the nibbles as the
//! unsigned operand (see [`crate::kernels::nibbles`] for the layout and the bounds).

use std::arch::x86_64::*;
use std::ops::Range;

use super::Avx512Vnni;
use crate::kernels::nibbles::{NIBBLE_DEPTH, NibbleRow, PackedNibbles, by_panels};
use crate::kernels::pack::NR;

impl Avx512Vnni {
    /// [`crate::kernels::gemv_s4`]; operands checked by the caller (`a` holds exactly the
    /// depth, `a_sum` is its sum).
    pub(in crate::kernels) fn gemv_s4(
        self,
        a: &[i8],
        a_sum: i32,
        b: &PackedNibbles,
        cols: Range<usize>,
        c: &mut [i32],
    ) {
        by_panels(a, b, cols, c, |whole, tail, panel| {
            // SAFETY: the token proves the features; `by_panels` passes a panel with a row
            // per 8 codes of `whole`, plus one for `tail` when the depth has a partial row.
            unsafe { panel_sums(whole, tail, panel, a_sum) }
        });
    }
}

/// The 16 sums of one panel: `whole` holds 8 activation codes per whole row (the first
/// `whole.len() / 8` rows of `panel`), `tail` those of the partial last row, if any.
///
/// # Safety
/// AVX-512 F, BW and VNNI must be available; `panel` has `whole.len() / 8` rows, plus one
/// when the depth has a partial last row.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn panel_sums(whole: &[i8], tail: &[i8; 8], panel: &[NibbleRow], a_sum: i32) -> [i32; NR] {
    let (low, high) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0xf0_u8 as i8));
    let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
    // A partial last row of depths has a panel row more than `whole` has codes for.
    let codes = whole.chunks_exact(NIBBLE_DEPTH).chain([&tail[..]]);
    for (row, codes) in panel.iter().zip(codes) {
        // SAFETY: a row is 64 bytes aligned to 64; `codes` holds 8 values.
        unsafe {
            let v = _mm512_load_si512(row.0.as_ptr().cast());
            let group = |at: usize| codes.as_ptr().add(at).cast::<i32>().read_unaligned();
            lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(v, low), _mm512_set1_epi32(group(0)));
            hi = _mm512_dpbusd_epi32(hi, _mm512_and_si512(v, high), _mm512_set1_epi32(group(4)));
        }
    }
    // `hi` holds 16 Σ u·a exactly: the arithmetic shift divides it exactly.
    let sums = _mm512_add_epi32(lo, _mm512_srai_epi32(hi, 4));
    let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(8 * a_sum));
    let mut out = [0i32; NR];
    // SAFETY: `out` holds 16 i32.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), sums) };
    out
}
