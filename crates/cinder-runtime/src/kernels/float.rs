//! f32 kernels of the float side of the engine: quantizing a float image into int8 codes
//! (NCHW -> NHWC), the im2col matrix of a float convolution, and the 2×2 max-pool of
//! float images. Each does exactly what the plain definition does, in the same order.

use std::ops::Range;

use cinder_tensor::QuantParams;

use super::isa::dispatch;
use super::work::Vectorizable;
use crate::geometry::Window;

/// `y = q(x)`, NCHW -> NHWC when `chw` is given (else element order kept); returns
/// whether every value of `x` was finite (`q` maps NaN to the zero point and clamps
/// infinities, so a caller that must reject them checks this).
pub(crate) fn quantize_f32_s8(
    x: &[f32],
    chw: Option<[usize; 3]>,
    p: &QuantParams,
    y: &mut [i8],
) -> bool {
    dispatch(Quantize { x, chw, p, y })
}

/// Pixels quantized per block before they are interleaved into NHWC: the rounding runs
/// over a plane's contiguous values (vectorized), the transpose over a block in L1.
const QUANTIZE_BLOCK: usize = 64;

/// The work of [`quantize_f32_s8`].
struct Quantize<'a> {
    x: &'a [f32],
    chw: Option<[usize; 3]>,
    p: &'a QuantParams,
    y: &'a mut [i8],
}

impl Vectorizable for Quantize<'_> {
    type Output = bool;

    #[inline(always)]
    fn run(self) -> bool {
        let Self { x, chw, p, y } = self;
        let q = |v: f32| p.quantize(v) as i8;
        let Some([c, h, w]) = chw else {
            in_order(x, q, y);
            return all_finite(&x[..y.len().min(x.len())]);
        };
        let hw = h * w;
        match c {
            1 => in_order(&x[..hw], q, y),
            2 => few_channels::<2>(x, hw, q, y),
            3 => few_channels::<3>(x, hw, q, y),
            4 => few_channels::<4>(x, hw, q, y),
            _ => by_plane(x, [c, hw], q, y),
        }
        all_finite(&x[..c * hw])
    }
}

/// Whether no value of `x` is NaN or infinite: their exponent bits are all ones. A
/// separate pass over values just read (in cache): the maximum of the exponents is an
/// integer reduction that vectorizes, once per image rather than per block.
#[inline(always)]
fn all_finite(x: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    x.iter().fold(0, |m: u32, v| m.max(v.to_bits() & EXPONENT)) != EXPONENT
}

/// `y[i] = q(x[i])`.
#[inline(always)]
fn in_order(x: &[f32], q: impl Fn(f32) -> i8, y: &mut [i8]) {
    y.iter_mut().zip(x).for_each(|(o, &v)| *o = q(v));
}

/// [`quantize_f32_s8`] of `C` planes of `hw` values: a block of each plane's codes, then
/// the block's pixels whole (`C` known, so the interleaving is vector shuffles rather
/// than a byte store per value).
#[inline(always)]
fn few_channels<const C: usize>(x: &[f32], hw: usize, q: impl Fn(f32) -> i8, y: &mut [i8]) {
    let mut planar = [[0i8; QUANTIZE_BLOCK]; C];
    for p0 in (0..hw).step_by(QUANTIZE_BLOCK) {
        let len = QUANTIZE_BLOCK.min(hw - p0);
        for (ci, codes) in planar.iter_mut().enumerate() {
            in_order(&x[ci * hw + p0..][..len], &q, codes);
        }
        let pixels = y[p0 * C..(p0 + len) * C].chunks_exact_mut(C);
        for (i, px) in pixels.enumerate() {
            for (ci, v) in px.iter_mut().enumerate() {
                *v = planar[ci][i];
            }
        }
    }
}

/// [`quantize_f32_s8`] of `c` planes of `hw` values: a block of one plane's codes at a
/// time, scattered into the block's pixels.
#[inline(always)]
fn by_plane(x: &[f32], [c, hw]: [usize; 2], q: impl Fn(f32) -> i8, y: &mut [i8]) {
    let mut planar = [0i8; QUANTIZE_BLOCK];
    for p0 in (0..hw).step_by(QUANTIZE_BLOCK) {
        let len = QUANTIZE_BLOCK.min(hw - p0);
        let out = &mut y[p0 * c..(p0 + len) * c];
        for ci in 0..c {
            in_order(&x[ci * hw + p0..][..len], &q, &mut planar[..len]);
            for (px, &v) in out.chunks_exact_mut(c).zip(&planar[..len]) {
                px[ci] = v;
            }
        }
    }
}

