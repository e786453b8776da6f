//! The fast execution plan of a validated model: one stage per step (flatten is free, and
//! a 2×2 stride-2 max-pool right after a static or dynamic convolution runs inside it, on
//! its sums), weights pre-packed in the order the kernels read them.
//!
//! Layouts: int8 tensors are NHWC, float tensors canonical NCHW. So the quantizer
//! transposes NCHW -> NHWC and the dequantizer back; a convolution's weights are
//! permuted to `(ky, kx, c)` columns (im2col order); a static linear layer that reads an
//! int8 tensor flattened from NHWC gets its columns permuted the same way, so that it
//! computes exactly what the float graph's NCHW flatten feeds it.

mod border;
mod build;
mod dynamic;
mod float_layer;
mod int;
pub(crate) mod par;

pub(crate) use border::{InputQuantizer, OutputDequantizer};
pub(crate) use dynamic::{DynConv, DynLinear};
pub(crate) use float_layer::{FloatGemm, FloatPool, float_relu};
pub(crate) use int::{IntConv, IntLinear, IntPool, int_relu};

/// One stage of the plan.
#[derive(Debug)]
pub(crate) enum Stage {
    Quantize(InputQuantizer),
    Dequantize(OutputDequantizer),
    IntConv(IntConv),
    IntLinear(IntLinear),
    IntPool(IntPool),
    IntRelu { zero_point: i8 },
    DynConv(DynConv),
    DynLinear(DynLinear),
    Float(FloatGemm),
    FloatPool(FloatPool),
    FloatRelu,
}

/// A stage with its name and per-sample sizes.
#[derive(Debug)]
pub(crate) struct PlannedStage {
    pub name: String,
    pub stage: Stage,
    pub in_len: usize,
    pub out_len: usize,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub stages: Vec<PlannedStage>,
}
