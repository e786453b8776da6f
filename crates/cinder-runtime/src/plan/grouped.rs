//! A static convolution of several groups that is not depthwise (ResNeXt- or
//! ShuffleNet-style): per image and group, the group's input channels gathered into a
//! contiguous NHWC image, then im2col + GEMM + the group's output stage, written into the
//! group's output channels of every pixel. Each group is an ordinary [`IntMatmul`], so
//! its zero-point folding and output stage are the dense convolution's.

use super::int::{ConvShape, IntMatmul};
use super::par::{Scratch, grow, par_images};

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
    pub fn run(&self, x: &[i8], y: &mut [i8], slots: &mut [Scratch]) {
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
                    let a = self.shape.lhs(part, self.zp_in, &mut slot.cols);
                    mm.run_strided(a, pixels, &mut slot.accum, &mut out[g * n_g..], n);
                }
            },
        );
    }
}
