//! Blocked int8 GEMM `C = A · Bᵀ` with exact i32 accumulation.
//!
//! Blocking: [`MC`] rows of A at a time are widened to i16 into a stack buffer (depth
//! split into even blocks so the buffer holds at most [`A_PAIRS`] pairs); for every packed
//! panel of [`NR`] columns the micro-kernel runs over the block in tiles of up to [`MR`]
//! rows ([`multiply_block`]), so the panel slice stays in L1 while the A block stays in
//! L2. The first depth block overwrites C, later ones add to it. No allocation.
//!
//! The micro-kernels are generic over the panel's element ([`PanelRow`]): i8 weights here,
//! i16 transformed filters in [`super::winograd`], whose A rows are i16 already.

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::Avx2;
use super::Vectorizable;
use super::pack::{NR, PackedMatrix, PairRow, PanelRow};

/// Rows per micro-kernel tile (6 × 16 i32 = 12 accumulator registers).
pub const MR: usize = 6;
/// Rows of A widened per block.
const MC: usize = 48;
/// Depth pairs of A held in the stack buffer (60 KiB): conv2's depth 576 fits in one block.
const A_PAIRS: usize = MC * 320;

/// A block of A widened to i16: row `r`, depth `d` at `data[r * stride + d]`, `stride` even.
#[derive(Clone, Copy)]
pub(super) struct WideRows<'a> {
    pub(super) data: &'a [i16],
    pub(super) stride: usize,
}

/// Destination of a tile: row `r`, column `j` at `c[r * ldc + j]`, overwritten or added to.
pub(super) struct TileOut<'a> {
    pub(super) c: &'a mut [i32],
    pub(super) ldc: usize,
    pub(super) accumulate: bool,
}

impl TileOut<'_> {
    /// Stores (or adds) `row` at row `r`, from its first column.
    #[inline(always)]
    pub(super) fn put_row(&mut self, r: usize, row: &[i32]) {
        let dst = &mut self.c[r * self.ldc..][..row.len()];
        if self.accumulate {
            dst.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        } else {
            dst.copy_from_slice(row);
        }
    }
}

/// A register-blocked micro-kernel for an `R × NR` tile, `R <= MR`, over panels of `P`:
/// `out[r][j] (+)= Σ_p Σ_t a[r][2p + t] · panel[p][2j + t]` over all pairs of `panel`.
/// Needs `a.data.len() >= (R - 1) * a.stride + 2 * panel.len()` and
/// `out.c.len() >= (R - 1) * out.ldc + NR`; implementations check it.
pub(super) trait MicroKernel<P>: Copy {
    fn tile<const R: usize>(self, a: WideRows<'_>, panel: &[P], out: TileOut<'_>);
}

/// Checks the slice lengths a micro-kernel relies on.
#[inline(always)]
pub(super) fn check_tile<P>(rows: usize, a: WideRows<'_>, panel: &[P], out: &TileOut<'_>) {
    assert!(rows >= 1 && a.data.len() >= (rows - 1) * a.stride + 2 * panel.len());
    assert!(out.c.len() >= (rows - 1) * out.ldc + NR);
}

/// Portable micro-kernel: plain i32 arithmetic the compiler may vectorize.
#[derive(Debug, Clone, Copy)]
pub(super) struct Portable;

impl<P: PanelRow> MicroKernel<P> for Portable {
    #[inline(always)]
    fn tile<const R: usize>(self, a: WideRows<'_>, panel: &[P], mut out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        let mut acc = [[0i32; NR]; R];
        for (p, pair) in panel.iter().enumerate() {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a0 = i32::from(a.data[r * a.stride + 2 * p]);
                let a1 = i32::from(a.data[r * a.stride + 2 * p + 1]);
                for (j, v) in acc_r.iter_mut().enumerate() {
                    *v += a0 * pair.weight(2 * j) + a1 * pair.weight(2 * j + 1);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            out.put_row(r, row);
        }
    }
}

/// Runs the micro-kernel instance for `rows` (1..=MR) rows.
#[inline(always)]
fn tile_rows<P, K: MicroKernel<P>>(
    kern: K,
    rows: usize,
    a: WideRows<'_>,
    panel: &[P],
    out: TileOut<'_>,
) {
    match rows {
        1 => kern.tile::<1>(a, panel, out),
        2 => kern.tile::<2>(a, panel, out),
        3 => kern.tile::<3>(a, panel, out),
        4 => kern.tile::<4>(a, panel, out),
        5 => kern.tile::<5>(a, panel, out),
        _ => kern.tile::<MR>(a, panel, out),
    }
}

/// The A operand: `m` rows, row `i` at `data[i * lda ..]`.
#[derive(Clone, Copy)]
pub(super) struct Lhs<'a> {
    pub(super) data: &'a [i8],
    pub(super) lda: usize,
    pub(super) m: usize,
}

