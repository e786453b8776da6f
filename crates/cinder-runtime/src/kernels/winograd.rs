//! Exact integer Winograd F(2×2, 3×3) for 3×3, stride-1 convolutions of NHWC int8 images.
//!
//! Each 2×2 block of output pixels (a tile) comes from the 4×4 input patch `d` under it:
//! `Y = Aᵀ [Σ_c (Bᵀ d_c B) ⊙ V_c] A`, 16 products per input channel for 4 pixels where
//! im2col needs 36, so 2.25× fewer multiplies.
//!
//! # Exactness
//! Every transform has small integer coefficients:
//! - input: `U = Bᵀ d B`, `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`, on the codes
//!   minus the input zero point (so padding is exactly 0): each entry is a ±1 sum of 4
//!   values, `|U| <= 4·255 = 1020`, an i16;
//! - filter: `V = (2G) g (2G)ᵀ`, `2G = [[2,0,0],[1,1,1],[1,-1,1],[0,0,2]]`, on the codes
//!   minus the weight zero point (`|g| <= 255`): `|V| <= 9·255 = 2295`, an i16. This is 4×
//!   the textbook transform (whose `G` has halves), so that it stays integer;
//! - products: `M = Σ_c U_c ⊙ V_c`, 16 GEMMs `[tiles × C] · [C × C_out]` of i16 operands
//!   with i32 sums (`vpmaddwd`, exact per pair), `|M| <= C · 1020 · 2295`;
//! - output: `Y = Aᵀ M A`, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]`, exactly 4× the convolution sum
//!   `S`, so `S = Y >> 2`, an exact shift (`Y` is a multiple of 4).
//!
//! The output transform adds with wrapping: all of it is ring arithmetic modulo 2^32, so
//! `Y` comes out right whenever the true `Y = 4S` fits i32, whatever the intermediate
//! `Aᵀ M` (up to 3 `|M|`). `|S| <= 9 · C · 255²`, hence [`MAX_WINOGRAD_CHANNELS`]: with
//! `4 · 9 · C · 255² <= i32::MAX`, `4S` fits, and so does `|M| <= C · 1020 · 2295` (the same
//! bound), so the GEMMs never wrap.
//!
//! # Layout
//! Tiles are numbered row-major over the `ceil(oh / 2) × ceil(ow / 2)` grid; with an odd
//! output size the last tile row or column also computes pixels past the edge (from zero
//! input), which are dropped. A block of whole tile rows is transformed into
//! `U[position][tile][channel]` (i16, channels padded to even with 0), multiplied into
//! `M[tile][position][out channel]` (i32, tile stride [`winograd_products_stride`], so
//! that the output transform reads one tile's products together: twice as fast as
//! position-major on conv2) and transformed back into the block's output pixels
//! `[pixel][out channel]` (i32): consecutive whole output rows, on which the output stage
//! runs as after an im2col GEMM. Transforms are portable code vectorized over
//! channels (NHWC keeps them contiguous), compiled with AVX2 from the [`Isa::Avx2`] path
//! up; the GEMMs use the int8 GEMM's micro-kernels on panels of i16 pairs: `vpmaddwd` +
//! `vpaddd` on ymm, or `vpdpwssd` on zmm on the [`Isa::Avx512Vnni`] path. Both add two
//! exact i16 products (`|U · V| <= 1020 · 2295`, a pair sum below 2^23) to an i32 lane
//! with wrapping, so they give the same sums.

use std::ops::Range;

use super::generic::{Portable, reference};
use super::isa::{Isa, dispatch};
use super::pack::{NR, WidePairRow};
use super::tile::{MicroKernel, Rows, multiply_block};
use super::work::Vectorizable;
#[cfg(target_arch = "x86_64")]
use super::x86::Avx512Vnni;
use super::{KernelError, out_dim};

/// Positions of a transformed 4×4 tile: the number of GEMMs.
pub const WINOGRAD_POSITIONS: usize = 16;

/// The largest centered operand the bounds allow: codes minus their zero point.
const MAX_CENTERED: i64 = 255;

/// The most input channels whose sums cannot overflow i32 (see the module docs): 917.
pub const MAX_WINOGRAD_CHANNELS: usize =
    (i32::MAX as i64 / (4 * 9 * MAX_CENTERED * MAX_CENTERED)) as usize;

/// Input channels transformed together: one AVX2 vector of i16, then half of one for
/// what remains (one at a time took 5× longer for 8 channels than for 16).
const INPUT_LANES: usize = 16;
const INPUT_HALF_LANES: usize = INPUT_LANES / 2;
/// Output channels transformed together: two AVX2 vectors of i32 (measured faster than
/// one on conv2).
const OUTPUT_LANES: usize = 16;

