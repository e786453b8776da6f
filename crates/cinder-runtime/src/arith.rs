//! The runtime's arithmetic written out plainly over one NCHW sample, generic over the
//! number type (f32 for float layers and the float forward, i64 for the reference
//! interpreter's exact integer sums): convolution (any window, groups), linear, and the
//! reduction of each pooling window.
//!
//! Nothing here is fast: this is the definition the fast paths are checked against. The
//! session runs float (unquantized) layers of a partially quantized model as a GEMM with
//! this arithmetic, summed in the same order ([`crate::plan`]), so that they equal it bit
//! for bit.

use std::ops::{Add, Mul};

use crate::geometry::{Geometry, Window};
use crate::kernels::div_round_even;

/// What a multiply-accumulate needs.
pub(crate) trait Mac: Copy + Default + Add<Output = Self> + Mul<Output = Self> {}
impl<T: Copy + Default + Add<Output = T> + Mul<Output = T>> Mac for T {}

/// The input position along axis `i` of `window`'s tap `t` at output position `o`, if
/// it is inside `0..size`.
fn tap(window: &Window, i: usize, o: usize, t: usize, size: usize) -> Option<usize> {
    (o * window.stride[i] + t)
        .checked_sub(window.padding[i])
        .filter(|&p| p < size)
}

