//! A linear layer for burn's flex backend whose product and both gradients are single-threaded
//! GEMMs over fixed blocks on rayon's pool (`par_matmul` of the flex GEMM module), as a burn
//! backend extension with a hand-written backward step.
//!
//! burn 0.22's flex runs a linear layer's three products (`x·W`, `dy·Wᵀ`, `xᵀ·dy`) through
//! the `gemm` crate's own threading, which on 2 threads ran the reference ConvNet's fc1
//! shapes (64 × 8192 × 1024 and its transposes) at 0.6–1.1× its one-thread speed, and
//! allocates every product's output zeroed and then copies it to realign it. This operation
//! gives the same values up to floating-point reassociation. [`linear`] uses it for `f32`
//! tensors on flex (plain or autodiff) and burn's own layer everywhere else.

use super::gemm::{MatRef, par_matmul};
use super::{flex_tensor, host_f32, on_flex_f32};

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Flex, backend_extension};
use burn::nn::Linear;
use burn::tensor::Tensor;

/// The product as a backend operation; implemented for flex and autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait GemmLinear: Backend {
    /// `input [B, in] · weight [in, out]`, no bias.
    fn gemm_linear(input: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;
}

impl GemmLinear for Flex {
    fn gemm_linear(input: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (input, weight) = (host_f32(input), host_f32(weight));
        let (batch, [d_in, d_out]) = (input.shape[0], [weight.shape[0], weight.shape[1]]);
        let out = par_matmul(
            batch,
            d_out,
            d_in,
            MatRef::rows(input.values(), d_in),
            MatRef::rows(weight.values(), d_out),
        );
        flex_tensor(out, [batch, d_out])
    }
}

impl<C: CheckpointStrategy> GemmLinear for Autodiff<Flex, C> {
    fn gemm_linear(input: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = LinearBackward
            .prepare::<C>([input.node(), weight.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (input.into_primitive(), weight.into_primitive());
        let out = Flex::gemm_linear(x.clone(), w.clone());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, w), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// The backward step: `dx = dy·Wᵀ` and `dW = xᵀ·dy` from the saved input and weight.
#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = (FloatTensor<Flex>, FloatTensor<Flex>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node, weight_node] = ops.parents;
        let dy = host_f32(grads.consume::<Flex>(&ops.node));
        let (input, weight) = (host_f32(ops.state.0), host_f32(ops.state.1));
        let (batch, [d_in, d_out]) = (input.shape[0], [weight.shape[0], weight.shape[1]]);
        let dy = MatRef::rows(dy.values(), d_out);
        if let Some(node) = input_node {
            let weight_t = MatRef::transposed(weight.values(), d_out);
            let dx = par_matmul(batch, d_in, d_out, dy, weight_t);
            grads.register::<Flex>(node.id, flex_tensor(dx, [batch, d_in]));
        }
        if let Some(node) = weight_node {
            let input_t = MatRef::transposed(input.values(), d_in);
            let dw = par_matmul(d_in, d_out, batch, input_t, dy);
            grads.register::<Flex>(node.id, flex_tensor(dw, [d_in, d_out]));
        }
    }
}

/// `layer.forward(input)` for a batch of vectors `[B, in]`: by [`GemmLinear`] for `f32`
/// tensors on flex (with or without autodiff), by burn's layer otherwise (and for an input
/// of the wrong width, which burn's layer reports).
pub fn linear(layer: &Linear, input: Tensor<2>) -> Tensor<2> {
    let weight = layer.weight.val();
    let fits = input.dims()[1] == weight.dims()[0];
    if !fits || !on_flex_f32(&[&input, &weight]) {
        return layer.forward(input);
    }
    let out = <burn::backend::Dispatch as GemmLinear>::gemm_linear(
        input.into_dispatch(),
        weight.into_dispatch(),
    );
    let out = Tensor::<2>::from_dispatch(out);
    match &layer.bias {
        Some(bias) => out + bias.val().unsqueeze_dim(0),
        None => out,
    }
}
