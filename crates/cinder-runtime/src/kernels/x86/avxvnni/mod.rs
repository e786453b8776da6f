//! The AVX-VNNI path (VEX encoding, ymm): the int8 GEMM on the shared 256-bit tile,
//! u8 activations (`code + 128`) × i8 weight quads (`vpdpbusd`), the shared 256-bit
//! depthwise kernel on i16 tap pairs (`vpdpwssd`) and the shared 256-bit GEMV of 4-bit
//! weights (`vpdpbusd`); everything else runs on AVX2.

use std::arch::x86_64::*;

use crate::kernels::isa::Isa;
use crate::kernels::pack::{QuadRow, WidePairRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};
use crate::kernels::x86::ymm::{self, YmmDot};

token!(
    /// Proof that the running CPU supports AVX2 and AVX-VNNI.
    AvxVnni,
    ["avx2", "avxvnni"]
);

impl YmmDot<QuadRow> for AvxVnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI by the caller's contract.
        unsafe { _mm256_dpbusd_avx_epi32(acc, a, b) }
    }
}

impl MicroKernel<QuadRow> for AvxVnni {
    /// 6 × 16 i32: 12 accumulator registers of the 16 that VEX code has.
    const ROWS: usize = 6;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, u8>, panel: &[QuadRow], out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        // SAFETY: `self` proves AVX-VNNI support; `check_tile` bounds every access.
        unsafe { tile_avxvnni::<R>(a, panel, out) }
    }
}

/// [`ymm::tile`] compiled with AVX-VNNI.
///
/// # Safety
/// AVX2 and AVX-VNNI must be available and the slices sized as [`check_tile`] checks.
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
unsafe fn tile_avxvnni<const R: usize>(a: Rows<'_, u8>, panel: &[QuadRow], out: TileOut<'_>) {
    // SAFETY: this function's contract.
    unsafe { ymm::tile::<R, QuadRow, AvxVnni>(a, panel, out) }
}

impl YmmDot<WidePairRow> for AvxVnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI by the caller's contract.
        unsafe { _mm256_dpwssd_avx_epi32(acc, a, b) }
    }
}

ymm_depthwise!(AvxVnni, AvxVnni, Isa::AvxVnni, "avx2,avxvnni");

ymm_nibbles!(AvxVnni, "avx2,avxvnni");
