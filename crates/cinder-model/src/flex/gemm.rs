//! The `f32` matrix multiply behind the flex operations: the `gemm` crate (the multiply burn
//! flex uses) on strided slice views, single-threaded ([`matmul`]) or split into fixed blocks
//! over rayon's pool ([`par_matmul`]).
//!
//! [`par_matmul`] exists because the `gemm` crate's own threading scales poorly on a short,
//! wide product such as a linear layer's batch of 64 rows times 1,024 or 8,192 columns (on 2
//! threads it ran some of those shapes slower than on one); independent single-threaded
//! multiplies of column or row blocks run at twice the one-thread speed. The blocks do not
//! depend on the number of threads, so neither do the results.

use gemm::Parallelism;
use rayon::prelude::*;

/// Output rows per task when [`par_matmul`] splits by rows.
const ROW_BLOCK: usize = 512;
/// Output columns per task when [`par_matmul`] splits by columns.
const COLUMN_BLOCK: usize = 256;
/// Products with at most this many rows on the left and a row-major right operand run as
/// [`few_rows_matmul`].
const FEW_ROWS: usize = 4;
/// Rows of the right operand per task of [`few_rows_matmul`].
const DEPTH_BLOCK: usize = 1024;

/// A read-only matrix view: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major `rows × cols`.
    pub(crate) fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(crate) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// The view starting at row `row` and column `col`.
    fn from(self, row: usize, col: usize) -> Self {
        Self {
            data: &self.data[row * self.row_stride + col * self.col_stride..],
            ..self
        }
    }

    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst [m × n, row-major] = (dst if accumulate) + lhs [m × k] · rhs [k × n]`, single-threaded.
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
) {
    matmul_laid_out(m, n, k, (dst, Layout::RowMajor), accumulate, lhs, rhs);
}

/// How a product's `m × n` destination is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    RowMajor,
    ColumnMajor,
}

/// [`matmul`] into a destination stored as `layout` says.
fn matmul_laid_out(
    m: usize,
    n: usize,
    k: usize,
    (dst, layout): (&mut [f32], Layout),
    accumulate: bool,
    lhs: MatRef,
    rhs: MatRef,
) {
    assert!(
        dst.len() >= m * n && lhs.covers(m, k) && rhs.covers(k, n),
        "matmul: views too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let (dst_cs, dst_rs) = match layout {
        Layout::RowMajor => (1, n),
        Layout::ColumnMajor => (m, 1),
    };
    // SAFETY: the assertion above keeps every index gemm touches inside the three slices, and
    // `dst` is borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `dst [m × n, row-major, zeroed] += lhs [m × k] · rhs [k × n]` for a row-major `rhs`, one
/// row of `rhs` at a time: `dst_r += lhs[r, p] · rhs[p, ..]` for `p` in order.
fn row_updates(m: usize, n: usize, k: usize, dst: &mut [f32], lhs: MatRef, rhs: MatRef) {
    assert!(
        dst.len() >= m * n && lhs.covers(m, k) && rhs.covers(k, n) && rhs.col_stride == 1,
        "row_updates: views too short or rhs not row-major"
    );
    for p in 0..k {
        let rhs_row = &rhs.data[p * rhs.row_stride..][..n];
        for (r, dst_row) in dst.chunks_exact_mut(n.max(1)).take(m).enumerate() {
            let a = lhs.data[r * lhs.row_stride + p * lhs.col_stride];
            dst_row
                .iter_mut()
                .zip(rhs_row)
                .for_each(|(d, &b)| *d += a * b);
        }
    }
}

/// `lhs [m × k] · rhs [k × n]` for at most [`FEW_ROWS`] rows and a row-major `rhs`: the
/// depth split into fixed blocks of [`DEPTH_BLOCK`] rows of `rhs` on rayon's pool, each
/// block's [`row_updates`] summed in block order.
///
/// A product of one or a few rows (a linear layer at batch 1) is one pass over `rhs`, bound
/// by memory: each task streams a contiguous run of `rhs` rows. The `gemm` crate's path for
/// a single row strode across `rhs` and ran fc1's 8192 × 1024 at a few GFLOP/s, most of the
/// reference ConvNet's batch-1 forward.
fn few_rows_matmul(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef) -> Vec<f32> {
    let parts: Vec<Vec<f32>> = (0..k.div_ceil(DEPTH_BLOCK))
        .into_par_iter()
        .map(|block| {
            let first = block * DEPTH_BLOCK;
            let depth = DEPTH_BLOCK.min(k - first);
            let mut part = vec![0.0; m * n];
            row_updates(
                m,
                n,
                depth,
                &mut part,
                lhs.from(0, first),
                rhs.from(first, 0),
            );
            part
        })
        .collect();
    sum_in_order(parts, m * n)
}

/// The element-wise sum of `parts` (each `len` long), added in order: a sum over fixed
/// blocks that does not depend on the number of threads.
pub(crate) fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut total = parts.next().unwrap_or_else(|| vec![0.0; len]);
    for part in parts {
        total.iter_mut().zip(&part).for_each(|(t, p)| *t += p);
    }
    total
}

/// `lhs [m × k] · rhs [k × n]` as a new row-major `m × n` matrix, computed in blocks of
/// [`ROW_BLOCK`] rows (when `m ≥ n`) or [`COLUMN_BLOCK`] columns on rayon's pool, or by
/// [`few_rows_matmul`].
pub(crate) fn par_matmul(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef) -> Vec<f32> {
    if m <= FEW_ROWS && rhs.col_stride == 1 && m * n > 0 {
        return few_rows_matmul(m, n, k, lhs, rhs);
    }
    let mut dst = vec![0.0; m * n];
    if m == 0 || n == 0 {
        return dst;
    }
    if m >= n {
        dst.par_chunks_mut(ROW_BLOCK * n)
            .enumerate()
            .for_each(|(block, rows)| {
                let lhs = lhs.from(block * ROW_BLOCK, 0);
                matmul(rows.len() / n, n, k, rows, false, lhs, rhs);
            });
        return dst;
    }
    // A right operand contiguous along the depth (a transposed row-major weight) is what
    // the `gemm` crate's kernels read in place when the block is column-major; into a
    // row-major block the crate transposes the product and packs that operand, a copy of
    // the whole weight per product (13% of a reference ConvNet training step for fc1's
    // input gradient).
    let layout = match rhs.row_stride {
        1 => Layout::ColumnMajor,
        _ => Layout::RowMajor,
    };
    let blocks: Vec<Vec<f32>> = (0..n.div_ceil(COLUMN_BLOCK))
        .into_par_iter()
        .map(|block| {
            let first = block * COLUMN_BLOCK;
            let width = COLUMN_BLOCK.min(n - first);
            let mut out = vec![0.0; m * width];
            let rhs = rhs.from(0, first);
            matmul_laid_out(m, width, k, (&mut out, layout), false, lhs, rhs);
            out
        })
        .collect();
    for (block, values) in blocks.iter().enumerate() {
        let width = values.len() / m;
        let rows = dst
            .chunks_exact_mut(n)
            .map(|row| &mut row[block * COLUMN_BLOCK..][..width]);
        for (r, row) in rows.enumerate() {
            match layout {
                Layout::RowMajor => row.copy_from_slice(&values[r * width..][..width]),
                Layout::ColumnMajor => {
                    let column_values = values[r..].iter().step_by(m);
                    row.iter_mut().zip(column_values).for_each(|(d, &v)| *d = v);
                }
            }
        }
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7 + seed) % 13) as f32 - 6.0)
            .collect()
    }

    /// The defining sum, exact for these small integers.
    fn reference(m: usize, n: usize, k: usize, lhs: MatRef, rhs: MatRef) -> Vec<f32> {
        let at = |v: MatRef, r: usize, c: usize| v.data[r * v.row_stride + c * v.col_stride];
        (0..m * n)
            .map(|i| (0..k).map(|p| at(lhs, i / n, p) * at(rhs, p, i % n)).sum())
            .collect()
    }

    /// [`par_matmul`] of small integers, with each operand row-major or transposed, equals
    /// the defining sum exactly.
    fn check_product(m: usize, n: usize, k: usize, [lhs_t, rhs_t]: [bool; 2], seed: usize) {
        let a = values(m * k, seed);
        let b = values(k * n, seed + 5);
        let lhs = match lhs_t {
            true => MatRef::transposed(&a, m),
            false => MatRef::rows(&a, k),
        };
        let rhs = match rhs_t {
            true => MatRef::transposed(&b, k),
            false => MatRef::rows(&b, n),
        };
        assert_eq!(par_matmul(m, n, k, lhs, rhs), reference(m, n, k, lhs, rhs));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn blocks_over_the_pool_equal_the_defining_sum(
            m in 1usize..1100,
            n in 1usize..600,
            k in 1usize..6,
            transposed in any::<[bool; 2]>(),
            seed in 0usize..13,
        ) {
            check_product(m, n, k, transposed, seed);
        }

        #[test]
        fn few_rows_equal_the_defining_sum(
            m in 1usize..=FEW_ROWS + 1,
            n in 1usize..600,
            k in 1usize..2100,
            transposed in any::<[bool; 2]>(),
            seed in 0usize..13,
        ) {
            check_product(m, n, k, transposed, seed);
        }
    }
}
