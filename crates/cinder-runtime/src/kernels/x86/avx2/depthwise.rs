//! The AVX2 depthwise kernel: the shared 256-bit kernel with `vpmaddwd` + `vpaddd`.

use super::Avx2;
use super::gemm::Madd;

ymm_depthwise!(Avx2, Madd, crate::kernels::isa::Isa::Avx2, "avx2");
