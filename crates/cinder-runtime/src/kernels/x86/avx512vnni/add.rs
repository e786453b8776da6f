//! The residual `Add` on zmm ([`crate::kernels::AddTable::add`]): 8 elements per vector
//! in 64-bit lanes, each operand rescaled exactly as `RequantMultiplier::apply_fraction`
//! (`vpmuldq`, shifts), the sum rounded once (`vpsraq`), then the output's zero point and
//! clamp, narrowed to bytes (`vpmovqb`).

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::rescale::{AddLanes, Term};

impl Avx512Vnni {
    /// `out[i]` = the `Add` of `x[i]` and `y[i]`, all three of one length, a multiple of 8.
    pub(in crate::kernels) fn add_s8(self, lanes: &AddLanes, x: &[i8], y: &[i8], out: &mut [i8]) {
        assert!(
            x.len() == out.len() && y.len() == out.len() && out.len().is_multiple_of(8),
            "add: operands of {}, {} and {} values",
            x.len(),
            y.len(),
            out.len()
        );
        // SAFETY: the token proves AVX-512 F; the lengths are checked above.
        unsafe { add_zmm(lanes, x, y, out) }
    }
}

/// One operand's term in registers.
#[derive(Clone, Copy)]
struct TermLanes {
    zero_point: __m512i,
    multiplier: __m512i,
    left: __m128i,
    round: __m512i,
    right: __m128i,
}

impl TermLanes {
    #[target_feature(enable = "avx512f")]
    fn new(t: &Term) -> Self {
        Self {
            zero_point: _mm512_set1_epi64(i64::from(t.zero_point)),
            multiplier: _mm512_set1_epi64(i64::from(t.multiplier)),
            left: _mm_cvtsi64_si128(i64::from(t.left)),
            round: _mm512_set1_epi64(t.round),
            right: _mm_cvtsi64_si128(i64::from(t.right)),
        }
    }

    /// The terms of 8 codes (sign-extended to i64): `q - zp` fits 9 bits, so `vpmuldq`'s
    /// signed 32-bit product is exact.
    #[target_feature(enable = "avx512f")]
    fn apply(&self, q: __m512i) -> __m512i {
        let product = _mm512_mul_epi32(_mm512_sub_epi64(q, self.zero_point), self.multiplier);
        let scaled = _mm512_add_epi64(_mm512_sll_epi64(product, self.left), self.round);
        _mm512_sra_epi64(scaled, self.right)
    }
}

/// [`Avx512Vnni::add_s8`].
///
/// # Safety
/// AVX-512 F must be available; `x`, `y` and `out` of one length, a multiple of 8.
#[target_feature(enable = "avx512f")]
unsafe fn add_zmm(lanes: &AddLanes, x: &[i8], y: &[i8], out: &mut [i8]) {
    let [a, b] = lanes.terms.map(|t| TermLanes::new(&t));
    let half = _mm512_set1_epi64(1 << 31);
    let fraction = _mm_cvtsi64_si128(32);
    let c = &lanes.clamp;
    let (zp, lo, hi) = (
        _mm512_set1_epi64(i64::from(c.zero_point)),
        _mm512_set1_epi64(i64::from(c.lo)),
        _mm512_set1_epi64(i64::from(c.hi)),
    );
    for i in (0..out.len()).step_by(8) {
        // SAFETY: `i + 8 <= len` for all three slices (the caller's contract).
        unsafe {
            let load = |s: &[i8]| _mm512_cvtepi8_epi64(_mm_loadl_epi64(s.as_ptr().add(i).cast()));
            let sum = _mm512_add_epi64(a.apply(load(x)), b.apply(load(y)));
            // `round_sum`: the sums lie within 2^61, so neither it nor the i32 clamp bites.
            let v = _mm512_sra_epi64(_mm512_add_epi64(sum, half), fraction);
            let v = _mm512_min_epi64(_mm512_max_epi64(_mm512_add_epi64(v, zp), lo), hi);
            _mm_storel_epi64(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi64_epi8(v));
        }
    }
}