/// The C operand: output column `j` of row `i` at `c[i * ldc + j - cols.start]`.
pub(super) struct Dst<'a> {
    pub(super) c: &'a mut [i32],
    pub(super) ldc: usize,
}

/// Stack buffer for one widened A block; only the part [`widen_rows`] writes is read.
#[repr(C, align(32))]
struct WideBuf([MaybeUninit<i16>; 2 * A_PAIRS]);

/// Widens rows `rows` of A, depth `d0 .. d0 + dc` (`dc` even), zero-padding past `k`.
#[inline(always)]
fn widen_rows<'b>(
    buf: &'b mut WideBuf,
    a: Lhs<'_>,
    k: usize,
    rows: Range<usize>,
    d0: usize,
    dc: usize,
) -> WideRows<'b> {
    let dst = &mut buf.0[..rows.len() * dc];
    for (i, drow) in rows.zip(dst.chunks_exact_mut(dc)) {
        let src = &a.data[i * a.lda + d0..][..dc.min(k - d0)];
        let (body, pad) = drow.split_at_mut(src.len());
        body.iter_mut().zip(src).for_each(|(d, &s)| {
            d.write(i16::from(s));
        });
        // Only an odd depth leaves a pad, of one value.
        if let Some(d) = pad.first_mut() {
            d.write(0);
        }
    }
    // SAFETY: the loop above wrote every element of `dst` (`rows.len()` rows of `dc`), and
    // `MaybeUninit<i16>` has the layout of `i16`.
    let data = unsafe { std::slice::from_raw_parts(dst.as_ptr().cast::<i16>(), dst.len()) };
    WideRows { data, stride: dc }
}

/// `c (+)= a · panel(q)ᵀ` for a block of `rows` widened rows: output columns `cols` (of
/// panels `cols.start / NR ..`), column `j` of row `i` at `c[i * ldc + j - cols.start]`,
/// added to C when `accumulate`. Every panel holds the block's depth in pairs.
#[allow(
    clippy::too_many_arguments,
    reason = "one block of the blocked GEMM, operands as BLAS passes them"
)]
#[inline(always)]
pub(super) fn multiply_block<'p, P: 'p, K: MicroKernel<P>>(
    kern: K,
    a: WideRows<'_>,
    rows: usize,
    panel: impl Fn(usize) -> &'p [P],
    cols: Range<usize>,
    c: &mut [i32],
    ldc: usize,
    accumulate: bool,
) {
    for q in cols.start / NR..cols.end.div_ceil(NR) {
        let panel = panel(q);
        let js = cols.start.max(q * NR)..cols.end.min(q * NR + NR);
        for r0 in (0..rows).step_by(MR) {
            let a_tile = WideRows {
                data: &a.data[r0 * a.stride..],
                stride: a.stride,
            };
            let c_tile = &mut c[r0 * ldc + js.start - cols.start..];
            let tile = TileSpot {
                rows: MR.min(rows - r0),
                skip: js.start - q * NR,
                width: js.len(),
                accumulate,
            };
            tile.run(kern, a_tile, panel, c_tile, ldc);
        }
    }
}

/// The blocked driver shared by every micro-kernel: output columns `cols` of every row.
/// Operand sizes are checked by the caller.
#[inline(always)]
pub(super) fn gemm_blocked<K: MicroKernel<PairRow>>(
    kern: K,
    lhs: Lhs<'_>,
    b: &PackedMatrix,
    cols: Range<usize>,
    dst: Dst<'_>,
) {
    let (pairs, width, m) = (b.pairs(), cols.len(), lhs.m);
    let Dst { c, ldc } = dst;
    if pairs == 0 || width == 0 {
        (0..m).for_each(|i| c[i * ldc..][..width].fill(0));
        return;
    }
    let mut buf = WideBuf([const { MaybeUninit::uninit() }; 2 * A_PAIRS]);
    for i0 in (0..m).step_by(MC) {
        let rows = MC.min(m - i0);
        let kc = pairs.div_ceil(pairs.div_ceil(A_PAIRS / rows));
        for p0 in (0..pairs).step_by(kc) {
            let pc = kc.min(pairs - p0);
            let wide = widen_rows(&mut buf, lhs, b.depth(), i0..i0 + rows, 2 * p0, 2 * pc);
            multiply_block(
                kern,
                wide,
                rows,
                |q| &b.panel(q)[p0..p0 + pc],
                cols.clone(),
                &mut c[i0 * ldc..],
                ldc,
                p0 > 0,
            );
        }
    }
}

