//! Depthwise convolution sums of one NHWC int8 image: every channel convolved with its
//! own `kh × kw` filter, `sum[p][ch] = Σ_taps (x[tap][ch] - zp_in) · w[tap][ch]` over the
//! taps inside the image (padding adds nothing). The weights come centred on their zero
//! points, as i16, laid out `[ky][kx][ch]` so that the inner loop runs along channels,
//! contiguous in both operands (the compiler vectorizes it). Like Winograd's transforms,
//! the kernel subtracts the input zero point itself; bias, requantization and clamping
//! are the caller's output stage.
//!
//! Exactness: `|x - zp_in| ≤ 255` and `|w| ≤ 254`, so a sum of `kh·kw` taps stays within
//! i32 for any window below 33,000 taps; the model's accumulator bound is far tighter.

use super::window::NhwcWindow;

/// The depthwise sums of output rows `rows` of one image into `out` (`rows × ow × c`,
/// pixel-major, channels innermost). `weights` holds `kh · kw · c` centred weights.
///
/// # Panics
/// If a buffer is shorter than the shape needs.
pub fn depthwise_nhwc_s8(
    image: &[i8],
    shape: &NhwcWindow,
    zp_in: i8,
    weights: &[i16],
    rows: std::ops::Range<usize>,
    out: &mut [i32],
) {
    let [h, w, c] = shape.input;
    let [_, ow] = shape.output();
    let [kh, kw] = shape.kernel;
    assert!(
        image.len() >= h * w * c && weights.len() >= kh * kw * c,
        "depthwise: short operand"
    );
    assert!(out.len() >= rows.len() * ow * c, "depthwise: out too short");
    let zp = i32::from(zp_in);
    for (r, oy) in rows.enumerate() {
        let ys = shape.taps(0, oy);
        for ox in 0..ow {
            let acc = &mut out[(r * ow + ox) * c..][..c];
            acc.fill(0);
            let xs = shape.taps(1, ox);
            for ky in ys.clone() {
                let iy = shape.position(0, oy, ky);
                for kx in xs.clone() {
                    let ix = shape.position(1, ox, kx);
                    let x = &image[(iy * w + ix) * c..][..c];
                    let wt = &weights[(ky * kw + kx) * c..][..c];
                    for ((a, &q), &f) in acc.iter_mut().zip(x).zip(wt) {
                        *a += (i32::from(q) - zp) * i32::from(f);
                    }
                }
            }
        }
    }
}

/// The plain definition: every output, every tap, bounds checked per tap.
pub fn depthwise_reference(
    image: &[i8],
    shape: &NhwcWindow,
    zp_in: i8,
    weights: &[i16],
) -> Vec<i32> {
    let c = shape.input[2];
    let [oh, ow] = shape.output();
    let [kh, kw] = shape.kernel;
    let mut out = vec![0; oh * ow * c];
    for oy in 0..oh {
        for ox in 0..ow {
            for ch in 0..c {
                let mut acc = 0i32;
                for ky in 0..kh {
                    for kx in 0..kw {
                        if let Some(pixel) = shape.pixel(oy, ox, ky, kx) {
                            let q = i32::from(image[pixel * c + ch]) - i32::from(zp_in);
                            acc += q * i32::from(weights[(ky * kw + kx) * c + ch]);
                        }
                    }
                }
                out[(oy * ow + ox) * c + ch] = acc;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::synthetic::Rng;

    proptest! {
        #[test]
        fn depthwise_equals_its_reference(
            h in 1usize..9, w in 1usize..9, c in 1usize..20, kh in 1usize..4, kw in 1usize..4,
            sh in 1usize..3, sw in 1usize..3, ph in 0usize..2, pw in 0usize..2,
            zp in any::<i8>(), seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * ph >= kh && w + 2 * pw >= kw);
            let shape = NhwcWindow { input: [h, w, c], kernel: [kh, kw], stride: [sh, sw], padding: [ph, pw] };
            let mut rng = Rng::new(seed);
            let image: Vec<i8> = (0..h * w * c).map(|_| rng.next_u64() as i8).collect();
            let weights: Vec<i16> = (0..kh * kw * c).map(|_| (rng.next_u64() % 509) as i16 - 254).collect();
            let want = depthwise_reference(&image, &shape, zp, &weights);
            let [oh, ow] = shape.output();
            let mut got = vec![i32::MIN; oh * ow * c];
            depthwise_nhwc_s8(&image, &shape, zp, &weights, 0..oh, &mut got);
            prop_assert_eq!(&got, &want);
            // Any band of rows on its own.
            let band = oh / 2..oh;
            let mut part = vec![0; band.len() * ow * c];
            depthwise_nhwc_s8(&image, &shape, zp, &weights, band.clone(), &mut part);
            prop_assert_eq!(&part[..], &want[band.start * ow * c..]);
        }
    }
}
