//! The stages that touch f32: the borders of the int8 domain (the input quantizer and
//! the output dequantizer), dynamic layers (int8 GEMM between a per-batch quantizer and
//! a float output stage) and float layers (partial quantization: an f32 GEMM, im2col for
//! convolutions, that sums in the reference's order without fused multiply-adds, so that
//! it equals [`crate::float`] bit for bit; see [`FloatLayer`]).
//!
//! Float tensors are canonical NCHW. Each stage reports the min/max of what it wrote,
//! tracked while writing (dynamic output stage, dequantizer) or scanned per image while
//! it is in cache (float layers, pooling), so that a following dynamic layer needs no
//! second pass over its input.

use std::ops::Range;

use cinder_observers::min_max;
use cinder_tensor::QuantParams;

use super::int::{ConvShape, WinogradSums, accumulate, split_linear};
use super::par::{
    Accum, BLOCKS_PER_SLOT, Scratch, Shared, Tracked, grow, par_blocks, par_images, take_range,
};
use crate::error::RunError;
use crate::float::{Geometry, Window, max_pool2d, relu};
use crate::kernels::sgemm::{Bias, Gemm, PANEL, Right, TILE_ROWS, gemm, pack_panels, panels};
use crate::kernels::{PackedMatrix, max_pool2x2_s32};
use crate::model::{acc_scale, dynamic_output, dynamic_params, scan_range};

/// `y = q(x)`, NCHW -> NHWC when `chw` is given (else element order kept).
pub(crate) fn quantize_into(x: &[f32], chw: Option<[usize; 3]>, p: &QuantParams, y: &mut [i8]) {
    let q = |v: f32| p.quantize(v) as i8;
    match chw {
        None => y.iter_mut().zip(x).for_each(|(o, &v)| *o = q(v)),
        Some([c, h, w]) => {
            for (ci, plane) in x.chunks_exact(h * w).enumerate().take(c) {
                for (i, &v) in plane.iter().enumerate() {
                    y[i * c + ci] = q(v);
                }
            }
        }
    }
}

/// The border into the int8 domain: calibrated parameters, NCHW -> NHWC.
#[derive(Debug)]
pub(crate) struct InputQuantizer {
    pub(super) params: QuantParams,
    pub(super) chw: Option<[usize; 3]>,
}

impl InputQuantizer {
    pub fn run(&self, x: &[f32], y: &mut [i8], len: usize, slots: &mut [Scratch]) {
        par_images(x, len, y, len, slots, |image, out, _| {
            quantize_into(image, self.chw, &self.params, out)
        });
    }
}

/// The border out of the int8 domain: NHWC (or an NHWC flatten) -> canonical NCHW.
#[derive(Debug)]
pub(crate) struct OutputDequantizer {
    pub(super) params: QuantParams,
    pub(super) chw: Option<[usize; 3]>,
}

impl OutputDequantizer {
    pub fn run(&self, x: &[i8], y: &mut [f32], len: usize, slots: &mut [Scratch]) -> Tracked {
        par_images(x, len, y, len, slots, |image, out, slot| {
            let p = &self.params;
            let (mut lo, mut hi) = (i8::MAX, i8::MIN);
            let mut put = |o: &mut f32, q: i8| {
                (lo, hi) = (lo.min(q), hi.max(q));
                *o = p.dequantize(i32::from(q));
            };
            match self.chw {
                None => out.iter_mut().zip(image).for_each(|(o, &q)| put(o, q)),
                Some([c, h, w]) => {
                    for (ci, plane) in out.chunks_exact_mut(h * w).enumerate().take(c) {
                        for (i, o) in plane.iter_mut().enumerate() {
                            put(o, image[i * c + ci]);
                        }
                    }
                }
            }
            let range = (p.dequantize(i32::from(lo)), p.dequantize(i32::from(hi)));
            slot.range = slot.range.merge(Tracked::Known(range.0, range.1));
        });
        take_range(slots)
    }
}

/// A dynamic layer's GEMM and float output stage.
#[derive(Debug)]
pub(crate) struct DynMatmul {
    pub(super) name: String,
    pub(super) zp_w: Option<Vec<i32>>,
    /// Every column's weight zero point (also the zero ones), for the per-batch offset.
    pub(super) zp_w_all: Vec<i32>,
    pub(super) scale_w: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu: bool,
}

