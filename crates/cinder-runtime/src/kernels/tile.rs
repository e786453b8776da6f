//! The micro-kernel contract and the blocked GEMM driver every instruction set shares.
//!
//! A micro-kernel computes an `R × NR` tile of `C = A · Bᵀ` over a packed panel of B
//! ([`PanelRow`]s), each row of A read as one 32-bit group of depths per panel row. The
//! driver ([`gemm_blocked`]) converts [`MC`] rows of A at a time into the kernel's A
//! elements (i16 for the pair kernels, `code + 128` as u8 for the VNNI ones) in a stack
//! buffer (depth split into even blocks so that the buffer holds at most [`A_GROUPS`]
//! groups), or reads them in place where A comes as the offset bytes a VNNI kernel
//! multiplies ([`super::gemm_u8_cols`]); for every panel it runs the micro-kernel over
//! the block in tiles of up to `K::ROWS` rows ([`multiply_block`]), so that the panel
//! slice stays in L1 while the A block stays in L2. The first depth block starts the sums from the panel's start
//! values (0, or the VNNI offset's compensation), later ones add to C. No allocation.

use std::mem::MaybeUninit;
use std::ops::Range;

use super::pack::{LhsElem, NR, PanelRow, Panels};
use super::work::Vectorizable;

/// Rows of A converted per block: a batch-64 linear layer's rows in one block, so that
/// its weights stream through the cache once (measured 6% faster than 48 on the whole
/// ConvNet at batch 64, AVX-512 VNNI, one thread).
const MC: usize = 64;
/// 32-bit groups of A held in the stack buffer (80 KiB): conv2's depth 576 fits in one
/// block.
const A_GROUPS: usize = MC * 320;
/// The most rows of any micro-kernel's tile.
pub(super) const MAX_ROWS: usize = 8;

/// A block of A in a kernel's elements: row `r`, depth `d` at `data[r * stride + d]`,
/// `stride` a multiple of the panel's group.
pub(super) struct Rows<'a, T> {
    pub(super) data: &'a [T],
    pub(super) stride: usize,
}

impl<T> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Rows<'_, T> {}

impl<T> Rows<'_, T> {
    /// The 32-bit group `q` of row `r` (the bytes of `GROUP` elements), unaligned.
    ///
    /// # Safety
    /// `r * stride + (q + 1) * 4 / size_of::<T>()` must be at most `data.len()`.
    #[inline(always)]
    pub(super) unsafe fn group(&self, r: usize, q: usize) -> i32 {
        let at = r * self.stride + q * 4 / size_of::<T>();
        debug_assert!((at + 4 / size_of::<T>()) <= self.data.len());
        // SAFETY: in bounds by the caller's contract.
        unsafe { self.data.as_ptr().add(at).cast::<i32>().read_unaligned() }
    }
}

/// Destination of a tile: row `r`, column `j` at `c[r * ldc + j]`, overwritten (from the
/// start values, when given) or added to.
pub(super) struct TileOut<'a> {
    pub(super) c: &'a mut [i32],
    pub(super) ldc: usize,
    pub(super) accumulate: bool,
    pub(super) start: Option<&'a [i32; NR]>,
}

impl TileOut<'_> {
    /// Stores (or adds, wrapping) `row` at row `r`, from its first column.
    #[inline(always)]
    pub(super) fn put_row(&mut self, r: usize, row: &[i32]) {
        let dst = &mut self.c[r * self.ldc..][..row.len()];
        if self.accumulate {
            dst.iter_mut()
                .zip(row)
                .for_each(|(d, v)| *d = d.wrapping_add(*v));
        } else {
            dst.copy_from_slice(row);
        }
    }
}

