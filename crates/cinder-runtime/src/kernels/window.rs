//! A window sliding over one NHWC image, the geometry that depthwise convolution and
//! pooling share: kernel, stride and zero padding, each `[vertical, horizontal]`.

use std::ops::Range;

/// A window over an `[h, w, c]` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NhwcWindow {
    /// `[h, w, c]` of the input.
    pub input: [usize; 3],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl NhwcWindow {
    /// Output `[oh, ow]` (the window must fit the padded input: checked by the caller).
    pub fn output(&self) -> [usize; 2] {
        let size =
            |i: usize| (self.input[i] + 2 * self.padding[i] - self.kernel[i]) / self.stride[i] + 1;
        [size(0), size(1)]
    }

    /// The taps along axis `i` (0: rows, 1: columns) of output position `o` whose input
    /// position `o·stride + tap - padding` is inside the image.
    pub fn taps(&self, i: usize, o: usize) -> Range<usize> {
        let origin = o * self.stride[i];
        let first = self.padding[i].saturating_sub(origin);
        let end = (self.input[i] + self.padding[i]).saturating_sub(origin);
        first.min(self.kernel[i])..end.min(self.kernel[i])
    }

    /// The input position along axis `i` of tap `t` at output position `o` (a tap that
    /// [`Self::taps`] returned).
    pub fn position(&self, i: usize, o: usize, t: usize) -> usize {
        o * self.stride[i] + t - self.padding[i]
    }

    /// The taps `[ky, kx]` of output `(oy, ox)` inside the image, row-major, each with
    /// its input pixel.
    pub fn inside(&self, oy: usize, ox: usize) -> impl Iterator<Item = ([usize; 2], usize)> {
        let (shape, [kh, kw]) = (*self, self.kernel);
        (0..kh)
            .flat_map(move |ky| (0..kw).map(move |kx| [ky, kx]))
            .filter_map(move |[ky, kx]| Some(([ky, kx], shape.pixel(oy, ox, ky, kx)?)))
    }

    /// Input pixel of tap `(ky, kx)` at output `(oy, ox)`, or `None` in the padding.
    pub fn pixel(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<usize> {
        let iy = (oy * self.stride[0] + ky).checked_sub(self.padding[0])?;
        let ix = (ox * self.stride[1] + kx).checked_sub(self.padding[1])?;
        (iy < self.input[0] && ix < self.input[1]).then_some(iy * self.input[1] + ix)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn taps_are_the_inside_ones(
            h in 1usize..8, kh in 1usize..5, s in 1usize..4, p in 0usize..3, o in 0usize..8,
        ) {
            let window = NhwcWindow { input: [h, 1, 1], kernel: [kh, 1], stride: [s, 1], padding: [p, 0] };
            let taps = window.taps(0, o);
            for t in 0..kh {
                prop_assert_eq!(taps.contains(&t), window.pixel(o, 0, t, 0).is_some(), "tap {}", t);
            }
        }
    }
}