impl DynMatmul {
    /// Output columns.
    fn columns(&self) -> usize {
        self.scale_w.len()
    }

    /// The input parameters of this batch, and the per-column terms in `shared`:
    /// `off[j] = -zp_in * colsum[j] + depth * zp_in * zp_w[j]` for sums over the `packed`
    /// weights (0 for Winograd's, whose transforms take operands minus their zero
    /// points), `scale[j] = s_in * s_w[j]`.
    fn prepare(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        packed: Option<&PackedMatrix>,
        shared: &mut Shared,
    ) -> Result<QuantParams, RunError> {
        let range = match range {
            Some(r) => r,
            None => scan_range(&self.name, x)?,
        };
        let p = dynamic_params(&self.name, range)?;
        let (n, zp) = (self.columns(), p.zero_point);
        let off = grow(&mut shared.col_off, n);
        match packed {
            Some(w) => {
                let k = w.depth() as i32;
                for ((o, &s), &z) in off.iter_mut().zip(w.col_sums()).zip(&self.zp_w_all) {
                    *o = -zp * s + k * zp * z;
                }
            }
            None => off.fill(0),
        }
        for (o, &s) in grow(&mut shared.col_scale, n).iter_mut().zip(&self.scale_w) {
            *o = acc_scale(p.scale, s);
        }
        Ok(p)
    }

    /// `m` rows of `a` against the columns `cols` of `weights` into `out`, row-major
    /// (`m x cols.len()`). Returns the range written (see [`Self::finish`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "the GEMM operands plus the per-batch terms"
    )]
    fn run(
        &self,
        weights: &PackedMatrix,
        a: &[i8],
        m: usize,
        cols: Range<usize>,
        accum: &mut Accum,
        terms: (&[i32], &[f32]),
        out: &mut [f32],
    ) -> Tracked {
        accumulate(weights, self.zp_w.as_deref(), a, m, cols.clone(), accum);
        self.finish(m, cols, accum, terms, out, None)
    }

    /// The float output stage of the `m x cols.len()` sums in `accum.acc`, written
    /// row-major or, for a convolution, channel-major (`out[j * pixels + i]`). Returns the range written, from the extremes of each
    /// column's accumulators: the output stage is monotone in the accumulator, so this is
    /// the exact min/max at no second pass over the output.
    fn finish(
        &self,
        m: usize,
        cols: Range<usize>,
        accum: &mut Accum,
        terms: (&[i32], &[f32]),
        out: &mut [f32],
        channel_major: Option<usize>,
    ) -> Tracked {
        let width = cols.len();
        let Accum {
            acc,
            col_lo,
            col_hi,
            tile,
            ..
        } = accum;
        let (off, scale) = (&terms.0[cols.clone()], &terms.1[cols.clone()]);
        let bias = &self.bias[cols];
        let (col_lo, col_hi) = (grow(col_lo, width), grow(col_hi, width));
        col_lo.fill(i32::MAX);
        col_hi.fill(i32::MIN);
        let mut stage = |acc_row: &[i32], y: &mut [f32]| {
            for j in 0..width {
                let v = acc_row[j] + off[j];
                (col_lo[j], col_hi[j]) = (col_lo[j].min(v), col_hi[j].max(v));
                y[j] = dynamic_output(v, scale[j], bias[j], self.relu);
            }
        };
        match channel_major {
            None => {
                for (acc_row, y) in acc[..m * width]
                    .chunks_exact(width)
                    .zip(out.chunks_exact_mut(width))
                {
                    stage(acc_row, y);
                }
            }
            Some(pixels) => {
                // Through a tile of TILE rows, so that the channel-major writes are runs.
                const TILE: usize = 16;
                let tile = grow(tile, TILE * width);
                for i0 in (0..m).step_by(TILE) {
                    let rows = TILE.min(m - i0);
                    for (r, y) in tile.chunks_exact_mut(width).take(rows).enumerate() {
                        stage(&acc[(i0 + r) * width..][..width], y);
                    }
                    for j in 0..width {
                        for r in 0..rows {
                            out[j * pixels + i0 + r] = tile[r * width + j];
                        }
                    }
                }
            }
        }
        let y = |c: &[i32], j: usize| dynamic_output(c[j], scale[j], bias[j], self.relu);
        (0..width).fold(Tracked::Empty, |t, j| {
            t.merge(Tracked::Known(y(col_lo, j), y(col_hi, j)))
        })
    }
}

