//! The 256-bit micro-kernel tile that the AVX2 and the 256-bit VNNI paths share: `R`
//! rows × 16 columns in `2R` ymm accumulators; per panel row, the 16 columns' groups in
//! two vectors, each A row's 32-bit group broadcast, one multiply-add instruction per
//! vector ([`YmmDot`]: `vpmaddwd` + `vpaddd` on AVX2, `vpdpbusd` on VNNI). Each path
//! calls [`tile`] from a function compiled with its own target features.

use std::arch::x86_64::*;

use crate::kernels::pack::{NR, PairRow, PanelRow, QuadRow, WidePairRow};
use crate::kernels::tile::{Rows, TileOut};

/// A panel row as two vectors: columns 0–7 in the first, 8–15 in the second, each
/// column's group in one i32 lane.
pub(super) trait YmmPanel: PanelRow {
    /// # Safety
    /// AVX2 must be available.
    unsafe fn halves(&self) -> (__m256i, __m256i);
}

impl YmmPanel for PairRow {
    /// Sign-extends the i8 weight pairs to i16 pairs (`vpmovsxbw`).
    #[inline(always)]
    unsafe fn halves(&self) -> (__m256i, __m256i) {
        // SAFETY: a `PairRow` is 32 bytes: two 16-byte loads stay inside it; AVX2 by the
        // caller's contract.
        unsafe {
            let ptr = self.0.as_ptr().cast::<__m128i>();
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(ptr)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(ptr.add(1))),
            )
        }
    }
}

impl YmmPanel for WidePairRow {
    /// The i16 weights as they are.
    #[inline(always)]
    unsafe fn halves(&self) -> (__m256i, __m256i) {
        // SAFETY: AVX2 by the caller's contract.
        unsafe { aligned_halves(self) }
    }
}

impl YmmPanel for QuadRow {
    /// The i8 quads as they are.
    #[inline(always)]
    unsafe fn halves(&self) -> (__m256i, __m256i) {
        // SAFETY: AVX2 by the caller's contract.
        unsafe { aligned_halves(self) }
    }
}

/// A 64-byte row aligned to 64 as two aligned 32-byte loads.
///
/// # Safety
/// AVX2 must be available.
#[inline(always)]
unsafe fn aligned_halves<P>(row: &P) -> (__m256i, __m256i) {
    const { assert!(size_of::<P>() == 64 && align_of::<P>() == 64) };
    // SAFETY: 64 bytes aligned to 64 (checked above); AVX2 by the contract.
    unsafe {
        let ptr = std::ptr::from_ref(row).cast::<__m256i>();
        (_mm256_load_si256(ptr), _mm256_load_si256(ptr.add(1)))
    }
}

/// `acc + Σ a·b` over each i32 lane's group: the multiply-add of a path.
pub(super) trait YmmDot<P: YmmPanel>: Copy {
    /// # Safety
    /// The path's instruction set must be available.
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// An `R × 16` tile.
///
/// # Safety
/// AVX2 and `D`'s instruction set must be available, and the slices sized as
/// [`crate::kernels::tile::check_tile`] checks.
#[inline(always)]
pub(super) unsafe fn tile<const R: usize, P: YmmPanel, D: YmmDot<P>>(
    a: Rows<'_, P::Lhs>,
    panel: &[P],
    out: TileOut<'_>,
) {
    // SAFETY (whole body): the instruction sets by the contract; the start values are 16
    // i32; `check_tile` bounds the reads of `a` (`r < R`, `p < panel.len()`) and the
    // tile's rows `c[r * ldc .. r * ldc + 16]`.
    unsafe {
        let start = match out.start {
            Some(s) => {
                let ptr = s.as_ptr().cast::<__m256i>();
                [_mm256_loadu_si256(ptr), _mm256_loadu_si256(ptr.add(1))]
            }
            None => [_mm256_setzero_si256(); 2],
        };
        let mut acc = [start; R];
        for (p, row) in panel.iter().enumerate() {
            let (b0, b1) = row.halves();
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(a.group(r, p));
                acc_r[0] = D::dot(acc_r[0], av, b0);
                acc_r[1] = D::dot(acc_r[1], av, b1);
            }
        }
        let c = out.c.as_mut_ptr();
        for (r, acc_r) in acc.iter().enumerate() {
            let dst = c.add(r * out.ldc).cast::<__m256i>();
            let (mut lo, mut hi) = (acc_r[0], acc_r[1]);
            if out.accumulate {
                lo = _mm256_add_epi32(lo, _mm256_loadu_si256(dst));
                hi = _mm256_add_epi32(hi, _mm256_loadu_si256(dst.add(1)));
            }
            _mm256_storeu_si256(dst, lo);
            _mm256_storeu_si256(dst.add(1), hi);
        }
    }
}

const _: () = assert!(NR == 16, "the ymm tile computes 16 columns");
