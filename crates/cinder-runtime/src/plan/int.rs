//! The integer stages of the static path. These types hold integers only (packed int8
//! weights, int32 biases, Q0.31 multipliers, zero points, clamp bounds): no f32 can enter
//! the arithmetic between the input quantizer and the output dequantizer.
//!
//! Activations are int8 NHWC; a linear layer is GEMM + output stage, a convolution either
//! im2col + GEMM + output stage or, for 3×3 stride-1 windows, exact integer Winograd
//! F(2×2, 3×3) + the same output stage ([`WinogradConv`]). A 2×2 stride-2 max-pool right
//! after a static convolution is applied to its i32 sums before the output stage
//! ([`IntConv`]), exactly, on a quarter of the values. Where the weights are packed for a
//! VNNI path and have no zero points, im2col writes its rows as the offset bytes
//! (`code + 128`) those kernels multiply, and the GEMM reads them in place.
//!
//! Zero points on the im2col path: the input's is folded offline into the bias
//! (`- zp_in * colsum_w[j] + depth * zp_in * zp_w[j]`, im2col pads with `zp_in` so that
//! padding is exact), the weights' (asymmetric weights only) is a row-sum correction
//! `- zp_w[j] * rowsum_a[i]` before the output stage. On the Winograd path both are
//! subtracted in the transforms (the input's per patch, padding then being exactly 0; the
//! weights' once, when the filters are transformed), which yield the exact sums
//! `Σ (q_in - zp_in)(q_w - zp_w)`, so the layer's own bias is used. Both paths equal the
//! reference interpreter bit for bit; Winograd's overflow bounds are in
//! [`crate::kernels::winograd`] (at most [`MAX_WINOGRAD_CHANNELS`] input channels, more
//! take im2col). A stride-1 convolution with symmetric weights over at most four input
//! channels, or whose window rows are whole 4-byte groups, may instead take the direct
//! kernel ([`DirectConv`]), which subtracts the input's zero point itself, like
//! Winograd, and pools inside its tiles.

use std::ops::Range;

use cinder_tensor::RequantMultiplier;

use super::par::{Accum, BLOCKS_PER_SLOT, Scratch, Workers, grow, par_blocks, par_images};
use crate::error::Invalid;
use crate::geometry::Window;
use crate::kernels::{
    DirectFilter, Isa, MAX_WINOGRAD_CHANNELS, NR, OutputStage, PackedMatrix, PackedNibbles,
    WINOGRAD_POSITIONS, WinogradFilter, WinogradGeometry, direct_conv_nhwc_s8, gemm_s8_cols,
    gemm_u8_cols, gemv_s4, im2col_window_s8, im2col_window_u8, max_pool2d_nhwc_s8, max_pool2x2_s32,
    requantize_s8_rows, row_sums_s8, winograd_input_tiles, winograd_multiply,
    winograd_output_tiles, winograd_products_stride,
};

/// Fewest input channels for which a convolution takes Winograd. Its transforms cost per
/// tile and channel (input) or output channel (output), whatever the depth, so a shallow
/// layer loses. Measured single-threaded per 32×32 image with 64 outputs (conv1's shape),
/// Winograd's sums against im2col + GEMM: 72 µs against 37 at 3 channels (so the
/// reference ConvNet's conv1 keeps im2col), 68 against 70 at 8, 107 against 99 at 12, 96
/// against 124 at 16, 122 against 185 at 24; conv2 (64 -> 128 channels, 16×16) 118
/// against 228.
const WINOGRAD_MIN_CHANNELS: usize = 16;

/// Tiles transformed and multiplied at a time (whole tile rows, at least one): the
/// transformed block (`16 × tiles × channels` i16) and its products (`16 × tiles ×
/// outputs` i32) stay in L2. On conv2 (8 tiles a row), blocks of 1 to 3 tile rows ran
/// within 2% of each other, 4 and 8 rows 7% slower.
const WINOGRAD_BLOCK_TILES: usize = 24;

/// Packs `[n][k]` engine-order weight codes, naming the layer on failure.
pub(super) fn pack(codes: &[i8], n: usize, k: usize, field: &str) -> Result<PackedMatrix, Invalid> {
    PackedMatrix::pack(codes, n, k).map_err(|e| Invalid::new(field, e.to_string()))
}

