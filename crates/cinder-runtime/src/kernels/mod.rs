//! Compute kernels of the runtime: int8 GEMM, output stage, im2col, max-pool (of
//! codes, or of a convolution's sums, fused before its output stage), depthwise
//! convolution ([`depthwise_nhwc_s8`], per-channel multiply-adds along the window), the
//! direct convolution at stride 1 ([`direct_conv_nhwc_s8`], each pixel's window read as
//! `vpdpbusd` quads), and exact integer Winograd F(2×2, 3×3) for 3×3
//! stride-1 convolutions ([`winograd`]: input transform, 16 i16 GEMMs, output transform;
//! its exactness and overflow bounds are argued there); and the f32 GEMM of float layers (`sgemm`), which sums in the
//! reference interpreter's order.
//!
//! Kernels only accumulate; bias, zero points, requantization and clamping are the output
//! stage ([`requantize_s8`]), applied once per output row or block of rows. (Winograd's
//! transforms and the depthwise and direct kernels subtract the zero points themselves.)
//!
//! # Layout and dispatch
//! The instruction-set-neutral parts sit here: packing (`pack`: panels of [`NR`] = 16
//! output columns, the depth in 32-bit groups per column), the micro-kernel contract and
//! blocked driver (`tile`), the output stage's contract ([`OutputStage`]). Each path has
//! its own module beside [`generic`] (the scalar references, the ground truth, and the
//! portable kernels): `x86::avx2`, `x86::avxvnni`, `x86::avx512vnni`. One capability
//! token, [`Isa`], detected once per process ([`Isa::detect`]) and cached, chooses the
//! path of every kernel: the int8 GEMM and the depthwise convolution (when their weights
//! are packed), the output stage, Winograd's GEMMs and transforms, im2col, pooling and
//! the f32 GEMM. The environment
//! variable `CINDER_ISA` ([`ISA_VARIABLE`]: `generic`, `avx2`, `avxvnni`,
//! `avx512vnni-ymm`, `avx512vnni`) caps it, so that tests and benchmarks compare paths on
//! one machine; the kernels take the best path the CPU supports at or below the cap.
//!
//! | path | int8 GEMM | Winograd GEMMs | depthwise | output stage, transforms, f32 GEMM |
//! |---|---|---|---|---|
//! | generic | portable | portable | portable | portable |
//! | avx2 | `vpmaddwd` ymm, 6×16 | `vpmaddwd` ymm | `vpmaddwd` ymm | AVX2 |
//! | avxvnni | `vpdpbusd` ymm (VEX), 6×16 | `vpmaddwd` ymm | `vpdpwssd` ymm (VEX) | AVX2 |
//! | avx512vnni-ymm | `vpdpbusd` ymm (EVEX), 8×16 | `vpmaddwd` ymm | `vpdpwssd` ymm (EVEX) | AVX2 |
//! | avx512vnni | `vpdpbusd` zmm, 8×32 (8×16 at an odd panel) | `vpdpwssd` zmm | `vpdpwssd` zmm | AVX2 |
//!
//! The direct convolution has a SIMD kernel on the avx512vnni path only (`vpdpbusd` zmm
//! on quads of each pixel's window); elsewhere such layers take im2col + GEMM, and its
//! generic kernel is the reference.
//!
//! # Exactness of the AVX2 GEMM
//! It widens both operands to i16 (`vpmovsxbw`) and multiplies with `vpmaddwd`, which
//! adds two i16 × i16 products into an i32 lane: every product and pair sum is exact, so
//! the result equals the plain i32 sum bit for bit (no 16-bit saturation as with a bare
//! `vpmaddubsw`). The sign trick (`vpmaddubsw(|a|, sign(b, a))`, then `vpmaddwd` by ones)
//! is exact too but needs as many multiplies per product plus a `vpsignb` and an `vpabsb`;
//! measured side by side, the widening kernel was 7–15% faster on conv2 and fc1 at batch
//! 64 and within noise elsewhere, so it is the only one kept.
//!
//! # Exactness of the VNNI GEMM
//! `vpdpbusd` multiplies u8 by i8 and adds four products to an i32 lane. Activations `a`
//! (i8) enter as `u = a + 128` (`a ^ 0x80`, in [0, 255]); weights `b` are in [-127, 127].
//! Each product `u · b` lies in [-32385, 32385] and the sum of four in [-129540, 129540],
//! exact in the instruction's 32-bit intermediate; adding it to the lane wraps modulo
//! 2^32 (the non-saturating form, never `vpdpbusds`). The sums start from
//! `-128 · Σ_p b[j][p]`, computed when the weights are packed, so a lane ends at
//! `Σ_p (a + 128) · b - 128 · Σ_p b = Σ_p a · b` modulo 2^32. That sum is bounded by
//! `k · 128 · 127` and `k <= MAX_DEPTH = floor((2^31 - 1) / (128 · 127)) = 132104`, so it
//! lies in i32 and the wrapped value is the exact one: no depth needs splitting, whatever
//! the intermediate values. (Without the wrap argument the uncompensated sum,
//! `k · 255 · 127`, would fit i32 only up to `k = 66311`; depth blocks add partial sums to
//! C with the same wrapping addition, so the argument covers them too.) The result is
//! bit-identical to the reference and to the AVX2 path, as the proptests check.
//!
//! # Blocking
//! Weights are packed once ([`PackedMatrix`]), for the path of the process: depth pairs
//! (generic, AVX2) or quads (VNNI). Rows of A are converted (to i16, or to u8) into a
//! stack buffer per block of rows and depth; the micro-kernels compute up to 8 × 16
//! tiles, and the zmm kernel 8 × 32 over two adjacent panels, so that each broadcast A
//! group feeds two `vpdpbusd` (measured 18% faster than 8 × 16 on the whole ConvNet at
//! batch 64, one thread). No allocation on the hot path. [`gemm_s8`] is single-threaded (the engine
//! splits the batch); [`par_gemm_s8`] and [`gemm_s8_cols`] split rows or column panels
//! across threads.

