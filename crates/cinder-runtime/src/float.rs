//! Plain, obviously correct layer arithmetic over one NCHW sample, generic over the
//! number type (f32 for float layers, i64 for the reference interpreter's exact integer
//! sums), and the float reference forward of a [`FloatGraph`].
//!
//! Nothing here is fast: this is the definition the fast paths are checked against. The
//! session runs float (unquantized) layers of a partially quantized model as a GEMM with
//! this arithmetic, summed in the same order ([`crate::plan`]), so that they equal it bit
//! for bit.

use std::ops::{Add, Mul};

use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{Tensor, TensorBuf};

use crate::error::RunError;

/// What a multiply-accumulate needs.
pub(crate) trait Mac: Copy + Default + Add<Output = Self> + Mul<Output = Self> {}
impl<T: Copy + Default + Add<Output = T> + Mul<Output = T>> Mac for T {}

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
}

/// Direct convolution of one `[c, h, w]` sample with `weight [o, c, k, k]`:
/// `out[o, y, x] = bias[o] + sum_{ci, ky, kx} in[ci, y*s + ky - p, x*s + kx - p] * w[o, ci, ky, kx]`,
/// taps outside the input contributing nothing, summed in that order.
pub(crate) fn conv2d<T: Mac>(
    input: &[T],
    [c, h, w]: [usize; 3],
    weight: &[T],
    bias: &[T],
    window: Window,
    out: &mut [T],
) {
    let k = window.kernel;
    let (oh, ow) = window.output(h, w);
    let tap =
        |pos: usize, offset: usize| (pos * window.stride + offset).checked_sub(window.padding);
    for (o, &b) in bias.iter().enumerate() {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = b;
                for ci in 0..c {
                    for ky in 0..k {
                        let Some(iy) = tap(oy, ky).filter(|&iy| iy < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = tap(ox, kx).filter(|&ix| ix < w) else {
                                continue;
                            };
                            acc = acc
                                + input[(ci * h + iy) * w + ix]
                                    * weight[((o * c + ci) * k + ky) * k + kx];
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = acc;
            }
        }
    }
}

/// `out[o] = bias[o] + sum_i in[i] * weight[o, i]`, summed in index order.
pub(crate) fn linear<T: Mac>(input: &[T], weight: &[T], bias: &[T], out: &mut [T]) {
    for ((o, row), &b) in out
        .iter_mut()
        .zip(weight.chunks_exact(input.len()))
        .zip(bias)
    {
        *o = row.iter().zip(input).fold(b, |acc, (&w, &x)| acc + x * w);
    }
}

/// Max over each `kernel x kernel` window (no padding) of one `[c, h, w]` sample.
pub(crate) fn max_pool2d<T: Copy + PartialOrd>(
    input: &[T],
    [c, h, w]: [usize; 3],
    kernel: usize,
    stride: usize,
    out: &mut [T],
) {
    let window = Window {
        kernel,
        stride,
        padding: 0,
    };
    let (oh, ow) = window.output(h, w);
    for (plane, out_plane) in input
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(oh * ow))
        .take(c)
    {
        for (oy, out_row) in out_plane.chunks_exact_mut(ow).enumerate() {
            // The window's rows, each from its first column; windows step by `stride`.
            let rows = &plane[oy * stride * w..][..(kernel - 1) * w + (ow - 1) * stride + kernel];
            for (ox, o) in out_row.iter_mut().enumerate() {
                let mut m = rows[ox * stride];
                for ky in 0..kernel {
                    for &v in &rows[ky * w + ox * stride..][..kernel] {
                        if v > m {
                            m = v;
                        }
                    }
                }
                *o = m;
            }
        }
    }
}

/// `max(x, 0)`.
pub(crate) fn relu(x: f32) -> f32 {
    x.max(0.0)
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

/// Applies `f(sample_in, sample_out)` to every sample of a batch.
pub(crate) fn map_samples<T: Copy, U: Copy + Default>(
    input: &[T],
    batch: usize,
    out_len: usize,
    mut f: impl FnMut(&[T], &mut [U]),
) -> Vec<U> {
    let mut out = vec![U::default(); batch * out_len];
    if out_len > 0 {
        for (x, y) in input
            .chunks_exact(input.len() / batch)
            .zip(out.chunks_exact_mut(out_len))
        {
            f(x, y);
        }
    }
    out
}

/// What a weighted layer does to one sample's shape.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Geometry {
    Conv { input: [usize; 3], window: Window },
    Linear,
}