/// A linear layer's `n × k` weight codes as nibbles for its batch-1 GEMV, where they fit
/// 4 bits and the process's kernel path has that GEMV; naming the layer on failure.
pub(super) fn nibbles(
    codes: &[i8],
    n: usize,
    k: usize,
    field: &str,
) -> Result<Option<PackedNibbles>, Invalid> {
    if !Isa::detect().nibble_gemv_pays() {
        return Ok(None);
    }
    PackedNibbles::pack(codes, n, k).map_err(|e| Invalid::new(field, e.to_string()))
}

/// Weight zero points per output column, or `None` when all are 0.
pub(super) fn nonzero(zero_points: Vec<i32>) -> Option<Vec<i32>> {
    zero_points.iter().any(|&z| z != 0).then_some(zero_points)
}

/// `acc[i][j] -= zp_w[j] * rowsum_a[i]` over an `m x width` block.
pub(super) fn correct_weight_zero_points(
    acc: &mut [i32],
    width: usize,
    sums: &[i32],
    zp_w: &[i32],
) {
    for (row, &s) in acc.chunks_exact_mut(width).zip(sums) {
        for (a, &z) in row.iter_mut().zip(zp_w) {
            *a -= z * s;
        }
    }
}

/// Raw GEMM of `m` rows of `a` against `cols`, corrected for weight zero points.
pub(super) fn accumulate<'a>(
    weights: &PackedMatrix,
    zp_w: Option<&[i32]>,
    a: &[i8],
    m: usize,
    cols: Range<usize>,
    accum: &'a mut Accum,
) -> &'a mut [i32] {
    let (k, width) = (weights.depth(), cols.len());
    let acc = grow(&mut accum.acc, m * width);
    gemm_s8_cols(a, k, m, weights, cols.clone(), acc, width);
    correct_zero_points(zp_w, a, (m, k), cols, acc, &mut accum.sums);
    acc
}

/// Subtracts the weights' zero points' terms `zp_w[j] · Σ_p a[i][p]` from the sums of
/// `m` rows of `a` (row stride `k`) in columns `cols`, when there are zero points.
fn correct_zero_points(
    zp_w: Option<&[i32]>,
    a: &[i8],
    (m, k): (usize, usize),
    cols: Range<usize>,
    acc: &mut [i32],
    row_sums: &mut Vec<i32>,
) {
    if let Some(zp_w) = zp_w {
        let sums = grow(row_sums, m);
        row_sums_s8(a, k, m, k, sums);
        correct_weight_zero_points(acc, cols.len(), sums, &zp_w[cols]);
    }
}

/// The integer output stage of a layer: bias, multipliers, output zero point, clamp.
#[derive(Debug)]
pub(super) struct Requant {
    bias: Vec<i32>,
    multipliers: Vec<RequantMultiplier>,
    zp_out: i32,
    lo: i32,
    hi: i32,
}

impl Requant {
    pub(super) fn new(bias: Vec<i32>, p: &IntParams<'_>) -> Self {
        Self {
            bias,
            multipliers: p.multipliers.to_vec(),
            zp_out: p.zp_out,
            lo: p.clamp.0,
            hi: p.clamp.1,
        }
    }

    /// The stage of output columns `cols`.
    pub(super) fn stage(&self, cols: Range<usize>) -> OutputStage<'_> {
        let mult = if self.multipliers.len() == 1 {
            &self.multipliers[..]
        } else {
            &self.multipliers[cols.clone()]
        };
        OutputStage {
            bias: &self.bias[cols],
            mult,
            zp_out: self.zp_out,
            lo: self.lo,
            hi: self.hi,
        }
    }
}

/// A GEMM with its integer output stage.
#[derive(Debug)]
pub(crate) struct IntMatmul {
    weights: PackedMatrix,
    /// The layer's bias with the input zero point folded in.
    output: Requant,
    zp_w: Option<Vec<i32>>,
}

/// The integer parameters an [`IntMatmul`] is built from.
pub(super) struct IntParams<'a> {
    pub bias: &'a [i32],
    pub multipliers: &'a [RequantMultiplier],
    pub zp_in: i32,
    pub zp_w: Vec<i32>,
    pub zp_out: i32,
    pub clamp: (i32, i32),
}

