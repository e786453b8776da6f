//! The stages that touch f32: the borders of the int8 domain (the input quantizer and
//! the output dequantizer), dynamic layers (int8 GEMM between a per-batch quantizer and
//! a float output stage) and float layers (partial quantization, plain f32).
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
use crate::float::{Geometry, conv2d, linear, max_pool2d, relu};
use crate::kernels::PackedMatrix;
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
    pub(super) weights: PackedMatrix,
    pub(super) zp_w: Option<Vec<i32>>,
    /// Every column's weight zero point (also the zero ones), for the per-batch offset.
    pub(super) zp_w_all: Vec<i32>,
    pub(super) scale_w: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu: bool,
}

impl DynMatmul {
    /// The input parameters of this batch, and the per-column terms in `shared`:
    /// `off[j] = -zp_in * colsum[j] + depth * zp_in * zp_w[j]` (0 for `centered` sums,
    /// which Winograd's transforms take of operands minus their zero points),
    /// `scale[j] = s_in * s_w[j]`.
    fn prepare(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        centered: bool,
        shared: &mut Shared,
    ) -> Result<QuantParams, RunError> {
        let range = match range {
            Some(r) => r,
            None => scan_range(&self.name, x)?,
        };
        let p = dynamic_params(&self.name, range)?;
        let (n, k, zp) = (
            self.weights.rows(),
            self.weights.depth() as i32,
            p.zero_point,
        );
        let off = grow(&mut shared.col_off, n);
        for ((o, &s), &z) in off
            .iter_mut()
            .zip(self.weights.col_sums())
            .zip(&self.zp_w_all)
        {
            *o = if centered { 0 } else { -zp * s + k * zp * z };
        }
        for (o, &s) in grow(&mut shared.col_scale, n).iter_mut().zip(&self.scale_w) {
            *o = acc_scale(p.scale, s);
        }
        Ok(p)
    }

    /// `m` rows of `a` against `cols` into `out`, row-major (`m x cols.len()`) or, for a
    /// convolution, channel-major (`out[j * pixels + i]`). Returns the range written (see
    /// [`Self::finish`]).
    #[allow(
        clippy::too_many_arguments,
        reason = "one GEMM block and its output stage"
    )]
    fn run(
        &self,
        a: &[i8],
        m: usize,
        cols: Range<usize>,
        accum: &mut Accum,
        terms: (&[i32], &[f32]),
        out: &mut [f32],
        channel_major: Option<usize>,
    ) -> Tracked {
        accumulate(
            &self.weights,
            self.zp_w.as_deref(),
            a,
            m,
            cols.clone(),
            accum,
        );
        self.finish(m, cols, accum, terms, out, channel_major)
    }

    /// The float output stage of the `m x cols.len()` sums in `accum.acc`, written as
    /// [`Self::run`] writes them. Returns the range written, from the extremes of each
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
/// where `winograd` is set, summed by Winograd), and written back as NCHW floats.
#[derive(Debug)]
pub(crate) struct DynConv {
    pub(super) shape: ConvShape,
    pub(super) mm: DynMatmul,
    pub(super) winograd: Option<WinogradSums>,
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
        let p = self.mm.prepare(x, range, self.winograd.is_some(), shared)?;
        let (n, pixels, in_len) = (self.weights_rows(), self.shape.pixels, self.shape.in_len());
        let terms = (&shared.col_off[..n], &shared.col_scale[..n]);
        par_images(x, in_len, y, pixels * n, slots, |image, out, slot| {
            let Scratch {
                cols,
                q,
                accum,
                range,
                ..
            } = slot;
            let (q, zp) = (grow(q, in_len), p.zero_point as i8);
            quantize_into(image, Some(self.shape.input), &p, q);
            let r = match &self.winograd {
                Some(w) => {
                    w.accumulate(q, zp, 0..w.geometry.tile_rows(), accum);
                    self.mm
                        .finish(pixels, 0..n, accum, terms, out, Some(pixels))
                }
                None => {
                    let a = self.shape.lhs(q, zp, cols);
                    self.mm
                        .run(a, pixels, 0..n, accum, terms, out, Some(pixels))
                }
            };
            *range = range.merge(r);
        });
        Ok(take_range(slots))
    }

    /// How the stage is listed in a profile.
    pub fn kind(&self) -> &'static str {
        match self.winograd {
            Some(_) => "dyn. winograd",
            None => "dynamic conv",
        }
    }

    fn weights_rows(&self) -> usize {
        self.mm.weights.rows()
    }
}

/// A dynamic linear layer: the batch is quantized once, then split like a static one.
#[derive(Debug)]
pub(crate) struct DynLinear {
    pub(super) mm: DynMatmul,
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
        let p = self.mm.prepare(x, range, false, shared)?;
        let (n, k) = (self.mm.weights.rows(), self.mm.weights.depth());
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
            let r = self.mm.run(a, m, cols, &mut slot.accum, terms, out, None);
            slot.range = slot.range.merge(r);
        });
        Ok(take_range(slots))
    }
}

/// A float layer of a partially quantized model: the plain f32 arithmetic, per image.
#[derive(Debug)]
pub(crate) struct FloatLayer {
    pub(super) geometry: Geometry,
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) relu: bool,
}

impl FloatLayer {
    pub fn run(
        &self,
        x: &[f32],
        in_len: usize,
        y: &mut [f32],
        out_len: usize,
        slots: &mut [Scratch],
    ) -> Tracked {
        par_images(x, in_len, y, out_len, slots, |image, out, slot| {
            match self.geometry {
                Geometry::Conv { input, window } => {
                    conv2d(image, input, &self.weight, &self.bias, window, out)
                }
                Geometry::Linear => linear(image, &self.weight, &self.bias, out),
            }
            if self.relu {
                out.iter_mut().for_each(|v| *v = relu(*v));
            }
            slot.range = slot.range.merge(Tracked::of(min_max(out)));
        });
        take_range(slots)
    }
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
            max_pool2d(image, self.input, self.kernel, self.stride, out);
            slot.range = slot.range.merge(Tracked::of(min_max(out)));
        });
        take_range(slots)
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