/// A convolution or linear layer over a whole batch of `batch` samples.
pub(crate) fn weighted_forward<T: Mac>(
    geometry: Geometry,
    x: &[T],
    batch: usize,
    out_len: usize,
    weight: &[T],
    bias: &[T],
) -> Vec<T> {
    map_samples(x, batch, out_len, |s, o| match geometry {
        Geometry::Conv { input, window } => conv2d(s, input, weight, bias, window, o),
        Geometry::Linear => linear(s, weight, bias, o),
    })
}

/// Max-pooling over a whole batch.
pub(crate) fn pool_forward<T: Copy + PartialOrd + Default>(
    x: &[T],
    batch: usize,
    in_shape: &[usize],
    out_len: usize,
    kernel: usize,
    stride: usize,
) -> Vec<T> {
    map_samples(x, batch, out_len, |s, o| {
        max_pool2d(s, chw(in_shape), kernel, stride, o)
    })
}

/// `[c, h, w]` of a rank-3 shape.
pub(crate) fn chw(shape: &[usize]) -> [usize; 3] {
    match shape {
        [c, h, w] => [*c, *h, *w],
        _ => [shape.iter().product(), 1, 1],
    }
}

/// The float reference forward: `input` is `[B, C, H, W]` (NCHW, the graph's input
/// shape per sample); returns the last node's output, `[B, ...]`.
pub fn float_forward(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    float_forward_with(graph, input, |_, _| {})
}

