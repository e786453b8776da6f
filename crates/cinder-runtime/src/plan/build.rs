//! Building the plan of a validated model: a stage per step (flatten is free; a 2×2
//! stride-2 max-pool right after a static or dynamic convolution runs inside it), weights
//! permuted into the engine's NHWC order and packed.

use cinder_tensor::{QuantParams, Tensor};

use super::dynamic::{DynConvKernel, DynMatmul};
use super::int::{
    ConvKernel, ConvShape, IntMatmul, IntParams, WinogradConv, WinogradSums, nonzero, pack,
    winograd_geometry,
};
use super::{
    DynConv, DynLinear, FloatGemm, FloatPool, InputQuantizer, IntConv, IntLinear, IntPool,
    OutputDequantizer, Plan, PlannedStage, Stage,
};
use crate::error::Invalid;
use crate::geometry::{Geometry, Window, chw};
use crate::model::rules::clamp_bounds;
use crate::model::{Layer, LayerExec, QuantWeights, Step, StepOp};
use crate::walk::Walk;

/// Where a tensor's elements sit.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// `[c, h, w]`: NHWC in the int8 domain, NCHW in the float domain.
    Spatial([usize; 3]),
    /// A vector; `nhwc_of` when it is an NHWC tensor flattened (int8 domain only).
    Flat { nhwc_of: Option<[usize; 3]> },
}

impl Layout {
    fn of(shape: &[usize]) -> Self {
        match shape {
            [_, _, _] => Layout::Spatial(chw(shape)),
            _ => Layout::Flat { nhwc_of: None },
        }
    }

    /// The `[c, h, w]` to transpose at a domain border, if any.
    fn transposed(self) -> Option<[usize; 3]> {
        match self {
            Layout::Spatial(s) => Some(s),
            Layout::Flat { nhwc_of } => nhwc_of,
        }
    }
}

/// `row` viewed as `[c, h, w]`, reordered to `[h, w, c]`.
fn to_nhwc<T: Copy>(row: &[T], [c, h, w]: [usize; 3], out: &mut Vec<T>) {
    for i in 0..h * w {
        out.extend((0..c).map(|ci| row[ci * h * w + i]));
    }
}

/// Weight codes in engine order: each output row reordered when `row_chw` is given.
fn engine_codes(w: &QuantWeights, row_chw: Option<[usize; 3]>) -> Vec<i8> {
    match row_chw {
        None => w.codes.data().to_vec(),
        Some(s) => {
            let depth = s.iter().product::<usize>();
            let mut out = Vec::with_capacity(w.codes.len());
            for row in w.codes.data().chunks_exact(depth) {
                to_nhwc(row, s, &mut out);
            }
            out
        }
    }
}

/// A per-channel quantity expanded to every output column.
fn per_column<T: Copy>(w: &QuantWeights, f: impl Fn(&QuantParams) -> T) -> Vec<T> {
    (0..w.codes.shape()[0])
        .map(|j| f(w.params.channel(j)))
        .collect()
}

impl Plan {
    /// Builds the plan of validated `steps` (`shapes`: before every step and after the last).
    pub(crate) fn build(steps: &[Step], walk: &Walk) -> Result<Self, Invalid> {
        let mut stages = Vec::with_capacity(steps.len());
        let mut layout = Layout::of(&walk.input(0).shape);
        let mut pool_fused = false;
        for (i, step) in steps.iter().enumerate() {
            let (in_shape, out_shape) = (&walk.input(i).shape, &walk.output(i).shape);
            let int = walk.input(i).int();
            if std::mem::take(&mut pool_fused) {
                // This max-pool runs inside the convolution before it.
                layout = Layout::of(out_shape);
                continue;
            }
            let field = format!("steps[{i}] ({})", step.name);
            let stage = match &step.op {
                StepOp::Quantize(p) => Stage::Quantize(InputQuantizer {
                    params: *p,
                    chw: layout.transposed(),
                }),
                StepOp::Dequantize => {
                    let params = int.expect("validated: dequantize reads int8");
                    let stage = Stage::Dequantize(OutputDequantizer {
                        params,
                        chw: layout.transposed(),
                    });
                    layout = Layout::of(in_shape);
                    stage
                }
                StepOp::Flatten => {
                    layout = match (layout, int) {
                        (Layout::Spatial(s), Some(_)) => Layout::Flat { nhwc_of: Some(s) },
                        (Layout::Spatial(_), None) => Layout::Flat { nhwc_of: None },
                        (flat, _) => flat,
                    };
                    continue;
                }
                StepOp::Relu => match int {
                    Some(p) => Stage::IntRelu {
                        zero_point: p.zero_point as i8,
                    },
                    None => Stage::FloatRelu,
                },
                StepOp::MaxPool2d { kernel, stride } => {
                    let (input, kernel, stride) = (chw(in_shape), *kernel, *stride);
                    layout = Layout::of(out_shape);
                    match int {
                        Some(_) => Stage::IntPool(IntPool {
                            input,
                            kernel,
                            stride,
                        }),
                        None => Stage::FloatPool(FloatPool {
                            input,
                            kernel,
                            stride,
                        }),
                    }
                }
                op => {
                    let layer = op.layer().expect("the other steps are matched above");
                    let geometry = op.geometry(in_shape);
                    let pool_next = matches!(
                        steps.get(i + 1).map(|s| &s.op),
                        Some(StepOp::MaxPool2d {
                            kernel: 2,
                            stride: 2
                        })
                    );
                    let stage =
                        layer_stage(&field, &step.name, layer, geometry, int, layout, pool_next)?;
                    pool_fused = match &stage {
                        Stage::IntConv(c) => c.pool,
                        Stage::DynConv(c) => c.pool,
                        _ => false,
                    };
                    layout = Layout::of(out_shape);
                    stage
                }
            };
            let out_shape = if pool_fused {
                &walk.output(i + 1).shape
            } else {
                out_shape
            };
            stages.push(PlannedStage {
                name: step.name.clone(),
                stage,
                in_len: in_shape.iter().product(),
                out_len: out_shape.iter().product(),
            });
        }
        Ok(Self { stages })
    }
}

