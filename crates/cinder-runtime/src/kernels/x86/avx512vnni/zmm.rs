//! The zmm micro-kernel of the AVX-512 VNNI path: `R` rows × 16 columns, one zmm
//! accumulator a row in each of two chains (even and odd panel rows, so that even a
//! one-row tile, the GEMV, keeps two `vpdpbusd` in flight), summed at the end. Per panel
//! row, the 16 columns' groups are one aligned 64-byte load and each A row's 32-bit group
//! is broadcast: `vpdpbusd` for i8 weight quads (u8 activations), `vpdpwssd` for
//! Winograd's i16 filter pairs. Where two whole panels sit side by side, the wide tile
//! (`R` rows × 32 columns, `R >= 3`, one accumulator chain per row and panel) computes
//! both with each broadcast A group: per depth group 2 panel loads, `R` broadcasts and
//! `2R` multiply-adds instead of 2 loads, `2R` broadcasts and `2R` multiply-adds.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::pack::{NR, PanelRow, QuadRow, WidePairRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile, two_tiles};

/// A 64-byte panel row, aligned to 64, and its multiply-add.
pub(super) trait ZmmPanel: PanelRow {
    /// The row as one vector.
    ///
    /// # Safety
    /// AVX-512 F must be available.
    #[inline(always)]
    unsafe fn load(&self) -> __m512i {
        const { assert!(size_of::<Self>() == 64 && align_of::<Self>() == 64) };
        // SAFETY: 64 bytes aligned to 64 (checked above); AVX-512 F by the contract.
        unsafe { _mm512_load_si512(std::ptr::from_ref(self).cast()) }
    }

    /// `acc + Σ a·b` over each i32 lane's group.
    ///
    /// # Safety
    /// AVX-512 VNNI must be available.
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i;
}

impl ZmmPanel for QuadRow {
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512 VNNI by the caller's contract.
        unsafe { _mm512_dpbusd_epi32(acc, a, b) }
    }
}

impl ZmmPanel for WidePairRow {
    #[inline(always)]
    unsafe fn dot(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        // SAFETY: AVX-512 VNNI by the caller's contract.
        unsafe { _mm512_dpwssd_epi32(acc, a, b) }
    }
}

impl<P: ZmmPanel> MicroKernel<P> for Avx512Vnni {
    /// 8 rows in two chains: 16 accumulator registers of the 32.
    const ROWS: usize = 8;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, P::Lhs>, panel: &[P], out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        // SAFETY: `self` proves AVX-512 VNNI support; `check_tile` bounds every access.
        unsafe { tile_zmm::<R, P>(a, panel, out) }
    }

    /// From 3 rows, `R × 32` in `2R` accumulators, each broadcast A group feeding both
    /// panels; 1 or 2 rows take two single tiles, whose two chains a row keep more
    /// multiply-adds in flight than the wide tile's `2R`.
    #[inline(always)]
    fn tile_wide<const R: usize>(
        self,
        a: Rows<'_, P::Lhs>,
        panels: [&[P]; 2],
        starts: [Option<&[i32; NR]>; 2],
        out: TileOut<'_>,
    ) {
        if R <= 2 {
            return two_tiles::<R, P, Self>(self, a, panels, starts, out);
        }
        check_tile(R, a, panels[0], &out);
        assert!(panels[1].len() == panels[0].len() && out.c.len() >= (R - 1) * out.ldc + 2 * NR);
        // SAFETY: `self` proves AVX-512 VNNI support; the checks above bound every access.
        unsafe { tile_wide_zmm::<R, P>(a, panels, starts, out) }
    }
}

/// An `R × 32` tile over two panels.
///
/// # Safety
/// AVX-512 F and VNNI must be available and the slices sized as
/// [`MicroKernel::tile_wide`] requires.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_wide_zmm<const R: usize, P: ZmmPanel>(
    a: Rows<'_, P::Lhs>,
    [left, right]: [&[P]; 2],
    starts: [Option<&[i32; NR]>; 2],
    out: TileOut<'_>,
) {
    // SAFETY (whole body): the instruction sets by the contract; the start values are 16
    // i32; the caller's checks bound the reads of `a` (`r < R`, `p < left.len()`), of
    // `right` (as long as `left`) and the tile's rows `c[r * ldc .. r * ldc + 32]`.
    unsafe {
        let start = |s: Option<&[i32; NR]>| match s {
            Some(s) => _mm512_loadu_si512(s.as_ptr().cast()),
            None => _mm512_setzero_si512(),
        };
        let (mut lo, mut hi) = ([start(starts[0]); R], [start(starts[1]); R]);
        for p in 0..left.len() {
            let (b0, b1) = (left.get_unchecked(p).load(), right.get_unchecked(p).load());
            for r in 0..R {
                let av = _mm512_set1_epi32(a.group(r, p));
                lo[r] = P::dot(lo[r], av, b0);
                hi[r] = P::dot(hi[r], av, b1);
            }
        }
        let c = out.c.as_mut_ptr();
        for r in 0..R {
            let dst = c.add(r * out.ldc);
            for (half, sum) in [lo[r], hi[r]].into_iter().enumerate() {
                let at = dst.add(half * NR).cast();
                let sum = match out.accumulate {
                    true => _mm512_add_epi32(sum, _mm512_loadu_si512(at)),
                    false => sum,
                };
                _mm512_storeu_si512(at, sum);
            }
        }
    }
}

/// An `R × 16` tile.
///
/// # Safety
/// AVX-512 F and VNNI must be available and the slices sized as [`check_tile`] checks.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_zmm<const R: usize, P: ZmmPanel>(
    a: Rows<'_, P::Lhs>,
    panel: &[P],
    out: TileOut<'_>,
) {
    // SAFETY (whole body): the instruction sets by the contract; the start values are 16
    // i32; `check_tile` bounds the reads of `a` (`r < R`, `p < panel.len()`) and the
    // tile's rows `c[r * ldc .. r * ldc + 16]`.
    unsafe {
        let start = match out.start {
            Some(s) => _mm512_loadu_si512(s.as_ptr().cast()),
            None => _mm512_setzero_si512(),
        };
        let (mut even, mut odd) = ([start; R], [_mm512_setzero_si512(); R]);
        let pairs = panel.chunks_exact(2);
        let last = pairs.remainder();
        for (i, two) in pairs.enumerate() {
            let (b0, b1) = (two[0].load(), two[1].load());
            for r in 0..R {
                even[r] = P::dot(even[r], _mm512_set1_epi32(a.group(r, 2 * i)), b0);
                odd[r] = P::dot(odd[r], _mm512_set1_epi32(a.group(r, 2 * i + 1)), b1);
            }
        }
        if let [row] = last {
            let (b, p) = (row.load(), panel.len() - 1);
            for (r, acc) in even.iter_mut().enumerate() {
                *acc = P::dot(*acc, _mm512_set1_epi32(a.group(r, p)), b);
            }
        }
        let c = out.c.as_mut_ptr();
        for r in 0..R {
            let dst = c.add(r * out.ldc);
            let mut sum = _mm512_add_epi32(even[r], odd[r]);
            if out.accumulate {
                sum = _mm512_add_epi32(sum, _mm512_loadu_si512(dst.cast()));
            }
            _mm512_storeu_si512(dst.cast(), sum);
        }
    }
}

const _: () = assert!(NR == 16, "the zmm tile computes 16 columns");
