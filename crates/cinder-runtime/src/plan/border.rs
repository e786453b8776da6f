//! The borders of the int8 domain: the input quantizer (calibrated parameters, NCHW ->
//! NHWC) and the output dequantizer (NHWC -> NCHW), which tracks the range it writes for a
//! following dynamic layer.

use cinder_tensor::QuantParams;

use super::par::{Tracked, Workers, par_images, take_range};
use crate::kernels::quantize_f32_s8;

/// The border into the int8 domain: calibrated parameters, NCHW -> NHWC.
#[derive(Debug)]
pub(crate) struct InputQuantizer {
    pub(super) params: QuantParams,
    pub(super) chw: Option<[usize; 3]>,
}

impl InputQuantizer {
    /// Quantizes every image of `x`; returns whether all its values were finite.
    pub fn run(&self, x: &[f32], y: &mut [i8], len: usize, slots: &mut Workers) -> bool {
        par_images(x, len, y, len, slots, |image, out, slot| {
            if !quantize_f32_s8(image, self.chw, &self.params, out) {
                slot.range = Tracked::Unknown;
            }
        });
        take_range(slots) != Tracked::Unknown
    }
}

/// The border out of the int8 domain: NHWC (or an NHWC flatten) -> canonical NCHW.
#[derive(Debug)]
pub(crate) struct OutputDequantizer {
    pub(super) params: QuantParams,
    pub(super) chw: Option<[usize; 3]>,
}

impl OutputDequantizer {
    pub fn run(&self, x: &[i8], y: &mut [f32], len: usize, slots: &mut Workers) -> Tracked {
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
