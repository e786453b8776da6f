//! Shapes: windows sliding over a `[C, H, W]` sample, what a weighted layer does to a
//! sample's shape, and the batch dimension of a run's input.

use serde::{Deserialize, Serialize};

use crate::error::{Invalid, RunError};
use crate::kernels::NhwcWindow;

/// A window over the two spatial dimensions: kernel, stride and symmetric zero padding,
/// each `[vertical, horizontal]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl Window {
    /// A square window.
    pub fn square(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }

    /// The same strides and padding with another kernel.
    pub fn with_kernel(self, kernel: [usize; 2]) -> Self {
        Self { kernel, ..self }
    }

    /// `(kernel, stride, padding)` when the window is the same along both axes.
    pub fn as_square(&self) -> Option<(usize, usize, usize)> {
        let same = |a: [usize; 2]| (a[0] == a[1]).then_some(a[0]);
        Some((same(self.kernel)?, same(self.stride)?, same(self.padding)?))
    }

    /// Output size over an input of `h x w` (shapes are validated before this is used).
    pub fn output(&self, h: usize, w: usize) -> (usize, usize) {
        let size =
            |n: usize, i: usize| (n + 2 * self.padding[i] - self.kernel[i]) / self.stride[i] + 1;
        (size(h, 0), size(w, 1))
    }

    /// Taps per window.
    pub fn taps(&self) -> usize {
        self.kernel[0] * self.kernel[1]
    }

    /// The window over an NHWC image of `[c, h, w]`, as the kernels take it.
    pub(crate) fn nhwc(&self, [c, h, w]: [usize; 3]) -> NhwcWindow {
        NhwcWindow {
            input: [h, w, c],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// `[channels, oh, ow]` after this window over a `[C, H, W]` shape, or an error naming
    /// `field` when the window does not fit.
    pub(crate) fn output_shape(
        &self,
        field: &str,
        shape: &[usize],
        channels: usize,
    ) -> Result<Vec<usize>, Invalid> {
        let size = |n: usize, i: usize| {
            let (k, s, p) = (self.kernel[i], self.stride[i], self.padding[i]);
            let padded = n + 2 * p;
            (s > 0 && k > 0 && padded >= k).then(|| (padded - k) / s + 1)
        };
        match shape {
            [_, h, w] => match (size(*h, 0), size(*w, 1)) {
                (Some(oh), Some(ow)) => Ok(vec![channels, oh, ow]),
                _ => Err(Invalid::new(
                    field,
                    format!("{self:?} does not fit input {shape:?}"),
                )),
            },
            _ => Err(Invalid::new(
                field,
                format!("expected a [C, H, W] input, got {shape:?}"),
            )),
        }
    }
}

/// What a weighted layer does to one sample's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Geometry {
    Conv {
        input: [usize; 3],
        window: Window,
        groups: usize,
    },
    Linear,
}

/// `[c, h, w]` of a rank-3 shape (a vector counts as `[len, 1, 1]`).
pub(crate) fn chw(shape: &[usize]) -> [usize; 3] {
    match shape {
        [c, h, w] => [*c, *h, *w],
        _ => [shape.iter().product(), 1, 1],
    }
}

/// The batch size of `shape` when it is `[batch, per_sample...]` with `batch >= 1`.
pub(crate) fn batch_size(shape: &[usize], per_sample: &[usize]) -> Result<usize, RunError> {
    match shape.split_first() {
        Some((&b, rest)) if b > 0 && rest == per_sample => Ok(b),
        _ => Err(RunError::InputShape {
            expected: per_sample.to_vec(),
            actual: shape.to_vec(),
        }),
    }
}
