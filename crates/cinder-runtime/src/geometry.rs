//! Shapes: windows sliding over a `[C, H, W]` sample, what a weighted layer does to a
//! sample's shape, and the batch dimension of a run's input.

use crate::error::{Invalid, RunError};

/// A square window: kernel, stride and zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Window {
    /// Output size over an input of `h x w` (shapes are validated before this is used).
    pub fn output(&self, h: usize, w: usize) -> (usize, usize) {
        let size = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (size(h), size(w))
    }

    /// `[channels, oh, ow]` after this window over a `[C, H, W]` shape, or an error naming
    /// `field` when the window does not fit.
    pub fn output_shape(
        &self,
        field: &str,
        shape: &[usize],
        channels: usize,
    ) -> Result<Vec<usize>, Invalid> {
        let Window {
            kernel,
            stride,
            padding,
        } = *self;
        let size = |n: usize| {
            let padded = n + 2 * padding;
            (stride > 0 && kernel > 0 && padded >= kernel).then(|| (padded - kernel) / stride + 1)
        };
        match shape {
            [_, h, w] => match (size(*h), size(*w)) {
                (Some(oh), Some(ow)) => Ok(vec![channels, oh, ow]),
                _ => Err(Invalid::new(
                    field,
                    format!(
                        "kernel {kernel} stride {stride} padding {padding} does not fit input {shape:?}"
                    ),
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
    Conv { input: [usize; 3], window: Window },
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
