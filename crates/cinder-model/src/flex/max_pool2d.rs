//! 2-D max pooling for burn's flex backend, planes in parallel, as a burn backend extension
//! whose backward step scatters the output gradient to the remembered maxima.
//!
//! burn 0.22's flex pools through its 3-D implementation: per output element it recomputes
//! the window's bounds with divisions, and its backward adds the gradient element by element
//! with bounds checks; training the reference ConvNet spent about a seventh of its time
//! there. This operation visits each window once with bounds computed per row and column
//! (and reads the common 2×2 stride-2 windows two rows at a time, vectorized), keeps
//! burn's semantics (padding never wins, a NaN in a window wins, the last one if
//! several), and gives identical outputs and gradients. [`max_pool2d`] uses it for `f32`
//! tensors on flex (plain or autodiff) with dilation 1, symmetric padding and floor rounding,
//! and burn's pooling everywhere else.

use std::sync::Arc;

use super::{flex_tensor, host_f32, on_flex_f32, to4};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::tensor::Tensor;
use rayon::prelude::*;

/// Marks an output whose window lies entirely in the padding (it gets no gradient).
const NO_INPUT: u32 = u32::MAX;

/// Window size, stride and symmetric padding of a pooling (dilation 1, floor rounding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

impl PoolParams {
    /// The parameters of `pool`, if this operation can run it.
    pub fn of(pool: &MaxPool2d) -> Option<Self> {
        let PaddingConfig2d::Explicit(top, left, bottom, right) = pool.padding else {
            return None;
        };
        let plain = pool.dilation == [1, 1] && !pool.ceil_mode && top == bottom && left == right;
        plain.then_some(Self {
            kernel: pool.kernel_size,
            stride: pool.stride,
            padding: [top, left],
        })
    }

    /// 2×2 windows at stride 2 without padding.
    fn is_pairs(&self) -> bool {
        self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0]
    }

    /// The input positions of each output position's window along one axis of `size`.
    fn windows(&self, axis: usize, size: usize) -> Vec<(usize, usize)> {
        let (k, s, p) = (self.kernel[axis], self.stride[axis], self.padding[axis]);
        let outputs = (size + 2 * p).saturating_sub(k) / s + 1;
        (0..outputs)
            .map(|o| {
                let start = o * s;
                (
                    start.saturating_sub(p).min(size),
                    (start + k).saturating_sub(p).min(size),
                )
            })
            .collect()
    }
}

/// The maxima of every `[H, W]` plane of `input` and, per output, the position of its
/// maximum in its plane (`NO_INPUT` for an all-padding window).
fn forward(
    params: &PoolParams,
    input: &[f32],
    [height, width]: [usize; 2],
) -> (Vec<f32>, Vec<u32>, [usize; 2]) {
    let (rows, cols) = (params.windows(0, height), params.windows(1, width));
    let plane_out = rows.len() * cols.len();
    let planes = input.len() / (height * width).max(1);
    let mut output = vec![f32::NEG_INFINITY; planes * plane_out];
    let mut argmax = vec![NO_INPUT; planes * plane_out];
    output
        .par_chunks_mut(plane_out.max(1))
        .zip(argmax.par_chunks_mut(plane_out.max(1)))
        .zip(input.par_chunks((height * width).max(1)))
        .for_each(|((out, arg), plane)| {
            if params.is_pairs() && height >= 2 && width >= 2 {
                pairs(plane, width, cols.len(), out, arg);
                return;
            }
            let windows = rows.iter().flat_map(|r| cols.iter().map(move |c| (r, c)));
            for ((o, a), (&ys, &xs)) in out.iter_mut().zip(arg).zip(windows) {
                if ys.0 < ys.1 && xs.0 < xs.1 {
                    (*o, *a) = window_max(plane, width, ys, xs);
                }
            }
        });
    (output, argmax, [rows.len(), cols.len()])
}

/// The common 2×2 pooling at stride 2 without padding, one output row from two input rows,
/// in a form the compiler vectorizes (about 15 times the speed of [`window_max`] on it).
fn pairs(plane: &[f32], width: usize, out_width: usize, out: &mut [f32], arg: &mut [u32]) {
    let rows = out
        .chunks_exact_mut(out_width)
        .zip(arg.chunks_exact_mut(out_width));
    for (oy, (out_row, arg_row)) in rows.enumerate() {
        let top = plane[2 * oy * width..][..2 * out_width].chunks_exact(2);
        let bottom = plane[(2 * oy + 1) * width..][..2 * out_width].chunks_exact(2);
        let (first, below) = ((2 * oy * width) as u32, width as u32);
        let windows = top.zip(bottom).enumerate();
        for ((o, a), (ox, (t, b))) in out_row.iter_mut().zip(arg_row).zip(windows) {
            let at = first + 2 * ox as u32;
            let best = pick((t[0], at), (t[1], at + 1));
            let best = pick(best, (b[0], at + below));
            (*o, *a) = pick(best, (b[1], at + below + 1));
        }
    }
}

