//! Splitting a stage's work over the session's threads, and the per-thread scratch.
//!
//! Work is cut into contiguous blocks, a few per thread, that the threads claim one after
//! the other (an atomic counter), each thread with its own [`Scratch`]: when a thread is
//! slowed down (a shared machine), the others take over its remaining blocks instead of
//! waiting for it. Buffers only grow: once each thread has taken its largest block of
//! every stage, nothing is allocated.

use std::marker::PhantomData;
use std::ops::{Deref, DerefMut, Range};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::team::Team;

/// Blocks per thread for work split by images or by output pixels: enough for the
/// threads to even out, few enough that a block keeps its weights in cache.
pub(crate) const BLOCKS_PER_SLOT: usize = 4;

/// Accumulators and row sums of one GEMM block.
#[derive(Debug, Default)]
pub(crate) struct Accum {
    pub acc: Vec<i32>,
    pub sums: Vec<i32>,
    /// A block of Winograd-transformed input tiles and their products.
    pub transformed: Vec<i16>,
    /// The padded input rows of a direct convolution and its windows, as `u8`.
    pub padded: Vec<u8>,
    pub products: Vec<i32>,
    /// Per-column extremes of a dynamic layer's accumulators.
    pub col_lo: Vec<i32>,
    pub col_hi: Vec<i32>,
    /// Rows of a dynamic layer's output before they are written channel-major.
    pub tile: Vec<f32>,
}

/// What one thread needs for its block.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// im2col rows of one image, or of the part of one image this thread computes.
    pub cols: Vec<i8>,
    /// The same as offset bytes (`code + 128`), for GEMMs that read them in place.
    pub offset_cols: Vec<u8>,
    /// A dynamically quantized input image.
    pub q: Vec<i8>,
    pub accum: Accum,
    /// A convolution's sums after a fused 2×2 max-pool.
    pub pooled: Vec<i32>,
    /// A float convolution's im2col matrix of one image.
    pub im2col: Vec<f32>,
    /// The taps of one window of a float pool.
    pub taps: Vec<f32>,
    /// The value range of what this thread wrote in the current stage.
    pub range: Tracked,
}

/// Buffers shared by all threads of a stage (written before the parallel part).
#[derive(Debug, Default)]
pub(crate) struct Shared {
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

/// A session's threads, each with its scratch (`workers[t]` is thread `t`'s).
#[derive(Debug)]
pub(crate) struct Workers {
    team: Team,
    scratch: Vec<Scratch>,
}

impl Workers {
    /// The caller and `threads - 1` helper threads.
    pub fn new(threads: usize) -> std::io::Result<Workers> {
        let team = Team::new(threads)?;
        let scratch = (0..team.threads()).map(|_| Scratch::default()).collect();
        Ok(Workers { team, scratch })
    }
}

impl Deref for Workers {
    type Target = [Scratch];

    fn deref(&self) -> &[Scratch] {
        &self.scratch
    }
}

impl DerefMut for Workers {
    fn deref_mut(&mut self) -> &mut [Scratch] {
        &mut self.scratch
    }
}

/// The first `len` elements of `v`, growing it when it is shorter.
pub(crate) fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// A slice handed out in disjoint blocks to the threads that claim them.
struct Claimed<'a, Y> {
    ptr: *mut Y,
    len: usize,
    _slice: PhantomData<&'a mut [Y]>,
}

// SAFETY: `Claimed` only hands out disjoint parts of a `&mut [Y]` (see `part`), which may
// move to other threads when `Y: Send`.
unsafe impl<Y: Send> Sync for Claimed<'_, Y> {}

impl<'a, Y> Claimed<'a, Y> {
    fn new(y: &'a mut [Y]) -> Self {
        Self {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            _slice: PhantomData,
        }
    }

    /// Elements `r` of the slice.
    ///
    /// # Safety
    /// No two parts in use at the same time may overlap.
    #[allow(
        clippy::mut_from_ref,
        reason = "disjoint parts of one exclusive borrow"
    )]
    unsafe fn part(&self, r: Range<usize>) -> &mut [Y] {
        assert!(r.start <= r.end && r.end <= self.len, "part out of bounds");
        // SAFETY: in bounds (checked), and not aliased by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.len()) }
    }
}

/// Cuts `y` into units of `unit` elements and those into about `per_slot` blocks per
/// slot, each a multiple of `align` units (but the last); the slots' threads claim the
/// blocks in turn and run `f(first_unit, block, slot)`.
pub(crate) fn par_blocks<Y: Send>(
    y: &mut [Y],
    unit: usize,
    align: usize,
    per_slot: usize,
    slots: &mut Workers,
    f: impl Fn(usize, &mut [Y], &mut Scratch) + Sync + Send,
) {
    let unit = unit.max(1);
    let units = y.len() / unit;
    let per = units
        .div_ceil(align)
        .div_ceil(slots.len() * per_slot)
        .max(1)
        * align;
    let (blocks, len) = (y.len().div_ceil(per * unit), y.len());
    let (y, next) = (Claimed::new(y), AtomicUsize::new(0));
    let Workers { team, scratch } = slots;
    let scratch = Claimed::new(scratch);
    team.run(&|thread| {
        // SAFETY: each thread of the team runs this once, with its own index.
        let slot = &mut unsafe { scratch.part(thread..thread + 1) }[0];
        loop {
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= blocks {
                break;
            }
            let start = b * per * unit;
            // SAFETY: every block index is claimed once, and blocks are disjoint.
            let block = unsafe { y.part(start..(start + per * unit).min(len)) };
            f(b * per, block, slot);
        }
    });
}

/// Runs `f(x_image, y_image, slot)` over a batch, images split evenly over the slots.
pub(crate) fn par_images<X: Sync, Y: Send>(
    x: &[X],
    in_len: usize,
    y: &mut [Y],
    out_len: usize,
    slots: &mut Workers,
    f: impl Fn(&[X], &mut [Y], &mut Scratch) + Sync + Send,
) {
    par_blocks(
        y,
        out_len,
        1,
        BLOCKS_PER_SLOT,
        slots,
        |first, block, slot| {
            for (b, yi) in block.chunks_exact_mut(out_len).enumerate() {
                f(&x[(first + b) * in_len..][..in_len], yi, slot);
            }
        },
    );
}

/// The union of the ranges the slots tracked, resetting them.
pub(crate) fn take_range(slots: &mut [Scratch]) -> Tracked {
    slots
        .iter_mut()
        .map(|s| std::mem::take(&mut s.range))
        .fold(Tracked::Empty, Tracked::merge)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn blocks_cover_every_unit_once(
            len in 0usize..300,
            unit in 1usize..7,
            align in 1usize..5,
            per_slot in 1usize..5,
            threads in 1usize..4,
        ) {
            let mut slots = Workers::new(threads).unwrap();
            let mut y = vec![usize::MAX; len];
            par_blocks(&mut y, unit, align, per_slot, &mut slots, |first, block, _| {
                assert_eq!(first % align, 0, "blocks start at a multiple of align");
                for (j, v) in block.iter_mut().enumerate() {
                    assert_eq!(*v, usize::MAX, "written twice");
                    *v = first * unit + j;
                }
            });
            prop_assert!(y.iter().enumerate().all(|(i, &v)| v == i));
        }
    }
}