/// The stage of a convolution or linear layer reading a tensor of `layout`; a static or
/// dynamic convolution fuses the 2×2 stride-2 max-pool that follows it when `pool_next`.
fn layer_stage(
    field: &str,
    name: &str,
    layer: &Layer,
    geometry: Geometry,
    int: Option<QuantParams>,
    layout: Layout,
    pool_next: bool,
) -> Result<Stage, Invalid> {
    let (n, k) = (layer.out_features(), layer.depth());
    // Engine order of a weight row: (ky, kx, c) for convolutions, the NHWC flatten order
    // for a static linear layer reading int8 flattened from NHWC.
    let (row_chw, conv) = match geometry {
        Geometry::Conv { input, window } => (
            Some([input[0], window.kernel, window.kernel]),
            Some((input, window)),
        ),
        Geometry::Linear => (layout.transposed().filter(|_| int.is_some()), None),
    };
    let conv_shape = |(input, window): ([usize; 3], Window)| ConvShape::new(input, window);
    Ok(match &layer.exec {
        LayerExec::Static(s) => {
            let input = int.expect("validated: static layers read int8");
            let codes = engine_codes(&s.weights, row_chw);
            let params = IntParams {
                bias: &s.bias,
                multipliers: &s.multipliers,
                zp_in: input.zero_point,
                zp_w: per_column(&s.weights, |p| p.zero_point),
                zp_out: s.output.zero_point,
                clamp: clamp_bounds(&s.output, layer.relu),
            };
            let im2col = |params| IntMatmul::new(pack(&codes, n, k, field)?, params, field);
            match conv.map(conv_shape) {
                Some(shape) => {
                    let kernel = match winograd_geometry(&shape) {
                        Some(g) => {
                            let sums = WinogradSums::new(g, &codes, &params.zp_w, field)?;
                            ConvKernel::Winograd(WinogradConv::new(sums, params))
                        }
                        None => ConvKernel::Im2col(im2col(params)?),
                    };
                    Stage::IntConv(IntConv {
                        shape,
                        zp_in: input.zero_point as i8,
                        kernel,
                        pool: pool_next,
                    })
                }
                None => Stage::IntLinear(IntLinear {
                    mm: im2col(params)?,
                }),
            }
        }
        LayerExec::Dynamic(d) => {
            let codes = engine_codes(&d.weights, row_chw);
            let zp_w_all = per_column(&d.weights, |p| p.zero_point);
            let shape = conv.map(conv_shape);
            let mm = DynMatmul {
                name: name.to_owned(),
                zp_w: nonzero(zp_w_all.clone()),
                zp_w_all: zp_w_all.clone(),
                scale_w: per_column(&d.weights, |p| p.scale),
                bias: d.bias.clone(),
                relu: layer.relu,
            };
            match shape {
                Some(shape) => {
                    let kernel = match winograd_geometry(&shape) {
                        Some(g) => {
                            DynConvKernel::Winograd(WinogradSums::new(g, &codes, &zp_w_all, field)?)
                        }
                        None => DynConvKernel::Im2col(pack(&codes, n, k, field)?),
                    };
                    Stage::DynConv(DynConv {
                        shape,
                        mm,
                        kernel,
                        pool: pool_next,
                    })
                }
                None => Stage::DynLinear(DynLinear {
                    mm,
                    weights: pack(&codes, n, k, field)?,
                }),
            }
        }
        LayerExec::Float(f) => Stage::Float(FloatGemm::new(
            geometry,
            f.weight.data(),
            &f.bias,
            layer.relu,
        )),
    })
}
