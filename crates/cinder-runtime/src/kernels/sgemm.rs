//! The f32 GEMM of float layers (partial quantization): `bias + A·B` summed in depth
//! order with every product and sum rounded on its own, no fused multiply-add, so that
//! it equals the reference interpreter's plain loops bit for bit whatever the tiling.
//! Tiles of [`TILE_ROWS`] rows by a [`PANEL`] of 16 columns of the packed right operand,
//! in AVX2 vectors from the [`Isa::Avx2`] path up, else in arrays the compiler
//! vectorizes. (Wider vectors would not help the float layers: they are a small part of
//! a partially quantized model and bound by the no-FMA order of the sums.)
//!
//! Not `matrixmultiply` or `gemm`: both use fused multiply-adds and split the depth
//! (results differ from the reference), and `matrixmultiply` allocates its packing
//! buffer on every call (the engine allocates nothing after warm-up).

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::isa::Isa;
#[cfg(target_arch = "x86_64")]
use super::work::Vectorizable;

/// Columns of a float GEMM's tile (a panel of its right operand): two AVX2 vectors.
pub const PANEL: usize = 16;

/// Rows of one tile of a float GEMM: with two vectors a row, 12 accumulators.
pub const TILE_ROWS: usize = 6;

/// Panels of [`PANEL`] columns that hold `cols` columns.
pub fn panels(cols: usize) -> usize {
    cols.div_ceil(PANEL)
}

/// Packs the `depth x cols` matrix `at(p, j)` as a GEMM's right operand: panels of
/// [`PANEL`] columns, each `depth` rows of [`PANEL`] values, the last one padded with 0.
pub fn pack_panels(depth: usize, cols: usize, at: impl Fn(usize, usize) -> f32, out: &mut [f32]) {
    for (panel, packed) in out.chunks_exact_mut(depth * PANEL).enumerate() {
        for (p, row) in packed.chunks_exact_mut(PANEL).enumerate() {
            for (lane, v) in row.iter_mut().enumerate() {
                let j = panel * PANEL + lane;
                *v = if j < cols { at(p, j) } else { 0.0 };
            }
        }
    }
}

/// Where a GEMM's initial sums come from: the bias of each row (output channel of a
/// convolution) or of each column (output feature of a linear layer).
#[derive(Debug, Clone, Copy)]
pub enum Bias<'a> {
    PerRow(&'a [f32]),
    PerColumn(&'a [f32]),
}

/// `rows` rows of `a` (row stride `depth`) times the columns `cols` of `b`, which starts
/// at the panel of `cols.start` (a multiple of [`PANEL`]).
pub struct Gemm<'a> {
    pub a: &'a [f32],
    pub rows: usize,
    pub depth: usize,
    pub b: Right<'a>,
    pub cols: Range<usize>,
    pub bias: Bias<'a>,
}

/// A GEMM's right operand (`depth x cols`): element `(p, j)` at
/// `(j / PANEL) * panel_stride + p * row_stride + j % PANEL`, so that a tile reads
/// [`PANEL`] consecutive values per depth.
#[derive(Debug, Clone, Copy)]
pub struct Right<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub panel_stride: usize,
}

impl<'a> Right<'a> {
    /// A matrix packed as [`pack_panels`] packs.
    pub fn panels(data: &'a [f32], depth: usize) -> Self {
        Self {
            data,
            row_stride: PANEL,
            panel_stride: depth * PANEL,
        }
    }
}

/// `out[i][j - cols.start] = bias + a[i][0]·b[0][j] + a[i][1]·b[1][j] + ...` (row stride
/// `ldc`), summed from the bias in depth order with every product and sum rounded on its
/// own: the reference interpreter's arithmetic ([`crate::float::conv2d`],
/// [`crate::float::linear`]), so that float layers equal it bit for bit whatever the
/// tiling, the thread count or the batch. (A padding tap, which the reference skips, adds
/// `0·w`: that changes no sum but -0.0, to +0.0.) With AVX2 vectors from the
/// [`Isa::Avx2`] path up.
pub fn gemm(product: &Gemm<'_>, out: &mut [f32], ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = Isa::detect().avx2() {
        return token.vectorize(InAvx2 { product, out, ldc });
    }
    gemm_in::<[f32; LANES]>(product, out, ldc)
}

