//! Running a model: a [`Session`] owns a thread pool and every buffer a run needs, so a
//! run allocates nothing once a batch of that size has been seen.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cinder_runtime::QuantizedModel;
//! use cinder_tensor::{Tensor, TensorBuf};
//! let model = QuantizedModel::load("model.cinder".as_ref())?;
//! let mut session = model.session()?;
//! let input = TensorBuf::<f32>::zeros(vec![1, 3, 32, 32])?;
//! let logits = session.run(&input)?;
//! println!("{:?}", logits.data());
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use cinder_observers::min_max;
use cinder_tensor::{Tensor, TensorRef};

use crate::error::RunError;
use crate::geometry::batch_size;
use crate::plan::par::{Shared, Tracked, Workers, grow};
use crate::plan::{
    Buffer, Plan, PlannedStage, Stage, float_activation, float_add, float_concat, int_clamp,
    int_flatten,
};
use crate::quantized::QuantizedModel;

/// How a session runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads that run each stage, the calling thread included; 0 uses every available
    /// core. The other threads belong to the session and, after each stage, look for the
    /// next one for 200 µs before they sleep (so back-to-back runs start without waking
    /// them).
    pub threads: usize,
}

/// The mean time of one stage per run.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTime {
    /// The step's name (the node, or the tensor quantized / dequantized).
    pub name: String,
    pub kind: &'static str,
    pub mean: Duration,
}

/// The tensors of a run and per-thread and shared scratch.
#[derive(Debug)]
struct Workspace {
    ints: Vec<Vec<i8>>,
    floats: Vec<Vec<f32>>,
    /// The range of what each float buffer holds, as its producer tracked it.
    ranges: Vec<Tracked>,
    slots: Workers,
    shared: Shared,
}

#[derive(Debug)]
struct Profile {
    totals: Vec<Duration>,
    runs: u32,
}

/// A reusable runner of one model.
pub struct Session<'m> {
    model: &'m QuantizedModel,
    ws: Workspace,
    out_shape: Vec<usize>,
    profile: Option<Profile>,
}

impl QuantizedModel {
    /// A session on every available core.
    pub fn session(&self) -> Result<Session<'_>, RunError> {
        self.session_with(SessionOptions::default())
    }

    pub fn session_with(&self, options: SessionOptions) -> Result<Session<'_>, RunError> {
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            t => t,
        };
        let slots = Workers::new(threads).map_err(|e| RunError::ThreadPool {
            threads,
            message: e.to_string(),
        })?;
        let plan = self.plan();
        let ws = Workspace {
            ints: vec![Vec::new(); plan.int_buffers],
            // One at least: a model without steps copies its input there.
            floats: vec![Vec::new(); plan.float_buffers.max(1)],
            ranges: vec![Tracked::Empty; plan.float_buffers],
            slots,
            shared: Shared::default(),
        };
        Ok(Session {
            model: self,
            ws,
            out_shape: Vec::with_capacity(self.output_shape().len() + 1),
            profile: None,
        })
    }
}

impl Session<'_> {
    pub fn threads(&self) -> usize {
        self.ws.slots.len()
    }

    /// Runs a batch `[B, ...input_shape]` (NCHW floats) and returns the output
    /// `[B, ...output_shape]`, borrowed from the session until the next run.
    ///
    /// The input must be finite: a NaN or infinity is an error, whatever the mode; so is
    /// a non-finite output (a float or dynamic layer overflowing f32).
    pub fn run(&mut self, input: &impl Tensor<f32>) -> Result<TensorRef<'_, f32>, RunError> {
        let model = self.model;
        let batch = batch_size(input.shape(), model.input_shape())?;
        let x = input.data();
        let range = match model.plan().input_quantized_only {
            true => Tracked::Unknown,
            false => {
                let (lo, hi) = min_max(x).map_err(RunError::Input)?;
                Tracked::Known(lo, hi)
            }
        };
        let Self { ws, profile, .. } = self;
        execute(model.plan(), batch, (x, range), ws, profile.as_mut())?;
        let len = batch * model.output_shape().iter().product::<usize>();
        let data: &[f32] = match model.plan().output {
            Buffer::Float(i) => &self.ws.floats[i][..len],
            _ => {
                // Only a model without steps ends on its input.
                let out = grow(&mut self.ws.floats[0], len);
                out.copy_from_slice(x);
                out
            }
        };
        // Float and dynamic layers compute in f32 and may overflow on finite inputs.
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(non_finite_output(model, index, data[index]));
        }
        self.out_shape.clear();
        self.out_shape.push(batch);
        self.out_shape.extend_from_slice(model.output_shape());
        Ok(TensorRef::new(&self.out_shape, data).expect("the plan writes the output shape"))
    }

    /// Starts (or, with `false`, stops) timing every stage; starting resets the times.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| Profile {
            totals: vec![Duration::ZERO; self.model.plan().stages.len()],
            runs: 0,
        });
    }

    /// Mean time per run of every stage since profiling started.
    pub fn profile(&self) -> Option<Vec<StageTime>> {
        let p = self.profile.as_ref()?;
        let stages = &self.model.plan().stages;
        Some(
            stages
                .iter()
                .zip(&p.totals)
                .map(|(s, &t)| StageTime {
                    name: s.name.clone(),
                    kind: s.stage.kind(),
                    mean: t / p.runs.max(1),
                })
                .collect(),
        )
    }
}