/// [`float_forward`], calling `hook(name, tensor)` with the input (named
/// `cinder_observers::GRAPH_INPUT`) and every node's output (named after the node), the
/// keys of a calibration table.
pub fn float_forward_with(
    graph: &FloatGraph,
    input: &impl Tensor<f32>,
    mut hook: impl FnMut(&str, &TensorBuf<f32>),
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), graph.input_shape())?;
    if !graph.is_chain() {
        return Err(RunError::Unsupported {
            node: graph.output().name.clone(),
            what: "graphs other than a chain".into(),
        });
    }
    let shapes = graph.output_shapes().to_vec();
    let mut x = TensorBuf::new(input.shape().to_vec(), input.data().to_vec()).expect("same shape");
    hook(cinder_observers::GRAPH_INPUT, &x);
    let mut in_shape = graph.input_shape().to_vec();
    for (node, out_shape) in graph.nodes().iter().zip(shapes) {
        let out_len = out_shape.iter().product();
        let data = match &node.op {
            Op::Conv2d(conv) => {
                let geometry = Geometry::Conv {
                    input: chw(&in_shape),
                    window: Window {
                        kernel: conv.kernel()[0],
                        stride: conv.stride[0],
                        padding: conv.padding[0],
                    },
                };
                weighted_forward(
                    geometry,
                    x.data(),
                    batch,
                    out_len,
                    conv.weight.data(),
                    &conv.bias_or_zeros(),
                )
            }
            Op::Linear(l) => weighted_forward(
                Geometry::Linear,
                x.data(),
                batch,
                out_len,
                l.weight.data(),
                &l.bias_or_zeros(),
            ),
            Op::MaxPool2d(p) => pool_forward(
                x.data(),
                batch,
                &in_shape,
                out_len,
                p.kernel[0],
                p.stride[0],
            ),
            Op::Relu => x.data().iter().map(|&v| relu(v)).collect(),
            Op::Flatten => x.data().to_vec(),
            other => {
                return Err(RunError::Unsupported {
                    node: node.name.clone(),
                    what: format!("{} nodes", other.kind()),
                });
            }
        };
        let mut shape = vec![batch];
        shape.extend_from_slice(&out_shape);
        x = TensorBuf::new(shape, data).expect("shapes chain");
        hook(&node.name, &x);
        in_shape = out_shape;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::{Conv2d, Linear};

    fn buf(shape: Vec<usize>, data: Vec<f32>) -> TensorBuf<f32> {
        TensorBuf::new(shape, data).unwrap()
    }

    /// One 3x3 input channel, two 2x2 filters, padding 1, stride 2, worked by hand.
    #[test]
    fn tiny_conv_by_hand() {
        #[rustfmt::skip]
        let input = [
            1.0, 2.0, 3.0,
            4.0, 5.0, 6.0,
            7.0, 8.0, 9.0f32,
        ];
        // filter 0: [[1, 0], [0, -1]], bias 0.5; filter 1: all 1, bias 0.
        let weight = [1.0, 0.0, 0.0, -1.0, 1.0, 1.0, 1.0, 1.0f32];
        let bias = [0.5, 0.0f32];
        let window = Window {
            kernel: 2,
            stride: 2,
            padding: 1,
        };
        assert_eq!(window.output(3, 3), (2, 2));
        let mut out = [0f32; 8];
        conv2d(&input, [1, 3, 3], &weight, &bias, window, &mut out);
        // Padded input rows/cols -1..=3; outputs at (-1,-1), (-1,1), (1,-1), (1,1).
        // filter 0 at (y0, x0) = x[y0][x0] - x[y0+1][x0+1] + 0.5:
        //   (-1,-1): 0 - 1 + .5; (-1,1): 0 - 3 + .5; (1,-1): 0 - 7 + .5; (1,1): 5 - 9 + .5
        // filter 1 sums the window: 1; 2+3; 4+7; 5+6+8+9.
        assert_eq!(out, [-0.5, -2.5, -6.5, -3.5, 1.0, 5.0, 11.0, 28.0]);
    }

    #[test]
    fn linear_and_pool_by_hand() {
        let mut out = [0f32; 2];
        linear(
            &[1.0, 2.0, 3.0],
            &[1.0, 0.0, -1.0, 0.5, 0.5, 0.5],
            &[10.0, 0.0],
            &mut out,
        );
        assert_eq!(out, [8.0, 3.0]);
        let mut pooled = [0i64; 2];
        max_pool2d(
            &[1, 5, 2, 0, 3, 4, -1, -2, 7, 8, 9, 6],
            [1, 3, 4],
            2,
            2,
            &mut pooled,
        );
        // Rows 0-1 only (the third row is left over by the window): [1 5 | 2 0] / [3 4 | -1 -2].
        assert_eq!(pooled, [5, 2]);
    }

    #[test]
    fn forward_of_a_tiny_graph_and_its_hook() {
        let node = |name: &str, op| (name.to_owned(), op);
        let graph = FloatGraph::chain(
            vec![1, 2, 2],
            vec![
                node(
                    "conv",
                    Op::Conv2d(Conv2d::dense(
                        buf(vec![1, 1, 1, 1], vec![-2.0]),
                        Some(buf(vec![1], vec![1.0])),
                        1,
                        0,
                    )),
                ),
                node("relu", Op::Relu),
                node("flat", Op::Flatten),
                node(
                    "fc",
                    Op::Linear(Linear {
                        weight: buf(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]),
                        bias: Some(buf(vec![1], vec![0.0])),
                    }),
                ),
            ],
        )
        .unwrap();
        let input = buf(
            vec![2, 1, 2, 2],
            vec![0.0, 1.0, -1.0, 2.0, 0.25, 0.0, 0.0, 0.0],
        );
        let mut seen = vec![];
        let out = float_forward_with(&graph, &input, |name, t| {
            seen.push((name.to_owned(), t.shape().to_vec()))
        })
        .unwrap();
        // Sample 0: conv = 1 - 2x = [1, -1, 3, -3], relu [1, 0, 3, 0], fc 1 + 9 = 10.
        // Sample 1: conv = [0.5, 1, 1, 1], fc 0.5 + 2 + 3 + 4 = 9.5.
        assert_eq!(out.data(), &[10.0, 9.5]);
        assert_eq!(out.shape(), &[2, 1]);
        assert_eq!(seen[0], ("input".to_owned(), vec![2, 1, 2, 2]));
        assert_eq!(seen.last().unwrap().0, "fc");
        assert!(matches!(
            float_forward(&graph, &buf(vec![1, 4], vec![0.0; 4])),
            Err(RunError::InputShape { .. })
        ));
    }

    proptest::proptest! {
        /// Every window's maximum (first of equal values), by the definition.
        #[test]
        fn max_pool_takes_each_windows_maximum(
            c in 1usize..4, h in 1usize..9, w in 1usize..9, kernel in 1usize..4,
            stride in 1usize..4, seed in proptest::num::u64::ANY,
        ) {
            proptest::prop_assume!(kernel <= h && kernel <= w);
            let mut rng = crate::synthetic::Rng::new(seed);
            let input: Vec<i32> = (0..c * h * w).map(|_| (rng.next_u64() % 7) as i32).collect();
            let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
            let mut out = vec![0; c * oh * ow];
            max_pool2d(&input, [c, h, w], kernel, stride, &mut out);
            for (i, &got) in out.iter().enumerate() {
                let (ci, oy, ox) = (i / (oh * ow), i / ow % oh, i % ow);
                let at = |ky: usize, kx: usize| input[(ci * h + oy * stride + ky) * w + ox * stride + kx];
                let want = (0..kernel).flat_map(|ky| (0..kernel).map(move |kx| (ky, kx))).map(|(ky, kx)| at(ky, kx)).max().unwrap();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
