//! im2col of one NHWC int8 image over any window (rectangular kernels, different strides
//! and paddings per axis); the square windows of the common convolutions take the
//! vectorized [`super::im2col_nhwc_s8`].

use super::window::NhwcWindow;

/// Row `oy · ow + ox` of `out` (stride `out_ld`) holds the window at output pixel
/// `(oy, ox)`, columns in order `(ky, kx, ch)`, padded positions set to `pad_value` (the
/// input zero point).
///
/// # Panics
/// If `out_ld` is below `kh · kw · c` or a buffer is too short.
pub fn im2col_window_s8(
    image: &[i8],
    window: &NhwcWindow,
    pad_value: i8,
    out: &mut [i8],
    out_ld: usize,
) {
    let [_, _, c] = window.input;
    let [oh, ow] = window.output();
    let [kh, kw] = window.kernel;
    assert!(
        out_ld >= kh * kw * c,
        "im2col: row stride {out_ld} below the window"
    );
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut out[(oy * ow + ox) * out_ld..][..kh * kw * c];
            for (tap, seg) in row.chunks_exact_mut(c.max(1)).enumerate() {
                match window.pixel(oy, ox, tap / kw, tap % kw) {
                    Some(p) => seg.copy_from_slice(&image[p * c..][..c]),
                    None => seg.fill(pad_value),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::synthetic::Rng;

    proptest! {
        /// Square windows equal the vectorized im2col.
        #[test]
        fn square_windows_equal_im2col_nhwc_s8(
            h in 1usize..8, w in 1usize..8, c in 1usize..5, k in 1usize..4, s in 1usize..3,
            p in 0usize..2, pad in any::<i8>(), seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
            let mut rng = Rng::new(seed);
            let image: Vec<i8> = (0..h * w * c).map(|_| rng.next_u64() as i8).collect();
            let window = NhwcWindow { input: [h, w, c], kernel: [k; 2], stride: [s; 2], padding: [p; 2] };
            let [oh, ow] = window.output();
            let ld = k * k * c;
            let (mut got, mut want) = (vec![0; oh * ow * ld], vec![0; oh * ow * ld]);
            im2col_window_s8(&image, &window, pad, &mut got, ld);
            super::super::im2col_nhwc_s8(&image, h, w, c, k, s, p, pad, &mut want, ld);
            prop_assert_eq!(got, want);
        }
    }
}