/// A register-blocked micro-kernel for an `R × NR` tile, `R <= Self::ROWS`, over panels
/// of `P`: `out[r][j] (+)= start[j] + Σ_p Σ_t a[r][G·p + t] · panel[p][G·j + t]` (`G` =
/// `P::GROUP`) over all rows of `panel`, in wrapping i32 arithmetic. Needs
/// `a.data.len() >= (R - 1) * a.stride + G * panel.len()` and
/// `out.c.len() >= (R - 1) * out.ldc + NR`; implementations check it ([`check_tile`]).
pub(super) trait MicroKernel<P: PanelRow>: Copy {
    /// The most rows of a tile (at most [`MAX_ROWS`]).
    const ROWS: usize;
    fn tile<const R: usize>(self, a: Rows<'_, P::Lhs>, panel: &[P], out: TileOut<'_>);

    /// Two adjacent panels at once: an `R × 2·NR` tile, `panels[1]` landing in columns
    /// `NR .. 2·NR` of `out` and starting from `starts[1]` (`out.start` is not read).
    /// Needs `out.c.len() >= (R - 1) * out.ldc + 2·NR` and panels of one length. A kernel
    /// whose registers hold the wider tile reuses each broadcast A group for both panels;
    /// the default runs two [`Self::tile`]s.
    #[inline(always)]
    fn tile_wide<const R: usize>(
        self,
        a: Rows<'_, P::Lhs>,
        panels: [&[P]; 2],
        starts: [Option<&[i32; NR]>; 2],
        out: TileOut<'_>,
    ) {
        two_tiles::<R, P, Self>(self, a, panels, starts, out);
    }
}

/// [`MicroKernel::tile_wide`] as two [`MicroKernel::tile`]s, one a panel.
#[inline(always)]
pub(super) fn two_tiles<const R: usize, P: PanelRow, K: MicroKernel<P>>(
    kern: K,
    a: Rows<'_, P::Lhs>,
    panels: [&[P]; 2],
    starts: [Option<&[i32; NR]>; 2],
    out: TileOut<'_>,
) {
    let TileOut {
        c, ldc, accumulate, ..
    } = out;
    for (half, (panel, start)) in panels.into_iter().zip(starts).enumerate() {
        let out = TileOut {
            c: &mut c[half * NR..],
            ldc,
            accumulate,
            start,
        };
        kern.tile::<R>(a, panel, out);
    }
}

/// Checks the slice lengths a micro-kernel relies on.
#[inline(always)]
pub(super) fn check_tile<P: PanelRow>(
    rows: usize,
    a: Rows<'_, P::Lhs>,
    panel: &[P],
    out: &TileOut<'_>,
) {
    assert!(rows >= 1 && a.data.len() >= (rows - 1) * a.stride + P::GROUP * panel.len());
    assert!(out.c.len() >= (rows - 1) * out.ldc + NR);
}

/// Runs the double-width micro-kernel instance for `rows` (1..=K::ROWS) rows.
#[inline(always)]
fn tile_rows_wide<P: PanelRow, K: MicroKernel<P>>(
    kern: K,
    rows: usize,
    a: Rows<'_, P::Lhs>,
    panels: [&[P]; 2],
    starts: [Option<&[i32; NR]>; 2],
    out: TileOut<'_>,
) {
    debug_assert!(rows <= K::ROWS && K::ROWS <= MAX_ROWS);
    match rows {
        1 => kern.tile_wide::<1>(a, panels, starts, out),
        2 => kern.tile_wide::<2>(a, panels, starts, out),
        3 => kern.tile_wide::<3>(a, panels, starts, out),
        4 => kern.tile_wide::<4>(a, panels, starts, out),
        5 => kern.tile_wide::<5>(a, panels, starts, out),
        6 => kern.tile_wide::<6>(a, panels, starts, out),
        7 => kern.tile_wide::<7>(a, panels, starts, out),
        _ => kern.tile_wide::<MAX_ROWS>(a, panels, starts, out),
    }
}

