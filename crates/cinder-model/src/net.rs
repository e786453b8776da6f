//! [`GraphNet`]: one burn module that runs any float graph architecture ([`GraphSpec`]).
//!
//! The parameters live in burn containers (`Vec<Conv2d>`, `Vec<BatchNorm>`, `Vec<Linear>`)
//! and a plan says, node by node in topological order, which layer or parameter-free
//! operator to apply to which earlier tensors. The same module trains (BatchNorm in
//! training mode on an autodiff device), evaluates, records every node's activation for
//! calibration, and converts to and from a [`FloatGraph`], so a network is described once,
//! as a graph.
//!
//! Initial weights come from our seeded generator ([`crate::rng`]) with PyTorch's default
//! scheme: convolution and linear weights kaiming-uniform with a = √5, i.e. uniform in
//! ±1/√fan_in, biases uniform in ±1/√fan_in; BatchNorm γ = 1, β = 0, running mean 0 and
//! variance 1. Tensors are drawn node by node in topological order, each weight before its
//! bias, linear weights in burn's `[in, out]` order.

use std::collections::HashMap;

use burn::module::{Flag, Module, ModuleMapper, Param, ParamId, RunningState};
use burn::nn::conv::Conv2d;
use burn::nn::pool::{AvgPool2d, MaxPool2d};
use burn::nn::{BatchNorm, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use cinder_tensor::graph::{self, FloatGraph, GraphError, GraphSpec, INPUT, Op, OpSpec};
use cinder_tensor::{Tensor as _, TensorBuf};

use crate::error::ModelError;
use crate::export::{Activations, host, transpose};
use crate::flex::batch_norm::{batch_norm, batch_norm_relu};
use crate::flex::{conv2d::conv2d, linear::linear, max_pool2d::max_pool2d};
use crate::rng::SplitMix64;

/// Generator stream for weight initialisation (data order uses other streams).
const INIT_STREAM: u64 = 1;

/// A network built from a graph architecture; see the module docs.
#[derive(Module, Debug)]
pub struct GraphNet {
    convs: Vec<Conv2d>,
    norms: Vec<BatchNorm>,
    /// Weights stored `[in, out]` (burn's layout).
    linears: Vec<Linear>,
    #[module(skip)]
    plan: Plan,
}

/// The execution order: one step per node of `spec`, which is topologically sorted.
#[derive(Debug, Clone)]
struct Plan {
    spec: GraphSpec,
    /// Width of the output vector.
    classes: usize,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
struct Step {
    /// Slots of the inputs: 0 is the graph input, `i + 1` the output of step `i`.
    inputs: Vec<usize>,
    /// Whether each input slot is read for the last time here (its tensor can be moved).
    last_read: Vec<bool>,
    kind: Kind,
    /// The name this step's output is recorded under for calibration, if any (see
    /// [`GraphNet::forward_with_activations`]).
    record_as: Option<String>,
    /// A BatchNorm whose only reader is the next step, a ReLU: a forward that records
    /// nothing runs the two as one operation ([`batch_norm_relu`]).
    relu_next: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    Conv(usize),
    Norm(usize),
    Linear(usize),
    Relu,
    Clip { min: f32, max: f32 },
    MaxPool(MaxPool2d),
    AvgPool(AvgPool2d),
    GlobalAvgPool,
    Add,
    Concat,
    Flatten,
}

/// A tensor flowing through the graph: feature maps `[B, C, H, W]` or vectors `[B, F]`.
#[derive(Debug, Clone)]
pub enum Value {
    Map(Tensor<4>),
    Vector(Tensor<2>),
}

impl Value {
    /// The tensor as feature maps (a vector as `[B, F, 1, 1]`).
    pub fn map(self) -> Tensor<4> {
        match self {
            Value::Map(t) => t,
            // Shape inference only hands vectors to vector operators; a vector seen as
            // 1×1 maps keeps the arithmetic right should that ever change.
            Value::Vector(t) => {
                let [b, f] = t.dims();
                t.reshape([b, f, 1, 1])
            }
        }
    }

    /// The tensor as vectors (feature maps flattened).
    pub fn vector(self) -> Tensor<2> {
        match self {
            Value::Vector(t) => t,
            Value::Map(t) => t.flatten(1, 3),
        }
    }

    fn data(&self) -> TensorData {
        match self {
            Value::Map(t) => t.to_data(),
            Value::Vector(t) => t.to_data(),
        }
    }

    /// `f4` or `f2` applied to the tensor, whichever fits its rank.
    pub fn unary(
        self,
        f4: impl FnOnce(Tensor<4>) -> Tensor<4>,
        f2: impl FnOnce(Tensor<2>) -> Tensor<2>,
    ) -> Value {
        match self {
            Value::Map(t) => Value::Map(f4(t)),
            Value::Vector(t) => Value::Vector(f2(t)),
        }
    }
}

impl GraphNet {
    /// A freshly initialised network of architecture `spec` on `device` (use
    /// `device.autodiff()` to train it); the weights are a function of `seed` only.
    pub fn init(spec: &GraphSpec, device: &Device, seed: u64) -> Result<Self, ModelError> {
        let zeros = |name: &str, shape: &[usize]| {
            graph_tensor(name, shape, vec![0.0; shape.iter().product()])
        };
        let sorted = FloatGraph::from_spec(spec.clone(), zeros)?.spec();
        let mut rng = SplitMix64::stream(seed, INIT_STREAM);
        let kinds: HashMap<String, OpSpec> = sorted
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.op.clone()))
            .collect();
        let mut fan_in = 1;
        let graph = FloatGraph::from_spec(sorted, |name, shape| {
            let (node, tensor) = name.rsplit_once('.').unwrap_or((name, ""));
            let op = kinds.get(node);
            initial_tensor(name, op, tensor, shape, &mut fan_in, &mut rng)
        })?;
        Self::from_float_graph(&graph, device)
    }

    /// The network holding the weights of `graph` (BatchNorm nodes included) on `device`,
    /// its parameters numbered by [`number_params`].
    pub fn from_float_graph(graph: &FloatGraph, device: &Device) -> Result<Self, ModelError> {
        let classes = check_output(graph)?;
        let (mut convs, mut norms, mut linears) = (Vec::new(), Vec::new(), Vec::new());
        for node in graph.nodes() {
            match &node.op {
                Op::Conv2d(c) => convs.push(burn_conv(c, device)?),
                Op::BatchNorm(bn) => norms.push(burn_batch_norm(bn, device)),
                Op::Linear(l) => linears.push(burn_linear(l, device)),
                _ => {}
            }
        }
        Ok(number_params(Self::assemble(
            graph.spec(),
            classes,
            convs,
            norms,
            linears,
        )?))
    }

    fn assemble(
        spec: GraphSpec,
        classes: usize,
        convs: Vec<Conv2d>,
        norms: Vec<BatchNorm>,
        linears: Vec<Linear>,
    ) -> Result<Self, ModelError> {
        let mut counts = [0usize; 3];
        let mut next = |k: usize| {
            counts[k] += 1;
            counts[k] - 1
        };
        let kinds: Vec<Kind> = spec
            .nodes
            .iter()
            .map(|node| match &node.op {
                OpSpec::Conv2d { .. } => Kind::Conv(next(0)),
                OpSpec::BatchNorm { .. } => Kind::Norm(next(1)),
                OpSpec::Linear { .. } => Kind::Linear(next(2)),
                op => parameter_free(op).expect("every other operator is parameter-free"),
            })
            .collect();
        if counts != [convs.len(), norms.len(), linears.len()] {
            return Err(ModelError::GraphLayout(format!(
                "the graph has {counts:?} convolutions, BatchNorms and linear layers, the \
                 network {:?}",
                [convs.len(), norms.len(), linears.len()]
            )));
        }
        Ok(Self {
            convs,
            norms,
            linears,
            plan: Plan::new(spec, kinds, classes),
        })
    }

    /// The convolution of node `name`, if it is one.
    pub fn conv(&self, name: &str) -> Option<&Conv2d> {
        match self.kind_of(name)? {
            Kind::Conv(i) => self.convs.get(*i),
            _ => None,
        }
    }

    /// The linear layer of node `name`, if it is one (weight stored `[in, out]`).
    pub fn linear(&self, name: &str) -> Option<&Linear> {
        match self.kind_of(name)? {
            Kind::Linear(i) => self.linears.get(*i),
            _ => None,
        }
    }

    fn kind_of(&self, name: &str) -> Option<&Kind> {
        let at = self.plan.spec.nodes.iter().position(|n| n.name == name)?;
        Some(&self.plan.steps[at].kind)
    }

    /// The architecture (nodes in topological order).
    pub fn spec(&self) -> &GraphSpec {
        &self.plan.spec
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        let s = &self.plan.spec.input_shape;
        [s[0], s[1], s[2]]
    }

    /// Number of classes (width of the output vector).
    pub fn classes(&self) -> usize {
        self.plan.classes
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        let first = self.convs.first().map(|c| c.weight.val().device());
        first.unwrap_or_else(|| {
            self.linears
                .first()
                .map_or_else(Device::default, |l| l.weight.val().device())
        })
    }

    /// Logits `[B, classes]` for images `[B, C, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.run(images, None)
    }

    /// Logits plus the graph input (`input`) and every node's output, by node name, in
    /// graph order. A BatchNorm that [`FloatGraph::fold_batch_norms`] folds into the
    /// convolution or linear layer before it is recorded under that layer's name (what the
    /// folded layer computes) and the unnormalised output is not recorded.
    pub fn forward_with_activations(
        &self,
        images: Tensor<4>,
    ) -> Result<(Tensor<2>, Activations), ModelError> {
        let mut acts = Activations::default();
        let logits = self.run(images, Some(&mut acts));
        acts.finish()?;
        Ok((logits, acts))
    }

    fn run(&self, images: Tensor<4>, mut trace: Option<&mut Activations>) -> Tensor<2> {
        if let Some(acts) = trace.as_deref_mut() {
            acts.push(INPUT, images.to_data());
        }
        let mut slots: Vec<Option<Value>> = vec![None; self.plan.steps.len() + 1];
        slots[0] = Some(Value::Map(images));
        // Recording every node's output needs the BatchNorm's apart from its ReLU's.
        let (fuse, mut relu_done) = (trace.is_none(), false);
        for (i, step) in self.plan.steps.iter().enumerate() {
            let inputs = step
                .inputs
                .iter()
                .zip(&step.last_read)
                .map(|(&slot, &last)| match last {
                    true => slots[slot].take(),
                    false => slots[slot].clone(),
                })
                .collect::<Option<Vec<Value>>>()
                .expect("the plan reads each slot after it is written and before it is freed");
            let out = match relu_done {
                // The BatchNorm before this ReLU ran it.
                true => inputs.into_iter().next().expect("a ReLU reads one input"),
                false => self.apply(&step.kind, inputs, fuse && step.relu_next),
            };
            relu_done = fuse && step.relu_next;
            if let (Some(acts), Some(name)) = (trace.as_deref_mut(), &step.record_as) {
                acts.push(name, out.data());
            }
            slots[i + 1] = Some(out);
        }
        slots
            .pop()
            .flatten()
            .expect("a graph has at least one node")
            .vector()
    }

    /// Step `kind` on `inputs`; a BatchNorm followed by its ReLU when `with_relu`.
    fn apply(&self, kind: &Kind, mut inputs: Vec<Value>, with_relu: bool) -> Value {
        match kind {
            Kind::Conv(i) => Value::Map(conv2d(&self.convs[*i], inputs.remove(0).map())),
            Kind::Norm(i) => {
                let bn = &self.norms[*i];
                let x = inputs.remove(0);
                match with_relu {
                    true => x.unary(|t| batch_norm_relu(bn, t), |t| relu(bn.forward(t))),
                    false => x.unary(|t| batch_norm(bn, t), |t| bn.forward(t)),
                }
            }
            Kind::Linear(i) => Value::Vector(linear(&self.linears[*i], inputs.remove(0).vector())),
            free => apply_free(free, inputs),
        }
    }

    /// The network as a float graph with its BatchNorm nodes (running statistics).
    pub fn to_float_graph(&self) -> Result<FloatGraph, ModelError> {
        let mut tensors = self.named_tensors()?;
        Ok(FloatGraph::from_spec(self.plan.spec.clone(), |name, _| {
            tensors.remove(name).ok_or_else(|| GraphError::Value {
                node: name.to_owned(),
                message: "the network holds no such tensor".into(),
            })
        })?)
    }

    /// The graph for inference and quantization: [`GraphNet::to_float_graph`] with every
    /// BatchNorm folded ([`FloatGraph::fold_batch_norms`]).
    pub fn to_inference_graph(&self) -> Result<FloatGraph, ModelError> {
        Ok(self.to_float_graph()?.fold_batch_norms()?)
    }

    /// Every stored tensor under its graph name (`conv1.weight`, `bn1.running_var`).
    fn named_tensors(&self) -> Result<HashMap<String, TensorBuf<f32>>, ModelError> {
        let mut out = HashMap::new();
        for (node, step) in self.plan.spec.nodes.iter().zip(&self.plan.steps) {
            let mut put = |suffix: &str, shape: Vec<usize>, data: Vec<f32>| {
                let t = TensorBuf::new(shape, data)?;
                out.insert(format!("{}.{suffix}", node.name), t);
                Ok::<_, ModelError>(())
            };
            match step.kind {
                Kind::Conv(i) => {
                    let conv = &self.convs[i];
                    put(
                        "weight",
                        conv.weight.dims().to_vec(),
                        host(conv.weight.val())?,
                    )?;
                    if let Some(b) = &conv.bias {
                        put("bias", b.dims().to_vec(), host(b.val())?)?;
                    }
                }
                Kind::Linear(i) => {
                    let linear = &self.linears[i];
                    let [d_in, d_out] = linear.weight.dims();
                    let weight = transpose(&host(linear.weight.val())?, d_in, d_out);
                    put("weight", vec![d_out, d_in], weight)?;
                    if let Some(b) = &linear.bias {
                        put("bias", vec![d_out], host(b.val())?)?;
                    }
                }
                Kind::Norm(i) => {
                    let bn = &self.norms[i];
                    let c = bn.gamma.dims().to_vec();
                    put("weight", c.clone(), host(bn.gamma.val())?)?;
                    put("bias", c.clone(), host(bn.beta.val())?)?;
                    put("running_mean", c.clone(), host(bn.running_mean.value())?)?;
                    put("running_var", c, host(bn.running_var.value())?)?;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The network's output must be one vector of class scores per sample; its width.
fn check_output(graph: &FloatGraph) -> Result<usize, ModelError> {
    let out = graph.output();
    match graph.shape(&out.name) {
        Some(&[classes]) => Ok(classes),
        shape => Err(ModelError::GraphLayout(format!(
            "the output node `{}` has shape {shape:?}, expected one vector of class scores",
            out.name
        ))),
    }
}

/// The initial value of tensor `tensor` (`weight`, `bias`, `running_mean`, ...) of a node
/// of kind `op`; `fan_in` carries a weight's fan-in to the bias drawn after it.
fn initial_tensor(
    name: &str,
    op: Option<&OpSpec>,
    tensor: &str,
    shape: &[usize],
    fan_in: &mut usize,
    rng: &mut SplitMix64,
) -> Result<TensorBuf<f32>, GraphError> {
    let n: usize = shape.iter().product();
    let mut draw = |count: usize, fan: usize| {
        let bound = 1.0 / (fan.max(1) as f32).sqrt();
        (0..count)
            .map(|_| rng.symmetric(bound))
            .collect::<Vec<f32>>()
    };
    let data = match (op, tensor) {
        (Some(OpSpec::Conv2d { .. }), "weight") => {
            *fan_in = shape[1..].iter().product();
            draw(n, *fan_in)
        }
        (Some(OpSpec::Linear { .. }), "weight") => {
            // Drawn in burn's [in, out] order, stored [out, in].
            let (d_out, d_in) = (shape[0], shape[1]);
            *fan_in = d_in;
            transpose(&draw(n, d_in), d_in, d_out)
        }
        (Some(OpSpec::Conv2d { .. } | OpSpec::Linear { .. }), "bias") => draw(n, *fan_in),
        (Some(OpSpec::BatchNorm { .. }), "weight" | "running_var") => vec![1.0; n],
        _ => vec![0.0; n],
    };
    graph_tensor(name, shape, data)
}

/// A tensor for [`FloatGraph::from_spec`]; `name` is the tensor's graph name.
fn graph_tensor(name: &str, shape: &[usize], data: Vec<f32>) -> Result<TensorBuf<f32>, GraphError> {
    TensorBuf::new(shape.to_vec(), data).map_err(|e| GraphError::Value {
        node: name.to_owned(),
        message: e.to_string(),
    })
}

/// `module` with its parameters numbered 0, 1, 2, ... in visiting order. burn gives each
/// new parameter a random id, and checkpoint files (model and optimizer state) record the
/// ids: numbered ids make two runs of one seed write identical checkpoints.
pub fn number_params<M: Module>(module: M) -> M {
    module.map(&mut ParamNumbering(0))
}

struct ParamNumbering(u64);

impl ParamNumbering {
    fn next(&mut self) -> ParamId {
        self.0 += 1;
        ParamId::from(self.0 - 1)
    }
}

impl ModuleMapper for ParamNumbering {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = self.next();
        param
    }
    fn map_int<const D: usize>(
        &mut self,
        mut param: Param<Tensor<D, Int>>,
    ) -> Param<Tensor<D, Int>> {
        param.id = self.next();
        param
    }
    fn map_bool<const D: usize>(
        &mut self,
        mut param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        param.id = self.next();
        param
    }
    fn map_flag(&mut self, mut flag: Param<Flag>) -> Param<Flag> {
        flag.id = self.next();
        flag
    }
}

fn param<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_data(TensorData::new(values, shape), device)
}

fn bias_param(bias: &Option<TensorBuf<f32>>, device: &Device) -> Option<Param<Tensor<1>>> {
    bias.as_ref()
        .map(|b| param(b.data().to_vec(), [b.len()], device))
}

fn burn_conv(c: &graph::Conv2d, device: &Device) -> Result<Conv2d, ModelError> {
    let shape: [usize; 4] = c.weight.shape().try_into().map_err(|_| {
        ModelError::GraphLayout(format!("conv weight of shape {:?}", c.weight.shape()))
    })?;
    let [ph, pw] = c.padding;
    Ok(Conv2d {
        weight: param(c.weight.data().to_vec(), shape, device),
        bias: bias_param(&c.bias, device),
        stride: c.stride,
        kernel_size: c.kernel(),
        dilation: [1, 1],
        groups: c.groups,
        padding: PaddingConfig2d::Explicit(ph, pw, ph, pw),
    })
}

fn burn_linear(l: &graph::Linear, device: &Device) -> Linear {
    let (d_out, d_in) = (l.out_features(), l.in_features());
    Linear {
        weight: param(
            transpose(l.weight.data(), d_out, d_in),
            [d_in, d_out],
            device,
        ),
        bias: bias_param(&l.bias, device),
    }
}

fn burn_batch_norm(bn: &graph::BatchNorm, device: &Device) -> BatchNorm {
    let c = bn.channels();
    let tensor =
        |t: &TensorBuf<f32>| Tensor::from_data(TensorData::new(t.data().to_vec(), [c]), device);
    BatchNorm {
        gamma: param(bn.gamma.data().to_vec(), [c], device),
        beta: param(bn.beta.data().to_vec(), [c], device),
        training: burn::module::Param::from_bool(true),
        running_mean: RunningState::new(tensor(&bn.mean)),
        running_var: RunningState::new(tensor(&bn.var)),
        momentum: 0.1,
        epsilon: decimal_f64(bn.eps),
    }
}

/// The f64 nearest to the shortest decimal that reads back as `x` (1e-5 for the f32
/// nearest 1e-5), so an epsilon written as a decimal keeps its value in f64.
fn decimal_f64(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

fn parameter_free(op: &OpSpec) -> Option<Kind> {
    let padding = |p: [usize; 2]| PaddingConfig2d::Explicit(p[0], p[1], p[0], p[1]);
    Some(match *op {
        OpSpec::Relu => Kind::Relu,
        OpSpec::Clip { min, max } => Kind::Clip { min, max },
        OpSpec::MaxPool2d {
            kernel,
            stride,
            padding: p,
        } => Kind::MaxPool(MaxPool2d {
            stride,
            kernel_size: kernel,
            padding: padding(p),
            dilation: [1, 1],
            ceil_mode: false,
        }),
        OpSpec::AvgPool2d {
            kernel,
            stride,
            padding: p,
            count_include_pad,
        } => Kind::AvgPool(AvgPool2d {
            stride,
            kernel_size: kernel,
            padding: padding(p),
            count_include_pad,
            ceil_mode: false,
        }),
        OpSpec::GlobalAvgPool => Kind::GlobalAvgPool,
        OpSpec::Add => Kind::Add,
        OpSpec::Concat => Kind::Concat,
        OpSpec::Flatten => Kind::Flatten,
        OpSpec::Conv2d { .. } | OpSpec::BatchNorm { .. } | OpSpec::Linear { .. } => return None,
    })
}

/// The output of the parameter-free operator `op` (ReLU, clip, pools, add, concat,
/// flatten) on `inputs` in the graph's order, as [`GraphNet`] computes it; `None` for an
/// operator with parameters or a count of inputs it does not take.
pub fn parameter_free_forward(op: &OpSpec, inputs: Vec<Value>) -> Option<Value> {
    let arity_fits = match op {
        OpSpec::Add => inputs.len() == 2,
        OpSpec::Concat => !inputs.is_empty(),
        _ => inputs.len() == 1,
    };
    arity_fits.then_some(())?;
    Some(apply_free(&parameter_free(op)?, inputs))
}

/// A parameter-free step on its inputs (as many as the graph's validation allows).
fn apply_free(kind: &Kind, mut inputs: Vec<Value>) -> Value {
    // `remove(0)` keeps the order of the others (a concatenation reads them in order).
    let x = inputs.remove(0);
    match kind {
        Kind::Relu => x.unary(relu, relu),
        &Kind::Clip { min, max } => x.unary(|t| t.clamp(min, max), |t| t.clamp(min, max)),
        Kind::MaxPool(p) => Value::Map(max_pool2d(p, x.map())),
        Kind::AvgPool(p) => Value::Map(p.forward(x.map())),
        Kind::GlobalAvgPool => {
            let [b, c, h, w] = x.clone().map().dims();
            Value::Map(
                x.map()
                    .reshape([b, c, h * w])
                    .mean_dim(2)
                    .reshape([b, c, 1, 1]),
            )
        }
        Kind::Add => {
            let y = inputs.remove(0);
            match x {
                Value::Map(t) => Value::Map(t + y.map()),
                Value::Vector(t) => Value::Vector(t + y.vector()),
            }
        }
        Kind::Concat => {
            inputs.insert(0, x);
            Value::Map(Tensor::cat(inputs.into_iter().map(Value::map).collect(), 1))
        }
        Kind::Flatten => Value::Vector(x.vector()),
        Kind::Conv(_) | Kind::Norm(_) | Kind::Linear(_) => {
            unreachable!("layers are applied by their network")
        }
    }
}

impl Plan {
    /// `kinds` is aligned with `spec.nodes` (topological order).
    fn new(spec: GraphSpec, kinds: Vec<Kind>, classes: usize) -> Self {
        let slot_of: HashMap<&str, usize> = std::iter::once((INPUT, 0))
            .chain(
                spec.nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.name.as_str(), i + 1)),
            )
            .collect();
        let slot = |name: &String| slot_of.get(name.as_str()).copied().unwrap_or(0);
        let mut last_reader = vec![usize::MAX; spec.nodes.len() + 1];
        for (i, node) in spec.nodes.iter().enumerate() {
            for input in &node.inputs {
                last_reader[slot(input)] = i;
            }
        }
        let folded_into = folded_batch_norms(&spec);
        let mut steps = spec
            .nodes
            .iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (node, kind))| {
                let inputs: Vec<usize> = node.inputs.iter().map(slot).collect();
                // A slot read twice by one node is moved only at its last occurrence.
                let last_read = inputs
                    .iter()
                    .enumerate()
                    .map(|(k, &s)| last_reader[s] == i && !inputs[k + 1..].contains(&s))
                    .collect();
                let record_as = match folded_into.get(node.name.as_str()) {
                    Some(None) => None,
                    Some(Some(layer)) => Some((*layer).to_owned()),
                    None => Some(node.name.clone()),
                };
                Step {
                    inputs,
                    last_read,
                    kind,
                    record_as,
                    relu_next: false,
                }
            })
            .collect::<Vec<Step>>();
        let readers = |of: usize| {
            let inputs = spec.nodes.iter().flat_map(|n| &n.inputs);
            inputs.filter(|&input| slot(input) == of).count()
        };
        mark_relus_after_norms(&mut steps, readers);
        Self {
            spec,
            classes,
            steps,
        }
    }
}