/// The im2col matrix of one NCHW image: a row per tap in `(c, ky, kx)` order (`row_stride`
/// apart), a column per output pixel, 0 for taps in the padding. The columns past the
/// last pixel keep what they held: their sums are never written.
pub(crate) fn im2col_f32(
    image: &[f32],
    [c, h, w]: [usize; 3],
    window: Window,
    row_stride: usize,
    out: &mut [f32],
) {
    let (oh, ow) = window.output(h, w);
    let ([kh, kw], [sh, sw], [ph, pw]) = (window.kernel, window.stride, window.padding);
    let taps =
        (0..c).flat_map(|ci| (0..kh).flat_map(move |ky| (0..kw).map(move |kx| (ci, ky, kx))));
    for ((ci, ky, kx), row) in taps.zip(out.chunks_exact_mut(row_stride)) {
        let (ys, xs) = (inside(oh, h, ky, sh, ph), inside(ow, w, kx, sw, pw));
        for (oy, pixels) in row[..oh * ow].chunks_exact_mut(ow).enumerate() {
            if !ys.contains(&oy) || xs.is_empty() {
                pixels.fill(0.0);
                continue;
            }
            let input = &image[(ci * h + oy * sh + ky - ph) * w..][..w];
            pixels[..xs.start].fill(0.0);
            pixels[xs.end..].fill(0.0);
            let first = xs.start * sw + kx - pw;
            for (o, &v) in pixels[xs.clone()]
                .iter_mut()
                .zip(input[first..].iter().step_by(sw))
            {
                *o = v;
            }
        }
    }
}

/// The output positions (`0..out` along an axis) whose tap at `offset` falls inside the
/// input (`0..size`): `pos * stride + offset - padding` in `0..size`.
fn inside(out: usize, size: usize, offset: usize, stride: usize, padding: usize) -> Range<usize> {
    let first = padding.saturating_sub(offset).div_ceil(stride).min(out);
    let end = (size + padding).saturating_sub(offset).div_ceil(stride);
    first..end.clamp(first, out)
}

/// [`crate::arith::max_pool2d`] of 2×2 windows at stride 2 (the common pool), a row pair at a time: the
/// same comparisons in the same order, so the same result (the first of equal values, a
/// NaN where the window starts with one).
pub(crate) fn max_pool2x2_f32(input: &[f32], [c, h, w]: [usize; 3], out: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
        .take(c)
    {
        for (rows, out_row) in plane
            .chunks_exact(2 * w)
            .zip(out_plane.chunks_exact_mut(ow))
        {
            let (top, bottom) = rows.split_at(w);
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            for (o, (t, b)) in out_row.iter_mut().zip(windows) {
                let mut m = t[0];
                for v in [t[1], b[0], b[1]] {
                    if v > m {
                        m = v;
                    }
                }
                *o = m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arith::max_pool2d;
    use crate::kernels::sgemm::tests::bits;

    proptest! {
        /// Values with ties, signed zeros and NaN, which the order of comparisons decides.
        #[test]
        fn max_pool2x2_f32_equals_max_pool2d(
            c in 1usize..4, h in 2usize..9, w in 2usize..9,
            picks in prop::collection::vec(0usize..6, 3 * 8 * 8),
        ) {
            let pool = [1.0, -1.0, 0.0, -0.0, f32::NAN, 2.5];
            let input: Vec<f32> = picks[..c * h * w].iter().map(|&i| pool[i]).collect();
            let len = c * (h / 2) * (w / 2);
            let (mut fast, mut plain) = (vec![0.0; len], vec![0.0; len]);
            max_pool2x2_f32(&input, [c, h, w], &mut fast);
            max_pool2d(&input, [c, h, w], Window::square(2, 2, 0), &mut plain);
            prop_assert_eq!(bits(&fast), bits(&plain));
        }

        #[test]
        fn inside_is_where_taps_hit_the_input(
            out in 0usize..8, size in 1usize..8, offset in 0usize..4, stride in 1usize..4,
            padding in 0usize..3,
        ) {
            let range = inside(out, size, offset, stride, padding);
            for pos in 0..out {
                let hit = (pos * stride + offset).checked_sub(padding).is_some_and(|i| i < size);
                prop_assert_eq!(range.contains(&pos), hit, "{}", pos);
            }
        }
    }
}
