//! Convolutions of several groups that are not depthwise (ResNeXt- or ShuffleNet-style).
//! Static: per image and group, the group's input channels gathered into a contiguous
//! NHWC image, then im2col + GEMM + the group's output stage, written into the group's
//! output channels of every pixel; each group is an ordinary [`IntMatmul`], so its
//! zero-point folding and output stage are the dense convolution's. Dynamic: each
//! group's NCHW float channels (contiguous) quantized straight into its NHWC image, then
//! im2col + GEMM against the group's packed weights and the float output stage of
//! [`DynMatmul`] on the group's columns.

use super::dynamic::DynMatmul;
use super::int::{ConvShape, IntMatmul, accumulate};
use super::par::{Shared, Tracked, Workers, grow, par_images, take_range};
use crate::error::RunError;
use crate::kernels::{PackedMatrix, quantize_f32_s8};

/// A static grouped convolution: `groups[g]` computes output channels
/// `g * n_g .. (g + 1) * n_g` from input channels `g * c_g .. (g + 1) * c_g`.
#[derive(Debug)]
pub(crate) struct IntGroupedConv {
    /// One group's geometry: `c_g` input channels, the layer's window.
    pub(super) shape: ConvShape,
    pub(super) zp_in: i8,
    pub(super) groups: Vec<IntMatmul>,
}

impl IntGroupedConv {
    /// Whole images per thread.
    pub fn run(&self, x: &[i8], y: &mut [i8], slots: &mut Workers) {
        let [c_g, h, w] = self.shape.input;
        let (channels, n_g) = (c_g * self.groups.len(), self.groups[0].n());
        let n = n_g * self.groups.len();
        let pixels = self.shape.pixels;
        par_images(
            x,
            channels * h * w,
            y,
            pixels * n,
            slots,
            |image, out, slot| {
                for (g, mm) in self.groups.iter().enumerate() {
                    let part = grow(&mut slot.q, h * w * c_g);
                    for (dst, pixel) in part.chunks_exact_mut(c_g).zip(image.chunks_exact(channels))
                    {
                        dst.copy_from_slice(&pixel[g * c_g..][..c_g]);
                    }
                    let a = self
                        .shape
                        .lhs(part, self.zp_in, self.shape.rows(), &mut slot.cols);
                    mm.run_strided(a, pixels, &mut slot.accum, &mut out[g * n_g..], n);
                }
            },
        );
    }
}

/// A dynamic grouped convolution: `groups[g]` holds the packed weights of output channels
/// `g * n_g .. (g + 1) * n_g`, which read input channels `g * c_g .. (g + 1) * c_g`.
#[derive(Debug)]
pub(crate) struct DynGroupedConv {
    /// One group's geometry: `c_g` input channels, the layer's window.
    pub(super) shape: ConvShape,
    /// The output stage of all the layer's columns.
    pub(super) mm: DynMatmul,
    pub(super) groups: Vec<PackedMatrix>,
}

impl DynGroupedConv {
    /// Whole images per thread; NCHW floats in and out.
    pub fn run(
        &self,
        x: &[f32],
        range: Option<(f32, f32)>,
        y: &mut [f32],
        slots: &mut Workers,
        shared: &mut Shared,
    ) -> Result<Tracked, RunError> {
        let p = self.mm.prepare(x, range, &self.groups, shared)?;
        let group_len = self.shape.in_len();
        let (n_g, pixels) = (self.groups[0].rows(), self.shape.pixels);
        let n = n_g * self.groups.len();
        let terms = (&shared.col_off[..n], &shared.col_scale[..n]);
        let zp_w = self.mm.zp_w.as_deref();
        par_images(
            x,
            group_len * self.groups.len(),
            y,
            pixels * n,
            slots,
            |image, out, slot| {
                for (g, weights) in self.groups.iter().enumerate() {
                    let q = grow(&mut slot.q, group_len);
                    let channels = &image[g * group_len..][..group_len];
                    quantize_f32_s8(channels, Some(self.shape.input), &p, q);
                    let a =
                        self.shape
                            .lhs(q, p.zero_point as i8, self.shape.rows(), &mut slot.cols);
                    let zp_w = zp_w.map(|z| &z[g * n_g..][..n_g]);
                    accumulate(weights, zp_w, a, pixels, 0..n_g, &mut slot.accum);
                    let cols = g * n_g..(g + 1) * n_g;
                    let out = &mut out[g * n_g * pixels..];
                    let r =
                        (self.mm).finish(pixels, cols, &mut slot.accum, terms, out, Some(pixels));
                    slot.range = slot.range.merge(r);
                }
            },
        );
        Ok(take_range(slots))
    }
}
