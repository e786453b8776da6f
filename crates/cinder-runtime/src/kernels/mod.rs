//! Compute kernels of the runtime: int8 GEMM, output stage, im2col, max-pool (of
//! codes, or of a convolution's sums, fused before its output stage),
//! and exact integer Winograd F(2×2, 3×3) for 3×3 stride-1 convolutions ([`winograd`]:
//! input transform, 16 i16 GEMMs, output transform; its exactness and overflow bounds are
//! argued there); and the f32 GEMM of float layers (`sgemm`), which sums in the
//! reference interpreter's order.
//!
//! Kernels only accumulate; bias, zero points, requantization and clamping are the output
//! stage ([`requantize_s8`]), applied once per output row or block of rows. (Winograd's
//! transforms subtract the zero points of input and weights themselves.)
//!
//! # Exactness without VNNI
//! The GEMM widens both operands to i16 (`vpmovsxbw`) and multiplies with `vpmaddwd`,
//! which adds two i16 × i16 products into an i32 lane: every product and pair sum is
//! exact, so the result equals the plain i32 sum bit for bit (no 16-bit saturation as with
//! a bare `vpmaddubsw`). The sign trick (`vpmaddubsw(|a|, sign(b, a))`, then `vpmaddwd`
//! by ones) is exact too but needs as many multiplies per product plus a `vpsignb` and an
//! `vpabsb`. Measured side by side with the same blocking (6×16 and 4×16 tiles), the
//! widening kernel was 7–15% faster on conv2 and fc1 at batch 64 (the bulk of the model's
//! work) and within noise on conv1 and the fc1 GEMV, so it is the only one kept. Winograd's
//! GEMMs run the same micro-kernel on operands that are i16 already.
//!
//! # Blocking
//! Weights are packed once ([`PackedMatrix`]): panels of [`NR`] = 16 output columns, depth
//! in pairs. Rows of A are widened into a stack buffer per block of rows and depth; the
//! micro-kernel computes [`MR`] × 16 tiles (12 accumulator registers). No allocation on
//! the hot path. [`gemm_s8`] is single-threaded (the engine splits the batch);
//! [`par_gemm_s8`] and [`gemm_s8_cols`] split rows or column panels across threads.
//!
//! # Dispatch
//! Every public kernel checks for AVX2 at run time (`is_x86_feature_detected!`, cached)
//! and otherwise runs portable code that also builds on non-x86 targets. [`mod@reference`]
//! holds plain scalar versions of every kernel; proptests compare both paths to it bit
//! for bit.

mod conv;
mod depthwise;
mod float;
mod gemm;
mod im2col;
mod output;
mod pack;
mod pool;
pub mod reference;
mod rescale;
pub(crate) mod sgemm;
#[cfg(test)]
mod tests;
mod window;
pub mod winograd;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use conv::{im2col_nhwc_s8, max_pool2d_nhwc_s8, max_pool2x2_s32, out_dim};
pub use depthwise::{depthwise_nhwc_s8, depthwise_reference};
pub(crate) use float::{im2col_f32, max_pool2x2_f32, quantize_f32_s8};
pub use gemm::{MR, gemm_s8, gemm_s8_cols, par_gemm_s8};
pub use im2col::im2col_window_s8;
pub use output::{OutputStage, requantize_s8, requantize_s8_rows, row_sums_s8};
pub use pack::{MAX_DEPTH, NR, PackedMatrix};
pub use pool::{avg_pool_nhwc_s8, div_round_even, max_pool_nhwc_s8, pool_reference};
pub use rescale::{Clamp, Rescale, add_s8, rescale_s8};
pub use window::NhwcWindow;
pub use winograd::{
    MAX_WINOGRAD_CHANNELS, WINOGRAD_POSITIONS, WinogradFilter, WinogradGeometry,
    winograd_input_tiles, winograd_multiply, winograd_output_tiles, winograd_products_stride,
};

/// Invalid operands given to a kernel constructor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The weight slice does not hold `rows × depth` values.
    #[error("packed matrix: expected {rows} rows x {depth} depth = {expected} weights, got {got}")]
    WrongLength {
        rows: usize,
        depth: usize,
        expected: usize,
        got: usize,
    },
    /// A weight is -128: the kernels need weights in [-127, 127] (symmetric range).
    #[error("packed matrix: weight at row {row}, depth {col} is -128, expected [-127, 127]")]
    WeightOutOfRange { row: usize, col: usize },
    /// The depth is so large that an i32 accumulator could overflow.
    #[error("packed matrix: depth {depth} exceeds {max} (i32 accumulators could overflow)")]
    DepthTooLarge { depth: usize, max: usize },
    /// So many input channels that a Winograd sum could overflow i32.
    #[error("winograd filter: {channels} input channels exceed {max} (i32 sums could overflow)")]
    TooManyChannels { channels: usize, max: usize },
    /// A weight minus its zero point is outside the range Winograd's bounds assume.
    #[error(
        "winograd filter: weight at row {row}, depth {col} is {value} from its zero point, expected at most 255"
    )]
    CenteredWeightOutOfRange { row: usize, col: usize, value: i64 },
}

/// Portable work that the compiler vectorizes: [`dispatch`] compiles it a second time with
/// AVX2 on x86_64 and picks the version at run time. Implementations mark `run`
/// `#[inline(always)]`, so that it is inlined into (and compiled with the features of)
/// the AVX2 entry point.
trait Vectorizable {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `work`, compiled with AVX2 when the CPU has it.
fn dispatch<V: Vectorizable>(work: V) -> V::Output {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = Avx2::detect() {
        return x86::vectorized(token, work);
    }
    work.run()
}

/// Proof that the running CPU supports AVX2. Code in this module tree creates one only
/// through [`Avx2::detect`]; every AVX2 entry point takes one.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// `Some` when AVX2 is available (the check is cached by the standard library).
    fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Self(()))
    }
}
