//! The zmm micro-kernel of the AVX-512 VNNI path: `R` rows × 16 columns, one zmm
//! accumulator a row in each of two chains (even and odd panel rows, so that even a
//! one-row tile, the GEMV, keeps two `vpdpbusd` in flight), summed at the end. Per panel
//! row, the 16 columns' groups are one aligned 64-byte load and each A row's 32-bit group
//! is broadcast: `vpdpbusd` for i8 weight quads (u8 activations), `vpdpwssd` for
//! Winograd's i16 filter pairs.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::pack::{NR, PanelRow, QuadRow, WidePairRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};

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
