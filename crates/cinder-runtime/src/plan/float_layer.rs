//! Float layers of a partially quantized model: an f32 GEMM (im2col for convolutions)
//! that sums in the reference's order without fused multiply-adds, so that it equals
//! [`crate::arith`] bit for bit ([`FloatGemm`]); and float max-pooling and ReLU. Each
//! stage reports the min/max of what it wrote, scanned per image while it is in cache, so
//! that a following dynamic layer needs no second pass over its input.

use std::ops::Range;

use cinder_observers::min_max;

use super::int::ConvShape;
use super::par::{
    BLOCKS_PER_SLOT, Scratch, Tracked, Workers, grow, par_blocks, par_images, take_range,
};
use crate::arith::{PoolKind, conv2d, pool_sample};
use crate::geometry::{Geometry, Window};
use crate::kernels::sgemm::{Bias, Gemm, PANEL, Right, TILE_ROWS, gemm, pack_panels, panels};
use crate::kernels::{im2col_f32, max_pool2x2_f32};
use crate::model::Activation;

/// A float layer of a partially quantized model, as a GEMM with the reference
/// interpreter's arithmetic (see [`gemm`]): a convolution multiplies its weights by each
/// image's im2col matrix, a linear layer the batch by its weights.
#[derive(Debug)]
pub(crate) struct FloatGemm {
    kernel: FloatKernel,
    bias: Vec<f32>,
    activation: Activation,
}

/// What a float layer multiplies.
#[derive(Debug)]
enum FloatKernel {
    /// The weights as stored (`[o][c][ky][kx]`: rows in im2col order) are the left
    /// operand, an image's im2col matrix the right: the product is NCHW.
    Conv { shape: ConvShape, weight: Vec<f32> },
    /// The batch is the left operand, the transposed weights (packed once) the right.
    Linear { depth: usize, weights: Vec<f32> },
}

impl FloatGemm {
    /// The layer of `weight` (`[n][depth]`, canonical) and `bias` of `geometry`.
    /// Grouped convolutions take [`FloatDirect`].
    pub(super) fn new(
        geometry: Geometry,
        weight: &[f32],
        bias: &[f32],
        activation: Activation,
    ) -> Self {
        let kernel = match geometry {
            Geometry::Conv { input, window, .. } => FloatKernel::Conv {
                shape: ConvShape::new(input, window),
                weight: weight.to_vec(),
            },
            Geometry::Linear => {
                let depth = weight.len() / bias.len();
                let mut weights = vec![0.0; panels(bias.len()) * depth * PANEL];
                pack_panels(
                    depth,
                    bias.len(),
                    |p, j| weight[j * depth + p],
                    &mut weights,
                );
                FloatKernel::Linear { depth, weights }
            }
        };
        Self {
            kernel,
            bias: bias.to_vec(),
            activation,
        }
    }

    pub fn run(
        &self,
        x: &[f32],
        in_len: usize,
        y: &mut [f32],
        out_len: usize,
        slots: &mut Workers,
    ) -> Tracked {
        match &self.kernel {
            FloatKernel::Conv { shape, weight } => {
                self.conv(shape, weight, x, in_len, y, out_len, slots)
            }
            FloatKernel::Linear { depth, weights } => self.linear(*depth, weights, x, y, slots),
        }
        take_range(slots)
    }

