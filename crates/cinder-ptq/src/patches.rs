//! What a weighted layer multiplies its weights with: for each group of a convolution
//! (one for dense ones, one per channel for depthwise ones), the patches of its input
//! (im2col, float, NCHW), one row of `depth` values per output position in the order of
//! the weight's `[in / groups, kh, kw]` row; for a linear layer, the flattened sample.
//! The layer's output channel `o` of group `g` at a position is then the dot product of
//! weight row `o` with that position's patch of group `g`.

use cinder_runtime::Window;
use cinder_tensor::Tensor;
use cinder_tensor::graph::Op;

/// The patch geometry of one layer over its input shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Patches {
    pub(crate) groups: usize,
    /// Values per patch: the length of a weight row.
    pub(crate) depth: usize,
    /// Output channels per group.
    pub(crate) outputs: usize,
    conv: Option<ConvGeometry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConvGeometry {
    /// `[c, h, w]` of a sample.
    input: [usize; 3],
    window: Window,
    /// `(height, width)` of the output.
    output: (usize, usize),
}

impl Patches {
    /// The geometry of weighted `op` over per-sample `input_shape` (checked by the graph).
    pub(crate) fn of(op: &Op, input_shape: &[usize]) -> Option<Self> {
        match op {
            Op::Conv2d(c) => {
                let &[ch, h, w] = input_shape else {
                    return None;
                };
                let window = Window {
                    kernel: c.kernel(),
                    stride: c.stride,
                    padding: c.padding,
                };
                Some(Self {
                    groups: c.groups,
                    depth: c.weight.len() / c.out_channels(),
                    outputs: c.out_channels() / c.groups,
                    conv: Some(ConvGeometry {
                        input: [ch, h, w],
                        window,
                        output: window.output(h, w),
                    }),
                })
            }
            Op::Linear(l) => Some(Self {
                groups: 1,
                depth: l.in_features(),
                outputs: l.out_features(),
                conv: None,
            }),
            _ => None,
        }
    }

    /// Patches (rows) per sample.
    pub(crate) fn per_sample(&self) -> usize {
        self.conv.map_or(1, |c| c.output.0 * c.output.1)
    }

    /// The patches of group `group` of every sample of `batch` (`[B, ...]`, flat), row
    /// after row.
    pub(crate) fn rows(&self, batch: &[f32], samples: usize, group: usize) -> Vec<f32> {
        let per_sample = batch.len() / samples.max(1);
        let mut out = Vec::with_capacity(samples * self.per_sample() * self.depth);
        for sample in batch.chunks_exact(per_sample) {
            match &self.conv {
                None => out.extend_from_slice(sample),
                Some(conv) => conv.im2col(sample, self.groups, group, &mut out),
            }
        }
        out
    }
}

impl ConvGeometry {
    /// Appends one sample's patches of `group` to `out`, zeros where the window reaches
    /// into the padding.
    fn im2col(&self, sample: &[f32], groups: usize, group: usize, out: &mut Vec<f32>) {
        let [c, h, w] = self.input;
        let per_group = c / groups;
        let Window {
            kernel: [kh, kw],
            stride: [sy, sx],
            padding: [py, px],
        } = self.window;
        let (oh, ow) = self.output;
        for oy in 0..oh {
            for ox in 0..ow {
                for ch in group * per_group..(group + 1) * per_group {
                    let plane = &sample[ch * h * w..][..h * w];
                    for ky in 0..kh {
                        let iy = (oy * sy + ky).checked_sub(py).filter(|&y| y < h);
                        for kx in 0..kw {
                            let ix = (ox * sx + kx).checked_sub(px).filter(|&x| x < w);
                            out.push(match (iy, ix) {
                                (Some(y), Some(x)) => plane[y * w + x],
                                _ => 0.0,
                            });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_runtime::float_forward;
    use cinder_runtime::synthetic::Rng;
    use cinder_tensor::graph::{Conv2d, FloatGraph};
    use cinder_tensor::{Tensor, TensorBuf};
    use proptest::prelude::*;

    proptest! {
        /// Weight rows times patches give the convolution of the float reference, for
        /// dense, grouped and depthwise convolutions with stride and padding.
        #[test]
        fn weights_times_patches_is_the_convolution(
            seed: u64, groups in 1usize..4, per_group in 1usize..3, outputs in 1usize..3,
            k in 1usize..4, stride in 1usize..3, padding in 0usize..2, size in 3usize..7,
        ) {
            let mut rng = Rng::new(seed);
            let c = groups * per_group;
            let conv = Conv2d {
                weight: rng.tensor(vec![groups * outputs, per_group, k, k], 1.0),
                bias: None,
                stride: [stride; 2],
                padding: [padding; 2],
                groups,
            };
            let input = [c, size, size];
            let op = Op::Conv2d(conv.clone());
            let graph = FloatGraph::chain(input.to_vec(), vec![("conv".into(), op.clone())]).unwrap();
            let x = rng.tensor(vec![2, c, size, size], 1.0);
            let want = float_forward(&graph, &x).unwrap();
            let p = Patches::of(&op, &input).unwrap();
            let positions = p.per_sample();
            let w = conv.weight.data();
            let mut got = vec![0.0f32; want.len()];
            for g in 0..groups {
                let rows = p.rows(x.data(), 2, g);
                for (r, patch) in rows.chunks_exact(p.depth).enumerate() {
                    let (sample, pos) = (r / positions, r % positions);
                    for o in g * outputs..(g + 1) * outputs {
                        let dot: f32 = w[o * p.depth..][..p.depth].iter().zip(patch).map(|(a, b)| a * b).sum();
                        got[(sample * groups * outputs + o) * positions + pos] = dot;
                    }
                }
            }
            for (a, b) in got.iter().zip(want.data()) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn a_linear_layer_reads_the_flat_sample() {
        let op = Op::Linear(cinder_tensor::graph::Linear {
            weight: TensorBuf::zeros(vec![2, 6]).unwrap(),
            bias: None,
        });
        let p = Patches::of(&op, &[6]).unwrap();
        assert_eq!((p.groups, p.depth, p.outputs, p.per_sample()), (1, 6, 2, 1));
        let batch: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(p.rows(&batch, 2, 0), batch);
    }
}
