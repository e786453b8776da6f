//! Dynamic layers: each batch is quantized with its own min/max range, multiplied on the
//! int8 GEMM (or summed by Winograd), and brought back to float by a float output stage
//! that tracks the range it writes.

use std::ops::Range;

use cinder_tensor::QuantParams;

use super::int::{ConvShape, WinogradSums, accumulate, split_linear};
use super::par::{
    Accum, BLOCKS_PER_SLOT, Scratch, Shared, Tracked, Workers, grow, par_blocks, par_images,
    take_range,
};
use crate::error::RunError;
use crate::kernels::{PackedMatrix, max_pool2x2_s32, quantize_f32_s8};
use crate::model::Activation;
use crate::model::rules::{acc_scale, dynamic_output, dynamic_params};

/// A dynamic layer's GEMM and float output stage.
#[derive(Debug)]
pub(crate) struct DynMatmul {
    pub(super) name: String,
    pub(super) zp_w: Option<Vec<i32>>,
    /// Every column's weight zero point (also the zero ones), for the per-batch offset.
    pub(super) zp_w_all: Vec<i32>,
    pub(super) scale_w: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) activation: Activation,
}

impl DynMatmul {
    /// Output columns.
    fn columns(&self) -> usize {
        self.scale_w.len()
    }

    /// The input parameters of this batch, and the per-column terms in `shared`:
    /// `off[j] = -zp_in * colsum[j] + depth * zp_in * zp_w[j]` for sums over the `packed`
    /// weights (their columns, in order, are the layer's; none for the depthwise kernel
    /// and Winograd's, which take operands minus their zero points), `scale[j] = s_in *
    /// s_w[j]`.
    pub(super) fn prepare<'p>(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        packed: impl IntoIterator<Item = &'p PackedMatrix>,
        shared: &mut Shared,
    ) -> Result<QuantParams, RunError> {
        let p = dynamic_params(&self.name, x, range)?;
        let (n, zp) = (self.columns(), p.zero_point);
        let off = grow(&mut shared.col_off, n);
        off.fill(0);
        let mut columns = off.iter_mut().zip(&self.zp_w_all);
        for w in packed {
            let k = w.depth() as i32;
            // The group's sums first: `zip` then stops before taking a column past them.
            for (&s, (o, &z)) in w.col_sums().iter().zip(columns.by_ref()) {
                *o = -zp * s + k * zp * z;
            }
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
    pub(super) fn finish(
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
                y[j] = dynamic_output(v, scale[j], bias[j], self.activation);
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
        let y = |c: &[i32], j: usize| dynamic_output(c[j], scale[j], bias[j], self.activation);
        (0..width).fold(Tracked::Empty, |t, j| {
            t.merge(Tracked::Known(y(col_lo, j), y(col_hi, j)))
        })
    }
}

/// A dynamic convolution: each image is quantized (NHWC), im2col'd and multiplied (or,
/// where `winograd` is set, summed by Winograd), and written back as NCHW floats; with the
/// 2×2, stride-2 max-pool that follows it fused when `pool`: the sums are pooled before
/// the float output stage, which is exact (`acc · s + bias`, `s > 0`, then the activation is
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
        slots: &mut Workers,
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
            quantize_f32_s8(image, Some(self.shape.input), &p, q);
            match &self.kernel {
                DynConvKernel::Winograd(w) => {
                    w.accumulate(q, zp, 0..w.geometry.tile_rows(), accum);
                }
                DynConvKernel::Im2col(weights) => {
                    let a = self.shape.lhs(q, zp, self.shape.rows(), cols);
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
        slots: &mut Workers,
        shared: &mut Shared,
    ) -> Result<Tracked, RunError> {
        let p = self.mm.prepare(x, range, [&self.weights], shared)?;
        let (n, k) = (self.weights.rows(), self.weights.depth());
        let Shared {
            q,
            col_off,
            col_scale,
            ..
        } = shared;
        let q = grow(q, x.len());
        par_blocks(q, k, 1, BLOCKS_PER_SLOT, slots, |r0, block, _| {
            // Finite: the range of `x` was tracked.
            quantize_f32_s8(&x[r0 * k..][..block.len()], None, &p, block);
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
