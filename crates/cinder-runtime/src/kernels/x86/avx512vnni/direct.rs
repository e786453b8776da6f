//! The direct convolution of few-channel images on zmm (see
//! [`crate::kernels::direct_conv_nhwc_s8`]): a tile of 2×2 output pixels × up to four
//! blocks of 16 output channels in 16 accumulators; per tap, one weight-quad row per
//! block and a broadcast of each pixel's input quad, each pair one `vpdpbusd`.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::direct::{DIRECT_BLOCK, DirectFilter, MAX_DIRECT_CHANNELS};

/// Output blocks per tile: 4 × 4 accumulators, 4 weight rows.
const MAX_BLOCKS: usize = 4;

/// Where one tile reads and writes.
#[derive(Clone, Copy)]
struct Tile {
    /// The padded quad of the tile's top-left pixel at tap (0, 0).
    quads: *const u8,
    /// Quads per padded row.
    width: usize,
    kernel: [usize; 2],
    /// The quad rows of the tile's first block, `[block][tap][16][4]`.
    weights: *const i8,
    /// The start values of the tile's first block.
    start: *const i32,
    /// Output channels left from the tile's first block (masks the last block's lanes).
    channels: usize,
    /// Output channels of a pixel.
    pixel_len: usize,
}

impl Avx512Vnni {
    /// The sums of `[rows, cols]` output pixels (both even) from `quads`, the padded input
    /// rows they read, into `out` (`[pixels][n]`, pooled 2×2 when `pool`).
    ///
    /// # Panics
    /// If `quads` or `out` is too short for the filter's geometry.
    pub(in crate::kernels) fn direct_conv(
        self,
        filter: &DirectFilter,
        quads: &[u8],
        [rows, cols]: [usize; 2],
        pool: bool,
        out: &mut [i32],
    ) {
        let window = filter.window();
        let [kh, kw] = window.kernel;
        let width = window.input[1] + 2 * window.padding[1];
        let n = filter.out_channels();
        let pixels = if pool { rows * cols / 4 } else { rows * cols };
        assert!(
            rows.is_multiple_of(2) && cols.is_multiple_of(2) && cols + kw - 1 <= width,
            "direct convolution: {rows} x {cols} tiles"
        );
        assert!(quads.len() >= (rows + kh - 1) * width * MAX_DIRECT_CHANNELS);
        assert!(out.len() >= pixels * n, "direct convolution: out too short");
        let blocks = n.div_ceil(DIRECT_BLOCK);
        for y in (0..rows).step_by(2) {
            for x in (0..cols).step_by(2) {
                for first in (0..blocks).step_by(MAX_BLOCKS) {
                    let tile = Tile {
                        quads: quads[(y * width + x) * MAX_DIRECT_CHANNELS..].as_ptr(),
                        width,
                        kernel: [kh, kw],
                        weights: filter.quads_from(first).as_ptr(),
                        start: filter.starts_from(first).as_ptr(),
                        channels: n - first * DIRECT_BLOCK,
                        pixel_len: n,
                    };
                    let (at, ld) = match pool {
                        true => ((y / 2 * (cols / 2) + x / 2) * n, 0),
                        false => ((y * cols + x) * n, cols * n),
                    };
                    let out = &mut out[at + first * DIRECT_BLOCK..];
                    // SAFETY: the token proves AVX-512 VNNI; the assertions above bound
                    // every read of `quads` (the tile reads rows `y .. y + kh` and columns
                    // `x .. x + kw` of the padded input) and every write of `out` (pixel
                    // `(y + 1, x + 1)` at most, masked to the filter's channels).
                    unsafe {
                        match blocks - first {
                            1 => tile_zmm::<1>(tile, pool, ld, out),
                            2 => tile_zmm::<2>(tile, pool, ld, out),
                            3 => tile_zmm::<3>(tile, pool, ld, out),
                            _ => tile_zmm::<4>(tile, pool, ld, out),
                        }
                    }
                }
            }
        }
    }
}

/// One tile of `B` blocks: pooled into `out[..]`, or its four pixels at `out[0]`,
/// `out[n]`, `out[ld]` and `out[ld + n]` (`n` = `tile.pixel_len`).
///
/// # Safety
/// AVX-512 F and VNNI; `tile`'s pointers valid for the reads its geometry implies, `out`
/// for the writes.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_zmm<const B: usize>(tile: Tile, pool: bool, ld: usize, out: &mut [i32]) {
    let [kh, kw] = tile.kernel;
    let taps = kh * kw;
    let block_len = taps * DIRECT_BLOCK * MAX_DIRECT_CHANNELS;
    // SAFETY (every pointer below): this function's contract.
    let start: [__m512i; B] =
        std::array::from_fn(|b| unsafe { _mm512_loadu_si512(tile.start.add(b * 16).cast()) });
    let mut acc = [start; 4];
    let pixel_offsets = [0, 1, tile.width, tile.width + 1].map(|p| p * MAX_DIRECT_CHANNELS);
    for ky in 0..kh {
        for kx in 0..kw {
            let tap = ky * kw + kx;
            let quads = unsafe { tile.quads.add((ky * tile.width + kx) * MAX_DIRECT_CHANNELS) };
            let w: [__m512i; B] = std::array::from_fn(|b| unsafe {
                let row = tile
                    .weights
                    .add(b * block_len + tap * DIRECT_BLOCK * MAX_DIRECT_CHANNELS);
                _mm512_loadu_si512(row.cast())
            });
            for (sums, offset) in acc.iter_mut().zip(pixel_offsets) {
                let x = unsafe { quads.add(offset).cast::<i32>().read_unaligned() };
                let x = _mm512_set1_epi32(x);
                for (sum, &w) in sums.iter_mut().zip(&w) {
                    *sum = _mm512_dpbusd_epi32(*sum, x, w);
                }
            }
        }
    }
    // The last block's lanes past the filter's channels are not written.
    let masks: [__mmask16; B] = std::array::from_fn(|b| {
        let lanes = tile
            .channels
            .saturating_sub(b * DIRECT_BLOCK)
            .min(DIRECT_BLOCK);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let out = out.as_mut_ptr();
    let store = |at: usize, sums: &[__m512i; B]| {
        for (b, (&sum, &mask)) in sums.iter().zip(&masks).enumerate() {
            unsafe { _mm512_mask_storeu_epi32(out.add(at + b * DIRECT_BLOCK).cast(), mask, sum) };
        }
    };
    if pool {
        let [a, b, c, d] = acc;
        let max = |x: [__m512i; B], y: [__m512i; B]| -> [__m512i; B] {
            std::array::from_fn(|i| _mm512_max_epi32(x[i], y[i]))
        };
        store(0, &max(max(a, b), max(c, d)));
    } else {
        let [a, b, c, d] = acc;
        store(0, &a);
        store(tile.pixel_len, &b);
        store(ld, &c);
        store(ld + tile.pixel_len, &d);
    }
}
