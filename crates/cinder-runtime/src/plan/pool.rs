//! Int8 pools over any window (padding, rectangular, global): maximum, and average with
//! the exact integer rounding of [`crate::kernels`] `pool`; the parameters carry over.

use super::par::{Workers, grow, par_images};
use crate::arith::PoolKind;
use crate::kernels::{NhwcWindow, avg_pool_nhwc_s8, max_pool_nhwc_s8};

/// A pool of int8 NHWC images.
#[derive(Debug)]
pub(crate) struct IntWindowPool {
    pub(super) window: NhwcWindow,
    pub(super) zero_point: i8,
    pub(super) kind: PoolKind,
}

impl IntWindowPool {
    pub fn run(&self, x: &[i8], y: &mut [i8], out_len: usize, slots: &mut Workers) {
        let [h, w, c] = self.window.input;
        par_images(
            x,
            h * w * c,
            y,
            out_len,
            slots,
            |image, out, slot| match self.kind {
                PoolKind::Max => max_pool_nhwc_s8(image, &self.window, out),
                PoolKind::Avg { include_pad } => {
                    let acc = grow(&mut slot.accum.acc, c);
                    avg_pool_nhwc_s8(image, &self.window, self.zero_point, include_pad, acc, out)
                }
            },
        );
    }
}
