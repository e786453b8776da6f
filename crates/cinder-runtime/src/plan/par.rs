//! Splitting a stage's work over the session's threads, and the per-thread scratch.
//!
//! Work is cut into one contiguous block per thread (static partition: the blocks are
//! equal, the threads identical), each with its own [`Scratch`]. Buffers only grow, so
//! after a warm-up run at the largest batch nothing is allocated.

use rayon::prelude::*;

/// Accumulators and row sums of one GEMM block.
#[derive(Debug, Default)]
pub(crate) struct Accum {
    pub acc: Vec<i32>,
    pub sums: Vec<i32>,
    /// Per-column extremes of a dynamic layer's accumulators.
    pub col_lo: Vec<i32>,
    pub col_hi: Vec<i32>,
    /// Rows of a dynamic layer's output before they are written channel-major.
    pub tile: Vec<f32>,
}

/// What one thread needs for its block.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// im2col rows of one image.
    pub cols: Vec<i8>,
    /// A dynamically quantized input image.
    pub q: Vec<i8>,
    pub accum: Accum,
    /// The value range of what this thread wrote in the current stage.
    pub range: Tracked,
}

/// Buffers shared by all threads of a stage (written before the parallel part).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// im2col of the one image when a batch is smaller than the thread count.
    pub cols: Vec<i8>,
    /// A dynamically quantized batch (linear layers).
    pub q: Vec<i8>,
    /// Per-column accumulator offset and scale of a dynamic layer for this batch.
    pub col_off: Vec<i32>,
    pub col_scale: Vec<f32>,
}

/// The min/max of a float tensor as its producer writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) enum Tracked {
    #[default]
    Empty,
    Known(f32, f32),
    /// A part held a non-finite value: the consumer rescans (and reports it).
    Unknown,
}

impl Tracked {
    pub fn merge(self, other: Tracked) -> Tracked {
        match (self, other) {
            (Tracked::Unknown, _) | (_, Tracked::Unknown) => Tracked::Unknown,
            (Tracked::Empty, t) | (t, Tracked::Empty) => t,
            (Tracked::Known(a, b), Tracked::Known(c, d)) => Tracked::Known(a.min(c), b.max(d)),
        }
    }

    /// From a scan that fails on non-finite values.
    pub fn of<E>(scan: Result<(f32, f32), E>) -> Tracked {
        scan.map_or(Tracked::Unknown, |(lo, hi)| Tracked::Known(lo, hi))
    }

    pub fn range(self) -> Option<(f32, f32)> {
        match self {
            Tracked::Known(lo, hi) => Some((lo, hi)),
            _ => None,
        }
    }
}

/// The first `len` elements of `v`, growing it when it is shorter.
pub(crate) fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// Cuts `y` into units of `unit` elements and those into one block per slot, each a
/// multiple of `align` units (but the last); runs `f(first_unit, block, slot)` in
/// parallel.
pub(crate) fn par_blocks<Y: Send>(
    y: &mut [Y],
    unit: usize,
    align: usize,
    slots: &mut [Scratch],
    f: impl Fn(usize, &mut [Y], &mut Scratch) + Sync + Send,
) {
    let units = y.len() / unit.max(1);
    let per = units.div_ceil(align).div_ceil(slots.len()).max(1) * align;
    y.par_chunks_mut(per * unit)
        .zip(slots.par_iter_mut())
        .enumerate()
        .for_each(|(t, (block, slot))| f(t * per, block, slot));
}

/// Runs `f(x_image, y_image, slot)` over a batch, images split evenly over the slots.
pub(crate) fn par_images<X: Sync, Y: Send>(
    x: &[X],
    in_len: usize,
    y: &mut [Y],
    out_len: usize,
    slots: &mut [Scratch],
    f: impl Fn(&[X], &mut [Y], &mut Scratch) + Sync + Send,
) {
    par_blocks(y, out_len, 1, slots, |first, block, slot| {
        for (b, yi) in block.chunks_exact_mut(out_len).enumerate() {
            f(&x[(first + b) * in_len..][..in_len], yi, slot);
        }
    });
}

/// The union of the ranges the slots tracked, resetting them.
pub(crate) fn take_range(slots: &mut [Scratch]) -> Tracked {
    slots
        .iter_mut()
        .map(|s| std::mem::take(&mut s.range))
        .fold(Tracked::Empty, Tracked::merge)
}
