//! The integer stages of the static path. These types hold integers only (packed int8
//! weights, int32 biases, Q0.31 multipliers, zero points, clamp bounds): no f32 can enter
//! the arithmetic between the input quantizer and the output dequantizer.
//!
//! Activations are int8 NHWC; a convolution is im2col + GEMM + output stage, a linear
//! layer GEMM + output stage. Zero points: the input's is folded offline into the bias
//! (`- zp_in * colsum_w[j] + depth * zp_in * zp_w[j]`, im2col pads with `zp_in` so that
//! padding is exact), the weights' (asymmetric weights only) is a row-sum correction
//! `- zp_w[j] * rowsum_a[i]` before the output stage.

use std::ops::Range;

use cinder_tensor::RequantMultiplier;

use super::par::{Accum, BLOCKS_PER_SLOT, Scratch, grow, par_blocks, par_images};
use crate::error::Invalid;
use crate::float::Window;
use crate::kernels::{
    MR, NR, OutputStage, PackedMatrix, gemm_s8_cols, im2col_nhwc_s8, max_pool2d_nhwc_s8,
    requantize_s8_rows, row_sums_s8,
};

/// Packs `[n][k]` engine-order weight codes, naming the layer on failure.
pub(super) fn pack(codes: &[i8], n: usize, k: usize, field: &str) -> Result<PackedMatrix, Invalid> {
    PackedMatrix::pack(codes, n, k).map_err(|e| Invalid::new(field, e.to_string()))
}

/// Weight zero points per output column, or `None` when all are 0.
pub(super) fn nonzero(zero_points: Vec<i32>) -> Option<Vec<i32>> {
    zero_points.iter().any(|&z| z != 0).then_some(zero_points)
}

/// `acc[i][j] -= zp_w[j] * rowsum_a[i]` over an `m x width` block.
pub(super) fn correct_weight_zero_points(
    acc: &mut [i32],
    width: usize,
    sums: &[i32],
    zp_w: &[i32],
) {
    for (row, &s) in acc.chunks_exact_mut(width).zip(sums) {
        for (a, &z) in row.iter_mut().zip(zp_w) {
            *a -= z * s;
        }
    }
}

/// Raw GEMM of `m` rows of `a` against `cols`, corrected for weight zero points.
pub(super) fn accumulate<'a>(
    weights: &PackedMatrix,
    zp_w: Option<&[i32]>,
    a: &[i8],
    m: usize,
    cols: Range<usize>,
    accum: &'a mut Accum,
) -> &'a mut [i32] {
    let (k, width) = (weights.depth(), cols.len());
    let acc = grow(&mut accum.acc, m * width);
    gemm_s8_cols(a, k, m, weights, cols.clone(), acc, width);
    if let Some(zp_w) = zp_w {
        let sums = grow(&mut accum.sums, m);
        row_sums_s8(a, k, m, k, sums);
        correct_weight_zero_points(acc, width, sums, &zp_w[cols]);
    }
    acc
}

/// A GEMM with its integer output stage.
#[derive(Debug)]
pub(crate) struct IntMatmul {
    weights: PackedMatrix,
    /// The layer's bias with the input zero point folded in.
    bias: Vec<i32>,
    multipliers: Vec<RequantMultiplier>,
    zp_w: Option<Vec<i32>>,
    zp_out: i32,
    lo: i32,
    hi: i32,
}

/// The integer parameters an [`IntMatmul`] is built from.
pub(super) struct IntParams<'a> {
    pub bias: &'a [i32],
    pub multipliers: &'a [RequantMultiplier],
    pub zp_in: i32,
    pub zp_w: Vec<i32>,
    pub zp_out: i32,
    pub clamp: (i32, i32),
}

impl IntMatmul {
    pub(super) fn new(
        weights: PackedMatrix,
        p: IntParams<'_>,
        field: &str,
    ) -> Result<Self, Invalid> {
        let k = i64::try_from(weights.depth()).expect("depth fits i64");
        let bias = p
            .bias
            .iter()
            .zip(weights.col_sums())
            .zip(&p.zp_w)
            .map(|((&b, &s), &z)| {
                let folded = i64::from(b) - i64::from(p.zp_in) * i64::from(s)
                    + k * i64::from(p.zp_in) * i64::from(z);
                i32::try_from(folded).map_err(|_| {
                    Invalid::new(format!("{field}.bias"), "folded bias overflows int32")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            weights,
            bias,
            multipliers: p.multipliers.to_vec(),
            zp_w: nonzero(p.zp_w),
            zp_out: p.zp_out,
            lo: p.clamp.0,
            hi: p.clamp.1,
        })
    }

    pub(super) fn n(&self) -> usize {
        self.weights.rows()
    }

    pub(super) fn k(&self) -> usize {
        self.weights.depth()
    }

    /// `m` rows of `a` (row stride `k`) into output columns `cols` of `out`
    /// (`m x cols.len()`, contiguous).
    pub(super) fn run(
        &self,
        a: &[i8],
        m: usize,
        cols: Range<usize>,
        accum: &mut Accum,
        out: &mut [i8],
    ) {
        let width = cols.len();
        let acc = accumulate(
            &self.weights,
            self.zp_w.as_deref(),
            a,
            m,
            cols.clone(),
            accum,
        );
        let multipliers = if self.multipliers.len() == 1 {
            &self.multipliers[..]
        } else {
            &self.multipliers[cols.clone()]
        };
        let stage = OutputStage {
            bias: &self.bias[cols],
            mult: multipliers,
            zp_out: self.zp_out,
            lo: self.lo,
            hi: self.hi,
        };
        requantize_s8_rows(&stage, acc, width, m, out, width);
    }
}

/// The geometry of a convolution over one NHWC image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    /// `[c, h, w]` of the input.
    pub input: [usize; 3],
    pub window: Window,
    /// Output pixels `oh * ow`.
    pub pixels: usize,
}

impl ConvShape {
    pub fn new(input: [usize; 3], window: Window) -> Self {
        let (oh, ow) = window.output(input[1], input[2]);
        Self {
            input,
            window,
            pixels: oh * ow,
        }
    }

