//! Portable code of the generic path: the micro-kernel (plain i32 arithmetic the
//! compiler may vectorize, for every panel layout), the scalar output stage, the
//! depthwise convolution along channels and the direct convolution.

use std::ops::Range;

use super::reference;
use crate::kernels::NhwcWindow;
use crate::kernels::direct::{DIRECT_BLOCK, DirectFilter, QUAD};
use crate::kernels::output::OutputStage;
use crate::kernels::pack::{LhsElem, NR, PanelRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};

/// The portable micro-kernel.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Portable;

impl<P: PanelRow> MicroKernel<P> for Portable {
    const ROWS: usize = 6;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, P::Lhs>, panel: &[P], mut out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        let mut acc = [*out.start.unwrap_or(&[0; NR]); R];
        let g = P::GROUP;
        for (p, row) in panel.iter().enumerate() {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a_r = &a.data[r * a.stride + g * p..][..g];
                for (j, v) in acc_r.iter_mut().enumerate() {
                    for (t, x) in a_r.iter().enumerate() {
                        *v = v.wrapping_add(x.value() * row.weight(g * j + t));
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            out.put_row(r, row);
        }
    }
}

/// The scalar output stage for channels `from..` of every row.
pub(in crate::kernels) fn requantize_rows(
    stage: &OutputStage<'_>,
    acc: &[i32],
    acc_ld: usize,
    rows: usize,
    from: usize,
    out: &mut [i8],
    out_ld: usize,
) {
    let n = stage.channels();
    for i in 0..rows {
        for j in from..n {
            let (zp, lo, hi) = (stage.zp_out, stage.lo, stage.hi);
            out[i * out_ld + j] = reference::requantize_one(
                acc[i * acc_ld + j],
                stage.bias[j],
                stage.multiplier(j),
                zp,
                lo,
                hi,
            );
        }
    }
}

/// Depthwise sums of output rows `rows` into `out` (see
/// [`crate::kernels::depthwise_nhwc_s8`]), from the `[tap][c]` centred weights: per
/// output pixel, the taps inside the image, each a loop along the channels, contiguous in
/// both operands (the compiler vectorizes it). Operands checked by the caller.
pub(in crate::kernels) fn depthwise_rows(
    image: &[i8],
    shape: &NhwcWindow,
    zp_in: i8,
    centred: &[i16],
    rows: Range<usize>,
    out: &mut [i32],
) {
    let [_, w, c] = shape.input;
    let [_, ow] = shape.output();
    let kw = shape.kernel[1];
    let zp = i32::from(zp_in);
    for (r, oy) in rows.enumerate() {
        let ys = shape.taps(0, oy);
        for ox in 0..ow {
            let acc = &mut out[(r * ow + ox) * c..][..c];
            acc.fill(0);
            let xs = shape.taps(1, ox);
            for ky in ys.clone() {
                let iy = shape.position(0, oy, ky);
                for kx in xs.clone() {
                    let ix = shape.position(1, ox, kx);
                    let x = &image[(iy * w + ix) * c..][..c];
                    let wt = &centred[(ky * kw + kx) * c..][..c];
                    for ((a, &q), &f) in acc.iter_mut().zip(x).zip(wt) {
                        *a += (i32::from(q) - zp) * i32::from(f);
                    }
                }
            }
        }
    }
}

/// Direct convolution sums of output rows `rows` into `out` (see
/// [`crate::kernels::direct_conv_nhwc_s8`]), scalar: per output pixel and channel, the
/// taps inside the image. Operands checked by the caller.
pub(in crate::kernels) fn direct_conv_rows(
    filter: &DirectFilter,
    image: &[i8],
    rows: Range<usize>,
    pool: bool,
    out: &mut [i32],
) {
    let window = filter.window();
    let ([_, _, c], kw) = (window.input, window.kernel[1]);
    let (n, zp) = (filter.out_channels(), i32::from(filter.zp_in()));
    let sum = |oy: usize, ox: usize, o: usize| -> i32 {
        let quads = filter.quads_from(o / DIRECT_BLOCK);
        let lane = o % DIRECT_BLOCK;
        // Depth `d` of the window: byte `d % 4` of quad `d / 4` of the lane.
        let weight =
            |d: usize| i32::from(quads[(d / QUAD * DIRECT_BLOCK + lane) * QUAD + d % QUAD]);
        let tap_sum = |([ky, kx], pixel): ([usize; 2], usize)| -> i32 {
            let x = &image[pixel * c..][..c];
            x.iter()
                .enumerate()
                .map(|(ch, &x)| (i32::from(x) - zp) * weight((ky * kw + kx) * c + ch))
                .sum::<i32>()
        };
        window.inside(oy, ox).map(tap_sum).sum()
    };
    let ow = window.output()[1];
    let (step, cols) = if pool { (2, ow / 2) } else { (1, ow) };
    for (r, oy) in rows.step_by(step).enumerate() {
        for col in 0..cols {
            let pixel = &mut out[(r * cols + col) * n..][..n];
            for (o, value) in pixel.iter_mut().enumerate() {
                *value = match pool {
                    true => [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .map(|(dy, dx)| sum(oy + dy, 2 * col + dx, o))
                        .into_iter()
                        .max()
                        .expect("four pixels"),
                    false => sum(oy, col, o),
                };
            }
        }
    }
}