impl IntMatmul {
    pub(super) fn new(
        weights: PackedMatrix,
        p: IntParams<'_>,
        field: &str,
    ) -> Result<Self, Invalid> {
        let k = i64::try_from(weights.depth()).expect("depth fits i64");
        let bias = p
            .bias
            .iter()
            .zip(weights.col_sums())
            .zip(&p.zp_w)
            .map(|((&b, &s), &z)| {
                let folded = i64::from(b) - i64::from(p.zp_in) * i64::from(s)
                    + k * i64::from(p.zp_in) * i64::from(z);
                i32::try_from(folded).map_err(|_| {
                    Invalid::new(format!("{field}.bias"), "folded bias overflows int32")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            weights,
            output: Requant::new(bias, &p),
            zp_w: nonzero(p.zp_w),
        })
    }

    pub(super) fn n(&self) -> usize {
        self.weights.rows()
    }

    pub(super) fn k(&self) -> usize {
        self.weights.depth()
    }

    /// The raw sums of `m` rows of `a` (row stride `k`), all columns, corrected for the
    /// weights' zero points (the input's is in the bias).
    fn sums<'a>(&self, a: &[i8], m: usize, accum: &'a mut Accum) -> &'a mut [i32] {
        accumulate(
            &self.weights,
            self.zp_w.as_deref(),
            a,
            m,
            0..self.n(),
            accum,
        )
    }

    /// Whether the GEMM reads offset bytes (`code + 128`) in place: weights packed for a
    /// VNNI path, which multiplies those bytes, and no weight zero points (whose
    /// correction sums the codes).
    fn reads_offset(&self) -> bool {
        self.zp_w.is_none() && self.weights.isa() >= Isa::AvxVnni
    }

    /// [`Self::sums`] of `m` rows of offset bytes (row stride `k`), where
    /// [`Self::reads_offset`].
    fn offset_sums<'a>(&self, a: &[u8], m: usize, accum: &'a mut Accum) -> &'a mut [i32] {
        debug_assert!(self.reads_offset());
        let (k, n) = (self.k(), self.n());
        let acc = grow(&mut accum.acc, m * n);
        gemm_u8_cols(a, k, m, &self.weights, 0..n, acc, n);
        acc
    }

    /// `m` rows of `a` (row stride `k`) into every output column, row `i` at
    /// `out[i * out_ld..]`.
    pub(super) fn run_strided(
        &self,
        a: &[i8],
        m: usize,
        accum: &mut Accum,
        out: &mut [i8],
        out_ld: usize,
    ) {
        let n = self.n();
        let acc = self.sums(a, m, accum);
        requantize_s8_rows(&self.output.stage(0..n), acc, n, m, out, out_ld);
    }

    /// `m` rows of `a` (row stride `k`) into output columns `cols` of `out`
    /// (`m x cols.len()`, contiguous).
    pub(super) fn run(
        &self,
        a: &[i8],
        m: usize,
        cols: Range<usize>,
        accum: &mut Accum,
        out: &mut [i8],
    ) {
        let width = cols.len();
        let acc = accumulate(
            &self.weights,
            self.zp_w.as_deref(),
            a,
            m,
            cols.clone(),
            accum,
        );
        requantize_s8_rows(&self.output.stage(cols), acc, width, m, out, width);
    }

    /// One row `a` (whose sum is `a_sum`) into output columns `cols` of `out`, the sums
    /// by the 4-bit GEMV over `nibbles` (the same weights as `self`'s, packed as nibbles).
    fn run_nibbles(
        &self,
        nibbles: &PackedNibbles,
        (a, a_sum): (&[i8], i32),
        cols: Range<usize>,
        accum: &mut Accum,
        out: &mut [i8],
    ) {
        let width = cols.len();
        let acc = grow(&mut accum.acc, width);
        gemv_s4(a, a_sum, nibbles, cols.clone(), acc);
        if let Some(zp_w) = &self.zp_w {
            correct_weight_zero_points(acc, width, &[a_sum], &zp_w[cols.clone()]);
        }
        requantize_s8_rows(&self.output.stage(cols), acc, width, 1, out, width);
    }
}

