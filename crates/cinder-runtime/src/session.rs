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
use crate::plan::par::{Scratch, Shared, Tracked, grow};
use crate::plan::{Plan, Stage, float_relu, int_relu};
use crate::quantized::QuantizedModel;

/// How a session runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// Worker threads; 0 uses every available core.
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

/// Which buffer holds the current tensor.
#[derive(Debug, Clone, Copy)]
enum Cur {
    Input,
    Int(usize),
    Float(usize),
}

/// Ping-pong activation buffers plus per-thread and shared scratch.
#[derive(Debug, Default)]
struct Workspace {
    ints: [Vec<i8>; 2],
    floats: [Vec<f32>; 2],
    slots: Vec<Scratch>,
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
    pool: rayon::ThreadPool,
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
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| RunError::ThreadPool {
                threads,
                message: e.to_string(),
            })?;
        let ws = Workspace {
            slots: (0..threads).map(|_| Scratch::default()).collect(),
            ..Workspace::default()
        };
        Ok(Session {
            model: self,
            pool,
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
    /// The input must be finite: a NaN or infinity is an error, whatever the mode.
    pub fn run(&mut self, input: &impl Tensor<f32>) -> Result<TensorRef<'_, f32>, RunError> {
        let model = self.model;
        let batch = batch_size(input.shape(), model.input_shape())?;
        let (lo, hi) = min_max(input.data()).map_err(RunError::Input)?;
        let x = input.data();
        let Self {
            pool, ws, profile, ..
        } = self;
        let cur = pool.install(|| {
            execute(
                model.plan(),
                batch,
                x,
                Tracked::Known(lo, hi),
                ws,
                profile.as_mut(),
            )
        })?;
        let len = batch * model.output_shape().iter().product::<usize>();
        let data: &[f32] = match cur {
            Cur::Float(i) => &self.ws.floats[i][..len],
            _ => {
                // Only a model without layers ends on its input.
                let out = grow(&mut self.ws.floats[0], len);
                out.copy_from_slice(x);
                out
            }
        };
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
            Stage::IntLinear(_) => "int8 linear",
            Stage::IntPool(_) => "int8 max-pool",
            Stage::IntRelu { .. } => "int8 relu",
            Stage::DynConv(c) => c.kind(),
            Stage::DynLinear(_) => "dynamic linear",
            Stage::Float(_) => "float layer",
            Stage::FloatPool(_) => "float max-pool",
            Stage::FloatRelu => "float relu",
        }
    }
}

/// The current float tensor and the other float buffer to write into.
fn float_pair<'a>(
    input: &'a [f32],
    floats: &'a mut [Vec<f32>; 2],
    cur: Cur,
    n_in: usize,
    n_out: usize,
) -> (&'a [f32], &'a mut [f32], Cur) {
    let [f0, f1] = floats;
    match cur {
        Cur::Float(0) => (&f0[..n_in], grow(f1, n_out), Cur::Float(1)),
        Cur::Float(_) => (&f1[..n_in], grow(f0, n_out), Cur::Float(0)),
        _ => (input, grow(f0, n_out), Cur::Float(0)),
    }
}

/// The current int8 tensor and the other int8 buffer to write into.
fn int_pair(
    ints: &mut [Vec<i8>; 2],
    cur: Cur,
    n_in: usize,
    n_out: usize,
) -> (&[i8], &mut [i8], Cur) {
    let [i0, i1] = ints;
    match cur {
        Cur::Int(0) => (&i0[..n_in], grow(i1, n_out), Cur::Int(1)),
        _ => (&i1[..n_in], grow(i0, n_out), Cur::Int(0)),
    }
}

fn execute(
    plan: &Plan,
    batch: usize,
    input: &[f32],
    input_range: Tracked,
    ws: &mut Workspace,
    mut profile: Option<&mut Profile>,
) -> Result<Cur, RunError> {
    let Workspace {
        ints,
        floats,
        slots,
        shared,
    } = ws;
    let mut cur = Cur::Input;
    let mut range = input_range;
    for (i, ps) in plan.stages.iter().enumerate() {
        let start = profile.is_some().then(Instant::now);
        let (n_in, n_out) = (batch * ps.in_len, batch * ps.out_len);
        match &ps.stage {
            Stage::Quantize(q) => {
                let (x, ..) = float_pair(input, floats, cur, n_in, 0);
                q.run(x, grow(&mut ints[0], n_out), ps.in_len, slots);
                cur = Cur::Int(0);
            }
            Stage::Dequantize(d) => {
                let (x, ..) = int_pair(ints, cur, n_in, 0);
                range = d.run(x, grow(&mut floats[0], n_out), ps.out_len, slots);
                cur = Cur::Float(0);
            }
            Stage::IntConv(c) => {
                let (x, y, next) = int_pair(ints, cur, n_in, n_out);
                c.run(x, batch, y, slots, &mut shared.cols);
                cur = next;
            }
            Stage::IntLinear(l) => {
                let (x, y, next) = int_pair(ints, cur, n_in, n_out);
                l.run(x, y, slots);
                cur = next;
            }
            Stage::IntPool(p) => {
                let (x, y, next) = int_pair(ints, cur, n_in, n_out);
                p.run(x, y, ps.out_len, slots);
                cur = next;
            }
            Stage::IntRelu { zero_point } => {
                let (x, y, next) = int_pair(ints, cur, n_in, n_out);
                int_relu(x, *zero_point, y);
                cur = next;
            }
            Stage::DynConv(d) => {
                let (x, y, next) = float_pair(input, floats, cur, n_in, n_out);
                range = d.run(x, range.range(), y, slots, shared)?;
                cur = next;
            }
            Stage::DynLinear(d) => {
                let (x, y, next) = float_pair(input, floats, cur, n_in, n_out);
                range = d.run(x, range.range(), y, slots, shared)?;
                cur = next;
            }
            Stage::Float(f) => {
                let (x, y, next) = float_pair(input, floats, cur, n_in, n_out);
                range = f.run(x, ps.in_len, y, ps.out_len, slots);
                cur = next;
            }
            Stage::FloatPool(p) => {
                let (x, y, next) = float_pair(input, floats, cur, n_in, n_out);
                range = p.run(x, y, ps.out_len, slots);
                cur = next;
            }
            Stage::FloatRelu => {
                let (x, y, next) = float_pair(input, floats, cur, n_in, n_out);
                range = float_relu(x, y, range);
                cur = next;
            }
        }
        if let (Some(p), Some(start)) = (profile.as_deref_mut(), start) {
            p.totals[i] += start.elapsed();
        }
    }
    if let Some(p) = profile {
        p.runs += 1;
    }
    Ok(cur)
}