/// A whole GEMM with micro-kernel `K`, as one unit of [`Vectorizable`] work.
struct Blocked<'a, K> {
    kern: K,
    lhs: Lhs<'a>,
    b: &'a PackedMatrix,
    cols: Range<usize>,
    dst: Dst<'a>,
}

impl<K: MicroKernel<PairRow>> Vectorizable for Blocked<'_, K> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        gemm_blocked(self.kern, self.lhs, self.b, self.cols, self.dst);
    }
}

/// Where a tile lands in C: `rows` rows, panel columns `skip .. skip + width`.
struct TileSpot {
    rows: usize,
    skip: usize,
    width: usize,
    accumulate: bool,
}

impl TileSpot {
    /// Runs the tile; a partial one (edge of the matrix or of `cols`) goes through a
    /// scratch tile on the stack.
    #[inline(always)]
    fn run<P, K: MicroKernel<P>>(
        &self,
        kern: K,
        a: WideRows<'_>,
        panel: &[P],
        c: &mut [i32],
        ldc: usize,
    ) {
        let accumulate = self.accumulate;
        if self.width == NR {
            tile_rows(kern, self.rows, a, panel, TileOut { c, ldc, accumulate });
            return;
        }
        let mut scratch = [0i32; MR * NR];
        let out = TileOut {
            c: &mut scratch,
            ldc: NR,
            accumulate: false,
        };
        tile_rows(kern, self.rows, a, panel, out);
        let mut out = TileOut { c, ldc, accumulate };
        for (r, src) in scratch.chunks_exact(NR).take(self.rows).enumerate() {
            out.put_row(r, &src[self.skip..][..self.width]);
        }
    }
}

/// Panics unless the operands hold an `m × k` A and an `m × width` C.
fn check_operands(a: &[i8], lda: usize, m: usize, k: usize, c: &[i32], ldc: usize, width: usize) {
    if m == 0 {
        return;
    }
    assert!(
        m == 1 || (lda >= k && ldc >= width),
        "gemm_s8: lda {lda} < k {k} or ldc {ldc} < width {width}"
    );
    assert!(
        a.len() >= (m - 1) * lda + k,
        "gemm_s8: a holds {} values, need {m} rows of {k} at stride {lda}",
        a.len()
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
/// Uses AVX2 when the CPU has it, else portable code. Single-threaded; see
/// [`par_gemm_s8`].
///
/// # Panics
/// If `a` or `c` are too short for `m` rows at their strides, or (for `m > 1`) a stride
/// is smaller than its row width.
pub fn gemm_s8(a: &[i8], lda: usize, m: usize, b: &PackedMatrix, c: &mut [i32], ldc: usize) {
    gemm_s8_cols(a, lda, m, b, 0..b.rows(), c, ldc);
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
) {
    assert!(
        cols.start <= cols.end && cols.end <= b.rows(),
        "gemm_s8: columns {cols:?} outside 0..{}",
        b.rows()
    );
    check_operands(a, lda, m, b.depth(), c, ldc, cols.len());
    let (lhs, dst) = (Lhs { data: a, lda, m }, Dst { c, ldc });
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = Avx2::detect() {
        let work = Blocked {
            kern: token,
            lhs,
            b,
            cols,
            dst,
        };
        return super::x86::vectorized(token, work);
    }
    Blocked {
        kern: Portable,
        lhs,
        b,
        cols,
        dst,
    }
    .run();
}

/// [`gemm_s8`] spread over rayon's threads: by rows when `m > 1`, by panels of columns
/// for a single row (a GEMV, bound by streaming the weights).
///
/// # Panics
/// As [`gemm_s8`].
pub fn par_gemm_s8(a: &[i8], lda: usize, m: usize, b: &PackedMatrix, c: &mut [i32], ldc: usize) {
    let n = b.rows();
    check_operands(a, lda, m, b.depth(), c, ldc, n);
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