/// A dynamic convolution: each image is quantized (NHWC), im2col'd and multiplied (or,
/// where `winograd` is set, summed by Winograd), and written back as NCHW floats; with the
/// 2×2, stride-2 max-pool that follows it fused when `pool`: the sums are pooled before
/// the float output stage, which is exact (`acc · s + bias`, `s > 0`, then the ReLU is
/// non-decreasing in the sum, rounding included, so it commutes with the maximum) and
/// runs on a quarter of the values.
#[derive(Debug)]
pub(crate) struct DynConv {
    pub(super) shape: ConvShape,
    pub(super) mm: DynMatmul,
    pub(super) kernel: DynConvKernel,
    pub(super) pool: bool,
}

/// How a dynamic convolution sums.
#[derive(Debug)]
pub(crate) enum DynConvKernel {
    /// im2col rows against the packed weights.
    Im2col(PackedMatrix),
    Winograd(WinogradSums),
}

impl DynConv {
    pub fn run(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        y: &mut [f32],
        slots: &mut [Scratch],
        shared: &mut Shared,
    ) -> Result<Tracked, RunError> {
        let packed = match &self.kernel {
            DynConvKernel::Im2col(w) => Some(w),
            DynConvKernel::Winograd(_) => None,
        };
        let p = self.mm.prepare(x, range, packed, shared)?;
        let (n, pixels, in_len) = (self.mm.columns(), self.shape.pixels, self.shape.in_len());
        let ((oh, ow), out_pixels) = (self.shape.out_hw(), self.out_pixels());
        let terms = (&shared.col_off[..n], &shared.col_scale[..n]);
        par_images(x, in_len, y, out_pixels * n, slots, |image, out, slot| {
            let Scratch {
                cols,
                q,
                accum,
                pooled,
                range,
                ..
            } = slot;
            let (q, zp) = (grow(q, in_len), p.zero_point as i8);
            quantize_into(image, Some(self.shape.input), &p, q);
            match &self.kernel {
                DynConvKernel::Winograd(w) => {
                    w.accumulate(q, zp, 0..w.geometry.tile_rows(), accum);
                }
                DynConvKernel::Im2col(weights) => {
                    let a = self.shape.lhs(q, zp, cols);
                    let zp_w = self.mm.zp_w.as_deref();
                    accumulate(weights, zp_w, a, pixels, 0..n, accum);
                }
            }
            if self.pool {
                // The pooled sums stand in for the sums through the output stage.
                let pooled_sums = grow(pooled, out_pixels * n);
                max_pool2x2_s32(&accum.acc, oh / 2 * 2, ow, n, pooled_sums);
                std::mem::swap(&mut accum.acc, pooled);
            }
            let r = (self.mm).finish(out_pixels, 0..n, accum, terms, out, Some(out_pixels));
            if self.pool {
                std::mem::swap(&mut accum.acc, pooled);
            }
            *range = range.merge(r);
        });
        Ok(take_range(slots))
    }

    /// Output pixels per image, pooled when the pool is fused.
    fn out_pixels(&self) -> usize {
        let (oh, ow) = self.shape.out_hw();
        match self.pool {
            true => oh / 2 * (ow / 2),
            false => oh * ow,
        }
    }

    /// How the stage is listed in a profile.
    pub fn kind(&self) -> &'static str {
        match (&self.kernel, self.pool) {
            (DynConvKernel::Winograd(_), false) => "dyn. winograd",
            (DynConvKernel::Winograd(_), true) => "dyn. wino+pool",
            (DynConvKernel::Im2col(_), false) => "dynamic conv",
            (DynConvKernel::Im2col(_), true) => "dyn. conv+pool",
        }
    }
}

/// A dynamic linear layer: the batch is quantized once, then split like a static one.
#[derive(Debug)]
pub(crate) struct DynLinear {
    pub(super) mm: DynMatmul,
    pub(super) weights: PackedMatrix,
}

