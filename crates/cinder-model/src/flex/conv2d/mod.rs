//! A 2-D convolution for burn's flex backend whose forward and backward passes are im2col +
//! GEMM (the `kernels` module), as a burn backend extension with a hand-written backward step.
//!
//! burn 0.22 computes a convolution's weight gradient as another convolution whose kernel is
//! the output gradient (flex runs it as a direct loop), and its input gradient as a transposed
//! convolution, each after layout swaps; training ResNet-20 spent most of its time there. This
//! operation computes both gradients in GEMMs over one column matrix per image, skips the
//! input gradient where no parent needs it (the images), and gives the same values up to
//! floating-point reassociation. [`conv2d`] uses it for `f32` tensors on flex (plain or
//! autodiff) and burn's own convolution everywhere else.

mod direct;
mod geometry;
mod kernels;

use super::{flex_tensor, host_f32, on_flex_f32, to4};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

pub use geometry::ConvGeometry;
pub use kernels::{Wanted, conv2d_backward, conv2d_forward};

/// Stride, symmetric padding and groups of a convolution (dilation 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub groups: usize,
}

impl ConvParams {
    /// The parameters of `conv`, if this operation can run it (dilation 1, symmetric
    /// explicit padding).
    pub fn of(conv: &Conv2d) -> Option<Self> {
        let PaddingConfig2d::Explicit(top, left, bottom, right) = conv.padding else {
            return None;
        };
        (conv.dilation == [1, 1] && top == bottom && left == right).then_some(Self {
            stride: conv.stride,
            padding: [top, left],
            groups: conv.groups,
        })
    }

    fn geometry(&self, input: &[usize], weight: &[usize]) -> ConvGeometry {
        ConvGeometry {
            batch: input[0],
            channels_in: input[1],
            height: input[2],
            width: input[3],
            channels_out: weight[0],
            kernel: [weight[2], weight[3]],
            stride: self.stride,
            padding: self.padding,
            groups: self.groups,
        }
    }
}

/// The convolution as a backend operation; implemented for flex and autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait GemmConv2d: Backend {
    /// `input [B, C_in, H, W]` convolved with `weight [C_out, C_in/groups, kh, kw]`, no bias.
    fn gemm_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        params: ConvParams,
    ) -> FloatTensor<Self>;
}

impl GemmConv2d for Flex {
    fn gemm_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        params: ConvParams,
    ) -> FloatTensor<Self> {
        let (input, weight) = (host_f32(input), host_f32(weight));
        let geom = params.geometry(&input.shape, &weight.shape);
        let [oh, ow] = geom.output_size();
        let out = conv2d_forward(&geom, input.values(), weight.values());
        flex_tensor(out, [geom.batch, geom.channels_out, oh, ow])
    }
}

impl<C: CheckpointStrategy> GemmConv2d for Autodiff<Flex, C> {
    fn gemm_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        params: ConvParams,
    ) -> FloatTensor<Self> {
        let prep = ConvBackward
            .prepare::<C>([input.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (input.into_primitive(), weight.into_primitive());
        let out = Flex::gemm_conv2d(x.clone(), w.clone(), params);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, w, params), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// The backward step: both gradients from the saved input and weight.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (FloatTensor<Flex>, FloatTensor<Flex>, ConvParams);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let output_grad = host_f32(grads.consume::<Flex>(&ops.node));
        let (input, weight, params) = ops.state;
        let (input, weight) = (host_f32(input), host_f32(weight));
        let geom = params.geometry(&input.shape, &weight.shape);
        let wanted = Wanted {
            input: input_node.is_some(),
            weight: weight_node.is_some(),
        };
        let (dx, dw) = conv2d_backward(
            &geom,
            input.values(),
            weight.values(),
            output_grad.values(),
            wanted,
        );
        if let (Some(node), Some(dx)) = (input_node, dx) {
            grads.register::<Flex>(node.id, flex_tensor(dx, to4(&input.shape)));
        }
        if let (Some(node), Some(dw)) = (weight_node, dw) {
            grads.register::<Flex>(node.id, flex_tensor(dw, to4(&weight.shape)));
        }
    }
}

/// `conv.forward(input)`: by [`GemmConv2d`] for `f32` tensors on flex (with or without
/// autodiff), by burn's convolution otherwise.
pub fn conv2d(conv: &Conv2d, input: Tensor<4>) -> Tensor<4> {
    let weight = conv.weight.val();
    let params = ConvParams::of(conv);
    let (Some(params), true) = (params, on_flex_f32(&[&input, &weight])) else {
        return conv.forward(input);
    };
    let out = <burn::backend::Dispatch as GemmConv2d>::gemm_conv2d(
        input.into_dispatch(),
        weight.into_dispatch(),
        params,
    );
    let out = Tensor::<4>::from_dispatch(out);
    match &conv.bias {
        Some(bias) => {
            let channels = bias.dims()[0];
            out + bias.val().reshape([1, channels, 1, 1])
        }
        None => out,
    }
}
