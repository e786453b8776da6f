//! Building the plan of a validated model: a stage per step (flatten is free; a 2×2
//! stride-2 max-pool that is the only reader of a static or dynamic convolution runs
//! inside it), weights permuted into the engine's NHWC order and packed, and buffers
//! assigned: a tensor takes a free buffer of its domain, which is free again once every
//! reader of the tensor (and of its flattened views) has run.

use cinder_tensor::{QuantParams, Tensor};

use super::dynamic::{DynConvKernel, DynMatmul};
use super::int::{
    ConvKernel, ConvShape, DirectConv, IntMatmul, IntParams, Requant, WinogradConv, WinogradSums,
    nibbles, nonzero, pack, winograd_geometry,
};
use super::{
    Buffer, ConvAlgorithm, ConvKernels, DynConv, DynDepthwise, DynGroupedConv, DynLinear,
    FloatDirect, FloatGemm, FloatPool, InputQuantizer, IntAdd, IntConcat, IntConv, IntDepthwise,
    IntGroupedConv, IntLinear, IntPool, IntWindowPool, OutputDequantizer, Plan, PlannedStage,
    Stage,
};
use crate::arith::PoolKind;
use crate::error::Invalid;
use crate::geometry::{Geometry, Window, chw};
use crate::kernels::{AddTable, Clamp, DepthwiseFilter, DirectFilter, Isa, Rescale};
use crate::model::{
    Activation, DynamicLayer, Layer, LayerExec, Merge, QuantWeights, StaticLayer, Step, StepOp,
};
use crate::walk::{Domain, Walk};

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

/// The integer parameters of static layer `s` reading `input`.
fn int_params(s: &StaticLayer, input: QuantParams, activation: Activation) -> IntParams<'_> {
    IntParams {
        bias: &s.bias,
        multipliers: &s.multipliers,
        zp_in: input.zero_point,
        zp_w: per_column(&s.weights, |p| p.zero_point),
        zp_out: s.output.zero_point,
        clamp: activation.bounds(&s.output),
    }
}

/// A per-channel quantity expanded to every output column.
fn per_column<T: Copy>(w: &QuantWeights, f: impl Fn(&QuantParams) -> T) -> Vec<T> {
    (0..w.codes.shape()[0])
        .map(|j| f(w.params.channel(j)))
        .collect()
}

/// The GEMM and float output stage of the dynamic layer `name`.
fn dyn_matmul(name: &str, d: &DynamicLayer, activation: Activation) -> DynMatmul {
    let zp_w_all = per_column(&d.weights, |p| p.zero_point);
    DynMatmul {
        name: name.to_owned(),
        zp_w: nonzero(zp_w_all.clone()),
        zp_w_all,
        scale_w: per_column(&d.weights, |p| p.scale),
        bias: d.bias.clone(),
        activation,
    }
}

/// Packs the weights `[c, 1, kh, kw]` of a depthwise convolution, naming the layer
/// (`field`) on failure.
fn depthwise_filter(w: &QuantWeights, field: &str) -> Result<DepthwiseFilter, Invalid> {
    let (c, zero_points) = (w.codes.shape()[0], per_column(w, |p| p.zero_point));
    let taps = w.codes.len() / c.max(1);
    DepthwiseFilter::pack(w.codes.data(), &zero_points, c, taps)
        .map_err(|e| Invalid::new(field, e.to_string()))
}

impl Plan {
    /// Builds the plan of validated `steps` (`walk`: what validation recorded), with 3×3
    /// convolutions computed as `algorithm` says on the process's kernel path.
    pub(crate) fn build(
        steps: &[Step],
        walk: &Walk,
        algorithm: ConvAlgorithm,
    ) -> Result<Self, Invalid> {
        let kernels = algorithm.kernels_on(Isa::detect());
        let mut builder = Builder::new(steps, walk, kernels);
        for i in 0..steps.len() {
            builder.step(i)?;
        }
        let output = builder.buffer[steps.len()].expect("every tensor has a buffer");
        let mut input_readers = builder
            .stages
            .iter()
            .filter(|s| s.inputs.iter().any(|&(b, _)| b == Buffer::Input));
        let input_quantized_only =
            output != Buffer::Input && input_readers.all(|s| matches!(s.stage, Stage::Quantize(_)));
        Ok(Self {
            stages: builder.stages,
            int_buffers: builder.ints.count,
            float_buffers: builder.floats.count,
            output,
            input_quantized_only,
        })
    }
}

/// Buffers of one domain: how many exist, which are free, and until which step each is
/// read.
#[derive(Default)]
struct Pool {
    count: usize,
    free: Vec<usize>,
    until: Vec<usize>,
}

