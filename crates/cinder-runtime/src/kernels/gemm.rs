//! The int8 GEMM's entry points: `C = A · Bᵀ` with exact i32 sums, on the path the
//! packed weights were packed for ([`PackedMatrix::isa`]), over the shared blocked
//! driver ([`super::tile`]).

use std::ops::Range;

use rayon::prelude::*;

use super::generic::Portable;
#[cfg(target_arch = "x86_64")]
use super::isa::Isa;
use super::pack::{Layout, NR, PackedMatrix, Panels};
use super::tile::{Blocked, Dst, Lhs};
use super::work::Vectorizable;
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx512Vnni, AvxVnni};

/// Panics unless the operands hold an `m × k` A (of `a_len` values) and an `m × width` C.
fn check_operands(
    a_len: usize,
    lda: usize,
    m: usize,
    k: usize,
    c: &[i32],
    ldc: usize,
    width: usize,
) {
    if m == 0 {
        return;
    }
    assert!(
        m == 1 || (lda >= k && ldc >= width),
        "gemm_s8: lda {lda} < k {k} or ldc {ldc} < width {width}"
    );
    assert!(
        a_len >= (m - 1) * lda + k,
        "gemm_s8: a holds {a_len} values, need {m} rows of {k} at stride {lda}"
    );
    assert!(
        c.len() >= (m - 1) * ldc + width,
        "gemm_s8: c holds {} values, need {m} rows of {width} at stride {ldc}",
        c.len()
    );
}

/// `c[i * ldc + j] = Σ_p a[i * lda + p] · b[j][p]` for `i < m`, `j < b.rows()`,
/// `p < b.depth()` (overwrites c). Exact: every sum fits i32 (see [`super::MAX_DEPTH`]).
///
/// `a` may hold any i8 (u8 activations enter as `q ^ 0x80` with zero point − 128).
/// Takes the path `b` was packed for when the CPU has it, else portable code; returns the
/// path that ran. Single-threaded; see [`par_gemm_s8`].
///
/// # Panics
/// If `a` or `c` are too short for `m` rows at their strides, or (for `m > 1`) a stride
/// is smaller than its row width.
pub fn gemm_s8(a: &[i8], lda: usize, m: usize, b: &PackedMatrix, c: &mut [i32], ldc: usize) -> Isa {
    gemm_s8_cols(a, lda, m, b, 0..b.rows(), c, ldc)
}

/// [`gemm_s8`] restricted to the output columns `cols`: column `j` lands in
/// `c[i * ldc + j - cols.start]`. Ranges starting at a multiple of [`NR`] avoid the
/// scratch path at the edges.
///
/// # Panics
/// As [`gemm_s8`], with row width `cols.len()`; or if `cols` is not inside `0..b.rows()`.
pub fn gemm_s8_cols(
    a: &[i8],
    lda: usize,
    m: usize,
    b: &PackedMatrix,
    cols: Range<usize>,
    c: &mut [i32],
    ldc: usize,
) -> Isa {
    gemm_lhs(Lhs::new(bytes(a), lda, m, false), b, cols, Dst { c, ldc })
}

/// [`gemm_s8_cols`] with A given as offset bytes, `a[i] = code + 128` (the codes `^ 0x80`),
/// which the VNNI paths multiply as they are: they read A in place instead of converting
/// it (an im2col buffer written so by [`super::im2col_window_u8`]). Rows may hold up to 3
/// more bytes than the depth's multiple of 4; they are read against zero weights.
///
/// # Panics
/// As [`gemm_s8_cols`].
pub fn gemm_u8_cols(
    a: &[u8],
    lda: usize,
    m: usize,
    b: &PackedMatrix,
    cols: Range<usize>,
    c: &mut [i32],
    ldc: usize,
) -> Isa {
    gemm_lhs(Lhs::new(a, lda, m, true), b, cols, Dst { c, ldc })
}

/// An i8 slice as its bytes.
fn bytes(a: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid
    // for both.
    unsafe { std::slice::from_raw_parts(a.as_ptr().cast::<u8>(), a.len()) }
}

/// The GEMM on the path `b` was packed for, operands checked first.
fn gemm_lhs(lhs: Lhs<'_>, b: &PackedMatrix, cols: Range<usize>, dst: Dst<'_>) -> Isa {
    assert!(
        cols.start <= cols.end && cols.end <= b.rows(),
        "gemm_s8: columns {cols:?} outside 0..{}",
        b.rows()
    );
    let (a_len, k) = (lhs.data.len(), b.depth());
    check_operands(a_len, lhs.lda, lhs.m, k, dst.c, dst.ldc, cols.len());
    // The whole GEMM with micro-kernel `$kern` on panels `$b`.
    macro_rules! blocked {
        ($kern:expr, $b:expr) => {
            Blocked {
                kern: $kern,
                lhs,
                b: $b,
                k,
                cols,
                dst,
            }
        };
    }
    match b.layout() {
        Layout::Pairs(data) => {
            let panels = Panels::new(data, k.div_ceil(2), &[]);
            #[cfg(target_arch = "x86_64")]
            if let Some(token) = b.isa().avx2() {
                token.vectorize(blocked!(token, panels));
                return Isa::Avx2;
            }
            blocked!(Portable, panels).run();
        }
        Layout::Quads(data, start) => {
            let panels = Panels::new(data, k.div_ceil(4), start);
            #[cfg(target_arch = "x86_64")]
            match (b.isa(), Avx512Vnni::detect(), AvxVnni::detect()) {
                (Isa::Avx512Vnni, Some(token), _) => {
                    token.vectorize(blocked!(token, panels));
                    return Isa::Avx512Vnni;
                }
                (Isa::Avx512VnniYmm, Some(token), _) => {
                    token.vectorize(blocked!(token.ymm(), panels));
                    return Isa::Avx512VnniYmm;
                }
                (Isa::AvxVnni, _, Some(token)) => {
                    token.vectorize(blocked!(token, panels));
                    return Isa::AvxVnni;
                }
                _ => {}
            }
            blocked!(Portable, panels).run();
        }
    }
    Isa::Generic
}

/// [`gemm_s8`] spread over rayon's threads: by rows when `m > 1`, by panels of columns
/// for a single row (a GEMV, bound by streaming the weights).
///
/// # Panics
/// As [`gemm_s8`].
pub fn par_gemm_s8(a: &[i8], lda: usize, m: usize, b: &PackedMatrix, c: &mut [i32], ldc: usize) {
    let n = b.rows();
    check_operands(a.len(), lda, m, b.depth(), c, ldc, n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if m == 1 {
        let chunk = n.div_ceil(NR).div_ceil(threads).max(1) * NR;
        c[..n]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, ct)| {
                gemm_s8_cols(a, lda, 1, b, t * chunk..t * chunk + ct.len(), ct, ldc);
            });
    } else {
        let rows = m.div_ceil(threads);
        c[..(m - 1) * ldc + n]
            .par_chunks_mut(rows * ldc)
            .enumerate()
            .for_each(|(t, ct)| {
                let i0 = t * rows;
                gemm_s8(&a[i0 * lda..], lda, rows.min(m - i0), b, ct, ldc);
            });
    }
}
