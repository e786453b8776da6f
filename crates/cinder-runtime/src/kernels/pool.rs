//! Pooling of one NHWC int8 image over any window (kernel, stride, padding): the average
//! (also the global average, a window over the whole image) and the maximum with padding.
//! The 2×2 and unpadded max-pools of the reference ConvNet keep their own kernels
//! ([`super::max_pool2d_nhwc_s8`], [`super::max_pool2x2_s32`]).
//!
//! # Rounding of the average
//! The output keeps the input's parameters, so the average of codes is exact integer
//! arithmetic: `q_out = zp + round(Σ (q - zp) / count)` over the taps inside the image,
//! `count` being the window's size (`count_include_pad`, padding taps counting as real 0)
//! or the number of taps inside. The quotient is rounded to nearest with ties to even —
//! the rounding of `QuantParams::quantize`, so the result is the code the real average
//! quantizes to. ([`div_round_even`] is that division.) The average of codes lies between
//! their minimum and maximum (and zero), so it stays on the grid.

use super::window::NhwcWindow;

/// `n / d` rounded to the nearest integer, ties to even (`d > 0`).
pub fn div_round_even(n: i32, d: i32) -> i32 {
    let (q, r) = (n.div_euclid(d), n.rem_euclid(d));
    match (2 * i64::from(r)).cmp(&i64::from(d)) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// Average pooling of one image into `out` (`oh × ow × c`). Windows must hold at least
/// one tap inside the image.
pub fn avg_pool_nhwc_s8(
    image: &[i8],
    shape: &NhwcWindow,
    zero_point: i8,
    count_include_pad: bool,
    acc: &mut [i32],
    out: &mut [i8],
) {
    let [_, w, c] = shape.input;
    let [oh, ow] = shape.output();
    let zp = i32::from(zero_point);
    let acc = &mut acc[..c];
    for oy in 0..oh {
        let ys = shape.taps(0, oy);
        for ox in 0..ow {
            let xs = shape.taps(1, ox);
            acc.fill(0);
            for ky in ys.clone() {
                let iy = shape.position(0, oy, ky);
                for kx in xs.clone() {
                    let x = &image[(iy * w + shape.position(1, ox, kx)) * c..][..c];
                    acc.iter_mut()
                        .zip(x)
                        .for_each(|(a, &q)| *a += i32::from(q) - zp);
                }
            }
            let count = match count_include_pad {
                true => shape.kernel[0] * shape.kernel[1],
                false => ys.len() * xs.len(),
            } as i32;
            let o = &mut out[(oy * ow + ox) * c..][..c];
            for (o, &a) in o.iter_mut().zip(acc.iter()) {
                *o = (zp + div_round_even(a, count)) as i8;
            }
        }
    }
}

/// Max pooling of one image into `out` (`oh × ow × c`), padding taps left out (they are
/// `-∞`). Windows must hold at least one tap inside the image.
pub fn max_pool_nhwc_s8(image: &[i8], shape: &NhwcWindow, out: &mut [i8]) {
    let [_, w, c] = shape.input;
    let [oh, ow] = shape.output();
    for oy in 0..oh {
        let ys = shape.taps(0, oy);
        for ox in 0..ow {
            let xs = shape.taps(1, ox);
            let o = &mut out[(oy * ow + ox) * c..][..c];
            o.fill(i8::MIN);
            for ky in ys.clone() {
                let iy = shape.position(0, oy, ky);
                for kx in xs.clone() {
                    let x = &image[(iy * w + shape.position(1, ox, kx)) * c..][..c];
                    o.iter_mut().zip(x).for_each(|(m, &q)| *m = (*m).max(q));
                }
            }
        }
    }
}

/// The plain definition of both pools, per output value: `Some(count_include_pad)` for
/// the average, `None` for the maximum.
pub fn pool_reference(
    image: &[i8],
    shape: &NhwcWindow,
    zero_point: i8,
    average: Option<bool>,
) -> Vec<i8> {
    let c = shape.input[2];
    let [oh, ow] = shape.output();
    let [kh, kw] = shape.kernel;
    let mut out = vec![0; oh * ow * c];
    for (i, o) in out.iter_mut().enumerate() {
        let (oy, ox, ch) = (i / c / ow, i / c % ow, i % c);
        let inside: Vec<i32> = (shape.inside(oy, ox))
            .map(|(_, p)| i32::from(image[p * c + ch]))
            .collect();
        *o = match average {
            None => *inside.iter().max().expect("a tap inside") as i8,
            Some(include_pad) => {
                let zp = i32::from(zero_point);
                let sum: i32 = inside.iter().map(|q| q - zp).sum();
                let count = if include_pad { kh * kw } else { inside.len() };
                let mean = f64::from(sum) / count as f64;
                (zp + mean.round_ties_even() as i32) as i8
            }
        };
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
        fn pools_equal_their_reference(
            h in 1usize..8, w in 1usize..8, c in 1usize..6, kh in 1usize..5, kw in 1usize..5,
            sh in 1usize..3, sw in 1usize..3, ph in 0usize..3, pw in 0usize..3,
            zp in any::<i8>(), include_pad in any::<bool>(), seed in any::<u64>(),
        ) {
            // Every window holds a tap inside the image (PyTorch's rule: padding <= kernel / 2).
            prop_assume!(2 * ph <= kh && 2 * pw <= kw && h + 2 * ph >= kh && w + 2 * pw >= kw);
            let shape = NhwcWindow { input: [h, w, c], kernel: [kh, kw], stride: [sh, sw], padding: [ph, pw] };
            let mut rng = Rng::new(seed);
            let image: Vec<i8> = (0..h * w * c).map(|_| rng.next_u64() as i8).collect();
            let [oh, ow] = shape.output();
            let mut got = vec![0; oh * ow * c];
            max_pool_nhwc_s8(&image, &shape, &mut got);
            prop_assert_eq!(&got, &pool_reference(&image, &shape, zp, None));
            let mut acc = vec![0; c];
            avg_pool_nhwc_s8(&image, &shape, zp, include_pad, &mut acc, &mut got);
            prop_assert_eq!(&got, &pool_reference(&image, &shape, zp, Some(include_pad)));
        }

        #[test]
        fn division_rounds_to_nearest_even(n in -100_000i32..100_000, d in 1i32..1000) {
            let want = (f64::from(n) / f64::from(d)).round_ties_even() as i32;
            prop_assert_eq!(div_round_even(n, d), want);
        }
    }
}
