//! The AVX2 path: the i16 pair micro-kernel ([`gemm`]), the output stage
//! ([`requantize`]), the depthwise kernel ([`depthwise`]), and the entry point that
//! compiles portable work with AVX2.

mod depthwise;
mod gemm;
mod requantize;

token!(
    /// Proof that the running CPU supports AVX2.
    Avx2,
    ["avx2"]
);
