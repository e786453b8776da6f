//! The direct convolution on zmm (see [`crate::kernels::direct_conv_nhwc_s8`]): tiles of
//! 2 × `PX` output pixels × `B` blocks of 16 output channels in `2·PX·B = 16`
//! accumulators (fewer for a last narrow block group); per quad of the window's depth,
//! one weight row per block and a broadcast of each pixel's quad, each pair one
//! `vpdpbusd`. The quads are read where they lie: in the padded input rows when a
//! window row is whole quads (`kw · c` a multiple of 4), else in windows built as rows of
//! whole quads for two output rows at a time.

use std::arch::x86_64::*;

use super::Avx512Vnni;
use crate::kernels::direct::{DIRECT_BLOCK, DirectFilter, QUAD, SLACK};

/// Accumulator registers a tile fills.
const ACCUMULATORS: usize = 16;

/// Where a tile reads its quads: `segments` runs of `segment_quads` quads, `segment_step`
/// bytes apart, from each pixel's first quad.
#[derive(Clone, Copy)]
struct Quads {
    /// The first quad of the tile's top-left pixel.
    window: *const u8,
    /// Bytes from one pixel's first quad to the next one's, and to the pixel below.
    pixel_step: usize,
    row_step: usize,
    segments: usize,
    segment_quads: usize,
    segment_step: usize,
}

/// One tile's weights and output channels.
#[derive(Clone, Copy)]
struct Blocks {
    /// The quad rows of the tile's first block, `[block][quad][16][4]`, `block_len`
    /// bytes a block.
    weights: *const i8,
    block_len: usize,
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
    /// windows (and [`SLACK`] bytes) where the filter does not read the rows in place.
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
        assert!(out.len() >= pixels * n, "direct convolution: out too short");
        let in_place = filter.reads_in_place();
        assert!(in_place || windows.len() >= 2 * cols * quads * QUAD + SLACK);
        for y in (0..rows).step_by(2) {
            let rows_from_y = &input[y * row_len..];
            let source = match in_place {
                true => Quads {
                    window: rows_from_y.as_ptr(),
                    pixel_step: c,
                    row_step: row_len,
                    segments: kh,
                    segment_quads: kw * c / QUAD,
                    segment_step: row_len,
                },
                false => built_windows(filter, rows_from_y, windows, [row_len, cols]),
            };
            let at = match pool {
                true => y / 2 * (cols / 2) * n,
                false => y * cols * n,
            };
            tile_row(filter, source, cols, pool, &mut out[at..]);
        }
    }
}

/// The quads of two output rows of `cols` pixels as windows built in `windows` from the
/// padded input rows from theirs on (`row_len` bytes a row), one window a pixel.
fn built_windows(
    filter: &DirectFilter,
    rows_from_y: &[u8],
    windows: &mut [u8],
    [row_len, cols]: [usize; 2],
) -> Quads {
    let [kh, kw] = filter.window().kernel;
    let c = filter.window().input[2];
    let step = filter.depth_quads() * QUAD;
    build_windows(
        rows_from_y,
        [row_len, c],
        [kh, kw * c],
        windows,
        [cols, step],
    );
    Quads {
        window: windows.as_ptr(),
        pixel_step: step,
        row_step: cols * step,
        segments: 1,
        segment_quads: filter.depth_quads(),
        segment_step: 0,
    }
}

/// The tiles of two output rows of `cols` pixels from `source`, into `out` from the rows'
/// first (pooled) pixel: block groups of `8 / PX` blocks, `PX` the widest of 8, 4 and 2
/// pixels that the filter's blocks fill, then 2-pixel tiles for the columns left.
fn tile_row(filter: &DirectFilter, source: Quads, cols: usize, pool: bool, out: &mut [i32]) {
    let n = filter.out_channels();
    let blocks = n.div_ceil(DIRECT_BLOCK);
    let wide = match blocks {
        1 => 8,
        2 => 4,
        _ => 2,
    };
    let group = ACCUMULATORS / (2 * wide);
    for first in (0..blocks).step_by(group) {
        let tile_blocks = Blocks {
            weights: filter.quads_from(first).as_ptr(),
            block_len: filter.depth_quads() * DIRECT_BLOCK * QUAD,
            start: filter.starts_from(first).as_ptr(),
            channels: n - first * DIRECT_BLOCK,
            pixel_len: n,
        };
        let b = (blocks - first).min(group);
        let whole = cols / wide * wide;
        for (x, px, tiles) in [(0, wide, whole / wide), (whole, 2, (cols - whole) / 2)] {
            if tiles == 0 {
                continue;
            }
            let run = Run {
                tiles,
                // SAFETY: pixel `x` of the first row lies in the rows or windows.
                quads: Quads {
                    window: unsafe { source.window.add(x * source.pixel_step) },
                    ..source
                },
                blocks: tile_blocks,
                pool,
                ld: if pool { 0 } else { cols * n },
            };
            let at = if pool { x / 2 * n } else { x * n };
            let out = &mut out[at + first * DIRECT_BLOCK..];
            // SAFETY: the caller's token proves AVX-512 VNNI; the rows or windows hold the
            // filter's quads for each of `cols` pixels of both rows, and the caller's
            // assertions bound every write of `out` (pixel `(1, cols - 1)` at most,
            // masked to the filter's channels).
            unsafe { tiles_dispatch(px, b, run, out) };
        }
    }
}

