//! Convolution helpers on one NHWC int8 image: im2col and max-pool (of int8 codes, or
//! 2×2 of a convolution's i32 sums before its output stage).
//!
//! Both are portable code that the compiler vectorizes; on x86_64 they are compiled a
//! second time with AVX2 and picked by the process's path ([`super::isa::dispatch`]).

use std::ops::Range;

use super::isa::dispatch;
use super::window::NhwcWindow;
use super::work::Vectorizable;

/// Output size of a window sliding over `input` positions: `(input + 2·padding − kernel)
/// / stride + 1`, or `None` if the kernel or stride is 0, the window does not fit once or
/// the padded size overflows.
pub fn out_dim(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    if kernel == 0 {
        return None;
    }
    let span = padded(input, padding)?.checked_sub(kernel)?;
    Some(span.checked_div(stride)? + 1)
}

/// `input + 2·padding`, or `None` if it overflows.
fn padded(input: usize, padding: usize) -> Option<usize> {
    input.checked_add(padding.checked_mul(2)?)
}

/// A square `kernel × kernel` window sliding over an `h × w × c` NHWC image.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// Panics, naming the kernel `name`, if the window does not fit or `input` is too
    /// short.
    fn new(
        name: &str,
        input: &[i8],
        hwc: [usize; 3],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let [h, w, c] = hwc;
        let (Some(oh), Some(ow)) = (
            out_dim(h, kernel, stride, padding),
            out_dim(w, kernel, stride, padding),
        ) else {
            panic!(
                "{name}: kernel {kernel}, stride {stride}, padding {padding} do not fit {h}x{w}"
            );
        };
        assert!(
            input.len() >= h * w * c,
            "{name}: input holds {} values, need {h}x{w}x{c}",
            input.len()
        );
        // Every stride beyond the padded image places the one window at the origin; the
        // smallest of them keeps `stride · c` and `ox · stride` within the image's size
        // (a model may hold any stride, 2^63 included).
        let extent = padded(h.max(w), padding).expect("out_dim checked the padded size");
        Self {
            h,
            w,
            c,
            kernel,
            stride: stride.min(extent),
            padding,
            oh,
            ow,
        }
    }

    /// Input index of channel 0 at image position `(y, x)` counted from the padded
    /// origin, or `None` inside the padding.
    #[inline(always)]
    fn at(&self, y: usize, x: usize) -> Option<usize> {
        let y = y.checked_sub(self.padding).filter(|&y| y < self.h)?;
        let x = x.checked_sub(self.padding).filter(|&x| x < self.w)?;
        Some((y * self.w + x) * self.c)
    }
}

/// im2col of one NHWC image `[h][w][c]`: row `oy · ow + ox` of `out` (stride `out_ld`)
/// holds the window at output pixel `(oy, ox)`, columns in order `(ky, kx, ch)`, padded
/// positions set to `pad_value` (the input zero point). Columns `kernel²·c .. out_ld` are
/// not written.
///
/// # Panics
/// If the window does not fit, `out_ld < kernel²·c`, or a buffer is too short.
#[allow(
    clippy::too_many_arguments,
    reason = "the engine's agreed BLAS-style operand list"
)]
pub fn im2col_nhwc_s8(
    input: &[i8],
    h: usize,
    w: usize,
    c: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    pad_value: i8,
    out: &mut [i8],
    out_ld: usize,
) {
    let g = Geometry::new("im2col", input, [h, w, c], kernel, stride, padding);
    let window = NhwcWindow {
        input: [h, w, c],
        kernel: [kernel; 2],
        stride: [stride; 2],
        padding: [padding; 2],
    };
    im2col_square_rows_s8(input, &window, 0..g.oh, (pad_value, 0), out, out_ld);
}

/// [`im2col_nhwc_s8`] of the output rows `rows` only, for a square window (same kernel,
/// stride and padding along both axes): row `(oy - rows.start) · ow + ox` of `out` holds
/// the window at `(oy, ox)`, every value (and the pad value) XORed with `flip` (0, or
/// 0x80 for offset bytes `code + 128`).
///
/// # Panics
/// If the window is not square or does not fit, `rows` reaches past the output,
/// `out_ld < kernel²·c`, or a buffer is too short.
pub(super) fn im2col_square_rows_s8(
    input: &[i8],
    window: &NhwcWindow,
    rows: Range<usize>,
    (pad_value, flip): (i8, i8),
    out: &mut [i8],
    out_ld: usize,
) {
    let [h, w, c] = window.input;
    let (kernel, stride, padding) = (window.kernel[0], window.stride[0], window.padding[0]);
    assert!(
        window.kernel[1] == kernel && window.stride[1] == stride && window.padding[1] == padding,
        "im2col: window {window:?} is not square"
    );
    let g = Geometry::new("im2col", input, [h, w, c], kernel, stride, padding);
    let k = kernel * kernel * c;
    assert!(
        rows.start <= rows.end && rows.end <= g.oh,
        "im2col: rows {rows:?} past {} output rows",
        g.oh
    );
    let needed = (rows.len() * g.ow).saturating_sub(1) * out_ld + k;
    assert!(
        out_ld >= k && (rows.is_empty() || out.len() >= needed),
        "im2col: out too short or out_ld {out_ld} < {k}"
    );
    if k > 0 && !rows.is_empty() {
        dispatch(Im2col {
            src: Image { g, data: input },
            rows,
            pad_value: pad_value ^ flip,
            flip,
            out,
            out_ld,
        });
    }
}

