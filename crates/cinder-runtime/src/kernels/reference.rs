//! Plain scalar versions of every kernel: obviously correct, slow, and the ground truth
//! the fast paths are tested against bit for bit.

use cinder_tensor::RequantMultiplier;

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
    let oh = (h + 2 * padding - kernel) / stride + 1;
    let ow = (w + 2 * padding - kernel) / stride + 1;
    for oy in 0..oh {
        for ox in 0..ow {
            for ky in 0..kernel {
                for kx in 0..kernel {
                    for ch in 0..c {
                        let y = (oy * stride + ky) as isize - padding as isize;
                        let x = (ox * stride + kx) as isize - padding as isize;
                        let inside = y >= 0 && x >= 0 && (y as usize) < h && (x as usize) < w;
                        let value = if inside {
                            input[(y as usize * w + x as usize) * c + ch]
                        } else {
                            pad_value
                        };
                        out[(oy * ow + ox) * out_ld + (ky * kernel + kx) * c + ch] = value;
                    }
                }
            }
        }
    }
}