/// Runs the micro-kernel instance for `rows` (1..=K::ROWS) rows.
#[inline(always)]
fn tile_rows<P: PanelRow, K: MicroKernel<P>>(
    kern: K,
    rows: usize,
    a: Rows<'_, P::Lhs>,
    panel: &[P],
    out: TileOut<'_>,
) {
    debug_assert!(rows <= K::ROWS && K::ROWS <= MAX_ROWS);
    match rows {
        1 => kern.tile::<1>(a, panel, out),
        2 => kern.tile::<2>(a, panel, out),
        3 => kern.tile::<3>(a, panel, out),
        4 => kern.tile::<4>(a, panel, out),
        5 => kern.tile::<5>(a, panel, out),
        6 => kern.tile::<6>(a, panel, out),
        7 => kern.tile::<7>(a, panel, out),
        _ => kern.tile::<MAX_ROWS>(a, panel, out),
    }
}

/// The A operand: `m` rows of bytes, row `i` at `data[i * lda ..]`: activation codes
/// (i8), or with `offset` the codes + 128 (u8), which kernels multiplying `code + 128`
/// read in place.
#[derive(Clone, Copy)]
pub(super) struct Lhs<'a> {
    pub(super) data: &'a [u8],
    pub(super) lda: usize,
    pub(super) m: usize,
    offset: bool,
}

impl<'a> Lhs<'a> {
    pub(super) fn new(data: &'a [u8], lda: usize, m: usize, offset: bool) -> Self {
        Self {
            data,
            lda,
            m,
            offset,
        }
    }

    /// Rows `rows`, depths from `d0`, in place when the kernel's elements are the offset
    /// bytes and A holds `dc` depths of every row (the last group of a depth that is not
    /// a multiple of it reads past the row, onto weights that are 0).
    #[inline(always)]
    fn in_place<T: LhsElem>(self, rows: Range<usize>, d0: usize, dc: usize) -> Option<Rows<'a, T>> {
        let end = (rows.end - 1) * self.lda + d0 + dc;
        if !self.offset || end > self.data.len() {
            return None;
        }
        let data = T::in_place(&self.data[rows.start * self.lda + d0..end])?;
        Some(Rows {
            data,
            stride: self.lda,
        })
    }
}

/// The C operand: output column `j` of row `i` at `c[i * ldc + j - cols.start]`.
pub(super) struct Dst<'a> {
    pub(super) c: &'a mut [i32],
    pub(super) ldc: usize,
}

/// Stack buffer for one converted A block, in 32-bit groups; only the part
/// [`convert_rows`] writes is read.
#[repr(C, align(64))]
struct LhsBuf([MaybeUninit<u32>; A_GROUPS]);

/// Elements [`convert_rows`] converts at a time where the operands leave room.
const CONVERT_CHUNK: usize = 64;