/// [`gemm`] in AVX2 vectors, as work the AVX2 token compiles with AVX2.
#[cfg(target_arch = "x86_64")]
struct InAvx2<'a, 'b> {
    product: &'a Gemm<'b>,
    out: &'a mut [f32],
    ldc: usize,
}

#[cfg(target_arch = "x86_64")]
impl Vectorizable for InAvx2<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        gemm_in::<Avx2Lanes>(self.product, self.out, self.ldc);
    }
}

/// [`gemm`]'s loops in lanes `L`: per panel of `b` (kept in cache), every tile of rows.
#[inline(always)]
fn gemm_in<L: Lanes>(product: &Gemm<'_>, out: &mut [f32], ldc: usize) {
    let Gemm { cols, b, .. } = product;
    for panel in 0..panels(cols.len()) {
        let c0 = cols.start + panel * PANEL;
        let b = &b.data[panel * b.panel_stride..];
        for i0 in (0..product.rows).step_by(TILE_ROWS) {
            let tile = Tile { product, i0, c0, b };
            match product.rows - i0 {
                1 => tile.run::<1, L>(out, ldc),
                2 => tile.run::<2, L>(out, ldc),
                3 => tile.run::<3, L>(out, ldc),
                4 => tile.run::<4, L>(out, ldc),
                5 => tile.run::<5, L>(out, ldc),
                _ => tile.run::<TILE_ROWS, L>(out, ldc),
            }
        }
    }
}

/// The tile of rows from `i0` and the panel `b` (of [`Gemm::b`]) of columns from `c0`.
struct Tile<'a> {
    product: &'a Gemm<'a>,
    i0: usize,
    c0: usize,
    b: &'a [f32],
}

/// Vectors of a panel's row.
const VECTORS: usize = PANEL / LANES;

impl Tile<'_> {
    /// `R` rows: the sums stay in `R x` [`VECTORS`] registers over the whole depth.
    #[inline(always)]
    fn run<const R: usize, L: Lanes>(&self, out: &mut [f32], ldc: usize) {
        let Gemm {
            a,
            depth,
            cols,
            bias,
            ..
        } = self.product;
        let (i0, c0) = (self.i0, self.c0);
        let rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i0 + r) * depth..][..*depth]);
        let mut acc: [[L; VECTORS]; R] = match bias {
            Bias::PerRow(b) => std::array::from_fn(|r| [L::splat(b[i0 + r]); VECTORS]),
            Bias::PerColumn(b) => {
                let row: [f32; PANEL] = std::array::from_fn(|j| b.get(c0 + j).map_or(0.0, |v| *v));
                [lanes(&row); R]
            }
        };
        let row_stride = self.product.b.row_stride;
        for p in 0..*depth {
            let column = self.b[p * row_stride..][..PANEL]
                .as_array()
                .expect("a panel's row");
            let column: [L; VECTORS] = lanes(column);
            for (sums, row) in acc.iter_mut().zip(rows) {
                let x = L::splat(row[p]);
                for (s, &v) in sums.iter_mut().zip(&column) {
                    *s = s.add_product(x, v);
                }
            }
        }
        let (start, width) = (c0 - cols.start, PANEL.min(cols.end - c0));
        for (r, sums) in acc.iter().enumerate() {
            let out = &mut out[(i0 + r) * ldc + start..][..width];
            match out.as_mut_array::<PANEL>() {
                Some(full) => store(sums, full),
                None => {
                    let mut row = [0.0; PANEL];
                    store(sums, &mut row);
                    out.copy_from_slice(&row[..width]);
                }
            }
        }
    }
}

/// Stores a panel's row of vectors.
#[inline(always)]
fn store<L: Lanes>(sums: &[L; VECTORS], out: &mut [f32; PANEL]) {
    for (v, chunk) in sums.iter().zip(out.as_chunks_mut::<LANES>().0) {
        v.store(chunk);
    }
}

/// Lanes of a [`Lanes`] vector.
const LANES: usize = 8;