/// The Winograd geometry of a convolution that takes that path: a 3×3, stride-1 window
/// (padding up to 1) over [`WINOGRAD_MIN_CHANNELS`] ..= [`MAX_WINOGRAD_CHANNELS`] input
/// channels.
pub(super) fn winograd_geometry(shape: &ConvShape) -> Option<WinogradGeometry> {
    let [c, h, w] = shape.input;
    let (kernel, stride, padding) = shape.window.as_square()?;
    let eligible = kernel == 3
        && stride == 1
        && padding <= 1
        && (WINOGRAD_MIN_CHANNELS..=MAX_WINOGRAD_CHANNELS).contains(&c);
    eligible
        .then(|| WinogradGeometry::new(h, w, c, padding))
        .flatten()
}

/// The exact convolution sums `Σ (q_in - zp_in)(q_w - zp_w)` of a 3×3, stride-1
/// convolution by Winograd F(2×2, 3×3): the transformed filters and the geometry.
#[derive(Debug)]
pub(crate) struct WinogradSums {
    pub(super) geometry: WinogradGeometry,
    filter: WinogradFilter,
}

impl WinogradSums {
    /// Transforms `codes` (`[n][ky][kx][c]`, engine order) centered on `zp_w` (one per
    /// output channel), naming the layer on failure.
    pub(super) fn new(
        geometry: WinogradGeometry,
        codes: &[i8],
        zp_w: &[i32],
        field: &str,
    ) -> Result<Self, Invalid> {
        let filter = WinogradFilter::pack(codes, zp_w, zp_w.len(), geometry.channels())
            .map_err(|e| Invalid::new(field, e.to_string()))?;
        Ok(Self { geometry, filter })
    }

    pub(super) fn n(&self) -> usize {
        self.filter.out_channels()
    }

    /// The sums of the tile rows `tile_rows` of one image (see
    /// [`WinogradGeometry::pixels`]), `pixels × n` in `accum.acc`, computed in blocks of
    /// about [`WINOGRAD_BLOCK_TILES`] tiles.
    pub(super) fn accumulate<'a>(
        &self,
        image: &[i8],
        zp_in: i8,
        tile_rows: Range<usize>,
        accum: &'a mut Accum,
    ) -> &'a mut [i32] {
        let (g, n) = (&self.geometry, self.n());
        let pixels = g.pixels(tile_rows.clone());
        let Accum {
            acc,
            transformed,
            products,
            ..
        } = accum;
        let sums = grow(acc, pixels.len() * n);
        let block = (WINOGRAD_BLOCK_TILES / g.tiles_per_row()).max(1);
        for ty in tile_rows.clone().step_by(block) {
            let rows = ty..tile_rows.end.min(ty + block);
            let tiles = g.tiles(rows.clone());
            let u = grow(transformed, WINOGRAD_POSITIONS * tiles * g.depth_stride());
            winograd_input_tiles(image, g, zp_in, rows.clone(), u);
            let m = grow(products, tiles * winograd_products_stride(n));
            winograd_multiply(u, tiles, &self.filter, m);
            let part = g.pixels(rows.clone());
            let y = &mut sums[(part.start - pixels.start) * n..(part.end - pixels.start) * n];
            winograd_output_tiles(m, g, n, rows, y);
        }
        sums
    }
}

/// A static 3×3, stride-1 convolution by exact Winograd F(2×2, 3×3).
#[derive(Debug)]
pub(crate) struct WinogradConv {
    sums: WinogradSums,
    /// The layer's own bias: the transforms subtract both zero points.
    output: Requant,
}

impl WinogradConv {
    pub(super) fn new(sums: WinogradSums, p: IntParams<'_>) -> Self {
        Self {
            sums,
            output: Requant::new(p.bias.to_vec(), &p),
        }
    }
}

/// The geometry of a convolution over one NHWC image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    /// `[c, h, w]` of the input.
    pub input: [usize; 3],
    pub window: Window,
    /// Output pixels `oh * ow`.
    pub pixels: usize,
}

impl ConvShape {
    pub fn new(input: [usize; 3], window: Window) -> Self {
        let (oh, ow) = window.output(input[1], input[2]);
        Self {
            input,
            window,
            pixels: oh * ow,
        }
    }

    pub fn in_len(&self) -> usize {
        self.input.iter().product()
    }

    /// Output height and width.
    pub fn out_hw(&self) -> (usize, usize) {
        self.window.output(self.input[1], self.input[2])
    }

    /// Depth of one im2col row.
    pub fn depth(&self) -> usize {
        self.window.taps() * self.input[0]
    }