/// Marks each BatchNorm whose only reader is the ReLU right after it ([`Step::relu_next`]);
/// `readers(slot)` counts the steps that read a slot.
fn mark_relus_after_norms(steps: &mut [Step], readers: impl Fn(usize) -> usize) {
    for i in 1..steps.len() {
        // Step `i - 1` writes slot `i`.
        steps[i - 1].relu_next = matches!(steps[i - 1].kind, Kind::Norm(_))
            && matches!(steps[i].kind, Kind::Relu)
            && steps[i].inputs == [i]
            && readers(i) == 1;
    }
}

/// The BatchNorms that folding merges into the layer before them, as
/// `bn name -> Some(layer name)` plus `layer name -> None` (recorded under the BatchNorm).
fn folded_batch_norms(spec: &GraphSpec) -> HashMap<&str, Option<&str>> {
    let mut out = HashMap::new();
    for node in &spec.nodes {
        let OpSpec::BatchNorm { .. } = node.op else {
            continue;
        };
        let input = node.inputs[0].as_str();
        let weighted = spec.nodes.iter().any(|n| {
            n.name == input && matches!(n.op, OpSpec::Conv2d { .. } | OpSpec::Linear { .. })
        });
        let readers = spec
            .nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == input))
            .count();
        if weighted && readers == 1 {
            out.insert(node.name.as_str(), Some(input));
            out.insert(input, None);
        }
    }
    out
}
