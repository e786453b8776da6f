//! The f32 matrix product of AdaRound's reconstruction objective (Gram matrices of a
//! layer's inputs, the layer's output on a mini-batch, and the gradient), over slices
//! viewed as matrices with any row and column stride: matrixmultiply's `sgemm`
//! (runtime-detected AVX2/FMA kernels), behind one safe, bounds-checked call.

/// A matrix over a slice: element `(r, c)` is `data[r * row_stride + c * col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> View<'a> {
    /// `data` as a row-major `rows x cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element lies inside the slice.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `c = alpha * a * b + beta * c`, with `c` row-major `a.rows x b.cols`.
///
/// # Panics
/// When the shapes disagree or a view reaches past its slice (a bug of the caller:
/// every view here is built from the layer's own dimensions).
pub(crate) fn gemm(alpha: f32, a: View<'_>, b: View<'_>, beta: f32, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(
        b.rows == k && c.len() == m * n && a.fits() && b.fits(),
        "gemm of {m}x{k} by {}x{n} into {} elements",
        b.rows,
        c.len()
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.iter_mut().for_each(|v| *v *= beta);
        return;
    }
    let stride = |s: usize| isize::try_from(s).expect("a slice's stride fits isize");
    // SAFETY: the assertion above keeps every element that sgemm reads (a: m x k, b:
    // k x n, at their strides) inside its slice, and c is exactly m x n row-major;
    // c does not alias a or b (a unique borrow against shared ones).
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            alpha,
            a.data.as_ptr(),
            stride(a.row_stride),
            stride(a.col_stride),
            b.data.as_ptr(),
            stride(b.row_stride),
            stride(b.col_stride),
            beta,
            c.as_mut_ptr(),
            stride(n),
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_runtime::synthetic::Rng;
    use cinder_tensor::Tensor;
    use proptest::prelude::*;

    fn naive(a: View<'_>, b: View<'_>) -> Vec<f32> {
        let at = |v: &View<'_>, r: usize, c: usize| v.data[r * v.row_stride + c * v.col_stride];
        let mut out = vec![0.0; a.rows * b.cols];
        for r in 0..a.rows {
            for c in 0..b.cols {
                out[r * b.cols + c] = (0..a.cols).map(|i| at(&a, r, i) * at(&b, i, c)).sum();
            }
        }
        out
    }

    proptest! {
        #[test]
        fn matches_the_naive_product_with_transposes(
            m in 1usize..9, k in 0usize..40, n in 1usize..9, seed: u64,
            ta: bool, tb: bool,
        ) {
            let mut rng = Rng::new(seed);
            let a_data = rng.tensor(vec![m * k], 1.0).data().to_vec();
            let b_data = rng.tensor(vec![k * n], 1.0).data().to_vec();
            let a = if ta { View::row_major(&a_data, k, m).t() } else { View::row_major(&a_data, m, k) };
            let b = if tb { View::row_major(&b_data, n, k).t() } else { View::row_major(&b_data, k, n) };
            let mut c = vec![1.0; m * n];
            gemm(2.0, a, b, 0.5, &mut c);
            let want = naive(a, b);
            for (got, w) in c.iter().zip(&want) {
                prop_assert!((got - (2.0 * w + 0.5)).abs() <= 1e-4 * (1.0 + w.abs()), "{got} vs {w}");
            }
        }
    }
}
