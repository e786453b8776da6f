//! The int8 merges of a graph: the residual `Add` (both operands rescaled to the output's
//! parameters: [`AddTable`]'s lookups, or its arithmetic in vector lanes) and `Concat`
//! along channels (each input's channels rescaled into its place in every NHWC pixel; a
//! vector is one pixel).

use super::par::{BLOCKS_PER_SLOT, Workers, par_blocks};
use crate::kernels::{AddTable, Clamp, Rescale, rescale_s8};

/// An int8 `Add`: the output code of every pair of operand codes.
#[derive(Debug)]
pub(crate) struct IntAdd {
    pub(super) table: AddTable,
}

impl IntAdd {
    pub fn run(&self, a: &[i8], b: &[i8], y: &mut [i8], slots: &mut Workers) {
        par_blocks(y, 1, 64, BLOCKS_PER_SLOT, slots, |first, block, _| {
            let n = block.len();
            self.table.add(&a[first..][..n], &b[first..][..n], block);
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