impl DynLinear {
    pub fn run(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        y: &mut [f32],
        slots: &mut [Scratch],
        shared: &mut Shared,
    ) -> Result<Tracked, RunError> {
        let p = self.mm.prepare(x, range, Some(&self.weights), shared)?;
        let (n, k) = (self.weights.rows(), self.weights.depth());
        let Shared {
            q,
            col_off,
            col_scale,
            ..
        } = shared;
        let q = grow(q, x.len());
        par_blocks(q, k, 1, BLOCKS_PER_SLOT, slots, |r0, block, _| {
            quantize_into(&x[r0 * k..][..block.len()], None, &p, block)
        });
        let terms = (&col_off[..n], &col_scale[..n]);
        split_linear(q, k, n, y, slots, |a, m, cols, slot, out| {
            let r = self
                .mm
                .run(&self.weights, a, m, cols, &mut slot.accum, terms, out);
            slot.range = slot.range.merge(r);
        });
        Ok(take_range(slots))
    }
}

/// A float layer of a partially quantized model, as a GEMM with the reference
/// interpreter's arithmetic (see [`gemm`]): a convolution multiplies its weights by each
/// image's im2col matrix, a linear layer the batch by its weights.
#[derive(Debug)]
pub(crate) struct FloatLayer {
    kernel: FloatKernel,
    bias: Vec<f32>,
    relu: bool,
}

/// What a float layer multiplies.
#[derive(Debug)]
enum FloatKernel {
    /// The weights as stored (`[o][c][ky][kx]`: rows in im2col order) are the left
    /// operand, an image's im2col matrix the right: the product is NCHW.
    Conv { shape: ConvShape, weight: Vec<f32> },
    /// The batch is the left operand, the transposed weights (packed once) the right.
    Linear { depth: usize, weights: Vec<f32> },
}

impl FloatLayer {
    /// The layer of `weight` (`[n][depth]`, canonical) and `bias` of `geometry`.
    pub(super) fn new(geometry: Geometry, weight: &[f32], bias: &[f32], relu: bool) -> Self {
        let kernel = match geometry {
            Geometry::Conv { input, window } => FloatKernel::Conv {
                shape: ConvShape::new(input, window),
                weight: weight.to_vec(),
            },
            Geometry::Linear => {
                let depth = weight.len() / bias.len();
                let mut weights = vec![0.0; panels(bias.len()) * depth * PANEL];
                pack_panels(
                    depth,
                    bias.len(),
                    |p, j| weight[j * depth + p],
                    &mut weights,
                );
                FloatKernel::Linear { depth, weights }
            }
        };
        Self {
            kernel,
            bias: bias.to_vec(),
            relu,
        }
    }

    pub fn run(
        &self,
        x: &[f32],
        in_len: usize,
        y: &mut [f32],
        out_len: usize,
        slots: &mut [Scratch],
    ) -> Tracked {
        match &self.kernel {
            FloatKernel::Conv { shape, weight } => {
                self.conv(shape, weight, x, in_len, y, out_len, slots)
            }
            FloatKernel::Linear { depth, weights } => self.linear(*depth, weights, x, y, slots),
        }
        take_range(slots)
    }

