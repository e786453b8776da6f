//! Direct convolution sums of one NHWC int8 image, stride 1, weights symmetric (zero
//! point 0): `sum[p][n] = Σ_taps Σ_ch (x[tap][ch] - zp_in) · w[n][tap][ch]` over the taps
//! inside the image, optionally max-pooled over 2×2 pixels before the output stage
//! (exact, as for the im2col path: the output stage is non-decreasing in the sum).
//!
//! Each output pixel's window, `taps · c` deep in `(ky, kx, ch)` order, is read as
//! `vpdpbusd` quads: a tile broadcasts each quad of 2 × `PX` pixels' windows (two output
//! rows, so that a fused pool is a maximum of four registers) against the weight quads of
//! 16 output channels per register. Where a window row is whole quads (`kw · c` a
//! multiple of 4: 64 channels, or 4) the quads are read in place from the padded input
//! rows, `kh` runs of them per window; otherwise (a first layer over 1 to 3 channels,
//! 3×3 RGB a depth of 27) the windows of two output rows at a time are built as rows of
//! whole quads (7 for 3×3 RGB, where a quad per tap holding 3 channels and a zero would
//! take 9) and kept in L1.
//!
//! Against im2col + GEMM (+ a 2×2 pool of the sums) this writes no im2col rows and no
//! unpooled sums: on a first layer the GEMM's depth (27) is too shallow for its tiles to
//! pay for their loads and stores; on a deep 3×3 layer the GEMM runs at the same rate and
//! the copies and the pass over the sums are saved.
//!
//! # Paths
//! | path | kernel |
//! |---|---|
//! | generic | scalar, the reference |
//! | avx512vnni | `vpdpbusd` zmm: 2 × `PX` pixels × `B` blocks of 16 channels in 16 accumulators |
//!
//! The plan takes this kernel only on the AVX-512 VNNI path, where it was measured
//! faster than im2col + GEMM; elsewhere the generic kernel is the reference the tests
//! compare with.
//!
//! # Exactness
//! Pixels enter as `u = x + 128` (`x ^ 0x80`, in [0, 255]), those in the padding as
//! `zp_in + 128`; a window's bytes past its depth meet weights 0, whatever they hold.
//! Every product `u · w` and sum of four is exact in `vpdpbusd`, and lanes add with
//! wrapping. The sums start from `-(zp_in + 128) · Σ_taps Σ_ch w[n]`, so a lane ends at
//! `Σ_inside (x - zp_in) · w` modulo 2^32, which lies in i32 for a depth of at most
//! [`MAX_DIRECT_DEPTH`] (`depth · 255 · 128 ≤ i32::MAX`): the wrapped value is the exact
//! one, equal to the reference bit for bit.

use std::ops::Range;

use super::KernelError;
use super::generic::direct_conv_rows;
use super::isa::Isa;
use super::window::NhwcWindow;
#[cfg(target_arch = "x86_64")]
use super::x86::Avx512Vnni;

/// The most input channels of a window built as rows of quads; more channels must make
/// a window row whole quads.
pub const MAX_DIRECT_CHANNELS: usize = 4;

/// Bytes of one `vpdpbusd` group.
pub(super) const QUAD: usize = 4;

/// Output channels per vector register of the zmm kernel.
pub(super) const DIRECT_BLOCK: usize = 16;

/// The deepest window (`taps · c`, rounded up to whole quads) whose sums cannot overflow
/// i32: `depth · 255 · 128 ≤ i32::MAX`.
pub const MAX_DIRECT_DEPTH: usize = (i32::MAX as usize) / (255 * 128);

/// The weights of a direct convolution, packed for one path.
#[derive(Clone, PartialEq, Eq)]
pub struct DirectFilter {
    window: NhwcWindow,
    out_channels: usize,
    isa: Isa,
    /// `[block of 16 outputs][quad][16][4]`: one 64-byte row per block and quad of the
    /// window's depth (`(ky, kx, ch)` order), the depths past `taps · c` and the outputs
    /// past `out_channels` zero.
    quads: Vec<i8>,
    /// `-(zp_in + 128) · Σ w` per output channel, rounded up to whole blocks.
    start: Vec<i32>,
    zp_in: i8,
}