impl Pool {
    fn take(&mut self, until: usize) -> usize {
        let b = self.free.pop().unwrap_or_else(|| {
            self.count += 1;
            self.until.push(0);
            self.count - 1
        });
        self.until[b] = until;
        b
    }
}

/// The plan as it is built, step by step.
struct Builder<'a> {
    steps: &'a [Step],
    walk: &'a Walk,
    /// The steps that read each tensor.
    readers: Vec<Vec<usize>>,
    layout: Vec<Layout>,
    buffer: Vec<Option<Buffer>>,
    ints: Pool,
    floats: Pool,
    /// Steps already run inside an earlier stage (a fused pool).
    fused: Vec<bool>,
    /// The convolution kernels taken where a layer fits them.
    kernels: ConvKernels,
    stages: Vec<PlannedStage>,
}

impl<'a> Builder<'a> {
    fn new(steps: &'a [Step], walk: &'a Walk, kernels: ConvKernels) -> Self {
        let tensors = steps.len() + 1;
        let mut readers = vec![Vec::new(); tensors];
        for i in 0..steps.len() {
            for &t in walk.reads(i) {
                readers[t].push(i);
            }
        }
        let mut layout = vec![Layout::Flat { nhwc_of: None }; tensors];
        layout[0] = Layout::of(&walk.info(0).shape);
        let mut buffer = vec![None; tensors];
        buffer[0] = Some(Buffer::Input);
        Self {
            steps,
            walk,
            readers,
            layout,
            buffer,
            ints: Pool::default(),
            floats: Pool::default(),
            fused: vec![false; steps.len()],
            kernels,
            stages: Vec::new(),
        }
    }

    /// The last step that reads tensor `t` (the model's output is read at the end).
    fn last_read(&self, t: usize) -> usize {
        match self.readers[t].last() {
            Some(&i) => i,
            None => usize::MAX,
        }
    }

    fn step(&mut self, i: usize) -> Result<(), Invalid> {
        if self.fused[i] {
            return Ok(());
        }
        let (step, walk) = (&self.steps[i], self.walk);
        let reads = walk.reads(i);
        let t = i + 1;
        if let StepOp::Flatten = step.op
            && self.reordered(i).is_none()
        {
            // A view of its input: the same buffer, read until the view's last reader.
            let buffer = self.buffer[reads[0]].expect("written before");
            self.extend(buffer, self.last_read(t));
            self.buffer[t] = Some(buffer);
            self.layout[t] = match (self.layout[reads[0]], walk.info(t).domain) {
                (Layout::Spatial(s), Domain::Int(_)) => Layout::Flat { nhwc_of: Some(s) },
                (Layout::Spatial(_), Domain::Float) => Layout::Flat { nhwc_of: None },
                (flat, _) => flat,
            };
            return Ok(());
        }
        let field = format!("steps[{i}] ({})", step.name);
        let (stage, written) = self.stage(&field, i)?;
        let info = walk.info(written);
        let output = match info.domain {
            Domain::Int(_) => Buffer::Int(self.ints.take(self.last_read(written))),
            Domain::Float => Buffer::Float(self.floats.take(self.last_read(written))),
        };
        self.buffer[written] = Some(output);
        self.layout[written] = Layout::of(&info.shape);
        let inputs = reads
            .iter()
            .map(|&r| (self.buffer[r].expect("written before"), walk.info(r).len()))
            .collect::<Vec<_>>();
        for &(b, _) in &inputs {
            self.release(b, i);
        }
        self.stages.push(PlannedStage {
            name: step.name.clone(),
            stage,
            inputs,
            output,
            out_len: info.len(),
        });
        Ok(())
    }

    /// Keeps `buffer` until step `until` at least.
    fn extend(&mut self, buffer: Buffer, until: usize) {
        match buffer {
            Buffer::Int(b) => self.ints.until[b] = self.ints.until[b].max(until),
            Buffer::Float(b) => self.floats.until[b] = self.floats.until[b].max(until),
            Buffer::Input => {}
        }
    }

    /// Frees `buffer` when step `i` was its last reader.
    fn release(&mut self, buffer: Buffer, i: usize) {
        let pool = match buffer {
            Buffer::Int(b) => Some((&mut self.ints, b)),
            Buffer::Float(b) => Some((&mut self.floats, b)),
            Buffer::Input => None,
        };
        if let Some((pool, b)) = pool
            && pool.until[b] <= i
            && !pool.free.contains(&b)
        {
            pool.free.push(b);
        }
    }

