//! The AVX-512 VNNI path: the int8 GEMM (`vpdpbusd`, u8 activations `code + 128` × i8
//! weight quads) and Winograd's i16 GEMMs (`vpdpwssd`) on zmm tiles ([`zmm`]), the
//! depthwise kernel on zmm ([`depthwise`], `vpdpwssd` on tap pairs), the direct
//! convolution ([`direct`], `vpdpbusd` on window quads), the GEMV of
//! 4-bit weights ([`nibbles`]), the output stage on zmm ([`requantize`]), the residual
//! `Add` in 64-bit lanes ([`add`]), and the int8
//! GEMM, the depthwise kernel and the 4-bit GEMV on ymm in the EVEX encoding
//! ([`Avx512VnniYmm`]); everything else runs on AVX2.

mod add;
mod depthwise;
mod direct;
mod nibbles;
mod requantize;
mod zmm;

use std::arch::x86_64::*;

use crate::kernels::isa::Isa;
use crate::kernels::pack::{QuadRow, WidePairRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};
use crate::kernels::x86::ymm::{self, YmmDot};

token!(
    /// Proof that the running CPU supports AVX2 and AVX-512 F, BW, VL and VNNI.
    Avx512Vnni,
    ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"]
);

/// The 256-bit int8 micro-kernel in the EVEX encoding (`vpdpbusd` ymm, AVX512-VL): the
/// tile of [`crate::kernels::x86::AvxVnni`], with 32 vector registers.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Avx512VnniYmm(());

impl Avx512Vnni {
    /// The 256-bit kernel's token.
    pub(in crate::kernels) fn ymm(self) -> Avx512VnniYmm {
        Avx512VnniYmm(())
    }
}

impl YmmDot<QuadRow> for Avx512VnniYmm {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL by the caller's contract.
        unsafe { _mm256_dpbusd_epi32(acc, a, b) }
    }
}

impl MicroKernel<QuadRow> for Avx512VnniYmm {
    /// 8 × 16 i32: 16 accumulator registers of the 32 that EVEX code has.
    const ROWS: usize = 8;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, u8>, panel: &[QuadRow], out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        // SAFETY: `self` proves AVX-512 VNNI support; `check_tile` bounds every access.
        unsafe { tile_ymm::<R>(a, panel, out) }
    }
}

/// [`ymm::tile`] compiled with AVX-512 VNNI and VL.
///
/// # Safety
/// The token's features must be available and the slices sized as [`check_tile`] checks.
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_ymm<const R: usize>(a: Rows<'_, u8>, panel: &[QuadRow], out: TileOut<'_>) {
    // SAFETY: this function's contract.
    unsafe { ymm::tile::<R, QuadRow, Avx512VnniYmm>(a, panel, out) }
}

impl YmmDot<WidePairRow> for Avx512VnniYmm {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL by the caller's contract.
        unsafe { _mm256_dpwssd_epi32(acc, a, b) }
    }
}

ymm_depthwise!(
    Avx512VnniYmm,
    Avx512VnniYmm,
    Isa::Avx512VnniYmm,
    "avx2,avx512f,avx512vl,avx512vnni"
);

ymm_nibbles!(Avx512VnniYmm, "avx2,avx512f,avx512vl,avx512vnni");
