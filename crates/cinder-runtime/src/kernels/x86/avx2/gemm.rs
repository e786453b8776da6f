//! The AVX2 micro-kernel: both operands as i16, `vpmaddwd` adds two exact i16 × i16
//! products into each i32 lane (no 16-bit saturation as with a bare `vpmaddubsw`), for
//! i8 weight pairs (widened with `vpmovsxbw`) and Winograd's i16 filters alike.

use std::arch::x86_64::*;

use super::Avx2;
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};
use crate::kernels::x86::ymm::{self, YmmDot, YmmPanel};

/// `vpmaddwd` then `vpaddd`.
#[derive(Clone, Copy)]
pub(super) struct Madd;

impl<P: YmmPanel<Lhs = i16>> YmmDot<P> for Madd {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX2 by the caller's contract.
        unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)) }
    }
}

impl<P: YmmPanel<Lhs = i16>> MicroKernel<P> for Avx2 {
    /// 6 × 16 i32: 12 accumulator registers of the 16.
    const ROWS: usize = 6;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, i16>, panel: &[P], out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        // SAFETY: `self` proves AVX2 support; `check_tile` bounds every access.
        unsafe { tile_avx2::<R, P>(a, panel, out) }
    }
}

/// [`ymm::tile`] compiled with AVX2.
///
/// # Safety
/// AVX2 must be available and the slices sized as [`check_tile`] checks.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn tile_avx2<const R: usize, P: YmmPanel<Lhs = i16>>(
    a: Rows<'_, i16>,
    panel: &[P],
    out: TileOut<'_>,
) {
    // SAFETY: this function's contract.
    unsafe { ymm::tile::<R, P, Madd>(a, panel, out) }
}
