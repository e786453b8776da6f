//! Training-mode BatchNorm of feature maps on flex (the `kernels` module) as two backend-extension
//! operations: the batch statistics (not differentiated: they feed the running statistics
//! and, as saved state, the backward step) and the normalisation, whose backward step
//! differentiates through the statistics as burn's `batch_norm_train` does. A ReLU right
//! after the normalisation can run inside it ([`batch_norm_relu`]): one pass over the
//! activation forward and one backward instead of two each.

mod kernels;

use burn::backend::autodiff::checkpoint::{base::Checkpointer, strategy::CheckpointStrategy};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

use super::{flex_tensor, host_f32, on_flex_f32, to4};
pub use kernels::{NormGeometry, batch_stats, normalize, normalize_backward};

/// BatchNorm's two training operations; implemented for flex and autodiff over flex.
#[backend_extension(Flex, Autodiff)]
pub trait FlexBatchNorm: Backend {
    /// Per channel mean (row 0) and biased variance (row 1) of `input [B, C, H, W]`: `[2, C]`.
    fn batch_stats(input: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `input` normalised with `stats` (from [`FlexBatchNorm::batch_stats`] of `input`),
    /// scaled by `gamma` and shifted by `beta`, then through burn's ReLU when `fused_relu`.
    fn batch_norm_train(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        fused_relu: bool,
    ) -> FloatTensor<Self>;
}

fn geometry(shape: &[usize]) -> NormGeometry {
    NormGeometry {
        batch: shape[0],
        channels: shape[1],
        plane: shape[2] * shape[3],
    }
}

impl FlexBatchNorm for Flex {
    fn batch_stats(input: FloatTensor<Self>) -> FloatTensor<Self> {
        let input = host_f32(input);
        let (mut mean, var) = batch_stats(&geometry(&input.shape), input.values());
        let channels = mean.len();
        mean.extend(var);
        flex_tensor(mean, [2, channels])
    }

    fn batch_norm_train(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        fused_relu: bool,
    ) -> FloatTensor<Self> {
        let (input, gamma, beta, stats) = (
            host_f32(input),
            host_f32(gamma),
            host_f32(beta),
            host_f32(stats),
        );
        let (mean, var) = stats.values().split_at(input.shape[1]);
        let params = [mean, var, gamma.values(), beta.values()];
        let geom = geometry(&input.shape);
        let out = normalize(&geom, input.values(), params, epsilon, fused_relu);
        flex_tensor(out, to4(&input.shape))
    }
}

impl<C: CheckpointStrategy> FlexBatchNorm for Autodiff<Flex, C> {
    fn batch_stats(input: FloatTensor<Self>) -> FloatTensor<Self> {
        FloatTensor::<Self>::new(Flex::batch_stats(input.into_primitive()))
    }

    fn batch_norm_train(
        input: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        epsilon: f64,
        fused_relu: bool,
    ) -> FloatTensor<Self> {
        let prep = NormBackward
            .prepare::<C>([input.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (x, g) = (input.into_primitive(), gamma.into_primitive());
        let stats = stats.into_primitive();
        let out = Flex::batch_norm_train(
            x.clone(),
            g.clone(),
            beta.into_primitive(),
            stats.clone(),
            epsilon,
            fused_relu,
        );
        match prep {
            OpsKind::Tracked(prep) => {
                let relu_output = fused_relu.then(|| out.clone());
                prep.finish((x, g, stats, epsilon, relu_output), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// The backward step: gradients of input, γ and β from the saved input, γ and statistics
/// (and the output, with a fused ReLU).
#[derive(Debug)]
struct NormBackward;

/// What the backward step keeps: input, γ, statistics, ε, the output of a fused ReLU.
type NormState = (
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    FloatTensor<Flex>,
    f64,
    Option<FloatTensor<Flex>>,
);

impl Backward<Flex, 3> for NormBackward {
    type State = NormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [input_node, gamma_node, beta_node] = ops.parents;
        let output_grad = host_f32(grads.consume::<Flex>(&ops.node));
        let (input, gamma, stats, epsilon, relu_output) = ops.state;
        let (input, gamma, stats) = (host_f32(input), host_f32(gamma), host_f32(stats));
        let relu_output = relu_output.map(host_f32);
        let channels = input.shape[1];
        let (mean, var) = stats.values().split_at(channels);
        let (dx, dgamma, dbeta) = normalize_backward(
            &geometry(&input.shape),
            input.values(),
            output_grad.values(),
            relu_output.as_ref().map(|y| y.values()),
            [mean, var, gamma.values()],
            epsilon,
        );
        for (node, grad, shape) in [
            (input_node, dx, input.shape.clone()),
            (gamma_node, dgamma, vec![channels]),
            (beta_node, dbeta, vec![channels]),
        ] {
            if let Some(node) = node {
                let tensor = match shape.len() {
                    4 => flex_tensor(grad, to4(&shape)),
                    _ => flex_tensor(grad, [channels]),
                };
                grads.register::<Flex>(node.id, tensor);
            }
        }
    }
}

/// `bn.forward(input)`: in training (an autodiff device and the layer's training flag) on
/// `f32` flex tensors by [`FlexBatchNorm`], updating the running statistics as burn does;
/// by burn's BatchNorm otherwise.
pub fn batch_norm(bn: &BatchNorm, input: Tensor<4>) -> Tensor<4> {
    normalize_layer(bn, input, false)
}

/// `relu(bn.forward(input))`, the ReLU fused into the normalisation where [`batch_norm`]
/// takes [`FlexBatchNorm`] (equal to the two operations one after the other, gradients
/// included); burn's BatchNorm and ReLU otherwise.
pub fn batch_norm_relu(bn: &BatchNorm, input: Tensor<4>) -> Tensor<4> {
    normalize_layer(bn, input, true)
}

fn normalize_layer(bn: &BatchNorm, input: Tensor<4>, fused_relu: bool) -> Tensor<4> {
    let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
    let training = input.device().is_autodiff() && bn.training.is_enabled();
    let [_, channels, _, _] = input.dims();
    if !training || !on_flex_f32(&[&input]) || !on_flex_f32(&[&gamma, &beta]) {
        let out = bn.forward(input);
        return if fused_relu {
            burn::tensor::activation::relu(out)
        } else {
            out
        };
    }
    let stats = Tensor::<2>::from_dispatch(<Dispatch as FlexBatchNorm>::batch_stats(
        input.clone().into_dispatch(),
    ));
    let out = Tensor::<4>::from_dispatch(<Dispatch as FlexBatchNorm>::batch_norm_train(
        input.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        stats.clone().into_dispatch(),
        bn.epsilon,
        fused_relu,
    ));
    let stats = stats.detach();
    let update = |running: &burn::module::RunningState<Tensor<1>>, row: usize| {
        let device = stats.device();
        let batch = stats.clone().narrow(0, row, 1).reshape([channels]);
        let old = running.value_sync().to_device(&device);
        let new = old.mul_scalar(1.0 - bn.momentum) + batch.mul_scalar(bn.momentum);
        running.update(new.detach());
    };
    update(&bn.running_mean, 0);
    update(&bn.running_var, 1);
    out
}
