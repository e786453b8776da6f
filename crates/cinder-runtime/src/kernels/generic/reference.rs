//! Plain scalar versions of every kernel: obviously correct, slow, and the ground truth
//! every instruction-set path is tested against bit for bit.

use cinder_tensor::RequantMultiplier;

use crate::kernels::NhwcWindow;

/// `c[i * ldc + j] = Σ_p a[i * lda + p] · b[j * k + p]` for `i < m`, `j < n`, `p < k`,
/// with `b` row-major `[n][k]` (not packed).
#[allow(clippy::too_many_arguments, reason = "BLAS-style operand list")]
pub fn gemm_s8(
    a: &[i8],
    lda: usize,
    m: usize,
    b: &[i8],
    n: usize,
    k: usize,
    c: &mut [i32],
    ldc: usize,
) {
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0i32;
            for p in 0..k {
                sum += i32::from(a[i * lda + p]) * i32::from(b[j * k + p]);
            }
            c[i * ldc + j] = sum;
        }
    }
}

/// One output value: `clamp(zp_out + mult.apply(acc + bias), lo, hi)`, `acc + bias`
/// wrapping.
pub fn requantize_one(
    acc: i32,
    bias: i32,
    mult: RequantMultiplier,
    zp_out: i32,
    lo: i32,
    hi: i32,
) -> i8 {
    let scaled = i64::from(mult.apply(acc.wrapping_add(bias)));
    (scaled + i64::from(zp_out)).clamp(i64::from(lo), i64::from(hi)) as i8
}

/// One row of the output stage; `mult` per channel or a single one.
pub fn requantize_s8(
    acc: &[i32],
    bias: &[i32],
    mult: &[RequantMultiplier],
    zp_out: i32,
    lo: i32,
    hi: i32,
    out: &mut [i8],
) {
    for j in 0..bias.len() {
        let m = if mult.len() == 1 { mult[0] } else { mult[j] };
        out[j] = requantize_one(acc[j], bias[j], m, zp_out, lo, hi);
    }
}

/// `out[i] = Σ_p a[i * lda + p]`.
pub fn row_sums_s8(a: &[i8], lda: usize, m: usize, k: usize, out: &mut [i32]) {
    for i in 0..m {
        let mut sum = 0i32;
        for p in 0..k {
            sum += i32::from(a[i * lda + p]);
        }
        out[i] = sum;
    }
}

/// Max-pool of one NHWC image, no padding.
pub fn max_pool2d_nhwc_s8(
    input: &[i8],
    h: usize,
    w: usize,
    c: usize,
    kernel: usize,
    stride: usize,
    out: &mut [i8],
) {
    let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let mut best = i8::MIN;
                for ky in 0..kernel {
                    for kx in 0..kernel {
                        let (y, x) = (oy * stride + ky, ox * stride + kx);
                        best = best.max(input[(y * w + x) * c + ch]);
                    }
                }
                out[(oy * ow + ox) * c + ch] = best;
            }
        }
    }
}

/// 2×2, stride-2 max-pool of `rows` rows of `w` pixels × `c` channels of i32 sums.
pub fn max_pool2x2_s32(input: &[i32], rows: usize, w: usize, c: usize, out: &mut [i32]) {
    for pr in 0..rows / 2 {
        for pc in 0..w / 2 {
            for ch in 0..c {
                let mut best = i32::MIN;
                for dy in 0..2 {
                    for dx in 0..2 {
                        best = best.max(input[((2 * pr + dy) * w + 2 * pc + dx) * c + ch]);
                    }
                }
                out[(pr * (w / 2) + pc) * c + ch] = best;
            }
        }
    }
}

/// im2col of one NHWC image: row `oy · ow + ox`, column `(ky · kernel + kx) · c + ch`.
#[allow(clippy::too_many_arguments, reason = "mirrors the fast kernel")]
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
    let window = NhwcWindow {
        input: [h, w, c],
        kernel: [kernel; 2],
        stride: [stride; 2],
        padding: [padding; 2],
    };
    im2col_window_s8(input, &window, pad_value, out, out_ld);
}