/// The running maximum and its position after one more value: a greater value or a NaN
/// replaces it.
#[inline(always)]
fn pick((best, at): (f32, u32), (v, i): (f32, u32)) -> (f32, u32) {
    let take = v > best || v.is_nan();
    (if take { v } else { best }, if take { i } else { at })
}

/// The maximum of a non-empty window of a plane `width` wide and its position: the first
/// of equal maxima, the last NaN if there is one.
#[inline]
fn window_max(
    plane: &[f32],
    width: usize,
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
) -> (f32, u32) {
    let first = y0 * width + x0;
    let mut best = (plane[first], first as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            best = pick(best, (plane[y * width + x], (y * width + x) as u32));
        }
    }
    best
}

/// The input gradient: each output's gradient added at the position of its maximum.
fn backward(argmax: &[u32], output_grad: &[f32], input_shape: [usize; 4]) -> Vec<f32> {
    let plane_in = input_shape[2] * input_shape[3];
    let plane_out = argmax.len() / (input_shape[0] * input_shape[1]).max(1);
    let mut input_grad = vec![0.0; input_shape.iter().product()];
    input_grad
        .par_chunks_mut(plane_in.max(1))
        .zip(argmax.par_chunks(plane_out.max(1)))
        .zip(output_grad.par_chunks(plane_out.max(1)))
        .for_each(|((dx, arg), dy)| {
            for (&at, &g) in arg.iter().zip(dy) {
                if let Some(slot) = dx.get_mut(at as usize) {
                    *slot += g;
                }
            }
        });
    input_grad
}

/// The pooling as a backend operation; implemented for flex and autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait FlexMaxPool2d: Backend {
    /// The maxima of `input [B, C, H, W]`'s windows.
    fn flex_max_pool2d(input: FloatTensor<Self>, params: PoolParams) -> FloatTensor<Self>;
}

/// The pooled tensor, the maxima's positions and the input's shape.
fn pool(
    input: FloatTensor<Flex>,
    params: &PoolParams,
) -> (FloatTensor<Flex>, Vec<u32>, [usize; 4]) {
    let input = host_f32(input);
    let shape = to4(&input.shape);
    let (out, argmax, [oh, ow]) = forward(params, input.values(), [shape[2], shape[3]]);
    (
        flex_tensor(out, [shape[0], shape[1], oh, ow]),
        argmax,
        shape,
    )
}

impl FlexMaxPool2d for Flex {
    fn flex_max_pool2d(input: FloatTensor<Self>, params: PoolParams) -> FloatTensor<Self> {
        pool(input, &params).0
    }
}

impl<C: CheckpointStrategy> FlexMaxPool2d for Autodiff<Flex, C> {
    fn flex_max_pool2d(input: FloatTensor<Self>, params: PoolParams) -> FloatTensor<Self> {
        let prep = PoolBackward
            .prepare::<C>([input.node()])
            .compute_bound()
            .stateful();
        let (out, argmax, shape) = pool(input.into_primitive(), &params);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((Arc::new(argmax), shape), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// The backward step: the output gradient scattered to the maxima.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = (Arc<Vec<u32>>, [usize; 4]);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node] = ops.parents;
        let output_grad = host_f32(grads.consume::<Flex>(&ops.node));
        let (argmax, shape) = ops.state;
        if let Some(node) = input_node {
            let dx = backward(&argmax, output_grad.values(), shape);
            grads.register::<Flex>(node.id, flex_tensor(dx, shape));
        }
    }
}

/// `pool.forward(input)`: by [`FlexMaxPool2d`] for `f32` tensors on flex (with or without
/// autodiff) where [`PoolParams::of`] accepts the pooling and a plane's positions fit the
/// `u32` it remembers them in, by burn's pooling otherwise.
pub fn max_pool2d(pool: &MaxPool2d, input: Tensor<4>) -> Tensor<4> {
    let [_, _, height, width] = input.dims();
    let fits = height.saturating_mul(width) < NO_INPUT as usize;
    let (Some(params), true) = (PoolParams::of(pool), fits && on_flex_f32(&[&input])) else {
        return pool.forward(input);
    };
    let out =
        <burn::backend::Dispatch as FlexMaxPool2d>::flex_max_pool2d(input.into_dispatch(), params);
    Tensor::<4>::from_dispatch(out)
}
