//! Depthwise convolutions (every channel its own filter): static (int8 in and out, the
//! sums of [`depthwise_nhwc_s8`] through the integer output stage) and dynamic (each
//! batch quantized with its own range, the same sums through a float output stage,
//! written NCHW). Their own kernel, not a GEMM with one input channel.

use super::dynamic::DynMatmul;
use super::int::Requant;
use super::par::{
    BLOCKS_PER_SLOT, Shared, Tracked, Workers, grow, par_blocks, par_images, take_range,
};
use crate::error::RunError;
use crate::kernels::{
    DepthwiseFilter, NhwcWindow, depthwise_nhwc_s8, quantize_f32_s8, requantize_s8_rows,
};

/// A static depthwise convolution.
#[derive(Debug)]
pub(crate) struct IntDepthwise {
    pub(super) window: NhwcWindow,
    pub(super) zp_in: i8,
    pub(super) filter: DepthwiseFilter,
    /// The layer's own bias: the kernel subtracts both zero points.
    pub(super) output: Requant,
}

impl IntDepthwise {
    /// Output rows of one image, `rows` of them, into `out`.
    fn rows(&self, image: &[i8], rows: std::ops::Range<usize>, acc: &mut Vec<i32>, out: &mut [i8]) {
        let ([_, ow], c) = (self.window.output(), self.window.input[2]);
        let pixels = rows.len() * ow;
        let sums = grow(acc, pixels * c);
        depthwise_nhwc_s8(image, &self.window, self.zp_in, &self.filter, rows, sums);
        requantize_s8_rows(&self.output.stage(0..c), sums, c, pixels, out, c);
    }

    /// Whole images per thread; a batch smaller than the thread count splits each image's
    /// rows instead.
    pub fn run(&self, x: &[i8], y: &mut [i8], slots: &mut Workers) {
        let [h, w, c] = self.window.input;
        let [oh, ow] = self.window.output();
        let (in_len, out_len) = (h * w * c, oh * ow * c);
        if y.len() / out_len >= slots.len() {
            par_images(x, in_len, y, out_len, slots, |image, out, slot| {
                self.rows(image, 0..oh, &mut slot.accum.acc, out)
            });
            return;
        }
        for (image, out) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(out_len)) {
            par_blocks(
                out,
                ow * c,
                1,
                BLOCKS_PER_SLOT,
                slots,
                |first, block, slot| {
                    let rows = first..first + block.len() / (ow * c);
                    self.rows(image, rows, &mut slot.accum.acc, block)
                },
            );
        }
    }
}

/// A dynamic depthwise convolution: NCHW floats in and out, the sums through the float
/// output stage of [`DynMatmul`] (channel-major, with no zero-point terms: the kernel
/// takes the zero points into account itself).
#[derive(Debug)]
pub(crate) struct DynDepthwise {
    pub(super) window: NhwcWindow,
    pub(super) filter: DepthwiseFilter,
    pub(super) mm: DynMatmul,
}

impl DynDepthwise {
    pub fn run(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        y: &mut [f32],
        slots: &mut Workers,
        shared: &mut Shared,
    ) -> Result<Tracked, RunError> {
        let p = self.mm.prepare(x, range, [], shared)?;
        let [h, w, c] = self.window.input;
        let [oh, ow] = self.window.output();
        let (in_len, pixels) = (h * w * c, oh * ow);
        let terms = (&shared.col_off[..c], &shared.col_scale[..c]);
        par_images(x, in_len, y, pixels * c, slots, |image, out, slot| {
            let q = grow(&mut slot.q, in_len);
            quantize_f32_s8(image, Some([c, h, w]), &p, q);
            let sums = grow(&mut slot.accum.acc, pixels * c);
            let zp = p.zero_point as i8;
            depthwise_nhwc_s8(q, &self.window, zp, &self.filter, 0..oh, sums);
            let r = (self.mm).finish(pixels, 0..c, &mut slot.accum, terms, out, Some(pixels));
            slot.range = slot.range.merge(r);
        });
        Ok(take_range(slots))
    }
}