    /// Whole images per thread; a batch smaller than the thread count splits each image's
    /// output channels instead, over the im2col matrix of the first slot.
    #[allow(
        clippy::too_many_arguments,
        reason = "the stage's operands and its kernel's"
    )]
    fn conv(
        &self,
        shape: &ConvShape,
        weight: &[f32],
        x: &[f32],
        in_len: usize,
        y: &mut [f32],
        out_len: usize,
        slots: &mut [Scratch],
    ) {
        let (n, depth, pixels) = (self.bias.len(), shape.depth(), shape.pixels);
        // Whole panels, and one more: a row stride of a multiple of 4 KiB (1024 pixels)
        // would put a tile's loads in one cache set.
        let row_stride = (panels(pixels) + 1) * PANEL;
        let len = depth * row_stride;
        // The product of output channels `rows` with the im2col matrix `b`, into `out`.
        let multiply = |b: &[f32], rows: Range<usize>, out: &mut [f32], slot: &mut Scratch| {
            let product = Gemm {
                a: &weight[rows.start * depth..],
                rows: rows.len(),
                depth,
                b: Right {
                    data: b,
                    row_stride,
                    panel_stride: PANEL,
                },
                cols: 0..pixels,
                bias: Bias::PerRow(&self.bias[rows]),
            };
            self.finish(product, out, pixels, slot);
        };
        if y.len() / out_len >= slots.len() {
            par_images(x, in_len, y, out_len, slots, |image, out, slot| {
                let mut b = std::mem::take(&mut slot.im2col);
                im2col(image, shape, row_stride, grow(&mut b, len));
                multiply(&b[..len], 0..n, out, slot);
                slot.im2col = b;
            });
            return;
        }
        // Lent to every thread for the image, and given back.
        let mut b = std::mem::take(&mut slots[0].im2col);
        for (image, out) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(out_len)) {
            im2col(image, shape, row_stride, grow(&mut b, len));
            let b = &b[..len];
            par_blocks(
                out,
                pixels,
                TILE_ROWS,
                BLOCKS_PER_SLOT,
                slots,
                |o0, block, slot| multiply(b, o0..o0 + block.len() / pixels, block, slot),
            );
        }
        slots[0].im2col = b;
    }

    /// Rows split over the threads, one block each (a block streams all the weights), or
    /// (one row, several threads) panels of columns, several blocks each.
    fn linear(
        &self,
        depth: usize,
        weights: &[f32],
        x: &[f32],
        y: &mut [f32],
        slots: &mut [Scratch],
    ) {
        let n = self.bias.len();
        let bias = Bias::PerColumn(&self.bias);
        if y.len() == n && slots.len() > 1 {
            par_blocks(y, 1, PANEL, BLOCKS_PER_SLOT, slots, |c0, block, slot| {
                let cols = c0..c0 + block.len();
                let product = Gemm {
                    a: x,
                    rows: 1,
                    depth,
                    b: Right::panels(&weights[c0 * depth..], depth),
                    cols,
                    bias,
                };
                self.finish(product, block, n, slot);
            });
        } else {
            par_blocks(y, n, 1, 1, slots, |r0, block, slot| {
                let product = Gemm {
                    a: &x[r0 * depth..],
                    rows: block.len() / n,
                    depth,
                    b: Right::panels(weights, depth),
                    cols: 0..n,
                    bias,
                };
                self.finish(product, block, n, slot);
            });
        }
    }

    /// Computes `product` into `out` (row stride `ldc`), then the ReLU and the range.
    fn finish(&self, product: Gemm<'_>, out: &mut [f32], ldc: usize, slot: &mut Scratch) {
        gemm(&product, out, ldc);
        if self.relu {
            out.iter_mut().for_each(|v| *v = relu(*v));
        }
        slot.range = slot.range.merge(Tracked::of(min_max(out)));
    }
}