    /// The stage of step `i`, and the tensor it writes (a fused pool's, past the step's
    /// own).
    fn stage(&mut self, field: &str, i: usize) -> Result<(Stage, usize), Invalid> {
        let (step, walk) = (&self.steps[i], self.walk);
        let input = walk.input(i);
        let first = walk.reads(i)[0];
        let layout = self.layout[first];
        let int = input.int();
        let stage = match &step.op {
            StepOp::Quantize(p) => Stage::Quantize(InputQuantizer {
                params: *p,
                chw: layout.transposed(),
            }),
            StepOp::Dequantize => Stage::Dequantize(OutputDequantizer {
                params: int.expect("validated: dequantize reads int8"),
                chw: layout.transposed(),
            }),
            StepOp::Activation(a) => match int {
                Some(p) => {
                    let (lo, hi) = a.bounds(&p);
                    Stage::IntClamp(lo as i8, hi as i8)
                }
                None => Stage::FloatActivation(*a),
            },
            StepOp::MaxPool2d(_) | StepOp::AvgPool2d { .. } | StepOp::GlobalAvgPool => {
                let (window, kind) = step.op.pool(&input.shape).expect("a pool");
                pool_stage(chw(&input.shape), window, kind, int)
            }
            StepOp::Add(merge) | StepOp::Concat(merge) => self.merge_stage(i, merge),
            StepOp::Flatten => Stage::IntFlatten(self.reordered(i).expect("a view otherwise")),
            op => {
                let layer = op.layer().expect("the other steps are matched above");
                let geometry = op.geometry(&input.shape);
                let pool = self.fusable_pool(i, layer, geometry);
                let stage = layer_stage(
                    field,
                    &step.name,
                    layer,
                    geometry,
                    (int, layout),
                    (pool.is_some(), self.kernels),
                )?;
                if let Some(j) = pool {
                    self.fused[j] = true;
                    return Ok((stage, j + 1));
                }
                stage
            }
        };
        Ok((stage, i + 1))
    }

    /// The `[c, h, w]` of the int8 NHWC image that flatten step `i` reorders into the
    /// canonical order: where some reader needs that order (only a linear layer and the
    /// dequantizer read an NHWC flatten as it lies). `None` for a view.
    fn reordered(&self, i: usize) -> Option<[usize; 3]> {
        let Layout::Spatial(chw) = self.layout[self.walk.reads(i)[0]] else {
            return None;
        };
        let int = self.walk.output(i).int().is_some();
        let reads_nhwc =
            |j: &usize| matches!(self.steps[*j].op, StepOp::Linear(_) | StepOp::Dequantize);
        (int && !self.readers[i + 1].iter().all(reads_nhwc)).then_some(chw)
    }

    /// The 2×2 stride-2 max-pool step that is the only reader of the convolution step `i`
    /// and can run inside it (static or dynamic, not grouped).
    fn fusable_pool(&self, i: usize, layer: &Layer, geometry: Geometry) -> Option<usize> {
        let Geometry::Conv { groups: 1, .. } = geometry else {
            return None;
        };
        let [j] = self.readers[i + 1][..] else {
            return None;
        };
        let pool = matches!(self.steps[j].op, StepOp::MaxPool2d(w) if w == Window::square(2, 2, 0));
        (pool && !matches!(layer.exec, LayerExec::Float(_))).then_some(j)
    }

    /// An `Add` or `Concat` of step `i`.
    fn merge_stage(&self, i: usize, merge: &Merge) -> Stage {
        let (step, walk) = (&self.steps[i], self.walk);
        let concat = matches!(step.op, StepOp::Concat(_));
        let Some(int) = &merge.int else {
            return match concat {
                true => Stage::FloatConcat,
                false => Stage::FloatAdd(merge.activation),
            };
        };
        let reads = walk.reads(i);
        let (lo, hi) = merge.activation.bounds(&int.output);
        let clamp = Clamp {
            zero_point: int.output.zero_point,
            lo,
            hi,
        };
        let rescale = |k: usize| Rescale {
            zero_point: walk
                .info(reads[k])
                .int()
                .expect("validated: int8")
                .zero_point,
            multiplier: int.multipliers[k],
        };
        // Flattened int8 images reach a merge reordered (`Self::reordered`), so the
        // operands of an `Add` lie alike and a flat `Concat` operand is one pixel.
        let channels = |k: usize| match self.layout[reads[k]] {
            Layout::Spatial([c, _, _]) => c,
            Layout::Flat { .. } => walk.info(reads[k]).len(),
        };
        match concat {
            false => Stage::IntAdd(IntAdd {
                table: AddTable::new([&rescale(0), &rescale(1)], &clamp),
            }),
            true => Stage::IntConcat(IntConcat {
                parts: (0..reads.len())
                    .map(|k| (channels(k), rescale(k)))
                    .collect(),
                clamp,
            }),
        }
    }
}