/// A run of tiles side by side along two output rows.
#[derive(Clone, Copy)]
struct Run {
    tiles: usize,
    /// The first tile's quads.
    quads: Quads,
    blocks: Blocks,
    pool: bool,
    /// Without `pool`: output values from a pixel to the one below it.
    ld: usize,
}

/// The run of tiles of `px` pixels a row and `b` blocks.
///
/// # Safety
/// As [`tiles_zmm`]'s.
unsafe fn tiles_dispatch(px: usize, b: usize, run: Run, out: &mut [i32]) {
    // SAFETY: this function's contract.
    unsafe {
        match (px, b) {
            (8, _) => tiles_zmm::<8, 1>(run, out),
            (4, 1) => tiles_zmm::<4, 1>(run, out),
            (4, _) => tiles_zmm::<4, 2>(run, out),
            (_, 1) => tiles_zmm::<2, 1>(run, out),
            (_, 2) => tiles_zmm::<2, 2>(run, out),
            (_, 3) => tiles_zmm::<2, 3>(run, out),
            _ => tiles_zmm::<2, 4>(run, out),
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

/// `run.tiles` tiles of 2 × `PX` pixels and `B` blocks side by side, the block
/// constants set up once: each pooled (2×2 pixels' maxima) into `out[j · n ..]` for
/// `j < PX / 2`, or pixel `(dy, dx)` at `out[dy · ld + dx · n ..]` (`n` =
/// `run.blocks.pixel_len`), from the tile's first output on.
///
/// # Safety
/// AVX-512 F and VNNI; `run`'s pointers valid for the reads its geometry implies, `out`
/// for the writes.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tiles_zmm<const PX: usize, const B: usize>(run: Run, out: &mut [i32]) {
    let Run {
        quads,
        blocks,
        pool,
        ..
    } = run;
    // SAFETY (every pointer below): this function's contract.
    let start: [__m512i; B] =
        std::array::from_fn(|b| unsafe { _mm512_loadu_si512(blocks.start.add(b * 16).cast()) });
    let masks: [__mmask16; B] = std::array::from_fn(|b| {
        let lanes = blocks
            .channels
            .saturating_sub(b * DIRECT_BLOCK)
            .min(DIRECT_BLOCK);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let out_step = if pool { PX / 2 } else { PX } * blocks.pixel_len;
    for t in 0..run.tiles {
        let window = unsafe { quads.window.add(t * PX * quads.pixel_step) };
        let acc = unsafe { tile_sums::<PX, B>(Quads { window, ..quads }, blocks, start) };
        let out = unsafe { out.as_mut_ptr().add(t * out_step) };
        unsafe { store_tile(acc, (masks, blocks.pixel_len), pool, run.ld, out) };
    }
}

/// One tile's sums, `[row][pixel][block]`, from `start`.
///
/// # Safety
/// As [`tiles_zmm`]'s.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn tile_sums<const PX: usize, const B: usize>(
    quads: Quads,
    blocks: Blocks,
    start: [__m512i; B],
) -> [[[__m512i; B]; PX]; 2] {
    let mut acc = [[start; PX]; 2];
    for s in 0..quads.segments {
        let first_quad = s * quads.segment_quads;
        // SAFETY (every pointer below): this function's contract.
        let segment = unsafe { quads.window.add(s * quads.segment_step) };
        for j in 0..quads.segment_quads {
            let q = first_quad + j;
            let w: [__m512i; B] = std::array::from_fn(|b| unsafe {
                let row = blocks
                    .weights
                    .add(b * blocks.block_len + q * DIRECT_BLOCK * QUAD);
                _mm512_loadu_si512(row.cast())
            });
            for (dy, row) in acc.iter_mut().enumerate() {
                for (dx, sums) in row.iter_mut().enumerate() {
                    let offset = dy * quads.row_step + dx * quads.pixel_step + j * QUAD;
                    let x = unsafe { segment.add(offset).cast::<i32>().read_unaligned() };
                    let x = _mm512_set1_epi32(x);
                    for (sum, &w) in sums.iter_mut().zip(&w) {
                        *sum = _mm512_dpbusd_epi32(*sum, x, w);
                    }
                }
            }
        }
    }
    acc
}

/// Stores a tile's sums as [`tiles_zmm`] describes, at `out`, the lanes outside `masks`
/// (the last block's past the filter's channels) left unwritten.
///
/// # Safety
/// AVX-512 F; `out` valid for the writes.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn store_tile<const PX: usize, const B: usize>(
    [top, bottom]: [[[__m512i; B]; PX]; 2],
    (masks, n): ([__mmask16; B], usize),
    pool: bool,
    ld: usize,
    out: *mut i32,
) {
    let store = |at: usize, sums: &[__m512i; B]| {
        for (b, (&sum, &mask)) in sums.iter().zip(&masks).enumerate() {
            // SAFETY: this function's contract.
            unsafe { _mm512_mask_storeu_epi32(out.add(at + b * DIRECT_BLOCK).cast(), mask, sum) };
        }
    };
    if pool {
        let max = |x: [__m512i; B], y: [__m512i; B]| -> [__m512i; B] {
            std::array::from_fn(|i| _mm512_max_epi32(x[i], y[i]))
        };
        for j in 0..PX / 2 {
            let left = max(top[2 * j], bottom[2 * j]);
            let right = max(top[2 * j + 1], bottom[2 * j + 1]);
            store(j * n, &max(left, right));
        }
    } else {
        for dx in 0..PX {
            store(dx * n, &top[dx]);
            store(ld + dx * n, &bottom[dx]);
        }
    }
}