    /// Whole images per thread; a batch smaller than the thread count splits each image's
    /// output channels instead, over the im2col matrix of the first slot.
    #[allow(
        clippy::too_many_arguments,
        reason = "the stage's operands and its kernel's"
    )]
    fn conv(
        &self,
        shape: &ConvShape,
        weight: &[f32],
        x: &[f32],
        in_len: usize,
        y: &mut [f32],
        out_len: usize,
        slots: &mut Workers,
    ) {
        let (n, depth, pixels) = (self.bias.len(), shape.depth(), shape.pixels);
        // Whole panels, and one more: a row stride of a multiple of 4 KiB (1024 pixels)
        // would put a tile's loads in one cache set.
        let row_stride = (panels(pixels) + 1) * PANEL;
        let len = depth * row_stride;
        // The product of output channels `rows` with the im2col matrix `b`, into `out`.
        let multiply = |b: &[f32], rows: Range<usize>, out: &mut [f32], slot: &mut Scratch| {
            let product = Gemm {
                a: &weight[rows.start * depth..],
                rows: rows.len(),
                depth,
                b: Right {
                    data: b,
                    row_stride,
                    panel_stride: PANEL,
                },
                cols: 0..pixels,
                bias: Bias::PerRow(&self.bias[rows]),
            };
            self.finish(product, out, pixels, slot);
        };
        if y.len() / out_len >= slots.len() {
            par_images(x, in_len, y, out_len, slots, |image, out, slot| {
                let mut b = std::mem::take(&mut slot.im2col);
                im2col_f32(
                    image,
                    shape.input,
                    shape.window,
                    row_stride,
                    grow(&mut b, len),
                );
                multiply(&b[..len], 0..n, out, slot);
                slot.im2col = b;
            });
            return;
        }
        // Lent to every thread for the image, and given back.
        let mut b = std::mem::take(&mut slots[0].im2col);
        for (image, out) in x.chunks_exact(in_len).zip(y.chunks_exact_mut(out_len)) {
            im2col_f32(
                image,
                shape.input,
                shape.window,
                row_stride,
                grow(&mut b, len),
            );
            let b = &b[..len];
            par_blocks(
                out,
                pixels,
                TILE_ROWS,
                BLOCKS_PER_SLOT,
                slots,
                |o0, block, slot| multiply(b, o0..o0 + block.len() / pixels, block, slot),
            );
        }
        slots[0].im2col = b;
    }

    /// Rows split over the threads, one block each (a block streams all the weights), or
    /// (one row, several threads) panels of columns, several blocks each.
    fn linear(&self, depth: usize, weights: &[f32], x: &[f32], y: &mut [f32], slots: &mut Workers) {
        let n = self.bias.len();
        let bias = Bias::PerColumn(&self.bias);
        if y.len() == n && slots.len() > 1 {
            par_blocks(y, 1, PANEL, BLOCKS_PER_SLOT, slots, |c0, block, slot| {
                let cols = c0..c0 + block.len();
                let product = Gemm {
                    a: x,
                    rows: 1,
                    depth,
                    b: Right::panels(&weights[c0 * depth..], depth),
                    cols,
                    bias,
                };
                self.finish(product, block, n, slot);
            });
        } else {
            par_blocks(y, n, 1, 1, slots, |r0, block, slot| {
                let product = Gemm {
                    a: &x[r0 * depth..],
                    rows: block.len() / n,
                    depth,
                    b: Right::panels(weights, depth),
                    cols: 0..n,
                    bias,
                };
                self.finish(product, block, n, slot);
            });
        }
    }

    /// Computes `product` into `out` (row stride `ldc`), then the ReLU and the range.
    fn finish(&self, product: Gemm<'_>, out: &mut [f32], ldc: usize, slot: &mut Scratch) {
        gemm(&product, out, ldc);
        self.activation.apply_all(out);
        slot.range = slot.range.merge(Tracked::of(min_max(out)));
    }
}

/// Pooling of NCHW floats: the 2×2 stride-2 max-pool on its own kernel, any other on
/// the reference arithmetic.
#[derive(Debug)]
pub(crate) struct FloatPool {
    pub(super) input: [usize; 3],
    pub(super) window: Window,
    pub(super) kind: PoolKind,
}

impl FloatPool {
    pub fn run(&self, x: &[f32], y: &mut [f32], out_len: usize, slots: &mut Workers) -> Tracked {
        let in_len = self.input.iter().product();
        let two_by_two = self.kind == PoolKind::Max && self.window == Window::square(2, 2, 0);
        par_images(x, in_len, y, out_len, slots, |image, out, slot| {
            match two_by_two {
                true => max_pool2x2_f32(image, self.input, out),
                false => {
                    let pool = (self.input, self.window, self.kind);
                    pool_sample(image, out, pool, (0.0, &mut slot.taps))
                }
            }
            slot.range = slot.range.merge(Tracked::of(min_max(out)));
        });
        take_range(slots)
    }
}

/// A float convolution on the reference arithmetic, for grouped and depthwise ones.
#[derive(Debug)]
pub(crate) struct FloatDirect {
    pub(super) geometry: Geometry,
    pub(super) weight: Vec<f32>,
    pub(super) bias: Vec<f32>,
    pub(super) activation: Activation,
}

impl FloatDirect {
    pub fn run(&self, x: &[f32], y: &mut [f32], out_len: usize, slots: &mut Workers) -> Tracked {
        let Geometry::Conv {
            input,
            window,
            groups,
        } = self.geometry
        else {
            unreachable!("built for convolutions only")
        };
        let in_len = input.iter().product();
        par_images(x, in_len, y, out_len, slots, |image, out, slot| {
            conv2d(
                image,
                input,
                &self.weight,
                &self.bias,
                (window, groups),
                out,
            );
            self.activation.apply_all(out);
            slot.range = slot.range.merge(Tracked::of(min_max(out)));
        });
        take_range(slots)
    }
}

