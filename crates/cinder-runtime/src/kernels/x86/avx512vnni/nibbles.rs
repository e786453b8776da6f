//! The 4-bit-weight GEMV on zmm ([`crate::kernels::gemv_s4`]): per panel row one load of
//! 16 columns × 8 depths, two `vpand`s and two `vpdpbusd` with the nibbles as the
//! unsigned operand (see [`crate::kernels::nibbles`] for the layout and the bounds).

use std::arch::x86_64::*;
use std::ops::Range;

use super::Avx512Vnni;
use crate::kernels::nibbles::{NIBBLE_DEPTH, NibbleRow, PackedNibbles};
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
        // The last, partial row of depths, padded with zero activations.
        let whole = a.len() / NIBBLE_DEPTH * NIBBLE_DEPTH;
        let mut tail = [0i8; NIBBLE_DEPTH];
        tail[..a.len() - whole].copy_from_slice(&a[whole..]);
        for q in cols.start / NR..cols.end.div_ceil(NR) {
            // SAFETY: as above; `a` holds 8 codes for every whole row of the panel.
            let sums = unsafe { panel_sums(&a[..whole], &tail, b.panel(q), a_sum) };
            let lanes = (q * NR).max(cols.start)..(q * NR + NR).min(cols.end);
            let from = lanes.start - q * NR;
            c[lanes.start - cols.start..][..lanes.len()]
                .copy_from_slice(&sums[from..][..lanes.len()]);
        }
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
    let mut add_row = |row: &NibbleRow, codes: &[i8]| {
        // SAFETY: a row is 64 bytes aligned to 64; `codes` holds 8 values.
        unsafe {
            let v = _mm512_load_si512(row.0.as_ptr().cast());
            let group = |at: usize| codes.as_ptr().add(at).cast::<i32>().read_unaligned();
            lo = _mm512_dpbusd_epi32(lo, _mm512_and_si512(v, low), _mm512_set1_epi32(group(0)));
            hi = _mm512_dpbusd_epi32(hi, _mm512_and_si512(v, high), _mm512_set1_epi32(group(4)));
        }
    };
    let rows = whole.chunks_exact(NIBBLE_DEPTH);
    for (row, codes) in panel.iter().zip(rows) {
        add_row(row, codes);
    }
    if let Some(row) = panel.get(whole.len() / NIBBLE_DEPTH) {
        add_row(row, tail);
    }
    // `hi` holds 16 Σ u·a exactly: the arithmetic shift divides it exactly.
    let sums = _mm512_add_epi32(lo, _mm512_srai_epi32(hi, 4));
    let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(8 * a_sum));
    let mut out = [0i32; NR];
    // SAFETY: `out` holds 16 i32.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), sums) };
    out
}