    /// All output rows.
    pub fn rows(&self) -> Range<usize> {
        0..self.out_hw().0
    }

    /// The GEMM's left operand for output rows `rows` of one image: the image's own pixels
    /// for a 1x1, stride-1, unpadded convolution, else their im2col rows in `cols`.
    pub fn lhs<'a>(
        &self,
        image: &'a [i8],
        pad: i8,
        rows: Range<usize>,
        cols: &'a mut Vec<i8>,
    ) -> &'a [i8] {
        let (ow, k) = (self.out_hw().1, self.depth());
        if self.window == Window::square(1, 1, 0) {
            return &image[rows.start * ow * k..rows.end * ow * k];
        }
        let out = grow(cols, rows.len() * ow * k);
        im2col_window_s8(image, &self.window.nhwc(self.input), rows, pad, out, k);
        out
    }

    /// [`Self::lhs`]'s im2col rows as offset bytes (`code + 128`) in `cols`, with 3 bytes
    /// to spare for the GEMM's last 4-byte group; `None` for a 1x1, stride-1, unpadded
    /// convolution, whose operand is the image's own codes.
    pub fn offset_lhs<'a>(
        &self,
        image: &[i8],
        pad: i8,
        rows: Range<usize>,
        cols: &'a mut Vec<u8>,
    ) -> Option<&'a [u8]> {
        if self.window == Window::square(1, 1, 0) {
            return None;
        }
        let (ow, k) = (self.out_hw().1, self.depth());
        let out = grow(cols, rows.len() * ow * k + 3);
        im2col_window_u8(image, &self.window.nhwc(self.input), rows, pad, out, k);
        Some(out)
    }
}

/// How a static convolution computes its sums.
#[derive(Debug)]
pub(crate) enum ConvKernel {
    Im2col(IntMatmul),
    Winograd(WinogradConv),
    Direct(DirectConv),
}

/// A static stride-1 convolution by the direct kernel
/// ([`crate::kernels::direct_conv_nhwc_s8`]), which yields the exact sums
/// `Σ (q_in - zp_in) q_w` (weights symmetric), so the layer's own bias is used.
#[derive(Debug)]
pub(crate) struct DirectConv {
    filter: DirectFilter,
    output: Requant,
}

impl DirectConv {
    pub(super) fn new(filter: DirectFilter, p: IntParams<'_>) -> Self {
        Self {
            filter,
            output: Requant::new(p.bias.to_vec(), &p),
        }
    }
}

/// A static convolution, with the 2×2, stride-2 max-pool that follows it fused when
/// `pool`: the sums are pooled before the output stage, which is exact (the output stage
/// is non-decreasing in the sum, so it commutes with the maximum; the validated bias
/// bound keeps `sum + bias` from wrapping) and requantizes a quarter of the values.
#[derive(Debug)]
pub(crate) struct IntConv {
    pub(super) shape: ConvShape,
    pub(super) zp_in: i8,
    pub(super) kernel: ConvKernel,
    pub(super) pool: bool,
}

