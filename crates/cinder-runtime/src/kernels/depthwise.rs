//! Depthwise convolution sums of one NHWC int8 image: every channel convolved with its
//! own `kh × kw` filter, `sum[p][ch] = Σ_taps (x[tap][ch] - zp_in) · (w[ch][tap] - zw[ch])`
//! over the taps inside the image (padding adds nothing). Not a GEMM: per output pixel,
//! per channel, multiply-adds along the window, with the channels (contiguous in NHWC) in
//! the vector lanes. Like Winograd's transforms, the kernel takes the zero points into
//! account itself; bias, requantization and clamping are the caller's output stage.
//!
//! # Paths
//! The weights are packed once ([`DepthwiseFilter`]) for the process's path:
//!
//! | path | layout | multiply-add |
//! |---|---|---|
//! | generic | `[tap][c]` centred i16 | portable (the compiler's vectors) |
//! | avx2 | tap pairs, blocks of 16 channels | `vpmaddwd` + `vpaddd` ymm |
//! | avxvnni | tap pairs, blocks of 16 channels | `vpdpwssd` ymm (VEX) |
//! | avx512vnni-ymm | tap pairs, blocks of 16 channels | `vpdpwssd` ymm (EVEX) |
//! | avx512vnni | tap pairs, blocks of 32 channels | `vpdpwssd` zmm, masked tails |
//!
//! The SIMD paths follow XNNPACK's qs8 depthwise kernels: per output pixel a table of the
//! window's input pixels (at most [`TAP_CHUNK`] at a time, longer windows in several
//! passes), a tap in the padding reading a vector of the input zero point; per block of
//! channels, two taps' codes interleaved byte by byte (`vpunpcklbw` / `vpunpckhbw`) and
//! sign-extended to i16 pairs, multiplied with the pair of centred weights of each
//! channel and added into one i32 lane, accumulators in registers across the window.
//! An odd window gets a last tap of zero weights.
//!
//! `vpdpbusd` on four interleaved taps (u8 codes `x ^ 0x80` against i8 weights) would do
//! twice the products per instruction, but a 3×3 window then pads 9 taps to 12 where
//! pairs pad to 10, interleaving four taps costs twice the shuffles of two, and centred
//! weights of asymmetric schemes reach ±254, outside i8: the pair kernels are kept.
//!
//! # Exactness
//! The SIMD paths multiply the raw codes (`x` in [-128, 127]) by the centred weights
//! (`|w - zw| ≤ 255`, checked when packing): every product and pair sum is exact in
//! `vpmaddwd` / `vpdpwssd`, and the lanes add with wrapping. A tap in the padding reads
//! `zp_in`, so every pixel sums over the whole window, and the sums start from
//! `-zp_in · Σ_taps (w - zw)` (computed per channel when packing): a lane ends at
//! `Σ_inside (x - zp_in) · (w - zw)` modulo 2^32. That sum is bounded by
//! `taps · 255 · 255`, within i32 for at most [`MAX_DEPTHWISE_TAPS`] taps (checked when
//! packing), so the wrapped value is the exact one, equal to the reference bit for bit.

use std::ops::Range;

use super::KernelError;
use super::generic::depthwise_rows;
use super::isa::Isa;
use super::window::NhwcWindow;
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx2, Avx512Vnni, AvxVnni};

/// The largest centred weight `|w - zw|` the bounds allow.
const MAX_CENTRED: i64 = 255;

/// The most taps (`kh · kw`) whose sums cannot overflow i32: `taps · 255 · 255 ≤ i32::MAX`.
pub const MAX_DEPTHWISE_TAPS: usize = (i32::MAX as i64 / (MAX_CENTRED * MAX_CENTRED)) as usize;

/// Taps of one output pixel handled per pass over its channels (even, so that only the
/// window's last pair can be short): the tap table lives on the stack.
pub(super) const TAP_CHUNK: usize = 32;