/// Converts rows `rows` of A, depth `d0 .. d0 + dc` (`dc` a multiple of `4 / size_of::<T>()`),
/// into `T`s, padding past `k`; offset bytes back to codes first.
///
/// A row is converted in whole chunks of [`CONVERT_CHUNK`] (fixed-size vector code, which
/// matters for short rows such as conv1's 27 taps) when A and the buffer hold the chunks'
/// full width: what a chunk reads past the row's depth lands either on the pad (whose
/// weights are 0, so any value will do) or on the next rows' places, which are written
/// after it.
#[inline(always)]
fn convert_rows<'b, T: LhsElem>(
    buf: &'b mut LhsBuf,
    a: Lhs<'_>,
    k: usize,
    rows: Range<usize>,
    d0: usize,
    dc: usize,
) -> Rows<'b, T> {
    const { assert!(size_of::<T>() <= 4 && align_of::<T>() <= 4) };
    let (len, cap) = (rows.len() * dc, size_of::<LhsBuf>() / size_of::<T>());
    assert!(len <= cap);
    // SAFETY: the buffer holds `cap` `T`s and is aligned for `T`; `MaybeUninit<T>` may be
    // uninitialized.
    let dst =
        unsafe { std::slice::from_raw_parts_mut(buf.0.as_mut_ptr().cast::<MaybeUninit<T>>(), cap) };
    let width = dc.next_multiple_of(CONVERT_CHUNK);
    let flip = if a.offset { 0x80 } else { 0 };
    let code = |byte: u8| T::from_code((byte ^ flip) as i8);
    for (n, i) in rows.enumerate() {
        let (from, at) = (i * a.lda + d0, n * dc);
        if from + width <= a.data.len() && at + width <= cap {
            let (src, drow) = (&a.data[from..][..width], &mut dst[at..][..width]);
            for (d, s) in drow
                .chunks_exact_mut(CONVERT_CHUNK)
                .zip(src.chunks_exact(CONVERT_CHUNK))
            {
                d.iter_mut().zip(s).for_each(|(d, &s)| {
                    d.write(code(s));
                });
            }
            continue;
        }
        let src = &a.data[from..][..dc.min(k - d0)];
        let (body, pad) = dst[at..][..dc].split_at_mut(src.len());
        body.iter_mut().zip(src).for_each(|(d, &s)| {
            d.write(code(s));
        });
        pad.iter_mut().for_each(|d| {
            d.write(T::from_code(0));
        });
    }
    // SAFETY: the loop above wrote every element of `dst[..len]` (`rows.len()` rows of
    // `dc`: a row's chunks cover its `dc` elements), and `MaybeUninit<T>` has the layout
    // of `T`.
    let data = unsafe { std::slice::from_raw_parts(dst.as_ptr().cast::<T>(), len) };
    Rows { data, stride: dc }
}

/// `c (+)= a · panel(q)ᵀ` for a block of `rows` converted rows: output columns `cols` (of
/// panels `cols.start / NR ..`), column `j` of row `i` at `c[i * ldc + j - cols.start]`,
/// added to C when `accumulate`. `panel(q)` gives panel `q` over the block's depth and
/// the values its sums start from.
#[allow(
    clippy::too_many_arguments,
    reason = "one block of the blocked GEMM, operands as BLAS passes them"
)]
#[inline(always)]
pub(super) fn multiply_block<'p, P: PanelRow + 'p, K: MicroKernel<P>>(
    kern: K,
    a: Rows<'_, P::Lhs>,
    rows: usize,
    panel: impl Fn(usize) -> (&'p [P], Option<&'p [i32; NR]>),
    cols: Range<usize>,
    c: &mut [i32],
    ldc: usize,
    accumulate: bool,
) {
    let mut q = cols.start / NR;
    while q < cols.end.div_ceil(NR) {
        // Two whole panels inside `cols`: one double-width tile per row block.
        if q * NR >= cols.start && (q + 2) * NR <= cols.end {
            let ((left, start0), (right, start1)) = (panel(q), panel(q + 1));
            let starts = if accumulate {
                [None; 2]
            } else {
                [start0, start1]
            };
            for r0 in (0..rows).step_by(K::ROWS) {
                let a_tile = Rows {
                    data: &a.data[r0 * a.stride..],
                    stride: a.stride,
                };
                let out = TileOut {
                    c: &mut c[r0 * ldc + q * NR - cols.start..],
                    ldc,
                    accumulate,
                    start: None,
                };
                let tile_rows = K::ROWS.min(rows - r0);
                tile_rows_wide(kern, tile_rows, a_tile, [left, right], starts, out);
            }
            q += 2;
            continue;
        }
        let (panel, start) = panel(q);
        let js = cols.start.max(q * NR)..cols.end.min(q * NR + NR);
        for r0 in (0..rows).step_by(K::ROWS) {
            let a_tile = Rows {
                data: &a.data[r0 * a.stride..],
                stride: a.stride,
            };
            let c_tile = &mut c[r0 * ldc + js.start - cols.start..];
            let tile = TileSpot {
                rows: K::ROWS.min(rows - r0),
                skip: js.start - q * NR,
                width: js.len(),
                accumulate,
                start: if accumulate { None } else { start },
            };
            tile.run(kern, a_tile, panel, c_tile, ldc);
        }
        q += 1;
    }
}

