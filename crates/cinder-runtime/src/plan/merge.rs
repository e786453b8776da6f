//! The int8 merges of a graph: the residual `Add` (both operands rescaled to the output's
//! parameters, [`add_s8`]) and `Concat` along channels (each input's channels rescaled
//! into its place in every NHWC pixel; a vector is one pixel).

use super::par::{BLOCKS_PER_SLOT, Scratch, par_blocks};
use crate::kernels::{Clamp, Rescale, RescaleTable, add_s8, rescale_s8};

/// An int8 `Add`: each operand's rescale as a table of its codes.
#[derive(Debug)]
pub(crate) struct IntAdd {
    pub(super) operands: [RescaleTable; 2],
    pub(super) clamp: Clamp,
}

impl IntAdd {
    pub fn run(&self, a: &[i8], b: &[i8], y: &mut [i8], slots: &mut [Scratch]) {
        par_blocks(y, 1, 64, BLOCKS_PER_SLOT, slots, |first, block, _| {
            let n = block.len();
            let [p, q] = &self.operands;
            add_s8(
                &a[first..][..n],
                &b[first..][..n],
                [p, q],
                &self.clamp,
                block,
            );
        });
    }
}

/// An int8 `Concat`: input `i` has `parts[i].0` channels per pixel.
#[derive(Debug)]
pub(crate) struct IntConcat {
    pub(super) parts: Vec<(usize, Rescale)>,
    pub(super) clamp: Clamp,
}

impl IntConcat {
    /// `input(i)` is input `i`'s whole batch; `y` the output's.
    pub fn run<'a>(&self, input: impl Fn(usize) -> &'a [i8], y: &mut [i8]) {
        let width: usize = self.parts.iter().map(|p| p.0).sum();
        for (pixel, out) in y.chunks_exact_mut(width).enumerate() {
            let mut at = 0;
            for (i, (channels, rescale)) in self.parts.iter().enumerate() {
                let x = &input(i)[pixel * channels..][..*channels];
                rescale_s8(x, rescale, &self.clamp, &mut out[at..at + channels]);
                at += channels;
            }
        }
    }
}