/// Distance between two tiles' products in `M`: 16 positions of `out_channels`, plus one
/// cache line, so that the rows of a micro-kernel tile (consecutive tiles) do not all map
/// to the same L1 set, as they would at a stride of `2^k` bytes (10% slower on conv2).
pub fn winograd_products_stride(out_channels: usize) -> usize {
    WINOGRAD_POSITIONS * out_channels + NR
}

/// A 3×3, stride-1 convolution over an `h × w × c` NHWC image with `padding`, its
/// `oh × ow` output cut into a `tiles_y × tiles_x` grid of 2×2 tiles (consistent by
/// construction: see [`Self::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinogradGeometry {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) c: usize,
    pub(super) padding: usize,
    pub(super) oh: usize,
    pub(super) ow: usize,
    pub(super) tiles_y: usize,
    pub(super) tiles_x: usize,
}

impl WinogradGeometry {
    /// `None` when the 3×3 window does not fit the padded image.
    pub fn new(h: usize, w: usize, c: usize, padding: usize) -> Option<Self> {
        let (oh, ow) = (out_dim(h, 3, 1, padding)?, out_dim(w, 3, 1, padding)?);
        Some(Self {
            h,
            w,
            c,
            padding,
            oh,
            ow,
            tiles_y: oh.div_ceil(2),
            tiles_x: ow.div_ceil(2),
        })
    }

    /// Input channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Rows of tiles.
    pub fn tile_rows(&self) -> usize {
        self.tiles_y
    }

    /// Tiles in one row.
    pub fn tiles_per_row(&self) -> usize {
        self.tiles_x
    }

    /// Tiles in the tile rows `tile_rows`.
    pub fn tiles(&self, tile_rows: Range<usize>) -> usize {
        tile_rows.len() * self.tiles_x
    }

    /// The output pixels of the tile rows `tile_rows`: whole output rows, flat indices.
    pub fn pixels(&self, tile_rows: Range<usize>) -> Range<usize> {
        let row = |ty: usize| (2 * ty).min(self.oh) * self.ow;
        row(tile_rows.start)..row(tile_rows.end)
    }

    /// Row stride of the transformed input: the channels, rounded up to even.
    pub fn depth_stride(&self) -> usize {
        self.c.next_multiple_of(2)
    }

    /// Input index of channel 0 at `(y, x)` counted from the padded origin, or `None`
    /// inside the padding.
    #[inline(always)]
    fn at(&self, y: usize, x: usize) -> Option<usize> {
        let y = y.checked_sub(self.padding).filter(|&y| y < self.h)?;
        let x = x.checked_sub(self.padding).filter(|&x| x < self.w)?;
        Some((y * self.w + x) * self.c)
    }

    /// Panics unless `tile_rows` lies inside the grid.
    fn check_rows(&self, name: &str, tile_rows: &Range<usize>) {
        assert!(
            tile_rows.start <= tile_rows.end && tile_rows.end <= self.tiles_y,
            "{name}: tile rows {tile_rows:?} outside 0..{}",
            self.tiles_y
        );
    }
}

/// Transformed filters `V = (2G) g (2G)ᵀ` of a convolution, packed for the 16 GEMMs: per
/// position, panels of [`NR`] output channels with the input channels in pairs.
#[derive(Clone, PartialEq, Eq)]
pub struct WinogradFilter {
    out_channels: usize,
    channels: usize,
    /// `[position][panel][pair]`, zero past the last channel and output channel.
    data: Vec<WidePairRow>,
}