/// The blocked driver shared by every micro-kernel: output columns `cols` of every row.
/// Operand sizes are checked by the caller.
#[inline(always)]
pub(super) fn gemm_blocked<P: PanelRow, K: MicroKernel<P>>(
    kern: K,
    lhs: Lhs<'_>,
    b: Panels<'_, P>,
    k: usize,
    cols: Range<usize>,
    dst: Dst<'_>,
) {
    let (groups, width, m) = (b.groups, cols.len(), lhs.m);
    let Dst { c, ldc } = dst;
    if groups == 0 || width == 0 {
        (0..m).for_each(|i| c[i * ldc..][..width].fill(0));
        return;
    }
    let mut buf = LhsBuf([const { MaybeUninit::uninit() }; A_GROUPS]);
    for i0 in (0..m).step_by(MC) {
        let rows = MC.min(m - i0);
        let kc = groups.div_ceil(groups.div_ceil(A_GROUPS / rows));
        for p0 in (0..groups).step_by(kc) {
            let pc = kc.min(groups - p0);
            let (d0, dc) = (P::GROUP * p0, P::GROUP * pc);
            let a = match lhs.in_place(i0..i0 + rows, d0, dc) {
                Some(a) => a,
                None => convert_rows(&mut buf, lhs, k, i0..i0 + rows, d0, dc),
            };
            multiply_block(
                kern,
                a,
                rows,
                |q| b.panel(q, p0..p0 + pc),
                cols.clone(),
                &mut c[i0 * ldc..],
                ldc,
                p0 > 0,
            );
        }
    }
}

/// A whole GEMM with micro-kernel `K`, as one unit of [`Vectorizable`] work (so that A's
/// conversion is compiled with the kernel's instruction set).
pub(super) struct Blocked<'a, P, K> {
    pub(super) kern: K,
    pub(super) lhs: Lhs<'a>,
    pub(super) b: Panels<'a, P>,
    pub(super) k: usize,
    pub(super) cols: Range<usize>,
    pub(super) dst: Dst<'a>,
}

impl<P: PanelRow, K: MicroKernel<P>> Vectorizable for Blocked<'_, P, K> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        gemm_blocked(self.kern, self.lhs, self.b, self.k, self.cols, self.dst);
    }
}

/// Where a tile lands in C: `rows` rows, panel columns `skip .. skip + width`.
struct TileSpot<'a> {
    rows: usize,
    skip: usize,
    width: usize,
    accumulate: bool,
    start: Option<&'a [i32; NR]>,
}

impl TileSpot<'_> {
    /// Runs the tile; a partial one (edge of the matrix or of `cols`) goes through a
    /// scratch tile on the stack.
    #[inline(always)]
    fn run<P: PanelRow, K: MicroKernel<P>>(
        &self,
        kern: K,
        a: Rows<'_, P::Lhs>,
        panel: &[P],
        c: &mut [i32],
        ldc: usize,
    ) {
        let (accumulate, start) = (self.accumulate, self.start);
        if self.width == NR {
            let out = TileOut {
                c,
                ldc,
                accumulate,
                start,
            };
            tile_rows(kern, self.rows, a, panel, out);
            return;
        }
        let mut scratch = [0i32; MAX_ROWS * NR];
        let out = TileOut {
            c: &mut scratch,
            ldc: NR,
            accumulate: false,
            start,
        };
        tile_rows(kern, self.rows, a, panel, out);
        let mut out = TileOut {
            c,
            ldc,
            accumulate,
            start: None,
        };
        for (r, src) in scratch.chunks_exact(NR).take(self.rows).enumerate() {
            out.put_row(r, &src[self.skip..][..self.width]);
        }
    }
}
