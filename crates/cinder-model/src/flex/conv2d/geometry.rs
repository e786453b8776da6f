//! The shapes and hyper-parameters of one 2-D convolution, and the sizes derived from them
//! that the convolution kernels share.

/// The batch is split into at most this many parts for the weight gradient: each part sums its
/// images into its own buffer, then the parts are added in order, so the sum does not depend
/// on the number of threads.
const WEIGHT_GRAD_PARTS: usize = 8;

/// Shapes and hyper-parameters of one convolution (dilation 1, symmetric padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub channels_in: usize,
    pub height: usize,
    pub width: usize,
    pub channels_out: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
}

impl ConvGeometry {
    /// Output height and width.
    pub fn output_size(&self) -> [usize; 2] {
        let out = |size: usize, k: usize, s: usize, p: usize| (size + 2 * p - k) / s + 1;
        [
            out(self.height, self.kernel[0], self.stride[0], self.padding[0]),
            out(self.width, self.kernel[1], self.stride[1], self.padding[1]),
        ]
    }

    /// Whether the shapes describe a valid convolution with a non-empty output.
    pub fn is_valid(&self) -> bool {
        let [kh, kw] = self.kernel;
        let fits = |size: usize, k: usize, p: usize| k >= 1 && size + 2 * p >= k;
        self.groups >= 1
            && self.channels_in.is_multiple_of(self.groups)
            && self.channels_out.is_multiple_of(self.groups)
            && self.stride.iter().all(|&s| s >= 1)
            && fits(self.height, kh, self.padding[0])
            && fits(self.width, kw, self.padding[1])
    }

    /// Input elements of one image.
    pub(super) fn image_len(&self) -> usize {
        self.channels_in * self.height * self.width
    }

    pub(super) fn group_in(&self) -> usize {
        self.channels_in / self.groups
    }

    pub(super) fn group_out(&self) -> usize {
        self.channels_out / self.groups
    }

    /// Rows `K` of an image's column matrix for one group.
    pub(super) fn col_rows(&self) -> usize {
        self.group_in() * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels `N` of one channel.
    pub(super) fn out_pixels(&self) -> usize {
        let [oh, ow] = self.output_size();
        oh * ow
    }

    /// Images per part of the batch in a weight gradient's fixed split.
    pub(super) fn images_per_part(&self) -> usize {
        self.batch.div_ceil(WEIGHT_GRAD_PARTS).max(1)
    }

    /// Output elements of one image.
    pub(super) fn output_image_len(&self) -> usize {
        self.channels_out * self.out_pixels()
    }

    /// Elements of the weight `[C_out, C_in / groups, kh, kw]`.
    pub fn weight_len(&self) -> usize {
        self.channels_out * self.col_rows()
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own column matrix.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Stride 1 and an output as wide as the input (`kernel width = 2 × padding + 1`), so
    /// that a kernel tap shifts the flat image by a constant (see [`ShiftedSpan`]).
    pub(super) fn is_same_stride_one(&self) -> bool {
        self.stride == [1, 1] && self.output_size()[1] == self.width
    }

    /// The kernel taps `(i, j)` in the order of a column matrix's rows.
    pub(super) fn taps(&self) -> impl Iterator<Item = [usize; 2]> + use<> {
        let [kh, kw] = self.kernel;
        (0..kh).flat_map(move |i| (0..kw).map(move |j| [i, j]))
    }

    /// The range of output positions `o` along one axis whose input position
    /// `o·stride + k − pad` falls inside `0..size`.
    pub(super) fn valid_outputs(&self, axis: usize, k: usize) -> (usize, usize) {
        let (size, stride, pad) = match axis {
            0 => (self.height, self.stride[0], self.padding[0]),
            _ => (self.width, self.stride[1], self.padding[1]),
        };
        let out = self.output_size()[axis];
        let lo = pad.saturating_sub(k).div_ceil(stride).min(out);
        let hi = (size + pad).saturating_sub(k).div_ceil(stride).min(out);
        (lo, hi.max(lo))
    }
}