impl DirectFilter {
    /// Whether the kernel computes a convolution over `window` into `out_channels`
    /// channels: at most [`MAX_DIRECT_CHANNELS`] input channels or window rows of whole
    /// quads, stride 1, a depth of at most [`MAX_DIRECT_DEPTH`], an output at least 2×2
    /// and even in both axes unless `pool` (which drops an odd last row and column).
    pub fn fits(window: &NhwcWindow, out_channels: usize, pool: bool) -> bool {
        let [h, w, c] = window.input;
        let [kh, kw] = window.kernel;
        let inside = h + 2 * window.padding[0] >= kh && w + 2 * window.padding[1] >= kw;
        let channels = (1..=MAX_DIRECT_CHANNELS).contains(&c) || (kw * c).is_multiple_of(QUAD);
        let shape = channels
            && c > 0
            && out_channels > 0
            && window.stride == [1, 1]
            && window_depth(window).div_ceil(QUAD) * QUAD <= MAX_DIRECT_DEPTH;
        shape && inside && {
            let [oh, ow] = window.output();
            oh >= 2 && ow >= 2 && (pool || (oh.is_multiple_of(2) && ow.is_multiple_of(2)))
        }
    }

    /// Packs `codes` (`[n][ky][kx][c]`, symmetric: zero point 0) of a convolution over
    /// `window` that [`Self::fits`], reading input zero point `zp_in`, for the best path at
    /// or below `isa`. Errors if the window does not fit or `codes` does not hold
    /// `out_channels · taps · c` values.
    pub fn pack_for(
        isa: Isa,
        codes: &[i8],
        out_channels: usize,
        window: NhwcWindow,
        zp_in: i8,
    ) -> Result<Self, KernelError> {
        if !Self::fits(&window, out_channels, true) {
            return Err(KernelError::DirectWindow {
                window,
                out_channels,
            });
        }
        let depth = window_depth(&window);
        KernelError::check_length(codes.len(), out_channels, depth)?;
        let (blocks, per_block) = (out_channels.div_ceil(DIRECT_BLOCK), depth.div_ceil(QUAD));
        let mut quads = vec![0i8; blocks * per_block * DIRECT_BLOCK * QUAD];
        let mut start = vec![0i32; blocks * DIRECT_BLOCK];
        for (n, row) in codes.chunks_exact(depth).enumerate() {
            let (block, lane) = (n / DIRECT_BLOCK, n % DIRECT_BLOCK);
            for (q, values) in row.chunks(QUAD).enumerate() {
                let at = ((block * per_block + q) * DIRECT_BLOCK + lane) * QUAD;
                quads[at..at + values.len()].copy_from_slice(values);
            }
            let sum: i32 = row.iter().map(|&w| i32::from(w)).sum();
            start[n] = sum.wrapping_mul(-(i32::from(zp_in) + 128));
        }
        Ok(Self {
            window,
            out_channels,
            isa: Isa::best_up_to(isa),
            quads,
            start,
            zp_in,
        })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The window this filter convolves.
    pub fn window(&self) -> &NhwcWindow {
        &self.window
    }

    /// The input zero point the sums are centred on.
    pub fn zp_in(&self) -> i8 {
        self.zp_in
    }

    /// The path this filter was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Whether the kernel reads the windows' quads in place from the padded input rows:
    /// where a window row, `kw · c` bytes, is whole quads.
    pub(super) fn reads_in_place(&self) -> bool {
        (self.window.kernel[1] * self.window.input[2]).is_multiple_of(QUAD)
    }

    /// Quads of one window's depth.
    pub(super) fn depth_quads(&self) -> usize {
        window_depth(&self.window).div_ceil(QUAD)
    }

    /// The quad rows from output block `block` on, `[block][quad][16][4]`.
    pub(super) fn quads_from(&self, block: usize) -> &[i8] {
        &self.quads[block * self.depth_quads() * DIRECT_BLOCK * QUAD..]
    }

    /// The start values from output block `block` on.
    pub(super) fn starts_from(&self, block: usize) -> &[i32] {
        &self.start[block * DIRECT_BLOCK..]
    }
}

/// Values of one window: `taps · c`.
fn window_depth(window: &NhwcWindow) -> usize {
    window.kernel[0] * window.kernel[1] * window.input[2]
}

impl std::fmt::Debug for DirectFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFilter")
            .field("window", &self.window)
            .field("out_channels", &self.out_channels)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

/// The sums of output rows `rows` (an even start; an even length unless it ends at the
/// last row a pool reads) of one NHWC image, `[pixels][n]` into `out`: every pixel of the
/// rows, or with `pool` the maximum of each 2×2 block (`rows.len() / 2 × ow / 2` pixels).
/// `scratch` is scratch. Returns the path that ran.
///
/// # Panics
/// If `image` or `out` is too short, or `rows` is not as described.
pub fn direct_conv_nhwc_s8(
    filter: &DirectFilter,
    image: &[i8],
    rows: Range<usize>,
    pool: bool,
    scratch: &mut Vec<u8>,
    out: &mut [i32],
) -> Isa {
    let window = &filter.window;
    let [h, w, c] = window.input;
    let [oh, ow] = window.output();
    let n = filter.out_channels;
    let (cols, pixels) = match pool {
        true => (ow / 2 * 2, rows.len() / 2 * (ow / 2)),
        false => (ow, rows.len() * ow),
    };
    assert!(
        rows.start.is_multiple_of(2) && rows.len().is_multiple_of(2) && rows.end <= oh,
        "direct convolution: rows {rows:?} of {oh}"
    );
    assert!(
        image.len() >= h * w * c,
        "direct convolution: image too short"
    );
    assert!(out.len() >= pixels * n, "direct convolution: out too short");
    let out = &mut out[..pixels * n];
    #[cfg(target_arch = "x86_64")]
    if let (Isa::Avx512Vnni, Some(token)) = (filter.isa, Avx512Vnni::detect()) {
        let windows_len = match filter.reads_in_place() {
            true => 0,
            false => 2 * cols * filter.depth_quads() * QUAD + SLACK,
        };
        let (input, windows) = pad_rows(
            window,
            image,
            filter.zp_in,
            rows.clone(),
            windows_len,
            scratch,
        );
        token.direct_conv(filter, input, windows, [rows.len(), cols], pool, out);
        return Isa::Avx512Vnni;
    }
    let _ = (scratch, cols);
    direct_conv_rows(filter, image, rows, pool, out);
    Isa::Generic
}

/// Bytes past a buffer's end that a 16-byte copy of a shorter span may write or read.
pub(super) const SLACK: usize = 16;

/// The input rows that output rows `rows` read, zero-padded, as `u8` values `x + 128`
/// (`zp_in + 128` in the padding): `rows.len() + kh − 1` rows of `w + 2·pad_w` pixels of
/// `c` bytes, with [`SLACK`] bytes after them; and after those, `windows_len` bytes of
/// scratch for the windows, both in `scratch`.
fn pad_rows<'a>(
    window: &NhwcWindow,
    image: &[i8],
    zp_in: i8,
    rows: Range<usize>,
    windows_len: usize,
    scratch: &'a mut Vec<u8>,
) -> (&'a [u8], &'a mut [u8]) {
    let [h, w, c] = window.input;
    let ([kh, _], [ph, pw]) = (window.kernel, window.padding);
    let (height, row_len) = (rows.len() + kh - 1, (w + 2 * pw) * c);
    let len = height * row_len + SLACK;
    scratch.clear();
    scratch.resize(len + windows_len, (zp_in as u8) ^ 0x80);
    for (r, padded) in scratch[..height * row_len]
        .chunks_exact_mut(row_len)
        .enumerate()
    {
        let Some(y) = (rows.start + r).checked_sub(ph).filter(|&y| y < h) else {
            continue;
        };
        let inside = &mut padded[pw * c..][..w * c];
        for (u, &x) in inside.iter_mut().zip(&image[y * w * c..][..w * c]) {
            *u = (x as u8) ^ 0x80;
        }
    }
    let (input, windows) = scratch.split_at_mut(len);
    (input, windows)
}