impl WinogradFilter {
    /// Transforms and packs `codes`, row-major `[out][ky][kx][c]` (im2col order), output
    /// channel `j` centered on `zero_points[j]`. Errors if `codes` does not hold
    /// `out_channels × 9 × channels` values, if `channels > MAX_WINOGRAD_CHANNELS`, or if a
    /// centered weight lies outside `[-255, 255]`.
    ///
    /// # Panics
    /// If `zero_points` does not hold one value per output channel.
    pub fn pack(
        codes: &[i8],
        zero_points: &[i32],
        out_channels: usize,
        channels: usize,
    ) -> Result<Self, KernelError> {
        assert_eq!(zero_points.len(), out_channels, "one zero point per output");
        let depth = channels.saturating_mul(9);
        KernelError::check_length(codes.len(), out_channels, depth)?;
        if channels > MAX_WINOGRAD_CHANNELS {
            return Err(KernelError::TooManyChannels {
                channels,
                max: MAX_WINOGRAD_CHANNELS,
            });
        }
        let (panels, pairs) = (out_channels.div_ceil(NR), channels.div_ceil(2));
        let mut data = vec![WidePairRow([0; 2 * NR]); WINOGRAD_POSITIONS * panels * pairs];
        for (j, row) in codes.chunks_exact(depth.max(1)).enumerate() {
            for ch in 0..channels {
                let mut g = [[0; 3]; 3];
                for (tap, v) in g.as_flattened_mut().iter_mut().enumerate() {
                    let centered = i64::from(row[tap * channels + ch]) - i64::from(zero_points[j]);
                    if centered.abs() > MAX_CENTERED {
                        return Err(KernelError::CenteredWeightOutOfRange {
                            row: j,
                            col: tap * channels + ch,
                            value: centered,
                        });
                    }
                    *v = centered as i32;
                }
                let v = reference::winograd_filter(&g);
                for (position, &x) in v.as_flattened().iter().enumerate() {
                    let pair = &mut data[(position * panels + j / NR) * pairs + ch / 2];
                    pair.0[2 * (j % NR) + ch % 2] = i16::try_from(x).expect("|V| <= 2295");
                }
            }
        }
        Ok(Self {
            out_channels,
            channels,
            data,
        })
    }

    /// Output channels (columns of the GEMMs).
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// Input channels (depth of the GEMMs).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Panel `q` of position `position`: output channels `q * NR ..`, all pairs.
    fn panel(&self, position: usize, q: usize) -> &[WidePairRow] {
        let (panels, pairs) = (self.out_channels.div_ceil(NR), self.channels.div_ceil(2));
        &self.data[(position * panels + q) * pairs..][..pairs]
    }
}

impl std::fmt::Debug for WinogradFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WinogradFilter")
            .field("out_channels", &self.out_channels)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// Input transform of the tile rows `tile_rows` of `image` (`h × w × c` NHWC), centered
/// on `zp_in`: `u[(position · tiles + t) · stride + ch]` for the block's `tiles` tiles
/// (row-major from its first), `stride` = [`WinogradGeometry::depth_stride`] (a padding
/// channel is written 0).
///
/// # Panics
/// If `image` holds fewer than `h · w · c` values, `u` fewer than `16 · tiles · stride`,
/// or `tile_rows` is not inside the grid.
pub fn winograd_input_tiles(
    image: &[i8],
    g: &WinogradGeometry,
    zp_in: i8,
    tile_rows: Range<usize>,
    u: &mut [i16],
) {
    g.check_rows("winograd input", &tile_rows);
    assert!(
        image.len() >= g.h * g.w * g.c,
        "winograd input: image too short"
    );
    let len = WINOGRAD_POSITIONS * g.tiles(tile_rows.clone()) * g.depth_stride();
    assert!(u.len() >= len, "winograd input: u too short");
    dispatch(InputTiles {
        image,
        g: *g,
        zp: i16::from(zp_in),
        tile_rows,
        u: &mut u[..len],
    });
}

/// The work of [`winograd_input_tiles`], checked.
struct InputTiles<'a> {
    image: &'a [i8],
    g: WinogradGeometry,
    zp: i16,
    tile_rows: Range<usize>,
    u: &'a mut [i16],
}

impl Vectorizable for InputTiles<'_> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let (g, stride) = (self.g, self.g.depth_stride());
        let tiles = g.tiles(self.tile_rows.clone());
        let vectors = g.c / INPUT_LANES * INPUT_LANES;
        let halves = g.c / INPUT_HALF_LANES * INPUT_HALF_LANES;
        for t in 0..tiles {
            let (ty, tx) = (self.tile_rows.start + t / g.tiles_x, t % g.tiles_x);
            for c0 in (0..vectors).step_by(INPUT_LANES) {
                self.tile::<INPUT_LANES>(t, ty, tx, c0, tiles);
            }
            for c0 in (vectors..halves).step_by(INPUT_HALF_LANES) {
                self.tile::<INPUT_HALF_LANES>(t, ty, tx, c0, tiles);
            }
            for c0 in halves..g.c {
                self.tile::<1>(t, ty, tx, c0, tiles);
            }
            if g.c < stride {
                for position in 0..WINOGRAD_POSITIONS {
                    self.u[(position * tiles + t) * stride + g.c] = 0;
                }
            }
        }
    }
}