/// Direct convolution of one `[c, h, w]` sample with `weight [o, c / groups, kh, kw]`:
/// `out[o, y, x] = bias[o] + Σ_{ci, ky, kx} in[g·c/groups + ci, y·s + ky - p, x·s + kx - p]
/// · w[o, ci, ky, kx]` (`g` the group of `o`), taps outside the input contributing
/// nothing, summed in that order.
pub(crate) fn conv2d<T: Mac>(
    input: &[T],
    [c, h, w]: [usize; 3],
    weight: &[T],
    bias: &[T],
    (window, groups): (Window, usize),
    out: &mut [T],
) {
    let [kh, kw] = window.kernel;
    let (oh, ow) = window.output(h, w);
    let (cg, og) = (c / groups, bias.len() / groups);
    for (o, &b) in bias.iter().enumerate() {
        let first = o / og * cg;
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b;
                for ci in 0..cg {
                    let plane = &input[(first + ci) * h * w..][..h * w];
                    let filter = &weight[(o * cg + ci) * kh * kw..][..kh * kw];
                    for ky in 0..kh {
                        let Some(iy) = tap(&window, 0, oy, ky, h) else {
                            continue;
                        };
                        for kx in 0..kw {
                            let Some(ix) = tap(&window, 1, ox, kx, w) else {
                                continue;
                            };
                            acc = acc + plane[iy * w + ix] * filter[ky * kw + kx];
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

/// `reduce(taps)` of every window over one `[c, h, w]` sample, the taps inside the input
/// in `(ky, kx)` order (padding taps are left out; every window holds one inside);
/// `taps` is scratch.
pub(crate) fn pool2d<T: Copy>(
    input: &[T],
    [c, h, w]: [usize; 3],
    window: Window,
    out: &mut [T],
    (taps, mut reduce): (&mut Vec<T>, impl FnMut(&[T]) -> T),
) {
    let [kh, kw] = window.kernel;
    let (oh, ow) = window.output(h, w);
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
        .take(c)
    {
        for (i, o) in out_plane.iter_mut().enumerate() {
            let (oy, ox) = (i / ow, i % ow);
            taps.clear();
            for iy in (0..kh).filter_map(|ky| tap(&window, 0, oy, ky, h)) {
                let row = (0..kw).filter_map(|kx| tap(&window, 1, ox, kx, w));
                taps.extend(row.map(|ix| plane[iy * w + ix]));
            }
            *o = reduce(taps);
        }
    }
}

/// The maximum of `values`: the first, replaced by each later one that is greater (so
/// the first of equal values, and a NaN where the window starts with one).
pub(crate) fn first_max<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut m = values[0];
    for &v in &values[1..] {
        if v > m {
            m = v;
        }
    }
    m
}

/// Max-pooling of one `[c, h, w]` sample (the tests' definition).
#[cfg(test)]
pub(crate) fn max_pool2d<T: Copy + PartialOrd>(
    input: &[T],
    chw: [usize; 3],
    window: Window,
    out: &mut [T],
) {
    pool2d(input, chw, window, out, (&mut Vec::new(), first_max));
}

/// Which reduction a pooling window applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolKind {
    Max,
    /// The mean; the divisor is the window's size when `include_pad`, else the taps
    /// inside the input.
    Avg {
        include_pad: bool,
    },
}

/// A value that can be pooled: the mean of float values, or of int8 codes around their
/// zero point.
pub(crate) trait Poolable: Copy + PartialOrd + Default {
    /// The mean of `taps` over `count`; `zero_point` is real 0 for codes.
    fn mean(taps: &[Self], count: usize, zero_point: Self) -> Self;
}

impl Poolable for f32 {
    /// `Σ taps / count`, summed in order from 0.
    fn mean(taps: &[f32], count: usize, _: f32) -> f32 {
        taps.iter().fold(0.0, |a, &v| a + v) / count as f32
    }
}

impl Poolable for i32 {
    /// `zp + round(Σ (q - zp) / count)`, ties to even (see [`crate::kernels`] `pool`).
    fn mean(taps: &[i32], count: usize, zero_point: i32) -> i32 {
        let sum = taps.iter().map(|&q| q - zero_point).sum();
        zero_point + div_round_even(sum, count as i32)
    }
}

/// The pool of one `[c, h, w]` sample (`zero_point`: see [`Poolable`]; `taps`: scratch).
pub(crate) fn pool_sample<T: Poolable>(
    input: &[T],
    out: &mut [T],
    (shape, window, kind): ([usize; 3], Window, PoolKind),
    (zero_point, taps): (T, &mut Vec<T>),
) {
    let reduce = |taps: &[T]| match kind {
        PoolKind::Max => first_max(taps),
        PoolKind::Avg { include_pad } => {
            let count = if include_pad {
                window.taps()
            } else {
                taps.len()
            };
            T::mean(taps, count, zero_point)
        }
    };
    pool2d(input, shape, window, out, (taps, reduce))
}

/// [`pool_sample`] over a whole batch.
pub(crate) fn pool_forward<T: Poolable>(
    x: &[T],
    batch: usize,
    pool: ([usize; 3], Window, PoolKind),
    out_len: usize,
    zero_point: T,
) -> Vec<T> {
    let mut taps = Vec::new();
    map_samples(x, batch, out_len, |s, o| {
        pool_sample(s, o, pool, (zero_point, &mut taps))
    })
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
        Geometry::Conv {
            input,
            window,
            groups,
        } => conv2d(s, input, weight, bias, (window, groups), o),
        Geometry::Linear => linear(s, weight, bias, o),
    })
}

/// The samples of several batches joined along dimension 0 (channels): each output
/// sample is the inputs' samples one after the other.
pub(crate) fn concat_samples<T: Copy + Default>(inputs: &[&[T]], batch: usize) -> Vec<T> {
    let total: usize = inputs.iter().map(|x| x.len()).sum();
    let mut out = Vec::with_capacity(total);
    for b in 0..batch {
        for x in inputs {
            let per = x.len() / batch;
            out.extend_from_slice(&x[b * per..][..per]);
        }
    }
    out
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
        let window = Window::square(2, 2, 1);
        assert_eq!(window.output(3, 3), (2, 2));
        let mut out = [0f32; 8];
        conv2d(&input, [1, 3, 3], &weight, &bias, (window, 1), &mut out);
        // Padded input rows/cols -1..=3; outputs at (-1,-1), (-1,1), (1,-1), (1,1).
        // filter 0 at (y0, x0) = x[y0][x0] - x[y0+1][x0+1] + 0.5:
        //   (-1,-1): 0 - 1 + .5; (-1,1): 0 - 3 + .5; (1,-1): 0 - 7 + .5; (1,1): 5 - 9 + .5
        // filter 1 sums the window: 1; 2+3; 4+7; 5+6+8+9.
        assert_eq!(out, [-0.5, -2.5, -6.5, -3.5, 1.0, 5.0, 11.0, 28.0]);
    }

    /// Two channels, two groups (depthwise): each output reads its own channel.
    #[test]
    fn depthwise_conv_by_hand() {
        let input = [1, 2, 3, 4, 10, 20, 30, 40i64];
        let weight = [1, 0, 0, 1, 0, 1, 1, 0i64];
        let mut out = [0i64; 2];
        let window = Window::square(2, 1, 0);
        conv2d(&input, [2, 2, 2], &weight, &[0, 1], (window, 2), &mut out);
        assert_eq!(out, [1 + 4, 1 + 20 + 30]);
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
        let window = Window::square(2, 2, 0);
        max_pool2d(
            &[1, 5, 2, 0, 3, 4, -1, -2, 7, 8, 9, 6],
            [1, 3, 4],
            window,
            &mut pooled,
        );
        // Rows 0-1 only (the third row is left over by the window): [1 5 | 2 0] / [3 4 | -1 -2].
        assert_eq!(pooled, [5, 2]);
        // Padded by 1 with stride 2 over 1x3: windows [-1, 0] and [1, 2] along x.
        let mut padded = [0i64; 2];
        let window = Window {
            kernel: [1, 2],
            stride: [1, 2],
            padding: [0, 1],
        };
        max_pool2d(&[-7, -3, -5], [1, 1, 3], window, &mut padded);
        assert_eq!(padded, [-7, -3]);
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
            max_pool2d(&input, [c, h, w], Window::square(kernel, stride, 0), &mut out);
            for (i, &got) in out.iter().enumerate() {
                let (ci, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                let at = |ky: usize, kx: usize| input[(ci * h + oy * stride + ky) * w + ox * stride + kx];
                let want = (0..kernel).flat_map(|ky| (0..kernel).map(move |kx| (ky, kx))).map(|(ky, kx)| at(ky, kx)).max().unwrap();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