impl IntConv {
    /// How the stage is listed in a profile.
    pub fn kind(&self) -> &'static str {
        match (&self.kernel, self.pool) {
            (ConvKernel::Im2col(_), false) => "int8 conv",
            (ConvKernel::Im2col(_), true) => "int8 conv+pool",
            (ConvKernel::Winograd(_), false) => "int8 winograd",
            (ConvKernel::Winograd(_), true) => "int8 wino+pool",
            (ConvKernel::Direct(_), false) => "int8 direct conv",
            (ConvKernel::Direct(_), true) => "int8 direct+pool",
        }
    }

    /// Output channels.
    fn n(&self) -> usize {
        match &self.kernel {
            ConvKernel::Im2col(mm) => mm.n(),
            ConvKernel::Winograd(w) => w.sums.n(),
            ConvKernel::Direct(d) => d.filter.out_channels(),
        }
    }

    fn output(&self) -> &Requant {
        match &self.kernel {
            ConvKernel::Im2col(mm) => &mm.output,
            ConvKernel::Winograd(w) => &w.output,
            ConvKernel::Direct(d) => &d.output,
        }
    }

    /// Convolution output rows per unit of work: one for im2col, a tile row (two) for
    /// Winograd and the direct kernel, a pooled row (two) when pooling.
    fn unit_rows(&self) -> usize {
        match (&self.kernel, self.pool) {
            (ConvKernel::Im2col(_), false) => 1,
            _ => 2,
        }
    }

    /// Output values of one unit of work.
    fn unit_len(&self) -> usize {
        let (ow, n) = (self.shape.out_hw().1, self.n());
        match self.pool {
            true => ow / 2 * n,
            false => self.unit_rows() * ow * n,
        }
    }

    /// Convolution output rows that the stage's output needs (a pool drops an odd last one).
    fn conv_rows(&self) -> usize {
        let oh = self.shape.out_hw().0;
        if self.pool { oh / 2 * 2 } else { oh }
    }

    /// Output values per image.
    fn out_len(&self) -> usize {
        let ((oh, ow), n) = (self.shape.out_hw(), self.n());
        match self.pool {
            true => oh / 2 * (ow / 2) * n,
            false => oh * ow * n,
        }
    }

    /// The sums of output rows `rows` of one image by im2col + GEMM, the im2col rows as
    /// offset bytes where the GEMM reads them in place.
    fn im2col_sums<'a>(
        &self,
        mm: &IntMatmul,
        image: &[i8],
        rows: Range<usize>,
        (cols, offset_cols): (&mut Vec<i8>, &mut Vec<u8>),
        accum: &'a mut Accum,
    ) -> &'a mut [i32] {
        let m = rows.len() * self.shape.out_hw().1;
        if mm.reads_offset()
            && let Some(a) = self
                .shape
                .offset_lhs(image, self.zp_in, rows.clone(), offset_cols)
        {
            return mm.offset_sums(a, m, accum);
        }
        let a = self.shape.lhs(image, self.zp_in, rows, cols);
        mm.sums(a, m, accum)
    }

    /// Whole images per thread; a batch smaller than the thread count splits each image's
    /// units of work instead (each thread building the im2col rows of its own units).
    pub fn run(&self, x: &[i8], batch: usize, y: &mut [i8], slots: &mut Workers) {
        let (in_len, out_len) = (self.shape.in_len(), self.out_len());
        if batch >= slots.len() {
            let units = 0..self.conv_rows().div_ceil(self.unit_rows());
            par_images(x, in_len, y, out_len, slots, |image, out, slot| {
                self.run_units(image, units.clone(), slot, out);
            });
            return;
        }
        let unit = self.unit_len();
        for (image, out) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(out_len)) {
            par_blocks(
                out,
                unit,
                1,
                BLOCKS_PER_SLOT,
                slots,
                |first, block, slot| {
                    let units = first..first + block.len().div_ceil(unit);
                    self.run_units(image, units, slot, block);
                },
            );
        }
    }

    /// The units of work `units` of one image into `out`: their rows' sums, pooled when
    /// fused, through the output stage.
    fn run_units(&self, image: &[i8], units: Range<usize>, slot: &mut Scratch, out: &mut [i8]) {
        let Scratch {
            cols,
            offset_cols,
            accum,
            pooled,
            ..
        } = slot;
        let per = self.unit_rows();
        let rows = units.start * per..self.conv_rows().min(units.end * per);
        let (ow, n) = (self.shape.out_hw().1, self.n());
        let pixels = match self.pool {
            true => rows.len() / 2 * (ow / 2),
            false => rows.len() * ow,
        };
        let sums = match &self.kernel {
            ConvKernel::Im2col(mm) => {
                self.im2col_sums(mm, image, rows.clone(), (cols, offset_cols), accum)
            }
            ConvKernel::Winograd(w) => {
                // Pairs of rows from the first: the tile rows hold exactly these rows.
                let tile_rows = rows.start / 2..rows.end.div_ceil(2);
                w.sums.accumulate(image, self.zp_in, tile_rows, accum)
            }
            ConvKernel::Direct(d) => {
                // Pooled in the kernel's tiles when `pool`.
                let sums = grow(&mut accum.acc, pixels * n);
                direct_conv_nhwc_s8(
                    &d.filter,
                    image,
                    rows.clone(),
                    self.pool,
                    &mut accum.padded,
                    sums,
                );
                sums
            }
        };
        let sums = match (self.pool, &self.kernel) {
            (true, ConvKernel::Im2col(_) | ConvKernel::Winograd(_)) => {
                let pooled = grow(pooled, pixels * n);
                max_pool2x2_s32(sums, rows.len(), ow, n, pooled);
                pooled
            }
            _ => sums,
        };
        requantize_s8_rows(&self.output().stage(0..n), sums, n, pixels, out, n);
    }
}

