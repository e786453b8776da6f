//! The runtime's arithmetic written out plainly over one NCHW sample, generic over the
//! number type (f32 for float layers and the float forward, i64 for the reference
//! interpreter's exact integer sums): convolution, linear, max-pooling.
//!
//! Nothing here is fast: this is the definition the fast paths are checked against. The
//! session runs float (unquantized) layers of a partially quantized model as a GEMM with
//! this arithmetic, summed in the same order ([`crate::plan`]), so that they equal it bit
//! for bit.

use std::ops::{Add, Mul};

use crate::geometry::{Geometry, Window, chw};

/// What a multiply-accumulate needs.
pub(crate) trait Mac: Copy + Default + Add<Output = Self> + Mul<Output = Self> {}
impl<T: Copy + Default + Add<Output = T> + Mul<Output = T>> Mac for T {}

/// Direct convolution of one `[c, h, w]` sample with `weight [o, c, k, k]`:
/// `out[o, y, x] = bias[o] + sum_{ci, ky, kx} in[ci, y*s + ky - p, x*s + kx - p] * w[o, ci, ky, kx]`,
/// taps outside the input contributing nothing, summed in that order.
pub(crate) fn conv2d<T: Mac>(
    input: &[T],
    [c, h, w]: [usize; 3],
    weight: &[T],
    bias: &[T],
    window: Window,
    out: &mut [T],
) {
    let k = window.kernel;
    let (oh, ow) = window.output(h, w);
    let tap =
        |pos: usize, offset: usize| (pos * window.stride + offset).checked_sub(window.padding);
    for (o, &b) in bias.iter().enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b;
                for ci in 0..c {
                    for ky in 0..k {
                        let Some(iy) = tap(oy, ky).filter(|&iy| iy < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = tap(ox, kx).filter(|&ix| ix < w) else {
                                continue;
                            };
                            acc = acc
                                + input[(ci * h + iy) * w + ix]
                                    * weight[((o * c + ci) * k + ky) * k + kx];
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

/// `out[o] = bias[o] + sum_i in[i] * weight[o, i]`, summed in index order.
pub(crate) fn linear<T: Mac>(input: &[T], weight: &[T], bias: &[T], out: &mut [T]) {
    for ((o, row), &b) in out
        .iter_mut()
        .zip(weight.chunks_exact(input.len()))
        .zip(bias)
    {
        *o = row.iter().zip(input).fold(b, |acc, (&w, &x)| acc + x * w);
    }
}

/// Max over each `kernel x kernel` window (no padding) of one `[c, h, w]` sample.
pub(crate) fn max_pool2d<T: Copy + PartialOrd>(
    input: &[T],
    [c, h, w]: [usize; 3],
    kernel: usize,
    stride: usize,
    out: &mut [T],
) {
    let window = Window {
        kernel,
        stride,
        padding: 0,
    };
    let (oh, ow) = window.output(h, w);
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
        .take(c)
    {
        for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
            // The window's rows, each from its first column; windows step by `stride`.
            let rows = &plane[oy * stride * w..][..(kernel - 1) * w + (ow - 1) * stride + kernel];
            for (ox, o) in out_row.iter_mut().enumerate() {
                let mut m = rows[ox * stride];
                for ky in 0..kernel {
                    for &v in &rows[ky * w + ox * stride..][..kernel] {
                        if v > m {
                            m = v;
                        }
                    }
                }
                *o = m;
            }
        }
    }
}

/// `max(x, 0)`.
pub(crate) fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// Applies `f(sample_in, sample_out)` to every sample of a batch.
pub(crate) fn map_samples<T: Copy, U: Copy + Default>(
    input: &[T],
    batch: usize,
    out_len: usize,
    mut f: impl FnMut(&[T], &mut [U]),
) -> Vec<U> {
    let mut out = vec![U::default(); batch * out_len];
    if out_len > 0 {
        for (x, y) in input
            .chunks_exact(input.len() / batch)
            .zip(out.chunks_exact_mut(out_len))
        {
            f(x, y);
        }
    }
    out
}

/// A convolution or linear layer over a whole batch of `batch` samples.
pub(crate) fn weighted_forward<T: Mac>(
    geometry: Geometry,
    x: &[T],
    batch: usize,
    out_len: usize,
    weight: &[T],
    bias: &[T],
) -> Vec<T> {
    map_samples(x, batch, out_len, |s, o| match geometry {
        Geometry::Conv { input, window } => conv2d(s, input, weight, bias, window, o),
        Geometry::Linear => linear(s, weight, bias, o),
    })
}

/// Max-pooling over a whole batch.
pub(crate) fn pool_forward<T: Copy + PartialOrd + Default>(
    x: &[T],
    batch: usize,
    in_shape: &[usize],
    out_len: usize,
    kernel: usize,
    stride: usize,
) -> Vec<T> {
    map_samples(x, batch, out_len, |s, o| {
        max_pool2d(s, chw(in_shape), kernel, stride, o)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One 3x3 input channel, two 2x2 filters, padding 1, stride 2, worked by hand.
    #[test]
    fn tiny_conv_by_hand() {
        #[rustfmt::skip]
        let input = [
            1.0, 2.0, 3.0,
            4.0, 5.0, 6.0,
            7.0, 8.0, 9.0f32,
        ];
        // filter 0: [[1, 0], [0, -1]], bias 0.5; filter 1: all 1, bias 0.
        let weight = [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0, 1.0f32];
        let bias = [0.5, 0.0f32];
        let window = Window {
            kernel: 2,
            stride: 2,
            padding: 1,
        };
        assert_eq!(window.output(3, 3), (2, 2));
        let mut out = [0f32; 8];
        conv2d(&input, [1, 3, 3], &weight, &bias, window, &mut out);
        // Padded input rows/cols -1..=3; outputs at (-1,-1), (-1,1), (1,-1), (1,1).
        // filter 0 at (y0, x0) = x[y0][x0] - x[y0+1][x0+1] + 0.5:
        //   (-1,-1): 0 - 1 + .5; (-1,1): 0 - 3 + .5; (1,-1): 0 - 7 + .5; (1,1): 5 - 9 + .5
        // filter 1 sums the window: 1; 2+3; 4+7; 5+6+8+9.
        assert_eq!(out, [-0.5, -2.5, -6.5, -3.5, 1.0, 5.0, 11.0, 28.0]);
    }

    #[test]
    fn linear_and_pool_by_hand() {
        let mut out = [0f32; 2];
        linear(
            &[1.0, 2.0, 3.0],
            &[1.0, 0.0, -1.0, 0.5, 0.5, 0.5],
            &[10.0, 0.0],
            &mut out,
        );
        assert_eq!(out, [8.0, 3.0]);
        let mut pooled = [0i64; 2];
        max_pool2d(
            &[1, 5, 2, 0, 3, 4, -1, -2, 7, 8, 9, 6],
            [1, 3, 4],
            2,
            2,
            &mut pooled,
        );
        // Rows 0-1 only (the third row is left over by the window): [1 5 | 2 0] / [3 4 | -1 -2].
        assert_eq!(pooled, [5, 2]);
    }

    proptest::proptest! {
        /// Every window's maximum (first of equal values), by the definition.
        #[test]
        fn max_pool_takes_each_windows_maximum(
            c in 1usize..4, h in 1usize..9, w in 1usize..9, kernel in 1usize..4,
            stride in 1usize..4, seed in proptest::num::u64::ANY,
        ) {
            proptest::prop_assume!(kernel <= h && kernel <= w);
            let mut rng = crate::synthetic::Rng::new(seed);
            let input: Vec<i32> = (0..c * h * w).map(|_| (rng.next_u64() % 7) as i32).collect();
            let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
            let mut out = vec![0; c * oh * ow];
            max_pool2d(&input, [c, h, w], kernel, stride, &mut out);
            for (i, &got) in out.iter().enumerate() {
                let (ci, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                let at = |ky: usize, kx: usize| input[(ci * h + oy * stride + ky) * w + ox * stride + kx];
                let want = (0..kernel).flat_map(|ky| (0..kernel).map(move |kx| (ky, kx))).map(|(ky, kx)| at(ky, kx)).max().unwrap();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