    pub fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Depth of one im2col row.
    pub fn depth(&self) -> usize {
        self.window.kernel * self.window.kernel * self.input[0]
    }

    /// The GEMM's left operand for one image: the image itself for a 1x1, stride-1,
    /// unpadded convolution, else its im2col rows in `cols`.
    pub fn lhs<'a>(&self, image: &'a [i8], pad: i8, cols: &'a mut Vec<i8>) -> &'a [i8] {
        let Window {
            kernel,
            stride,
            padding,
        } = self.window;
        if kernel == 1 && stride == 1 && padding == 0 {
            return image;
        }
        let [c, h, w] = self.input;
        let k = self.depth();
        let out = grow(cols, self.pixels * k);
        im2col_nhwc_s8(image, h, w, c, kernel, stride, padding, pad, out, k);
        out
    }
}

/// A static convolution.
#[derive(Debug)]
pub(crate) struct IntConv {
    pub(super) shape: ConvShape,
    pub(super) zp_in: i8,
    pub(super) mm: IntMatmul,
}

impl IntConv {
    /// Whole images per thread; a batch smaller than the thread count splits each image's
    /// output pixels instead.
    pub fn run(
        &self,
        x: &[i8],
        batch: usize,
        y: &mut [i8],
        slots: &mut [Scratch],
        shared_cols: &mut Vec<i8>,
    ) {
        let (n, k, pixels) = (self.mm.n(), self.shape.depth(), self.shape.pixels);
        let in_len = self.shape.in_len();
        if batch >= slots.len() {
            par_images(x, in_len, y, pixels * n, slots, |image, out, slot| {
                let a = self.shape.lhs(image, self.zp_in, &mut slot.cols);
                self.mm.run(a, pixels, 0..n, &mut slot.accum, out);
            });
        } else {
            for (image, out) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(pixels * n)) {
                let a = self.shape.lhs(image, self.zp_in, shared_cols);
                par_blocks(out, n, MR, BLOCKS_PER_SLOT, slots, |r0, block, slot| {
                    self.mm
                        .run(&a[r0 * k..], block.len() / n, 0..n, &mut slot.accum, block);
                });
            }
        }
    }
}

/// Runs a linear GEMM + output stage `f(a_rows, m, cols, accum, out)` over a batch:
/// rows split over the threads, one block each (a block streams all the weights), or
/// (one row, several threads) panels of columns, several blocks each.
pub(super) fn split_linear<Y: Send>(
    x: &[i8],
    k: usize,
    n: usize,
    y: &mut [Y],
    slots: &mut [Scratch],
    f: impl Fn(&[i8], usize, Range<usize>, &mut Scratch, &mut [Y]) + Sync + Send,
) {
    let batch = y.len() / n;
    if batch == 1 && slots.len() > 1 {
        par_blocks(y, 1, NR, BLOCKS_PER_SLOT, slots, |c0, block, slot| {
            f(x, 1, c0..c0 + block.len(), slot, block)
        });
    } else {
        par_blocks(y, n, 1, 1, slots, |r0, block, slot| {
            f(&x[r0 * k..], block.len() / n, 0..n, slot, block)
        });
    }
}

/// A static linear layer.
#[derive(Debug)]
pub(crate) struct IntLinear {
    pub(super) mm: IntMatmul,
}

impl IntLinear {
    pub fn run(&self, x: &[i8], y: &mut [i8], slots: &mut [Scratch]) {
        split_linear(
            x,
            self.mm.k(),
            self.mm.n(),
            y,
            slots,
            |a, m, cols, slot, out| self.mm.run(a, m, cols, &mut slot.accum, out),
        );
    }
}

/// Max-pooling on int8 NHWC (the parameters carry over unchanged).
#[derive(Debug)]
pub(crate) struct IntPool {
    pub(super) input: [usize; 3],
    pub(super) kernel: usize,
    pub(super) stride: usize,
}

impl IntPool {
    pub fn run(&self, x: &[i8], y: &mut [i8], out_len: usize, slots: &mut [Scratch]) {
        let [c, h, w] = self.input;
        par_images(x, c * h * w, y, out_len, slots, |image, out, _| {
            max_pool2d_nhwc_s8(image, h, w, c, self.kernel, self.stride, out)
        });
    }
}

/// ReLU on int8: `max(q, zp)`.
pub(crate) fn int_relu(x: &[i8], zero_point: i8, y: &mut [i8]) {
    for (o, &q) in y.iter_mut().zip(x) {
        *o = q.max(zero_point);
    }
}