/// Runs a linear GEMM + output stage `f(a_rows, m, cols, accum, out)` over a batch:
/// rows split over the threads, one block each (a block streams all the weights), or
/// (one row, several threads) panels of columns, several blocks each.
pub(super) fn split_linear<Y: Send>(
    x: &[i8],
    k: usize,
    n: usize,
    y: &mut [Y],
    slots: &mut Workers,
    f: impl Fn(&[i8], usize, Range<usize>, &mut Scratch, &mut [Y]) + Sync + Send,
) {
    let batch = y.len() / n;
    if batch == 1 && slots.len() > 1 {
        par_blocks(y, 1, NR, BLOCKS_PER_SLOT, slots, |c0, block, slot| {
            f(x, 1, c0..c0 + block.len(), slot, block)
        });
    } else {
        par_blocks(y, n, 1, 1, slots, |r0, block, slot| {
            f(&x[r0 * k..], block.len() / n, 0..n, slot, block)
        });
    }
}

/// A static linear layer.
#[derive(Debug)]
pub(crate) struct IntLinear {
    pub(super) mm: IntMatmul,
    /// The weights again as nibbles, for batch 1, where their codes fit 4 bits and the
    /// kernel path has the 4-bit GEMV ([`Isa::nibble_gemv_pays`]).
    pub(super) nibbles: Option<PackedNibbles>,
}

impl IntLinear {
    /// How the stage is listed in a profile.
    pub fn kind(&self) -> &'static str {
        match self.nibbles {
            Some(_) => "int8 linear, w4 b1",
            None => "int8 linear",
        }
    }

    pub fn run(&self, x: &[i8], y: &mut [i8], slots: &mut Workers) {
        let (k, n) = (self.mm.k(), self.mm.n());
        // One image through the nibbles: its sum once, for every block of columns.
        let one_row = match &self.nibbles {
            Some(nibbles) if y.len() == n => {
                let mut a_sum = [0];
                row_sums_s8(x, k, 1, k, &mut a_sum);
                Some((nibbles, a_sum[0]))
            }
            _ => None,
        };
        split_linear(x, k, n, y, slots, |a, m, cols, slot, out| match one_row {
            Some((nibbles, a_sum)) => {
                self.mm
                    .run_nibbles(nibbles, (a, a_sum), cols, &mut slot.accum, out)
            }
            None => self.mm.run(a, m, cols, &mut slot.accum, out),
        });
    }
}

/// Max-pooling on int8 NHWC (the parameters carry over unchanged).
#[derive(Debug)]
pub(crate) struct IntPool {
    pub(super) input: [usize; 3],
    pub(super) kernel: usize,
    pub(super) stride: usize,
}

impl IntPool {
    pub fn run(&self, x: &[i8], y: &mut [i8], out_len: usize, slots: &mut Workers) {
        let [c, h, w] = self.input;
        par_images(x, c * h * w, y, out_len, slots, |image, out, _| {
            max_pool2d_nhwc_s8(image, h, w, c, self.kernel, self.stride, out)
        });
    }
}

/// An int8 flatten into the canonical order: each `[c, h, w]` image's NHWC codes
/// reordered channel by channel, for readers that need the float graph's NCHW flatten
/// order (an `Add`, a `Concat`, an activation) rather than reading NHWC themselves.
pub(crate) fn int_flatten([c, h, w]: [usize; 3], x: &[i8], y: &mut [i8]) {
    let len = c * h * w;
    for (image, out) in x.chunks_exact(len).zip(y.chunks_exact_mut(len)) {
        for (ci, plane) in out.chunks_exact_mut(h * w).enumerate() {
            for (i, o) in plane.iter_mut().enumerate() {
                *o = image[i * c + ci];
            }
        }
    }
}

/// An activation on int8: a clamp of the codes.
pub(crate) fn int_clamp(x: &[i8], (lo, hi): (i8, i8), y: &mut [i8]) {
    for (o, &q) in y.iter_mut().zip(x) {
        *o = q.clamp(lo, hi);
    }
}