/// A checked image: `data` holds at least `h × w × c` values.
#[derive(Clone, Copy)]
struct Image<'a> {
    g: Geometry,
    data: &'a [i8],
}

impl Image<'_> {
    /// One im2col window row that crosses the padding, pixel by pixel (`pad_value`
    /// already XORed with `flip`).
    #[inline(always)]
    fn window_edge(self, seg: &mut [i8], y: usize, x0: usize, (pad_value, flip): (i8, i8)) {
        let c = self.g.c;
        for (kx, px) in seg.chunks_exact_mut(c).enumerate() {
            match self.g.at(y, x0 + kx) {
                Some(at) => copy_span(px, &self.data[at..at + c], flip),
                None => px.fill(pad_value),
            }
        }
    }

    /// Maximum of `L` consecutive channels over the pooling window whose top-left value
    /// is at `at`, into `dst` (length `L`).
    #[inline(always)]
    fn window_max<const L: usize>(self, at: usize, dst: &mut [i8]) {
        let g = self.g;
        let mut best = [i8::MIN; L];
        for ky in 0..g.kernel {
            for kx in 0..g.kernel {
                let from = at + (ky * g.w + kx) * g.c;
                let src: &[i8; L] = self.data[from..from + L].try_into().expect("L values");
                best.iter_mut()
                    .zip(src)
                    .for_each(|(b, &v)| *b = (*b).max(v));
            }
        }
        dst.copy_from_slice(&best);
    }
}

/// The work of [`im2col_nhwc_s8`], checked; `pad_value` already XORed with `flip`.
struct Im2col<'a> {
    src: Image<'a>,
    rows: Range<usize>,
    pad_value: i8,
    flip: i8,
    out: &'a mut [i8],
    out_ld: usize,
}

impl Vectorizable for Im2col<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            src,
            rows,
            pad_value,
            flip,
            out,
            out_ld,
        } = self;
        let g = src.g;
        let span = g.kernel * g.c;
        // Output columns whose window rows lie inside the image horizontally.
        let inside_lo = g.padding.div_ceil(g.stride).min(g.ow);
        let inside_hi = (g.w + g.padding)
            .checked_sub(g.kernel)
            .map_or(0, |room| (room / g.stride + 1).min(g.ow))
            .max(inside_lo);
        let first = rows.start;
        for oy in rows {
            let rows = &mut out[(oy - first) * g.ow * out_ld..];
            for ky in 0..g.kernel {
                let (y, at) = (oy * g.stride + ky, |ox: usize| ox * out_ld + ky * span);
                let Some(line) = g.at(y, g.padding).map(|i| &src.data[i..i + g.w * g.c]) else {
                    (0..g.ow).for_each(|ox| rows[at(ox)..][..span].fill(pad_value));
                    continue;
                };
                if inside_lo < inside_hi {
                    // Consecutive windows of one input line: no per-pixel checks.
                    let first = (inside_lo * g.stride - g.padding) * g.c;
                    let windows = line[first..].windows(span).step_by(g.stride * g.c);
                    for (ox, window) in (inside_lo..inside_hi).zip(windows) {
                        copy_span(&mut rows[at(ox)..][..span], window, flip);
                    }
                }
                for ox in (0..inside_lo).chain(inside_hi..g.ow) {
                    let (seg, x0) = (&mut rows[at(ox)..][..span], ox * g.stride);
                    src.window_edge(seg, y, x0, (pad_value, flip));
                }
            }
        }
    }
}

/// `dst[i] = src[i] ^ flip` by fixed-size, possibly overlapping chunks that compile to
/// plain vector moves: window rows are short (9 bytes for 3 channels), where a `memcpy`
/// call per row would dominate.
#[inline(always)]
fn copy_span(dst: &mut [i8], src: &[i8], flip: i8) {
    match dst.len() {
        32.. => copy_chunks::<32>(dst, src, flip),
        8.. => copy_chunks::<8>(dst, src, flip),
        _ => xor_into(dst, src, flip),
    }
}

/// [`copy_span`] for `dst.len() >= N`: whole chunks, then the last `N` bytes.
#[inline(always)]
fn copy_chunks<const N: usize>(dst: &mut [i8], src: &[i8], flip: i8) {
    let len = dst.len();
    for i in (0..len - N).step_by(N) {
        xor_chunk::<N>(&mut dst[i..i + N], &src[i..i + N], flip);
    }
    xor_chunk::<N>(&mut dst[len - N..], &src[len - N..len], flip);
}