mod conv;
mod depthwise;
mod direct;
mod float;
mod gemm;
pub mod generic;
mod im2col;
mod isa;
mod nibbles;
mod output;
mod pack;
mod pool;
mod rescale;
pub(crate) mod sgemm;
#[cfg(test)]
mod tests;
mod tile;
mod window;
pub mod winograd;
mod work;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use conv::{im2col_nhwc_s8, max_pool2d_nhwc_s8, max_pool2x2_s32, out_dim};
pub use depthwise::{DepthwiseFilter, MAX_DEPTHWISE_TAPS, depthwise_nhwc_s8};
pub use direct::{DirectFilter, MAX_DIRECT_CHANNELS, MAX_DIRECT_DEPTH, direct_conv_nhwc_s8};
pub(crate) use float::{im2col_f32, max_pool2x2_f32, quantize_f32_s8};
pub use gemm::{gemm_s8, gemm_s8_cols, gemm_u8_cols, par_gemm_s8};
pub use im2col::{im2col_window_s8, im2col_window_u8};
pub use isa::{ISA_VARIABLE, Isa, UnknownIsa};
pub use nibbles::{NIBBLE_DEPTH, PackedNibbles, gemv_s4};
pub use output::{OutputStage, requantize_s8, requantize_s8_rows, row_sums_s8};
pub use pack::{MAX_DEPTH, NR, PackedMatrix};
pub use pool::{avg_pool_nhwc_s8, div_round_even, max_pool_nhwc_s8, pool_reference};
pub use rescale::{AddTable, Clamp, Rescale, rescale_s8};
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
    /// A weight minus its zero point is outside the range the Winograd and depthwise
    /// bounds assume.
    #[error(
        "filter: weight at row {row}, depth {col} is {value} from its zero point, expected at most 255"
    )]
    CenteredWeightOutOfRange { row: usize, col: usize, value: i64 },
    /// A window the direct kernel does not compute (see [`DirectFilter::fits`]).
    #[error(
        "direct convolution: window {window:?} into {out_channels} channels does not fit (at most {MAX_DIRECT_CHANNELS} input channels or window rows of whole 4-byte groups, stride 1, a depth of at most {MAX_DIRECT_DEPTH}, an output of at least 2x2)"
    )]
    DirectWindow {
        window: NhwcWindow,
        out_channels: usize,
    },
    /// So many taps in a depthwise window that a sum could overflow i32.
    #[error("depthwise filter: {taps} taps exceed {max} (i32 sums could overflow)")]
    TooManyTaps { taps: usize, max: usize },
}

impl KernelError {
    /// Checks that `len` weights hold `rows × depth`.
    fn check_length(len: usize, rows: usize, depth: usize) -> Result<(), Self> {
        match rows.checked_mul(depth) {
            Some(expected) if expected == len => Ok(()),
            _ => Err(Self::WrongLength {
                rows,
                depth,
                expected: rows.saturating_mul(depth),
                got: len,
            }),
        }
    }
}