/// The im2col matrix of one NCHW image: a row per tap in `(c, ky, kx)` order (`row_stride`
/// apart), a column per output pixel, 0 for taps in the padding. The columns past the
/// last pixel keep what they held: their sums are never written.
fn im2col(image: &[f32], shape: &ConvShape, row_stride: usize, out: &mut [f32]) {
    let ([c, h, w], (oh, ow)) = (shape.input, shape.out_hw());
    let Window {
        kernel,
        stride,
        padding,
    } = shape.window;
    let taps = (0..c)
        .flat_map(|ci| (0..kernel).flat_map(move |ky| (0..kernel).map(move |kx| (ci, ky, kx))));
    for ((ci, ky, kx), row) in taps.zip(out.chunks_exact_mut(row_stride)) {
        let (ys, xs) = (
            inside(oh, h, ky, stride, padding),
            inside(ow, w, kx, stride, padding),
        );
        for (oy, pixels) in row[..oh * ow].chunks_exact_mut(ow).enumerate() {
            if !ys.contains(&oy) || xs.is_empty() {
                pixels.fill(0.0);
                continue;
            }
            let input = &image[(ci * h + oy * stride + ky - padding) * w..][..w];
            pixels[..xs.start].fill(0.0);
            pixels[xs.end..].fill(0.0);
            let first = xs.start * stride + kx - padding;
            for (o, &v) in pixels[xs.clone()]
                .iter_mut()
                .zip(input[first..].iter().step_by(stride))
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

/// Max-pooling of NCHW floats.
#[derive(Debug)]
pub(crate) struct FloatPool {
    pub(super) input: [usize; 3],
    pub(super) kernel: usize,
    pub(super) stride: usize,
}

impl FloatPool {
    pub fn run(&self, x: &[f32], y: &mut [f32], out_len: usize, slots: &mut [Scratch]) -> Tracked {
        let in_len = self.input.iter().product();
        par_images(x, in_len, y, out_len, slots, |image, out, slot| {
            match (self.kernel, self.stride) {
                (2, 2) => max_pool2x2(image, self.input, out),
                (kernel, stride) => max_pool2d(image, self.input, kernel, stride, out),
            }
            slot.range = slot.range.merge(Tracked::of(min_max(out)));
        });
        take_range(slots)
    }
}

/// [`max_pool2d`] of 2×2 windows at stride 2 (the common pool), a row pair at a time: the
/// same comparisons in the same order, so the same result (the first of equal values, a
/// NaN where the window starts with one).
fn max_pool2x2(input: &[f32], [c, h, w]: [usize; 3], out: &mut [f32]) {
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

/// ReLU of floats; the range follows exactly.
pub(crate) fn float_relu(x: &[f32], y: &mut [f32], range: Tracked) -> Tracked {
    y.iter_mut().zip(x).for_each(|(o, &v)| *o = relu(v));
    match range {
        Tracked::Known(lo, hi) => Tracked::Known(relu(lo), relu(hi)),
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::float::weighted_forward;
    use crate::kernels::sgemm::tests::{bits, values};
    use crate::synthetic::Rng;

    /// Runs `layer` on `threads` threads over a batch; returns the output and its range.
    fn run(
        layer: &FloatLayer,
        x: &[f32],
        in_len: usize,
        out_len: usize,
        threads: usize,
    ) -> (Vec<f32>, Tracked) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut slots: Vec<Scratch> = (0..threads).map(|_| Scratch::default()).collect();
        let mut y = vec![f32::NAN; x.len() / in_len * out_len];
        let range = pool.install(|| layer.run(x, in_len, &mut y, out_len, &mut slots));
        (y, range)
    }

    /// The stage equals the reference definition ([`crate::float::conv2d`],
    /// [`crate::float::linear`]) bit for bit, for every thread count and batch (so every
    /// split: whole images, output channels of one image, column panels of one row, rows),
    /// and reports the exact range of what it wrote.
    fn check(
        geometry: Geometry,
        in_len: usize,
        n: usize,
        out_len: usize,
        relu_on: bool,
        batch: usize,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let mut rng = Rng::new(seed);
        let depth = match geometry {
            Geometry::Conv { input, window } => input[0] * window.kernel * window.kernel,
            Geometry::Linear => in_len,
        };
        let (weight, bias) = (values(&mut rng, n * depth), values(&mut rng, n));
        let x = values(&mut rng, batch * in_len);
        let layer = FloatLayer::new(geometry, &weight, &bias, relu_on);
        let mut want = weighted_forward(geometry, &x, batch, out_len, &weight, &bias);
        if relu_on {
            want.iter_mut().for_each(|v| *v = relu(*v));
        }
        for threads in 1..=3 {
            let (got, range) = run(&layer, &x, in_len, out_len, threads);
            prop_assert_eq!(bits(&got), bits(&want), "{} threads", threads);
            prop_assert_eq!(range, Tracked::of(min_max(&want)));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn conv_equals_the_reference(
            c in 1usize..4, h in 1usize..12, w in 1usize..12, n in 1usize..15,
            kernel in 1usize..4, stride in 1usize..4, padding in 0usize..3,
            relu_on in any::<bool>(), batch in 1usize..5, seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * padding >= kernel && w + 2 * padding >= kernel);
            let window = Window { kernel, stride, padding };
            let (oh, ow) = window.output(h, w);
            let geometry = Geometry::Conv { input: [c, h, w], window };
            check(geometry, c * h * w, n, n * oh * ow, relu_on, batch, seed)?;
        }

        #[test]
        fn linear_equals_the_reference(
            depth in 1usize..40, n in 1usize..70, relu_on in any::<bool>(),
            batch in 1usize..15, seed in any::<u64>(),
        ) {
            check(Geometry::Linear, depth, n, n, relu_on, batch, seed)?;
        }

        /// Values with ties, signed zeros and NaN, which the order of comparisons decides.
        #[test]
        fn max_pool2x2_equals_max_pool2d(
            c in 1usize..4, h in 2usize..9, w in 2usize..9,
            picks in prop::collection::vec(0usize..6, 3 * 8 * 8),
        ) {
            let pool = [1.0, -1.0, 0.0, -0.0, f32::NAN, 2.5];
            let input: Vec<f32> = picks[..c * h * w].iter().map(|&i| pool[i]).collect();
            let len = c * (h / 2) * (w / 2);
            let (mut fast, mut plain) = (vec![0.0; len], vec![0.0; len]);
            max_pool2x2(&input, [c, h, w], &mut fast);
            max_pool2d(&input, [c, h, w], 2, 2, &mut plain);
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
