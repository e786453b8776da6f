//! The fast execution plan of a validated model: one stage per step (flatten is a free
//! view unless it needs reordering, see below, and a 2×2 stride-2 max-pool whose only
//! input is a static or dynamic convolution runs inside it, on its sums), weights
//! pre-packed in the order the kernels read them, and each tensor in a buffer reused once
//! its last reader has run.
//!
//! Layouts: int8 tensors are NHWC, float tensors canonical NCHW. So the quantizer
//! transposes NCHW -> NHWC and the dequantizer back; a convolution's weights are
//! permuted to `(ky, kx, c)` columns (im2col order); a static linear layer that reads an
//! int8 tensor flattened from NHWC gets its columns permuted the same way, so that it
//! computes exactly what the float graph's NCHW flatten feeds it. Any other reader of an
//! int8 tensor flattened from NHWC (an `Add`, a `Concat`, an activation) gets it
//! reordered into the NCHW flatten order by a flatten stage.

mod border;
mod build;
mod depthwise;
mod dynamic;
mod float_layer;
mod grouped;
mod int;
mod merge;
pub(crate) mod par;
mod pool;
mod team;

pub(crate) use border::{InputQuantizer, OutputDequantizer};
pub(crate) use depthwise::{DynDepthwise, IntDepthwise};
pub(crate) use dynamic::{DynConv, DynLinear};
pub(crate) use float_layer::{
    FloatDirect, FloatGemm, FloatPool, float_activation, float_add, float_concat,
};
pub(crate) use grouped::{DynGroupedConv, IntGroupedConv};
pub(crate) use int::{IntConv, IntLinear, IntPool, int_clamp, int_flatten};
pub(crate) use merge::{IntAdd, IntConcat};
pub(crate) use pool::IntWindowPool;

use crate::kernels::Isa;
use crate::model::Activation;

/// How a plan computes the convolutions Winograd F(2×2, 3×3) can take (3×3 windows,
/// stride 1, padding 0 or 1, 16 to [`crate::kernels::MAX_WINOGRAD_CHANNELS`] input
/// channels). Both are exact: the choice changes speed only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvAlgorithm {
    /// The faster on the process's kernel path ([`Isa::winograd_pays`]).
    #[default]
    Auto,
    /// Winograd wherever it can run.
    Winograd,
    /// im2col + GEMM everywhere: neither Winograd nor the direct kernel of stride-1
    /// convolutions ([`crate::kernels::direct_conv_nhwc_s8`], which the other two take
    /// where [`Isa::direct_conv_pays`]).
    Im2col,
}

impl ConvAlgorithm {
    /// Whether convolutions Winograd can take take it on kernel path `isa`.
    pub fn winograd_on(self, isa: Isa) -> bool {
        match self {
            Self::Auto => isa.winograd_pays(),
            Self::Winograd => true,
            Self::Im2col => false,
        }
    }

    /// The kernels besides im2col + GEMM that a plan takes on kernel path `isa`.
    pub(crate) fn kernels_on(self, isa: Isa) -> ConvKernels {
        ConvKernels {
            winograd: self.winograd_on(isa),
            direct: self != Self::Im2col && isa.direct_conv_pays(),
        }
    }
}

/// The convolution kernels a plan takes besides im2col + GEMM, where a layer fits them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvKernels {
    /// Winograd F(2×2, 3×3).
    pub winograd: bool,
    /// The direct kernel of stride-1 convolutions (static layers with symmetric weights).
    pub direct: bool,
}

/// One stage of the plan.
#[derive(Debug)]
pub(crate) enum Stage {
    Quantize(InputQuantizer),
    Dequantize(OutputDequantizer),
    IntConv(IntConv),
    IntDepthwise(IntDepthwise),
    /// A convolution of several groups, neither dense nor depthwise.
    IntGroupedConv(IntGroupedConv),
    IntLinear(IntLinear),
    /// Unpadded square max-pool.
    IntPool(IntPool),
    /// Any other pool.
    IntWindowPool(IntWindowPool),
    /// An activation: the codes clamped to `[lo, hi]`.
    IntClamp(i8, i8),
    /// A flatten of an NHWC `[c, h, w]` image into the canonical order.
    IntFlatten([usize; 3]),
    IntAdd(IntAdd),
    IntConcat(IntConcat),
    DynConv(DynConv),
    DynDepthwise(DynDepthwise),
    /// A dynamic convolution of several groups, neither dense nor depthwise.
    DynGroupedConv(DynGroupedConv),
    DynLinear(DynLinear),
    Float(FloatGemm),
    FloatDirect(FloatDirect),
    FloatPool(FloatPool),
    FloatActivation(Activation),
    FloatAdd(Activation),
    FloatConcat,
}

/// Where a tensor lives during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Buffer {
    /// The run's input.
    Input,
    /// One of the session's int8 buffers.
    Int(usize),
    /// One of the session's float buffers.
    Float(usize),
}

/// A stage with its name, what it reads and writes, and per-sample sizes.
#[derive(Debug)]
pub(crate) struct PlannedStage {
    pub name: String,
    pub stage: Stage,
    /// The buffers read, with their elements per sample.
    pub inputs: Vec<(Buffer, usize)>,
    pub output: Buffer,
    pub out_len: usize,
}

impl PlannedStage {
    /// Elements per sample of the first input.
    pub fn in_len(&self) -> usize {
        self.inputs[0].1
    }
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub stages: Vec<PlannedStage>,
    /// How many int8 and float buffers a session needs.
    pub int_buffers: usize,
    pub float_buffers: usize,
    /// Where the model's output is.
    pub output: Buffer,
    /// Whether input quantizers are the only stages reading the run's input: they check
    /// that it is finite as they read it, and its range is not needed.
    pub input_quantized_only: bool,
}