/// [`LANES`] f32 that a tile computes with: an AVX2 vector, else an array.
trait Lanes: Copy {
    fn splat(x: f32) -> Self;
    fn load(v: &[f32; LANES]) -> Self;
    /// `self + a·b`, the product and the sum each rounded (no fused multiply-add).
    fn add_product(self, a: Self, b: Self) -> Self;
    fn store(self, out: &mut [f32; LANES]);
}

/// A panel's row as vectors.
#[inline(always)]
fn lanes<L: Lanes>(row: &[f32; PANEL]) -> [L; VECTORS] {
    let chunks = row.as_chunks::<LANES>().0;
    std::array::from_fn(|v| L::load(&chunks[v]))
}

impl Lanes for [f32; LANES] {
    #[inline(always)]
    fn splat(x: f32) -> Self {
        [x; LANES]
    }

    #[inline(always)]
    fn load(v: &[f32; LANES]) -> Self {
        *v
    }

    #[inline(always)]
    fn add_product(self, a: Self, b: Self) -> Self {
        std::array::from_fn(|i| self[i] + a[i] * b[i])
    }

    #[inline(always)]
    fn store(self, out: &mut [f32; LANES]) {
        *out = self;
    }
}

/// An AVX2 vector. Only [`gemm`]'s AVX2 path, entered once the CPU is known to have AVX2,
/// computes with it: that is what makes its intrinsics sound.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Avx2Lanes(std::arch::x86_64::__m256);

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2Lanes {
    #[inline(always)]
    fn splat(x: f32) -> Self {
        // SAFETY: AVX2 is available (see the type).
        Self(unsafe { std::arch::x86_64::_mm256_set1_ps(x) })
    }

    #[inline(always)]
    fn load(v: &[f32; LANES]) -> Self {
        // SAFETY: AVX2 is available (see the type); the load reads the 8 floats of `v`.
        Self(unsafe { std::arch::x86_64::_mm256_loadu_ps(v.as_ptr()) })
    }

    #[inline(always)]
    fn add_product(self, a: Self, b: Self) -> Self {
        use std::arch::x86_64::{_mm256_add_ps, _mm256_mul_ps};
        // SAFETY: AVX2 is available (see the type).
        Self(unsafe { _mm256_add_ps(self.0, _mm256_mul_ps(a.0, b.0)) })
    }

    #[inline(always)]
    fn store(self, out: &mut [f32; LANES]) {
        // SAFETY: AVX2 is available (see the type); the store writes the 8 floats of `out`.
        unsafe { std::arch::x86_64::_mm256_storeu_ps(out.as_mut_ptr(), self.0) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::synthetic::Rng;

    /// `len` values in `[-1, 1)`.
    pub(crate) fn values(rng: &mut Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.uniform(-1.0, 1.0)).collect()
    }

    /// Bit patterns, so that equality is exact (and -0.0 differs from 0.0).
    pub(crate) fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    proptest! {
        /// The portable lanes compute what the dispatched (here AVX2) ones do, bit for bit.
        #[test]
        fn portable_lanes_equal_the_dispatched_ones(
            rows in 1usize..14, depth in 1usize..20, cols in 1usize..40, per_row in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut rng = Rng::new(seed);
            let (a, bias) = (values(&mut rng, rows * depth), values(&mut rng, rows.max(cols)));
            let weights = values(&mut rng, cols * depth);
            let mut b = vec![0.0; panels(cols) * depth * PANEL];
            pack_panels(depth, cols, |p, j| weights[j * depth + p], &mut b);
            let product = Gemm {
                a: &a,
                rows,
                depth,
                b: Right::panels(&b, depth),
                cols: 0..cols,
                bias: if per_row { Bias::PerRow(&bias) } else { Bias::PerColumn(&bias) },
            };
            let (mut portable, mut dispatched) = (vec![0.0; rows * cols], vec![0.0; rows * cols]);
            gemm_in::<[f32; LANES]>(&product, &mut portable, cols);
            gemm(&product, &mut dispatched, cols);
            prop_assert_eq!(bits(&portable), bits(&dispatched));
        }

    }
}