impl InputTiles<'_> {
    /// Channels `c0 .. c0 + L` of tile `(ty, tx)`, the block's tile `t` of `tiles`.
    #[inline(always)]
    fn tile<const L: usize>(&mut self, t: usize, ty: usize, tx: usize, c0: usize, tiles: usize) {
        let g = self.g;
        let mut d = [[[0i16; L]; 4]; 4];
        for (i, row) in d.iter_mut().enumerate() {
            for (j, px) in row.iter_mut().enumerate() {
                if let Some(at) = g.at(2 * ty + i, 2 * tx + j) {
                    let src: &[i8; L] = self.image[at + c0..][..L].try_into().expect("L values");
                    *px = centered(src, self.zp);
                }
            }
        }
        // Bᵀ down every column gives Bᵀ d; row i of (Bᵀ d) B is Bᵀ applied along row i.
        let mut columns = [[[0i16; L]; 4]; 4];
        for j in 0..4 {
            let col = input_combinations([d[0][j], d[1][j], d[2][j], d[3][j]]);
            for (i, v) in col.into_iter().enumerate() {
                columns[i][j] = v;
            }
        }
        let stride = g.depth_stride();
        for (i, row) in columns.into_iter().enumerate() {
            for (s, v) in input_combinations(row).into_iter().enumerate() {
                let position = 4 * i + s;
                self.u[(position * tiles + t) * stride + c0..][..L].copy_from_slice(&v);
            }
        }
    }
}

/// `src - zp` widened to i16.
#[inline(always)]
fn centered<const L: usize>(src: &[i8; L], zp: i16) -> [i16; L] {
    let mut out = [0; L];
    for l in 0..L {
        out[l] = i16::from(src[l]) - zp;
    }
    out
}

/// `Bᵀ x` for four vectors: `(x0 - x2, x1 + x2, x2 - x1, x1 - x3)`. No overflow: `x` is
/// a centered code (`|x| <= 255`) or one pass of these sums (`|x| <= 510`).
#[inline(always)]
fn input_combinations<const L: usize>(x: [[i16; L]; 4]) -> [[i16; L]; 4] {
    let mut out = [[0; L]; 4];
    for l in 0..L {
        out[0][l] = x[0][l] - x[2][l];
        out[1][l] = x[1][l] + x[2][l];
        out[2][l] = x[2][l] - x[1][l];
        out[3][l] = x[1][l] - x[3][l];
    }
    out
}

/// The 16 GEMMs of a block of `tiles` tiles: `m[t · ldm + position · n + j] =
/// Σ_c u[(position · tiles + t) · stride + c] · V[position][c][j]`, `n` the filter's
/// output channels, `ldm` = [`winograd_products_stride`]`(n)` and `stride` the channels
/// rounded up to even (overwrites those values of `m`).
///
/// # Panics
/// If `u` holds fewer than `16 · tiles · stride` values or `m` fewer than `tiles · ldm`.
pub fn winograd_multiply(u: &[i16], tiles: usize, filter: &WinogradFilter, m: &mut [i32]) {
    multiply_with(Isa::detect(), u, tiles, filter, m);
}