impl Stage {
    fn kind(&self) -> &'static str {
        match self {
            Stage::Quantize(_) => "quantize",
            Stage::Dequantize(_) => "dequantize",
            Stage::IntConv(c) => c.kind(),
            Stage::IntDepthwise(_) => "int8 depthwise",
            Stage::IntGroupedConv(_) => "int8 grouped conv",
            Stage::IntLinear(l) => l.kind(),
            Stage::IntPool(_) => "int8 max-pool",
            Stage::IntWindowPool(_) => "int8 pool",
            Stage::IntClamp(..) => "int8 activation",
            Stage::IntFlatten(_) => "int8 flatten",
            Stage::IntAdd(_) => "int8 add",
            Stage::IntConcat(_) => "int8 concat",
            Stage::DynConv(c) => c.kind(),
            Stage::DynDepthwise(_) => "dyn. depthwise",
            Stage::DynGroupedConv(_) => "dyn. grouped conv",
            Stage::DynLinear(_) => "dynamic linear",
            Stage::Float(_) => "float layer",
            Stage::FloatDirect(_) => "float conv",
            Stage::FloatPool(_) => "float pool",
            Stage::FloatActivation(_) => "float activation",
            Stage::FloatAdd(_) => "float add",
            Stage::FloatConcat => "float concat",
        }
    }
}

/// The int8 tensor in `buffer`, `len` values.
fn int_in(ints: &[Vec<i8>], buffer: Buffer, len: usize) -> &[i8] {
    match buffer {
        Buffer::Int(i) => &ints[i][..len],
        _ => unreachable!("the plan reads int8 here"),
    }
}

/// The float tensor in `buffer` (or the run's input), `len` values, and its range.
fn float_in<'a>(
    (input, input_range): (&'a [f32], Tracked),
    floats: &'a [Vec<f32>],
    ranges: &[Tracked],
    buffer: Buffer,
    len: usize,
) -> (&'a [f32], Tracked) {
    match buffer {
        Buffer::Input => (input, input_range),
        Buffer::Float(i) => (&floats[i][..len], ranges[i]),
        Buffer::Int(_) => unreachable!("the plan reads float here"),
    }
}

fn execute(
    plan: &Plan,
    batch: usize,
    input: (&[f32], Tracked),
    ws: &mut Workspace,
    mut profile: Option<&mut Profile>,
) -> Result<(), RunError> {
    for (i, ps) in plan.stages.iter().enumerate() {
        let start = profile.is_some().then(Instant::now);
        let n_out = batch * ps.out_len;
        match ps.output {
            Buffer::Int(o) => {
                let mut y = std::mem::take(&mut ws.ints[o]);
                let run = int_stage(ps, batch, input, ws, grow(&mut y, n_out));
                ws.ints[o] = y;
                run?;
            }
            Buffer::Float(o) => {
                let mut y = std::mem::take(&mut ws.floats[o]);
                let range = float_stage(ps, batch, input, ws, grow(&mut y, n_out));
                ws.floats[o] = y;
                ws.ranges[o] = range?;
            }
            Buffer::Input => unreachable!("nothing writes the input"),
        }
        if let (Some(p), Some(start)) = (profile.as_deref_mut(), start) {
            p.totals[i] += start.elapsed();
        }
    }
    if let Some(p) = profile {
        p.runs += 1;
    }
    Ok(())
}

