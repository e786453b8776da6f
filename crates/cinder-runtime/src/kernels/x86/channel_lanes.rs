//! The requantization constants of a block of channels in the lane order of the vector
//! output stages (AVX2: groups of 8 channels, AVX-512: 16). Each group is rescaled as two
//! vectors of 64-bit products (`vpmuldq`), its even channels and its odd ones, so the
//! `i64` arrays hold, for the group at `g`, the even channels' constants at `g..g + G/2`
//! and the odd ones' at `g + G/2..g + G`.

use std::ops::Range;

use crate::kernels::output::OutputStage;

/// Channels whose multipliers are unpacked into lanes at a time.
pub(super) const CHANNEL_BLOCK: usize = 128;

/// The constants of up to [`CHANNEL_BLOCK`] channels in groups of `G`.
pub(super) struct ChannelLanes<const G: usize> {
    /// Q0.31 mantissa per `i32` lane; `odd` holds channel `j + 1`'s at even `j`, for
    /// `vpmuldq`.
    pub(super) mult: [i32; CHANNEL_BLOCK],
    pub(super) odd: [i32; CHANNEL_BLOCK],
    /// The right shift `s = 31 - exponent` (in `1..=62`).
    pub(super) shift: [i64; CHANNEL_BLOCK],
    /// `2^(s-1)`: `floor((p + 2^(s-1)) / 2^s)` rounds half up, as
    /// `RequantMultiplier::apply` does (`|p| < 2^62`, so the sum cannot overflow).
    pub(super) round: [i64; CHANNEL_BLOCK],
    /// `2^(62-s)`: `2^62` shifted as the product is, for paths that shift logically
    /// after adding `2^62` to make the sum non-negative (AVX2 has no arithmetic 64-bit
    /// shift).
    pub(super) offset: [i64; CHANNEL_BLOCK],
    /// Whether any channel of the block has a positive exponent: only then can a result
    /// exceed int32, so that it must be clamped in 64 bits.
    pub(super) any_left: bool,
}

impl<const G: usize> ChannelLanes<G> {
    pub(super) fn new(stage: &OutputStage<'_>, channels: Range<usize>) -> Self {
        const { assert!(G.is_power_of_two() && G >= 2 && CHANNEL_BLOCK.is_multiple_of(G)) };
        let mut lanes = Self {
            mult: [0; CHANNEL_BLOCK],
            odd: [0; CHANNEL_BLOCK],
            shift: [0; CHANNEL_BLOCK],
            round: [0; CHANNEL_BLOCK],
            offset: [0; CHANNEL_BLOCK],
            any_left: false,
        };
        for (j, c) in channels.enumerate() {
            let m = stage.multiplier(c);
            let shift = m.right_shift();
            lanes.mult[j] = m.multiplier;
            if j % 2 == 1 {
                lanes.odd[j - 1] = m.multiplier;
            }
            let lane = j / G * G + j % 2 * (G / 2) + j % G / 2;
            lanes.shift[lane] = i64::from(shift);
            lanes.round[lane] = 1 << (shift - 1);
            lanes.offset[lane] = 1 << (62 - shift);
            lanes.any_left |= m.exponent > 0;
        }
        lanes
    }
}

/// One block of channels over `rows` rows: the block's constants and biases, and the
/// rows' sums and codes from the block's first channel (row `i` at `i * acc_ld` and
/// `i * out_ld`, the block's width each).
pub(super) struct BlockRows<'a, const G: usize> {
    pub(super) lanes: &'a ChannelLanes<G>,
    pub(super) bias: &'a [i32],
    acc: &'a [i32],
    acc_ld: usize,
    out: &'a mut [i8],
    out_ld: usize,
    pub(super) rows: usize,
}

impl<const G: usize> BlockRows<'_, G> {
    /// Row `i`'s sums and codes, the block's width each.
    #[inline(always)]
    pub(super) fn row(&mut self, i: usize) -> (&[i32], &mut [i8]) {
        let width = self.bias.len();
        (
            &self.acc[i * self.acc_ld..][..width],
            &mut self.out[i * self.out_ld..][..width],
        )
    }
}

/// Runs `block` over every block of up to [`CHANNEL_BLOCK`] of the first `channels`
/// channels of `rows` rows of sums (`acc`, row stride `acc_ld`) into `out` (row stride
/// `out_ld`), unpacking each block's constants once; the kernel walks the rows itself, so
/// that its setup is paid once per block.
pub(super) fn by_channel_blocks<const G: usize>(
    stage: &OutputStage<'_>,
    channels: usize,
    (acc, acc_ld): (&[i32], usize),
    rows: usize,
    (out, out_ld): (&mut [i8], usize),
    mut block: impl FnMut(BlockRows<'_, G>),
) {
    for j0 in (0..channels).step_by(CHANNEL_BLOCK) {
        let width = CHANNEL_BLOCK.min(channels - j0);
        let lanes = ChannelLanes::<G>::new(stage, j0..j0 + width);
        block(BlockRows {
            lanes: &lanes,
            bias: &stage.bias[j0..][..width],
            acc: &acc[j0..],
            acc_ld,
            out: &mut out[j0..],
            out_ld,
            rows,
        });
    }
}