/// im2col of one NHWC image over any window: row `oy · ow + ox`, column
/// `(ky · kw + kx) · c + ch`.
pub fn im2col_window_s8(
    input: &[i8],
    window: &NhwcWindow,
    pad_value: i8,
    out: &mut [i8],
    out_ld: usize,
) {
    let [h, w, c] = window.input;
    let [oh, ow] = window.output();
    let [kh, kw] = window.kernel;
    for oy in 0..oh {
        for ox in 0..ow {
            for ky in 0..kh {
                for kx in 0..kw {
                    for ch in 0..c {
                        let y = (oy * window.stride[0] + ky) as isize - window.padding[0] as isize;
                        let x = (ox * window.stride[1] + kx) as isize - window.padding[1] as isize;
                        let inside = y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w;
                        let value = if inside {
                            input[(y as usize * w + x as usize) * c + ch]
                        } else {
                            pad_value
                        };
                        out[(oy * ow + ox) * out_ld + (ky * kw + kx) * c + ch] = value;
                    }
                }
            }
        }
    }
}

/// Winograd F(2×2, 3×3)'s input transform `Bᵀ` (see [`super::winograd`]).
const WINOGRAD_BT: [[i32; 4]; 4] = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]];
/// Twice Winograd's filter transform `G`: integer.
const WINOGRAD_2G: [[i32; 3]; 4] = [[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]];
/// Winograd's output transform `Aᵀ`.
const WINOGRAD_AT: [[i32; 4]; 2] = [[1, 1, 1, 0], [0, 1, -1, -1]];

/// `l · x · rᵀ` for small integer matrices, wrapping.
fn sandwich<const P: usize, const Q: usize, const S: usize, const T: usize>(
    l: &[[i32; Q]; P],
    x: &[[i32; T]; Q],
    r: &[[i32; T]; S],
) -> [[i32; S]; P] {
    let mut out = [[0i32; S]; P];
    for (p, out_row) in out.iter_mut().enumerate() {
        for (s, v) in out_row.iter_mut().enumerate() {
            for q in 0..Q {
                for t in 0..T {
                    *v = v.wrapping_add(l[p][q].wrapping_mul(x[q][t]).wrapping_mul(r[s][t]));
                }
            }
        }
    }
    out
}

/// Winograd filter transform `V = (2G) g (2G)ᵀ` of one centered 3×3 filter `g[ky][kx]`.
pub fn winograd_filter(g: &[[i32; 3]; 3]) -> [[i32; 4]; 4] {
    sandwich(&WINOGRAD_2G, g, &WINOGRAD_2G)
}

/// Winograd input transform `U = Bᵀ d B` of one centered 4×4 patch.
pub fn winograd_input(d: &[[i32; 4]; 4]) -> [[i32; 4]; 4] {
    sandwich(&WINOGRAD_BT, d, &WINOGRAD_BT)
}

/// Winograd output transform `Y = Aᵀ M A` (4× the convolution sums of the tile), wrapping.
pub fn winograd_output(m: &[[i32; 4]; 4]) -> [[i32; 2]; 2] {
    sandwich(&WINOGRAD_AT, m, &WINOGRAD_AT)
}

/// The 3×3 filter of output channel `j` on channel `ch`, minus `zero_point`, from `codes`
/// row-major `[n][ky][kx][c]`.
fn centered_filter(codes: &[i8], c: usize, j: usize, ch: usize, zero_point: i32) -> [[i32; 3]; 3] {
    std::array::from_fn(|ky| {
        std::array::from_fn(|kx| i32::from(codes[((j * 3 + ky) * 3 + kx) * c + ch]) - zero_point)
    })
}

/// Winograd's 16 GEMMs for `tiles` tiles: `m[t · ldm + position · n + j] =
/// Σ_ch u[(position · tiles + t) · stride + ch] · V[position]` for `ch < c`, `V` the
/// [`winograd_filter`] of output channel `j`'s filter of channel `ch` centered on
/// `zero_points[j]` (`codes` row-major `[n][ky][kx][c]`, `n = zero_points.len()`).
#[allow(clippy::too_many_arguments, reason = "mirrors the fast kernel")]
pub fn winograd_multiply(
    u: &[i16],
    tiles: usize,
    stride: usize,
    codes: &[i8],
    zero_points: &[i32],
    c: usize,
    m: &mut [i32],
    ldm: usize,
) {
    let n = zero_points.len();
    for (j, &zw) in zero_points.iter().enumerate() {
        for ch in 0..c {
            let v = winograd_filter(&centered_filter(codes, c, j, ch, zw));
            for (position, &vp) in v.as_flattened().iter().enumerate() {
                for t in 0..tiles {
                    let product = i32::from(u[(position * tiles + t) * stride + ch]) * vp;
                    let sum = &mut m[t * ldm + position * n + j];
                    *sum = if ch == 0 { product } else { *sum + product };
                }
            }
        }
    }
}

