//! Training operations for burn's flex backend with hand-written kernels and backward steps,
//! added through burn's backend-extension mechanism: a convolution by im2col + GEMM
//! ([`conv2d`]), a linear layer by GEMMs in blocks over the thread pool ([`linear`]), a max
//! pooling that remembers its maxima ([`max_pool2d`]) and a training-mode BatchNorm without
//! layout swaps ([`batch_norm`]).
//!
//! burn 0.22's generic backward passes go through layout swaps and, for a convolution's
//! weight gradient, a direct convolution with the output gradient as its kernel; these
//! operations give the same values up to floating-point reassociation in fewer passes. Each
//! runs for `f32` tensors on flex (with or without autodiff) and leaves every other backend
//! and element type to burn's own operation.

pub mod batch_norm;
pub mod conv2d;
mod gemm;
pub mod linear;
pub mod max_pool2d;

use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::tensor::{DType, Tensor, TensorData};

/// Whether every tensor is `f32` on the flex device (plain or autodiff).
fn on_flex_f32<const D: usize>(tensors: &[&Tensor<D>]) -> bool {
    tensors.iter().all(|t| {
        t.dtype() == DType::F32
            && matches!(t.device().inner().as_dispatch(), DispatchDevice::Flex(_))
    })
}

/// A flex tensor made contiguous, with its shape.
struct HostF32 {
    tensor: FloatTensor<Flex>,
    shape: Vec<usize>,
}

impl HostF32 {
    /// The values in row-major order.
    fn values(&self) -> &[f32] {
        self.tensor
            .as_slice::<f32>()
            .expect("a contiguous f32 tensor (checked by `on_flex_f32`)")
    }
}

fn host_f32(tensor: FloatTensor<Flex>) -> HostF32 {
    let shape = tensor.layout().shape().iter().copied().collect();
    HostF32 {
        tensor: tensor.to_contiguous(),
        shape,
    }
}

fn flex_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FloatTensor<Flex> {
    FloatTensor::<Flex>::from_data(TensorData::new(values, shape))
}

fn to4(shape: &[usize]) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}