/// A pool over a `[c, h, w]` input of the domain `int` says.
fn pool_stage(
    input: [usize; 3],
    window: Window,
    kind: PoolKind,
    int: Option<QuantParams>,
) -> Stage {
    let square = window.as_square().filter(|&(_, _, padding)| padding == 0);
    match (int, kind, square) {
        (Some(_), PoolKind::Max, Some((kernel, stride, _))) => Stage::IntPool(IntPool {
            input,
            kernel,
            stride,
        }),
        (Some(p), _, _) => Stage::IntWindowPool(IntWindowPool {
            window: window.nhwc(input),
            zero_point: p.zero_point as i8,
            kind,
        }),
        (None, _, _) => Stage::FloatPool(FloatPool {
            input,
            window,
            kind,
        }),
    }
}

/// The stage of a convolution or linear layer reading a tensor of domain `int` and
/// `layout`; a static or dynamic convolution runs the 2×2 stride-2 max-pool that reads it
/// when `pool`, by Winograd or the direct kernel where `kernels` has them and the layer
/// fits them. Convolutions of several groups
/// take [`grouped_stage`].
fn layer_stage(
    field: &str,
    name: &str,
    layer: &Layer,
    geometry: Geometry,
    (int, layout): (Option<QuantParams>, Layout),
    (pool, kernels): (bool, ConvKernels),
) -> Result<Stage, Invalid> {
    if let Geometry::Conv {
        input,
        window,
        groups,
    } = geometry
        && groups > 1
    {
        return grouped_stage(field, name, layer, geometry, (input, window, groups), int);
    }
    let (n, k) = (layer.out_features(), layer.depth());
    // Engine order of a weight row: (ky, kx, c) for convolutions, the NHWC flatten order
    // for a static linear layer reading int8 flattened from NHWC.
    let (row_chw, conv) = match geometry {
        Geometry::Conv { input, window, .. } => (
            Some([input[0], window.kernel[0], window.kernel[1]]),
            Some(ConvShape::new(input, window)),
        ),
        Geometry::Linear => (layout.transposed().filter(|_| int.is_some()), None),
    };
    Ok(match &layer.exec {
        LayerExec::Static(s) => {
            let input = int.expect("validated: static layers read int8");
            let codes = engine_codes(&s.weights, row_chw);
            let params = int_params(s, input, layer.activation);
            let im2col = |params| IntMatmul::new(pack(&codes, n, k, field)?, params, field);
            match conv {
                Some(shape) => {
                    let zp_in = input.zero_point as i8;
                    let direct = (kernels.direct && params.zp_w.iter().all(|&z| z == 0))
                        .then(|| direct_filter(&shape, n, pool, &codes, zp_in, field))
                        .transpose()?
                        .flatten();
                    let kernel = match (
                        winograd_geometry(&shape).filter(|_| kernels.winograd),
                        direct,
                    ) {
                        (Some(g), _) => {
                            let sums = WinogradSums::new(g, &codes, &params.zp_w, field)?;
                            ConvKernel::Winograd(WinogradConv::new(sums, params))
                        }
                        (None, Some(filter)) => ConvKernel::Direct(DirectConv::new(filter, params)),
                        (None, None) => ConvKernel::Im2col(im2col(params)?),
                    };
                    Stage::IntConv(IntConv {
                        shape,
                        zp_in,
                        kernel,
                        pool,
                    })
                }
                None => Stage::IntLinear(IntLinear {
                    mm: im2col(params)?,
                    nibbles: nibbles(&codes, n, k, field)?,
                }),
            }
        }
        LayerExec::Dynamic(d) => {
            let codes = engine_codes(&d.weights, row_chw);
            let mm = dyn_matmul(name, d, layer.activation);
            let zp_w_all = &mm.zp_w_all;
            match conv {
                Some(shape) => {
                    let kernel = match winograd_geometry(&shape).filter(|_| kernels.winograd) {
                        Some(g) => {
                            DynConvKernel::Winograd(WinogradSums::new(g, &codes, zp_w_all, field)?)
                        }
                        None => DynConvKernel::Im2col(pack(&codes, n, k, field)?),
                    };
                    Stage::DynConv(DynConv {
                        shape,
                        mm,
                        kernel,
                        pool,
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
            layer.activation,
        )),
    })
}

/// One [`IntMatmul`] per group of static layer `s`: its rows of weights in engine order,
/// its slices of bias, multipliers and weight zero points.
fn group_matmuls(
    field: &str,
    s: &StaticLayer,
    input: QuantParams,
    activation: Activation,
    (shape, groups): (ConvShape, usize),
) -> Result<Vec<IntMatmul>, Invalid> {
    let [c_g, kh, kw] = [
        shape.input[0],
        shape.window.kernel[0],
        shape.window.kernel[1],
    ];
    let codes = engine_codes(&s.weights, Some([c_g, kh, kw]));
    let params = int_params(s, input, activation);
    let (k, n_g) = (shape.depth(), s.bias.len() / groups);
    (0..groups)
        .map(|g| {
            let rows = g * n_g..(g + 1) * n_g;
            let multipliers = match params.multipliers.len() {
                1 => params.multipliers,
                _ => &params.multipliers[rows.clone()],
            };
            let group = IntParams {
                bias: &params.bias[rows.clone()],
                multipliers,
                zp_w: params.zp_w[rows.clone()].to_vec(),
                ..params
            };
            let packed = pack(&codes[rows.start * k..rows.end * k], n_g, k, field)?;
            IntMatmul::new(packed, group, field)
        })
        .collect()
}

/// A convolution of more than one group: depthwise (one input and one output channel per
/// group) on its own kernel, any other one per group on the im2col GEMM when quantized,
/// on the reference arithmetic when float.
fn grouped_stage(
    field: &str,
    name: &str,
    layer: &Layer,
    geometry: Geometry,
    (input, window, groups): ([usize; 3], Window, usize),
    int: Option<QuantParams>,
) -> Result<Stage, Invalid> {
    let depthwise = groups == input[0] && groups == layer.out_features();
    let nhwc = window.nhwc(input);
    Ok(match &layer.exec {
        LayerExec::Float(f) => Stage::FloatDirect(FloatDirect {
            geometry,
            weight: f.weight.data().to_vec(),
            bias: f.bias.clone(),
            activation: layer.activation,
        }),
        LayerExec::Static(s) if !depthwise => {
            let input_params = int.expect("validated: static layers read int8");
            let shape = ConvShape::new([input[0] / groups, input[1], input[2]], window);
            Stage::IntGroupedConv(IntGroupedConv {
                shape,
                zp_in: input_params.zero_point as i8,
                groups: group_matmuls(field, s, input_params, layer.activation, (shape, groups))?,
            })
        }
        LayerExec::Dynamic(d) if !depthwise => {
            let shape = ConvShape::new([input[0] / groups, input[1], input[2]], window);
            let codes = engine_codes(
                &d.weights,
                Some([shape.input[0], window.kernel[0], window.kernel[1]]),
            );
            let (k, n_g) = (shape.depth(), layer.out_features() / groups);
            Stage::DynGroupedConv(DynGroupedConv {
                shape,
                mm: dyn_matmul(name, d, layer.activation),
                groups: codes
                    .chunks_exact(n_g * k)
                    .map(|rows| pack(rows, n_g, k, field))
                    .collect::<Result<_, _>>()?,
            })
        }
        LayerExec::Static(s) => {
            let input = int.expect("validated: static layers read int8");
            let params = int_params(s, input, layer.activation);
            Stage::IntDepthwise(IntDepthwise {
                window: nhwc,
                zp_in: input.zero_point as i8,
                filter: depthwise_filter(&s.weights, field)?,
                output: Requant::new(s.bias.clone(), &params),
            })
        }
        LayerExec::Dynamic(d) => Stage::DynDepthwise(DynDepthwise {
            window: nhwc,
            filter: depthwise_filter(&d.weights, field)?,
            mm: dyn_matmul(name, d, layer.activation),
        }),
    })
}

/// The direct kernel's filter of a static convolution with symmetric weights (`codes` in
/// engine order), when the layer fits the kernel ([`DirectFilter::fits`]).
fn direct_filter(
    shape: &ConvShape,
    n: usize,
    pool: bool,
    codes: &[i8],
    zp_in: i8,
    field: &str,
) -> Result<Option<DirectFilter>, Invalid> {
    let window = shape.window.nhwc(shape.input);
    if !DirectFilter::fits(&window, n, pool) {
        return Ok(None);
    }
    DirectFilter::pack_for(Isa::detect(), codes, n, window, zp_in)
        .map(Some)
        .map_err(|e| Invalid::new(field, e.to_string()))
}