/// The weights of a depthwise convolution, packed for one path.
#[derive(Clone, PartialEq, Eq)]
pub struct DepthwiseFilter {
    channels: usize,
    taps: usize,
    isa: Isa,
    /// `[tap][c]`, centred on each channel's zero point: the generic path's layout.
    centred: Vec<i16>,
    /// The tap-pair layout of the SIMD paths.
    pairs: Option<PairFilter>,
}

impl DepthwiseFilter {
    /// Packs `codes`, row-major `[c][taps]` (the `[c, 1, kh, kw]` weights of a depthwise
    /// convolution), channel `ch` centred on `zero_points[ch]`, for the process's path
    /// ([`Isa::detect`]). Errors if `codes` does not hold `channels × taps` values, if
    /// `taps > MAX_DEPTHWISE_TAPS`, or if a centred weight lies outside `[-255, 255]`.
    ///
    /// # Panics
    /// If `zero_points` does not hold one value per channel.
    pub fn pack(
        codes: &[i8],
        zero_points: &[i32],
        channels: usize,
        taps: usize,
    ) -> Result<Self, KernelError> {
        Self::pack_for(Isa::detect(), codes, zero_points, channels, taps)
    }

    /// [`Self::pack`] for the best path the CPU supports at or below `isa`.
    ///
    /// # Panics
    /// If `zero_points` does not hold one value per channel.
    pub fn pack_for(
        isa: Isa,
        codes: &[i8],
        zero_points: &[i32],
        channels: usize,
        taps: usize,
    ) -> Result<Self, KernelError> {
        assert_eq!(zero_points.len(), channels, "one zero point per channel");
        let centred = centre(codes, zero_points, channels, taps)?;
        let isa = Isa::best_up_to(isa);
        let pairs = match isa {
            Isa::Generic => None,
            Isa::Avx512Vnni => Some(PairFilter::pack(&centred, channels, taps, 32, zmm_slot)),
            _ => Some(PairFilter::pack(&centred, channels, taps, 16, |slot| slot)),
        };
        Ok(Self {
            channels,
            taps,
            isa,
            centred,
            pairs,
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Taps of the window (`kh · kw`).
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// The path this filter was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }
}

impl std::fmt::Debug for DepthwiseFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthwiseFilter")
            .field("channels", &self.channels)
            .field("taps", &self.taps)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

/// `codes` (`[c][taps]`) centred on their channel's zero point, as `[tap][c]`, checked.
fn centre(
    codes: &[i8],
    zero_points: &[i32],
    channels: usize,
    taps: usize,
) -> Result<Vec<i16>, KernelError> {
    KernelError::check_length(codes.len(), channels, taps)?;
    if taps > MAX_DEPTHWISE_TAPS {
        return Err(KernelError::TooManyTaps {
            taps,
            max: MAX_DEPTHWISE_TAPS,
        });
    }
    let mut centred = vec![0; codes.len()];
    for (ch, (row, &zw)) in codes.chunks_exact(taps.max(1)).zip(zero_points).enumerate() {
        for (tap, &q) in row.iter().enumerate() {
            let value = i64::from(q) - i64::from(zw);
            if value.abs() > MAX_CENTRED {
                return Err(KernelError::CenteredWeightOutOfRange {
                    row: ch,
                    col: tap,
                    value,
                });
            }
            centred[tap * channels + ch] = value as i16;
        }
    }
    Ok(centred)
}

/// The channel (within a block of 32) of slot `slot` of the zmm kernel: byte interleaves
/// work within 128-bit lanes, so the low i16 vector of a ymm pair holds channels 0–7 and
/// 16–23, the high one 8–15 and 24–31.
fn zmm_slot(slot: usize) -> usize {
    const CHANNELS: [usize; 4] = [0, 16, 8, 24];
    CHANNELS[slot / 8] + slot % 8
}

/// Tap pairs in blocks of channels: per block, per pair, `2 · width` i16, slot `s` (two
/// values: the pair's first and second tap) holding channel `slot_channel(s)` of the
/// block; zero past the last channel and tap. With the per-slot start factors.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct PairFilter {
    /// Channels per block: 16 (ymm) or 32 (zmm).
    pub(super) width: usize,
    /// Pairs per block: `ceil(taps / 2)`.
    pairs: usize,
    /// `[block][pair][slot][2]`.
    rows: Vec<i16>,
    /// `Σ_taps (w - zw)` of each slot's channel, `[block][slot]`: the sums start from
    /// `-zp_in` times these.
    sums: Vec<i32>,
}

impl PairFilter {
    /// Packs centred `[tap][c]` weights in blocks of `width` channels.
    fn pack(
        centred: &[i16],
        channels: usize,
        taps: usize,
        width: usize,
        slot_channel: impl Fn(usize) -> usize,
    ) -> Self {
        let (blocks, pairs) = (channels.div_ceil(width), taps.div_ceil(2));
        let mut rows = vec![0; blocks * pairs * 2 * width];
        let mut sums = vec![0; blocks * width];
        for block in 0..blocks {
            for slot in 0..width {
                let ch = block * width + slot_channel(slot);
                if ch >= channels {
                    continue;
                }
                for tap in 0..taps {
                    let w = centred[tap * channels + ch];
                    rows[((block * pairs + tap / 2) * width + slot) * 2 + tap % 2] = w;
                    sums[block * width + slot] += i32::from(w);
                }
            }
        }
        Self {
            width,
            pairs,
            rows,
            sums,
        }
    }

    /// The weight rows of `block` for the pairs `pairs`: `2 · width` i16 each.
    #[inline(always)]
    pub(super) fn rows(&self, block: usize, pairs: Range<usize>) -> &[i16] {
        let row = 2 * self.width;
        &self.rows[(block * self.pairs + pairs.start) * row..][..pairs.len() * row]
    }

    /// The start factors of `block`'s slots (`width` values).
    #[inline(always)]
    pub(super) fn sums(&self, block: usize) -> &[i32] {
        &self.sums[block * self.width..][..self.width]
    }
}

/// The depthwise sums of output rows `rows` of one image into `out` (`rows × ow × c`,
/// pixel-major, channels innermost), on the path `filter` was packed for when the CPU
/// has it (else the generic one). Returns the path that computed them.
///
/// # Panics
/// If a buffer is shorter than the shape needs, or `filter` does not match the shape's
/// channels and window.
pub fn depthwise_nhwc_s8(
    image: &[i8],
    shape: &NhwcWindow,
    zp_in: i8,
    filter: &DepthwiseFilter,
    rows: Range<usize>,
    out: &mut [i32],
) -> Isa {
    let [h, w, c] = shape.input;
    let [oh, ow] = shape.output();
    let [kh, kw] = shape.kernel;
    assert!(
        filter.channels == c && filter.taps == kh * kw,
        "depthwise: filter of {} channels x {} taps for a {c}-channel {kh}x{kw} window",
        filter.channels,
        filter.taps
    );
    assert!(image.len() >= h * w * c, "depthwise: short image");
    assert!(rows.end <= oh, "depthwise: rows {rows:?} outside 0..{oh}");
    let out = &mut out[..rows.len() * ow * c];
    #[cfg(target_arch = "x86_64")]
    if let Some(pairs) = &filter.pairs {
        let job = DepthwiseJob {
            image,
            shape: *shape,
            zp_in,
            filter: pairs,
            rows,
            out,
        };
        return match (filter.isa, Avx512Vnni::detect(), AvxVnni::detect()) {
            (Isa::Avx512Vnni, Some(token), _) => token.depthwise(job),
            (Isa::Avx512VnniYmm, Some(token), _) => token.ymm().depthwise(job),
            (Isa::AvxVnni, _, Some(token)) => token.depthwise(job),
            _ => match Avx2::detect() {
                Some(token) => token.depthwise(job),
                None => {
                    let DepthwiseJob { rows, out, .. } = job;
                    depthwise_rows(image, shape, zp_in, &filter.centred, rows, out);
                    Isa::Generic
                }
            },
        };
    }
    depthwise_rows(image, shape, zp_in, &filter.centred, rows, out);
    Isa::Generic
}

/// The checked operands of a SIMD depthwise kernel: `image` holds the whole input,
/// `out` exactly the sums of `rows`.
pub(super) struct DepthwiseJob<'a> {
    pub(super) image: &'a [i8],
    pub(super) shape: NhwcWindow,
    pub(super) zp_in: i8,
    pub(super) filter: &'a PairFilter,
    pub(super) rows: Range<usize>,
    pub(super) out: &'a mut [i32],
}

/// The most channels a SIMD kernel reads at once from one tap.
pub(super) const MAX_BLOCK: usize = 32;

/// Where one tap's codes lie: at an input pixel (channel `c0` at `base + c0`), or, for a
/// tap in the padding, in a vector of the input zero point (the same [`MAX_BLOCK`] codes
/// for every block of channels). No branch per tap and block: `step` masks the offset.
#[derive(Clone, Copy)]
pub(super) struct TapSource {
    base: *const i8,
    /// `usize::MAX` at a pixel, 0 in the padding.
    step: usize,
}

impl TapSource {
    /// The tap's codes from channel `c0` on: `min(c - c0, MAX_BLOCK)` of them are
    /// readable (`c` the image's channels).
    #[inline(always)]
    pub(super) fn at(self, c0: usize) -> *const i8 {
        self.base.wrapping_add(c0 & self.step)
    }
}

impl DepthwiseJob<'_> {
    /// Calls `pass(sums, taps, first_pair)` for every output pixel and chunk of at most
    /// [`TAP_CHUNK`] of its taps: `sums` the pixel's `c` outputs, `taps` the chunk's
    /// sources, padded to an even count (the padding tap has zero weights), and
    /// `first_pair` the chunk's first tap pair (0: the sums start there, else they add to
    /// `sums`).
    #[inline(always)]
    pub(super) fn for_each_pass(self, mut pass: impl FnMut(&mut [i32], &[TapSource], usize)) {
        let shape = self.shape;
        let ([_, w, c], [_, ow], [kh, kw]) = (shape.input, shape.output(), shape.kernel);
        let padding_codes = [self.zp_in; MAX_BLOCK];
        let padding = TapSource {
            base: padding_codes.as_ptr(),
            step: 0,
        };
        let mut table = [padding; TAP_CHUNK];
        let pixels = self.rows.flat_map(|oy| (0..ow).map(move |ox| (oy, ox)));
        for ((oy, ox), sums) in pixels.zip(self.out.chunks_exact_mut(c.max(1))) {
            let (ys, xs) = (shape.taps(0, oy), shape.taps(1, ox));
            let y0 = (oy * shape.stride[0]) as isize - shape.padding[0] as isize;
            let x0 = (ox * shape.stride[1]) as isize - shape.padding[1] as isize;
            let source = |ky: usize, kx: usize| match ys.contains(&ky) && xs.contains(&kx) {
                true => TapSource {
                    // Inside the image: `(y0 + ky, x0 + kx)` is a pixel of it.
                    base: self.image
                        [((y0 + ky as isize) as usize * w + (x0 + kx as isize) as usize) * c..]
                        .as_ptr(),
                    step: usize::MAX,
                },
                false => padding,
            };
            let mut window = (0..kh).flat_map(|ky| (0..kw).map(move |kx| (ky, kx)));
            for first in (0..kh * kw).step_by(TAP_CHUNK) {
                let len = (kh * kw - first).min(TAP_CHUNK);
                for (entry, (ky, kx)) in table[..len].iter_mut().zip(&mut window) {
                    *entry = source(ky, kx);
                }
                if len % 2 == 1 {
                    table[len] = padding;
                }
                pass(sums, &table[..len.next_multiple_of(2)], first / 2);
            }
        }
    }
}
