//! The direct convolution of few-channel images on zmm (see
//! [`crate::kernels::direct_conv_nhwc_s8`]): the windows of two output rows built as rows
//! of whole quads, then tiles of 2×2 output pixels × up to four blocks of 16 output
//! channels in 16 accumulators; per quad of the window's depth, one weight row per block
//! and a broadcast of each pixel's quad, each pair one `vpdpbusd`.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::direct::{DIRECT_BLOCK, DirectFilter, QUAD, SLACK};

/// Output blocks per tile: 4 × 4 accumulators, 4 weight rows.
const MAX_BLOCKS: usize = 4;

/// Where one tile reads and writes.
#[derive(Clone, Copy)]
struct Tile {
    /// The window of the tile's top-left pixel.
    window: *const u8,
    /// Bytes from one pixel's window to the next one's, and to the window below.
    pixel_step: usize,
    row_step: usize,
    /// Quads of a window.
    quads: usize,
    /// The quad rows of the tile's first block, `[block][quad][16][4]`.
    weights: *const i8,
    /// The start values of the tile's first block.
    start: *const i32,
    /// Output channels left from the tile's first block (masks the last block's lanes).
    channels: usize,
    /// Output channels of a pixel.
    pixel_len: usize,
}

impl Avx512Vnni {
    /// The sums of `[rows, cols]` output pixels (both even) from `input`, the padded input
    /// rows they read (`x + 128` bytes, [`SLACK`] bytes after them), into `out`
    /// (`[pixels][n]`, pooled 2×2 when `pool`); `windows` is scratch for two output rows'
    /// windows (and [`SLACK`] bytes).
    ///
    /// # Panics
    /// If a buffer is too short for the filter's geometry.
    pub(in crate::kernels) fn direct_conv(
        self,
        filter: &DirectFilter,
        input: &[u8],
        windows: &mut [u8],
        [rows, cols]: [usize; 2],
        pool: bool,
        out: &mut [i32],
    ) {
        let window = filter.window();
        let [kh, kw] = window.kernel;
        let c = window.input[2];
        let row_len = (window.input[1] + 2 * window.padding[1]) * c;
        let (n, quads) = (filter.out_channels(), filter.depth_quads());
        let pixels = if pool { rows * cols / 4 } else { rows * cols };
        assert!(
            rows.is_multiple_of(2) && cols.is_multiple_of(2) && (cols + kw - 1) * c <= row_len,
            "direct convolution: {rows} x {cols} tiles"
        );
        assert!(input.len() >= (rows + kh - 1) * row_len + SLACK);
        assert!(windows.len() >= 2 * cols * quads * QUAD + SLACK);
        assert!(out.len() >= pixels * n, "direct convolution: out too short");
        let pixel_step = quads * QUAD;
        for y in (0..rows).step_by(2) {
            let rows_from_y = &input[y * row_len..];
            let geometry = ([row_len, c], [kh, kw * c], [cols, pixel_step]);
            build_windows(rows_from_y, geometry.0, geometry.1, windows, geometry.2);
            let at = match pool {
                true => y / 2 * (cols / 2) * n,
                false => y * cols * n,
            };
            tile_row(filter, windows, [cols, pixel_step], pool, &mut out[at..]);
        }
    }
}

/// The tiles of two output rows of `cols` pixels from their windows (`pixel_step` bytes
/// apart), into `out` from the rows' first (pooled) pixel.
fn tile_row(
    filter: &DirectFilter,
    windows: &[u8],
    [cols, pixel_step]: [usize; 2],
    pool: bool,
    out: &mut [i32],
) {
    let n = filter.out_channels();
    let blocks = n.div_ceil(DIRECT_BLOCK);
    for x in (0..cols).step_by(2) {
        for first in (0..blocks).step_by(MAX_BLOCKS) {
            let tile = Tile {
                window: windows[x * pixel_step..].as_ptr(),
                pixel_step,
                row_step: cols * pixel_step,
                quads: filter.depth_quads(),
                weights: filter.quads_from(first).as_ptr(),
                start: filter.starts_from(first).as_ptr(),
                channels: n - first * DIRECT_BLOCK,
                pixel_len: n,
            };
            let (at, ld) = match pool {
                true => (x / 2 * n, 0),
                false => (x * n, cols * n),
            };
            let out = &mut out[at + first * DIRECT_BLOCK..];
            // SAFETY: the caller's token proves AVX-512 VNNI; the windows of the two rows
            // hold the filter's quads for each of `cols` pixels (pixels `x` and `x + 1` of
            // both rows), and the caller's assertions bound every write of `out` (pixel
            // `(1, x + 1)` at most, masked to the filter's channels).
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

/// The windows of two output rows of `cols` pixels, `step` bytes apart in `windows`:
/// pixel `x` of the first row reads `kh` spans of `span` bytes (`kw · c`), one per input
/// row from `input` on (`row_len` apart), from byte `x · c`; the second row's from the
/// next input row on. A span of up to 16 bytes is copied as 16 (one vector): what lands
/// past it is overwritten by the next span or window, or lies past the window's depth,
/// against weights 0; `input` and `windows` have [`SLACK`] bytes for it.
fn build_windows(
    input: &[u8],
    [row_len, c]: [usize; 2],
    [kh, span]: [usize; 2],
    windows: &mut [u8],
    [cols, step]: [usize; 2],
) {
    let copy = span.max(SLACK);
    // The last read (second row's last pixel, last kernel row) and the last write (last
    // window's last span) bound all others.
    assert!(
        kh * row_len + (cols - 1) * c + copy <= input.len()
            && (2 * cols - 1) * step + (kh - 1) * span + copy <= windows.len(),
        "direct convolution: windows outside their buffers"
    );
    let (src, mut dst) = (input.as_ptr(), windows.as_mut_ptr());
    for dy in 0..2 {
        for x in 0..cols {
            for ky in 0..kh {
                // SAFETY: the assertion bounds the last copy of each buffer; the others
                // lie before them.
                unsafe {
                    let (from, to) = (src.add((dy + ky) * row_len + x * c), dst.add(ky * span));
                    if span <= SLACK {
                        std::ptr::copy_nonoverlapping(from, to, SLACK);
                    } else {
                        std::ptr::copy_nonoverlapping(from, to, span);
                    }
                }
            }
            // SAFETY: at most one past the last window, inside `windows` by the assertion.
            dst = unsafe { dst.add(step) };
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
    let block_len = tile.quads * DIRECT_BLOCK * QUAD;
    // SAFETY (every pointer below): this function's contract.
    let start: [__m512i; B] =
        std::array::from_fn(|b| unsafe { _mm512_loadu_si512(tile.start.add(b * 16).cast()) });
    let mut acc = [start; 4];
    let pixel_offsets = [
        0,
        tile.pixel_step,
        tile.row_step,
        tile.row_step + tile.pixel_step,
    ];
    for q in 0..tile.quads {
        let w: [__m512i; B] = std::array::from_fn(|b| unsafe {
            let row = tile.weights.add(b * block_len + q * DIRECT_BLOCK * QUAD);
            _mm512_loadu_si512(row.cast())
        });
        for (sums, offset) in acc.iter_mut().zip(pixel_offsets) {
            let x = unsafe {
                tile.window
                    .add(offset + q * QUAD)
                    .cast::<i32>()
                    .read_unaligned()
            };
            let x = _mm512_set1_epi32(x);
            for (sum, &w) in sums.iter_mut().zip(&w) {
                *sum = _mm512_dpbusd_epi32(*sum, x, w);
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