/// A 3×3, stride-1 convolution of one NHWC image through the Winograd transforms, tile by
/// tile and channel by channel: `out[(oy · ow + ox) · n + j]` = the sum over taps of
/// `(input − zp_in) · (codes[j] − zero_points[j])`, `codes` row-major `[n][ky][kx][c]`.
#[allow(clippy::too_many_arguments, reason = "mirrors the fast kernels")]
pub fn winograd_conv_nhwc_s8(
    input: &[i8],
    h: usize,
    w: usize,
    c: usize,
    padding: usize,
    zp_in: i8,
    codes: &[i8],
    zero_points: &[i32],
    out: &mut [i32],
) {
    let n = zero_points.len();
    let (oh, ow) = (h + 2 * padding - 2, w + 2 * padding - 2);
    let centered_input = |y: usize, x: usize, ch: usize| -> i32 {
        let (y, x) = (y as isize - padding as isize, x as isize - padding as isize);
        if y < 0 || x < 0 || y as usize >= h || x as usize >= w {
            return 0;
        }
        i32::from(input[(y as usize * w + x as usize) * c + ch]) - i32::from(zp_in)
    };
    for ty in 0..oh.div_ceil(2) {
        for tx in 0..ow.div_ceil(2) {
            for j in 0..n {
                let mut m = [[0i32; 4]; 4];
                for ch in 0..c {
                    let d: [[i32; 4]; 4] = std::array::from_fn(|i| {
                        std::array::from_fn(|s| centered_input(2 * ty + i, 2 * tx + s, ch))
                    });
                    let g = centered_filter(codes, c, j, ch, zero_points[j]);
                    let (u, v) = (winograd_input(&d), winograd_filter(&g));
                    for (m_row, (u_row, v_row)) in m.iter_mut().zip(u.iter().zip(&v)) {
                        for (mv, (&uv, &vv)) in m_row.iter_mut().zip(u_row.iter().zip(v_row)) {
                            *mv = mv.wrapping_add(uv.wrapping_mul(vv));
                        }
                    }
                }
                let y = winograd_output(&m);
                for (i, y_row) in y.iter().enumerate() {
                    for (s, &sum) in y_row.iter().enumerate() {
                        let (oy, ox) = (2 * ty + i, 2 * tx + s);
                        if oy < oh && ox < ow {
                            assert_eq!(sum % 4, 0, "Y is 4 times the convolution sum");
                            out[(oy * ow + ox) * n + j] = sum / 4;
                        }
                    }
                }
            }
        }
    }
}

/// Depthwise convolution sums of one NHWC image, the plain definition: for every output
/// pixel and channel, `Σ (x - zp_in) · (w - zw)` over the window's taps inside the image,
/// bounds checked per tap, with `codes` row-major `[c][kh · kw]` and one zero point per
/// channel.
pub fn depthwise_nhwc_s8(
    image: &[i8],
    shape: &NhwcWindow,
    zp_in: i8,
    codes: &[i8],
    zero_points: &[i32],
) -> Vec<i32> {
    let c = shape.input[2];
    let [oh, ow] = shape.output();
    let taps = shape.kernel[0] * shape.kernel[1];
    let mut out = vec![0; oh * ow * c];
    for (i, o) in out.iter_mut().enumerate() {
        let (oy, ox, ch) = (i / c / ow, i / c % ow, i % c);
        let mut sum = 0i64;
        for ([ky, kx], pixel) in shape.inside(oy, ox) {
            let x = i64::from(image[pixel * c + ch]) - i64::from(zp_in);
            let tap = ky * shape.kernel[1] + kx;
            let w = i64::from(codes[ch * taps + tap]) - i64::from(zero_points[ch]);
            sum += x * w;
        }
        *o = i32::try_from(sum).expect("depthwise sums fit i32");
    }
    out
}