/// `dst[i] = src[i] ^ flip` over `N` bytes, the source read whole before it is written, so
/// that the compiler need not prove the slices apart to use one vector. 8 bytes go as one
/// 64-bit word: as an array of bytes the compiler at times split their XOR into byte
/// inserts and extracts (3× slower), as words it keeps one load, XOR and store; wider
/// chunks stay arrays, which become one vector (four words did not).
#[inline(always)]
fn xor_chunk<const N: usize>(dst: &mut [i8], src: &[i8], flip: i8) {
    if N == 8 {
        let s: [i8; 8] = src.try_into().expect("8 bytes");
        let word = u64::from_ne_bytes(s.map(|b| b as u8)) ^ u64::from_ne_bytes([flip as u8; 8]);
        dst.copy_from_slice(&word.to_ne_bytes().map(|b| b as i8));
        return;
    }
    let mut chunk: [i8; N] = src.try_into().expect("N bytes");
    for v in &mut chunk {
        *v ^= flip;
    }
    dst.copy_from_slice(&chunk);
}

/// `dst[i] = src[i] ^ flip`.
#[inline(always)]
fn xor_into(dst: &mut [i8], src: &[i8], flip: i8) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s ^ flip);
}

/// Max-pool of one NHWC image `[h][w][c]` with a `kernel × kernel` window, no padding:
/// `out[(oy · ow + ox) · c + ch]` is the maximum over the window. Works for any zero
/// point, as the maximum commutes with the monotone affine map.
///
/// # Panics
/// If the window does not fit or a buffer is too short.
pub fn max_pool2d_nhwc_s8(
    input: &[i8],
    h: usize,
    w: usize,
    c: usize,
    kernel: usize,
    stride: usize,
    out: &mut [i8],
) {
    let g = Geometry::new("max_pool2d", input, [h, w, c], kernel, stride, 0);
    let needed = g.oh * g.ow * c;
    assert!(
        out.len() >= needed,
        "max_pool2d: out holds {} values, need {needed}",
        out.len()
    );
    if c > 0 {
        dispatch(MaxPool {
            src: Image { g, data: input },
            out,
        });
    }
}

/// Channels pooled together: one AVX2 vector of i8.
const POOL_LANES: usize = 32;

/// The work of [`max_pool2d_nhwc_s8`], checked.
struct MaxPool<'a> {
    src: Image<'a>,
    out: &'a mut [i8],
}

impl Vectorizable for MaxPool<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { src, out } = self;
        let g = src.g;
        let lanes = g.c / POOL_LANES * POOL_LANES;
        for (o, dst) in out.chunks_exact_mut(g.c).take(g.oh * g.ow).enumerate() {
            let at = (o / g.ow * g.stride * g.w + o % g.ow * g.stride) * g.c;
            for ch in (0..lanes).step_by(POOL_LANES) {
                src.window_max::<POOL_LANES>(at + ch, &mut dst[ch..ch + POOL_LANES]);
            }
            for ch in lanes..g.c {
                src.window_max::<1>(at + ch, &mut dst[ch..=ch]);
            }
        }
    }
}

/// 2×2, stride-2 max-pool of `rows` (even) rows of `w` pixels × `c` channels of i32
/// convolution sums (NHWC): `out[(pr · (w / 2) + pc) · c + ch]` is the maximum of its
/// window; an odd last column is dropped.
///
/// # Panics
/// If `rows` is odd or a buffer is too short.
pub fn max_pool2x2_s32(input: &[i32], rows: usize, w: usize, c: usize, out: &mut [i32]) {
    assert!(
        rows.is_multiple_of(2),
        "max_pool2x2: {rows} rows, expected an even number"
    );
    assert!(
        input.len() >= rows * w * c,
        "max_pool2x2: input holds {} values, need {rows}x{w}x{c}",
        input.len()
    );
    let len = rows / 2 * (w / 2) * c;
    assert!(
        out.len() >= len,
        "max_pool2x2: out holds {} values, need {len}",
        out.len()
    );
    dispatch(MaxPool2x2 {
        input,
        rows,
        w,
        c,
        out: &mut out[..len],
    });
}

/// The work of [`max_pool2x2_s32`], checked.
struct MaxPool2x2<'a> {
    input: &'a [i32],
    rows: usize,
    w: usize,
    c: usize,
    out: &'a mut [i32],
}

impl Vectorizable for MaxPool2x2<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            input,
            rows,
            w,
            c,
            out,
        } = self;
        if c == 0 {
            return;
        }
        let pw = w / 2;
        for (o, dst) in out.chunks_exact_mut(c).enumerate() {
            let (pr, pc) = (o / pw, o % pw);
            debug_assert!(2 * pr + 1 < rows);
            let at = |dy: usize, dx: usize| &input[((2 * pr + dy) * w + 2 * pc + dx) * c..][..c];
            let (a, b, d, e) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
            for (j, v) in dst.iter_mut().enumerate() {
                *v = a[j].max(b[j]).max(d[j].max(e[j]));
            }
        }
    }
}