/// The elementwise sum of two float batches, then the activation.
pub(crate) fn float_add(a: &[f32], b: &[f32], activation: Activation, y: &mut [f32]) -> Tracked {
    for ((o, &p), &q) in y.iter_mut().zip(a).zip(b) {
        *o = activation.apply(p + q);
    }
    Tracked::of(min_max(y))
}

/// Float batches (`input(i)`, `count` of them) joined per sample along dimension 0.
pub(crate) fn float_concat<'a>(
    input: impl Fn(usize) -> &'a [f32],
    count: usize,
    batch: usize,
    y: &mut [f32],
) -> Tracked {
    let mut at = 0;
    for b in 0..batch {
        for i in 0..count {
            let x = input(i);
            let per = x.len() / batch;
            y[at..at + per].copy_from_slice(&x[b * per..][..per]);
            at += per;
        }
    }
    Tracked::of(min_max(y))
}

/// An activation of floats; the range follows exactly (activations are monotone).
pub(crate) fn float_activation(
    x: &[f32],
    activation: Activation,
    y: &mut [f32],
    range: Tracked,
) -> Tracked {
    y.iter_mut()
        .zip(x)
        .for_each(|(o, &v)| *o = activation.apply(v));
    match range {
        Tracked::Known(lo, hi) => Tracked::Known(activation.apply(lo), activation.apply(hi)),
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::arith::weighted_forward;
    use crate::kernels::sgemm::tests::{bits, values};
    use crate::synthetic::Rng;

    /// Runs `layer` on `threads` threads over a batch; returns the output and its range.
    fn run(
        layer: &FloatGemm,
        x: &[f32],
        in_len: usize,
        out_len: usize,
        threads: usize,
    ) -> (Vec<f32>, Tracked) {
        let mut slots = Workers::new(threads).unwrap();
        let mut y = vec![f32::NAN; x.len() / in_len * out_len];
        let range = layer.run(x, in_len, &mut y, out_len, &mut slots);
        (y, range)
    }

    /// The stage equals the reference definition ([`crate::arith::conv2d`],
    /// [`crate::arith::linear`]) bit for bit, for every thread count and batch (so every
    /// split: whole images, output channels of one image, column panels of one row, rows),
    /// and reports the exact range of what it wrote.
    fn check(
        geometry: Geometry,
        in_len: usize,
        n: usize,
        out_len: usize,
        relu_on: bool,
        batch: usize,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let mut rng = Rng::new(seed);
        let depth = match geometry {
            Geometry::Conv { input, window, .. } => input[0] * window.taps(),
            Geometry::Linear => in_len,
        };
        let (weight, bias) = (values(&mut rng, n * depth), values(&mut rng, n));
        let x = values(&mut rng, batch * in_len);
        let activation = if relu_on {
            Activation::Relu
        } else {
            Activation::None
        };
        let layer = FloatGemm::new(geometry, &weight, &bias, activation);
        let mut want = weighted_forward(geometry, &x, batch, out_len, &weight, &bias);
        want.iter_mut().for_each(|v| *v = activation.apply(*v));
        for threads in 1..=3 {
            let (got, range) = run(&layer, &x, in_len, out_len, threads);
            prop_assert_eq!(bits(&got), bits(&want), "{} threads", threads);
            prop_assert_eq!(range, Tracked::of(min_max(&want)));
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn conv_equals_the_reference(
            c in 1usize..4, h in 1usize..12, w in 1usize..12, n in 1usize..15,
            kernel in [1usize..4, 1usize..4], stride in [1usize..4, 1usize..4],
            padding in [0usize..3, 0usize..3], relu_on in any::<bool>(), batch in 1usize..5,
            seed in any::<u64>(),
        ) {
            prop_assume!(h + 2 * padding[0] >= kernel[0] && w + 2 * padding[1] >= kernel[1]);
            let window = Window { kernel, stride, padding };
            let (oh, ow) = window.output(h, w);
            let geometry = Geometry::Conv { input: [c, h, w], window, groups: 1 };
            check(geometry, c * h * w, n, n * oh * ow, relu_on, batch, seed)?;
        }

        #[test]
        fn linear_equals_the_reference(
            depth in 1usize..40, n in 1usize..70, relu_on in any::<bool>(),
            batch in 1usize..15, seed in any::<u64>(),
        ) {
            check(Geometry::Linear, depth, n, n, relu_on, batch, seed)?;
        }
    }
}