/// Runs a stage that writes int8 into `y`; an input quantizer fails on a value that is
/// not finite.
fn int_stage(
    ps: &PlannedStage,
    batch: usize,
    input: (&[f32], Tracked),
    ws: &mut Workspace,
    y: &mut [i8],
) -> Result<(), RunError> {
    let Workspace {
        ints,
        floats,
        ranges,
        slots,
        ..
    } = ws;
    let x = |k: usize| {
        let (b, len) = ps.inputs[k];
        int_in(ints, b, batch * len)
    };
    match &ps.stage {
        Stage::Quantize(q) => {
            let (b, len) = ps.inputs[0];
            let (x, _) = float_in(input, floats, ranges, b, batch * len);
            if !q.run(x, y, len, slots) {
                // The scan names the first value that is not finite.
                min_max(x).map_err(RunError::Input)?;
            }
        }
        Stage::IntConv(c) => c.run(x(0), batch, y, slots),
        Stage::IntDepthwise(d) => d.run(x(0), y, slots),
        Stage::IntGroupedConv(g) => g.run(x(0), y, slots),
        Stage::IntLinear(l) => l.run(x(0), y, slots),
        Stage::IntPool(p) => p.run(x(0), y, ps.out_len, slots),
        Stage::IntWindowPool(p) => p.run(x(0), y, ps.out_len, slots),
        Stage::IntClamp(lo, hi) => int_clamp(x(0), (*lo, *hi), y),
        Stage::IntFlatten(chw) => int_flatten(*chw, x(0), y),
        Stage::IntAdd(a) => a.run(x(0), x(1), y, slots),
        Stage::IntConcat(c) => c.run(x, y),
        _ => unreachable!("the other stages write float"),
    }
    Ok(())
}

/// Runs a stage that writes float into `y`; returns the range it wrote.
fn float_stage(
    ps: &PlannedStage,
    batch: usize,
    input: (&[f32], Tracked),
    ws: &mut Workspace,
    y: &mut [f32],
) -> Result<Tracked, RunError> {
    let Workspace {
        ints,
        floats,
        ranges,
        slots,
        shared,
    } = ws;
    let x = |k: usize| {
        let (b, len) = ps.inputs[k];
        float_in(input, floats, ranges, b, batch * len)
    };
    let (in_len, out_len) = (ps.in_len(), ps.out_len);
    Ok(match &ps.stage {
        Stage::Dequantize(d) => {
            let (b, len) = ps.inputs[0];
            d.run(int_in(ints, b, batch * len), y, out_len, slots)
        }
        Stage::DynConv(_)
        | Stage::DynDepthwise(_)
        | Stage::DynGroupedConv(_)
        | Stage::DynLinear(_) => {
            let (x, range) = x(0);
            let range = range.range();
            match &ps.stage {
                Stage::DynConv(d) => d.run(x, range, y, slots, shared)?,
                Stage::DynDepthwise(d) => d.run(x, range, y, slots, shared)?,
                Stage::DynGroupedConv(d) => d.run(x, range, y, slots, shared)?,
                Stage::DynLinear(d) => d.run(x, range, y, slots, shared)?,
                _ => unreachable!("matched above"),
            }
        }
        Stage::Float(f) => f.run(x(0).0, in_len, y, out_len, slots),
        Stage::FloatDirect(f) => f.run(x(0).0, y, out_len, slots),
        Stage::FloatPool(p) => p.run(x(0).0, y, out_len, slots),
        Stage::FloatActivation(a) => {
            let (x, range) = x(0);
            float_activation(x, *a, y, range)
        }
        Stage::FloatAdd(a) => float_add(x(0).0, x(1).0, *a, y),
        Stage::FloatConcat => float_concat(|k| x(k).0, ps.inputs.len(), batch, y),
        _ => unreachable!("the other stages write int8"),
    })
}

/// The error of an output element that is not finite, naming the model's last step.
pub(crate) fn non_finite_output(model: &QuantizedModel, index: usize, value: f32) -> RunError {
    let node = model
        .steps()
        .last()
        .map_or_else(|| "input".to_owned(), |s| s.name.clone());
    RunError::NonFiniteOutput { node, index, value }
}