/// [`winograd_multiply`] on the path `isa`: `vpdpwssd` zmm tiles on
/// [`Isa::Avx512Vnni`], `vpmaddwd` ymm tiles from [`Isa::Avx2`] up (when the CPU has
/// them), else portable code.
pub(super) fn multiply_with(
    isa: Isa,
    u: &[i16],
    tiles: usize,
    filter: &WinogradFilter,
    m: &mut [i32],
) {
    let (n, stride) = (filter.out_channels, filter.channels.next_multiple_of(2));
    assert!(
        u.len() >= WINOGRAD_POSITIONS * tiles * stride,
        "winograd multiply: u too short"
    );
    assert!(
        m.len() >= tiles * winograd_products_stride(n),
        "winograd multiply: m too short"
    );
    if stride == 0 {
        m.fill(0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(token) = Avx512Vnni::detect().filter(|_| isa == Isa::Avx512Vnni) {
            return multiply_positions(token, u, tiles, filter, m);
        }
        if let Some(token) = isa.avx2() {
            return multiply_positions(token, u, tiles, filter, m);
        }
    }
    multiply_positions(Portable, u, tiles, filter, m);
}

/// [`winograd_multiply`] with micro-kernel `K`; operands checked, `stride > 0`.
fn multiply_positions<K: MicroKernel<WidePairRow>>(
    kern: K,
    u: &[i16],
    tiles: usize,
    filter: &WinogradFilter,
    m: &mut [i32],
) {
    let (n, stride) = (filter.out_channels, filter.channels.next_multiple_of(2));
    if tiles == 0 || n == 0 {
        return;
    }
    let ldm = winograd_products_stride(n);
    for position in 0..WINOGRAD_POSITIONS {
        let a = Rows {
            data: &u[position * tiles * stride..][..tiles * stride],
            stride,
        };
        let panel = |q| (filter.panel(position, q), None);
        multiply_block(
            kern,
            a,
            tiles,
            panel,
            0..n,
            &mut m[position * n..],
            ldm,
            false,
        );
    }
}

/// Output transform of the tile rows `tile_rows` from their products `m` (as
/// [`winograd_multiply`] writes them, `n` output channels): the convolution sums of the
/// block's output pixels ([`WinogradGeometry::pixels`]), `y[(pixel - first) · n + j]`.
///
/// # Panics
/// If a buffer is too short or `tile_rows` is not inside the grid.
pub fn winograd_output_tiles(
    m: &[i32],
    g: &WinogradGeometry,
    n: usize,
    tile_rows: Range<usize>,
    y: &mut [i32],
) {
    g.check_rows("winograd output", &tile_rows);
    let tiles = g.tiles(tile_rows.clone());
    assert!(
        m.len() >= tiles * winograd_products_stride(n),
        "winograd output: m too short"
    );
    let pixels = g.pixels(tile_rows.clone()).len();
    assert!(y.len() >= pixels * n, "winograd output: y too short");
    dispatch(OutputTiles {
        m: &m[..tiles * winograd_products_stride(n)],
        g: *g,
        n,
        tile_rows,
        y: &mut y[..pixels * n],
    });
}

/// The work of [`winograd_output_tiles`], checked.
struct OutputTiles<'a> {
    m: &'a [i32],
    g: WinogradGeometry,
    n: usize,
    tile_rows: Range<usize>,
    y: &'a mut [i32],
}

impl Vectorizable for OutputTiles<'_> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        let (g, n) = (self.g, self.n);
        let tiles = g.tiles(self.tile_rows.clone());
        let vectors = n / OUTPUT_LANES * OUTPUT_LANES;
        for t in 0..tiles {
            let (ty, tx) = (self.tile_rows.start + t / g.tiles_x, t % g.tiles_x);
            for j0 in (0..vectors).step_by(OUTPUT_LANES) {
                self.tile::<OUTPUT_LANES>(t, ty, tx, j0);
            }
            for j0 in vectors..n {
                self.tile::<1>(t, ty, tx, j0);
            }
        }
    }
}

impl OutputTiles<'_> {
    /// Output channels `j0 .. j0 + L` of tile `(ty, tx)`, the block's tile `t`.
    #[inline(always)]
    fn tile<const L: usize>(&mut self, t: usize, ty: usize, tx: usize, j0: usize) {
        let (g, n) = (self.g, self.n);
        let products = &self.m[t * winograd_products_stride(n)..];
        let load = |position: usize| -> [i32; L] {
            products[position * n + j0..][..L]
                .try_into()
                .expect("L values")
        };
        // Aᵀ down every column, then along both rows.
        let (mut top, mut bottom) = ([[0i32; L]; 4], [[0i32; L]; 4]);
        for (j, (t, b)) in top.iter_mut().zip(&mut bottom).enumerate() {
            [*t, *b] = output_combinations([load(j), load(4 + j), load(8 + j), load(12 + j)]);
        }
        let first = 2 * self.tile_rows.start * g.ow;
        for (i, row) in [top, bottom].into_iter().enumerate() {
            let y_pos = 2 * ty + i;
            for (s, v) in output_combinations(row).into_iter().enumerate() {
                let x_pos = 2 * tx + s;
                if y_pos < g.oh && x_pos < g.ow {
                    let dst = &mut self.y[(y_pos * g.ow + x_pos - first) * n + j0..][..L];
                    for (d, &sum) in dst.iter_mut().zip(&v) {
                        debug_assert_eq!(sum & 3, 0, "Y is 4 times the convolution sum");
                        *d = sum >> 2;
                    }
                }
            }
        }
    }
}

/// `Aᵀ x` for four vectors: `(x0 + x1 + x2, x1 - x2 - x3)`, wrapping (see the module docs).
#[inline(always)]
fn output_combinations<const L: usize>(x: [[i32; L]; 4]) -> [[i32; L]; 2] {
    let mut out = [[0; L]; 2];
    for l in 0..L {
        out[0][l] = x[0][l].wrapping_add(x[1][l]).wrapping_add(x[2][l]);
        out[1][l] = x[1][l].wrapping_sub(x[2][l]).wrapping_sub(x[3][l]);
    }
    out
}
