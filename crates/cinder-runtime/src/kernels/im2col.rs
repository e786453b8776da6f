//! im2col of output rows of one NHWC int8 image over any window (rectangular kernels,
//! different strides and paddings per axis); square windows, those of the common
//! convolutions, take the vectorized path of [`super::im2col_nhwc_s8`].

use std::ops::Range;

use super::conv::im2col_square_rows_s8;
use super::window::NhwcWindow;

/// The im2col rows of output rows `rows`: row `(oy - rows.start) · ow + ox` of `out`
/// (stride `out_ld`) holds the window at output pixel `(oy, ox)`, columns in order
/// `(ky, kx, ch)`, padded positions set to `pad_value` (the input zero point). A thread
/// can so build the rows of its own part of an image.
///
/// # Panics
/// If the window does not fit, `rows` reaches past the output, `out_ld` is below
/// `kh · kw · c` or a buffer is too short.
pub fn im2col_window_s8(
    image: &[i8],
    window: &NhwcWindow,
    rows: Range<usize>,
    pad_value: i8,
    out: &mut [i8],
    out_ld: usize,
) {
    im2col_rows(image, window, rows, (pad_value, 0), out, out_ld);
}

/// [`im2col_window_s8`] writing offset bytes, `code + 128` (the codes `^ 0x80`, the pad
/// value too): the activations that the VNNI GEMM paths multiply as they are
/// ([`super::gemm_u8_cols`] reads them in place).
///
/// # Panics
/// As [`im2col_window_s8`].
pub fn im2col_window_u8(
    image: &[i8],
    window: &NhwcWindow,
    rows: Range<usize>,
    pad_value: i8,
    out: &mut [u8],
    out_ld: usize,
) {
    // SAFETY: u8 and i8 have the same size and alignment, and every bit pattern is valid
    // for both.
    let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<i8>(), out.len()) };
    im2col_rows(image, window, rows, (pad_value, i8::MIN), out, out_ld);
}

/// The im2col rows of [`im2col_window_s8`], every value and the pad value XORed with
/// `flip`.
fn im2col_rows(
    image: &[i8],
    window: &NhwcWindow,
    rows: Range<usize>,
    (pad_value, flip): (i8, i8),
    out: &mut [i8],
    out_ld: usize,
) {
    let square = |a: [usize; 2]| a[0] == a[1];
    if square(window.kernel) && square(window.stride) && square(window.padding) {
        return im2col_square_rows_s8(image, window, rows, (pad_value, flip), out, out_ld);
    }
    let [_, _, c] = window.input;
    let [oh, ow] = window.output();
    let [kh, kw] = window.kernel;
    assert!(
        out_ld >= kh * kw * c,
        "im2col: row stride {out_ld} below the window"
    );
    assert!(
        rows.end <= oh,
        "im2col: rows {rows:?} past {oh} output rows"
    );
    for oy in rows.clone() {
        for ox in 0..ow {
            let row = &mut out[((oy - rows.start) * ow + ox) * out_ld..][..kh * kw * c];
            for (tap, seg) in row.chunks_exact_mut(c.max(1)).enumerate() {
                match window.pixel(oy, ox, tap / kw, tap % kw) {
                    Some(p) => seg
                        .iter_mut()
                        .zip(&image[p * c..][..c])
                        .for_each(|(d, &x)| *d = x ^ flip),
                    None => seg.fill(pad_value ^ flip),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::generic::reference;
    use crate::synthetic::Rng;

    proptest! {
        /// Any band of rows, square (vectorized) or not, equals those rows of the
        /// whole image's im2col by the reference, and as offset bytes those `^ 0x80`.
        #[test]
        fn row_bands_equal_the_reference_rows(
            h in 1usize..8, w in 1usize..8, c in 1usize..5, kh in 1usize..4, kw in 1usize..4,
            sy in 1usize..3, sx in 1usize..3, py in 0usize..2, px in 0usize..2,
            pad in any::<i8>(), seed in any::<u64>(), band in any::<(prop::sample::Index, prop::sample::Index)>(),
        ) {
            prop_assume!(h + 2 * py >= kh && w + 2 * px >= kw);
            let mut rng = Rng::new(seed);
            let image: Vec<i8> = (0..h * w * c).map(|_| rng.next_u64() as i8).collect();
            let window = NhwcWindow { input: [h, w, c], kernel: [kh, kw], stride: [sy, sx], padding: [py, px] };
            let [oh, ow] = window.output();
            let (a, b) = (band.0.index(oh + 1), band.1.index(oh + 1));
            let rows = a.min(b)..a.max(b);
            let ld = kh * kw * c + 1;
            let mut want = vec![0; oh * ow * ld];
            reference::im2col_window_s8(&image, &window, pad, &mut want, ld);
            let mut got = vec![0x55; rows.len() * ow * ld];
            im2col_window_s8(&image, &window, rows.clone(), pad, &mut got, ld);
            let mut offset = vec![0x55; rows.len() * ow * ld];
            im2col_window_u8(&image, &window, rows.clone(), pad, &mut offset, ld);
            let want = want[rows.start * ow * ld..].chunks(ld);
            for (i, ((g, o), w)) in got.chunks(ld).zip(offset.chunks(ld)).zip(want).enumerate() {
                prop_assert_eq!(&g[..ld - 1], &w[..ld - 1], "row {}", i);
                prop_assert_eq!(g[ld - 1], 0x55, "the padding column is not written");
                let flipped: Vec<u8> = w[..ld - 1].iter().map(|&v| v as u8 ^ 0x80).collect();
                prop_assert_eq!(&o[..ld - 1], &flipped[..], "offset row {}", i);
                prop_assert_eq!(o[ld - 1], 0x55);
            }
        }
    }
}
