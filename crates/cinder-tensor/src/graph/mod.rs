//! The backend-neutral float graph: the hand-off from training (or from another tool) to
//! calibration, quantization and the runtime.
//!
//! A graph is a directed acyclic graph of named nodes over one input tensor, named
//! [`INPUT`], of per-sample shape `[C, H, W]`. Each node names the tensors it reads (the
//! input or other nodes' outputs); nodes are kept in topological order and the last one is
//! the model's output. Building a graph sorts the nodes, checks names, arities and every
//! shape, and reports the first problem with the node's name.
//!
//! On disk a graph is a JSON description ([`GraphSpec`]) plus a safetensors file holding
//! `<name>.weight` and `<name>.bias` for each weighted node (batch-norm nodes hold
//! PyTorch's `weight`, `bias`, `running_mean`, `running_var`), so other tools can load the
//! same trained weights.

mod fold;
mod ops;
mod shape;
mod spec;
pub mod zoo;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::io::FileError;
use crate::tensor::{Tensor, TensorBuf, shape_len};

pub use ops::{AvgPool2d, BatchNorm, Conv2d, Linear, Op, Pool2d};
pub use shape::window_output;
pub use spec::{GRAPH_FORMAT_VERSION, GraphSpec, NodeSpec, OpSpec};

/// The name of the graph's input tensor.
pub const INPUT: &str = "input";

/// The most elements one sample's tensor may have anywhere in a graph (2^31): larger
/// shapes are refused as malformed before anything is allocated for them.
pub const MAX_SAMPLE_ELEMENTS: usize = 1 << 31;

#[derive(Debug, Error)]
pub enum GraphError {
    #[error("node `{node}`: {message}")]
    Shape { node: String, message: String },
    #[error("node `{node}`: {message}")]
    Value { node: String, message: String },
    #[error("node name `{0}` is used twice (names must be unique and differ from `input`)")]
    DuplicateName(String),
    #[error("node `{node}` reads `{input}`, which is neither the graph input nor a node")]
    UnknownInput { node: String, input: String },
    #[error("node `{node}` is on a cycle: a graph must be acyclic")]
    Cycle { node: String },
    #[error("node `{node}` ({op}) takes {expected} inputs, got {got}")]
    Arity {
        node: String,
        op: &'static str,
        expected: String,
        got: usize,
    },
    #[error(
        "node `{node}`'s output is never read: a graph has one output, its last node `{output}`"
    )]
    Unused { node: String, output: String },
    #[error("the graph has no nodes")]
    Empty,
    #[error("input shape {0:?}: expected [C, H, W] or [F] with every dimension > 0")]
    InputShape(Vec<usize>),
    #[error("cannot fold batch-norm `{node}`: {message}")]
    Fold { node: String, message: String },
    #[error("graph format version {found} is not supported (expected 1 or {GRAPH_FORMAT_VERSION})")]
    Version { found: u32 },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{path}: {source}")]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<GraphError>,
    },
}

/// One named node: what it computes and the tensors it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Stable path name (`conv1`, `layer1.0.conv1`): keys weights, calibration tables and
    /// quantization configs.
    pub name: String,
    /// The tensors read, by name: [`INPUT`] or another node's name.
    pub inputs: Vec<String>,
    pub op: Op,
}

impl Node {
    pub fn new(name: impl Into<String>, inputs: &[&str], op: Op) -> Self {
        Self {
            name: name.into(),
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            op,
        }
    }
}

/// A validated float network over one sample of shape `input_shape`.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatGraph {
    input_shape: Vec<usize>,
    nodes: Vec<Node>,
    /// Per-sample output shape of each node, aligned with `nodes`.
    shapes: Vec<Vec<usize>>,
}

impl FloatGraph {
    /// Builds a graph from nodes in any order: sorts them topologically (keeping the given
    /// order where it is free), checks names, arities, reachability and every shape.
    pub fn new(input_shape: Vec<usize>, nodes: Vec<Node>) -> Result<Self, GraphError> {
        check_input_shape(&input_shape)?;
        let nodes = topological_order(nodes)?;
        check_single_output(&nodes)?;
        let shapes = infer_shapes(&input_shape, &nodes)?;
        Ok(Self {
            input_shape,
            nodes,
            shapes,
        })
    }

    /// A chain: each node reads the previous one, the first reads [`INPUT`].
    pub fn chain(input_shape: Vec<usize>, nodes: Vec<(String, Op)>) -> Result<Self, GraphError> {
        let mut previous = INPUT.to_owned();
        let nodes = nodes
            .into_iter()
            .map(|(name, op)| {
                let inputs = vec![std::mem::replace(&mut previous, name.clone())];
                Node { name, inputs, op }
            })
            .collect();
        Self::new(input_shape, nodes)
    }

    /// Per-sample input shape, `[C, H, W]` or `[F]`.
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The nodes in topological order; the last is the output.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node whose output is the model's output.
    pub fn output(&self) -> &Node {
        self.nodes.last().expect("a graph has at least one node")
    }

    /// Per-sample shape of a tensor: [`INPUT`] or a node's output.
    pub fn shape(&self, tensor: &str) -> Option<&[usize]> {
        if tensor == INPUT {
            return Some(&self.input_shape);
        }
        let i = self.nodes.iter().position(|n| n.name == tensor)?;
        Some(&self.shapes[i])
    }

    /// Per-sample output shape of every node, aligned with [`FloatGraph::nodes`].
    pub fn output_shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// The nodes that read `tensor`, in topological order.
    pub fn consumers(&self, tensor: &str) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == tensor))
            .collect()
    }

    /// Whether each node reads exactly the one before it (the first reads the input).
    pub fn is_chain(&self) -> bool {
        let mut previous = INPUT;
        self.nodes.iter().all(|n| {
            let ok = n.inputs.len() == 1 && n.inputs[0] == previous;
            previous = &n.name;
            ok
        })
    }

    pub fn has_batch_norm(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.op, Op::BatchNorm(_)))
    }

    /// Writes the description (`json`) and the weights (`weights`), each atomically.
    pub fn save(&self, json: &Path, weights: &Path) -> Result<(), GraphError> {
        spec::save(self, json, weights)
    }

    /// The JSON description [`FloatGraph::save`] writes, without the weights: equal for
    /// graphs of the same structure.
    pub fn description(&self) -> String {
        spec::description(self)
    }

    /// Reads a graph written by [`FloatGraph::save`] (or by another tool in the same
    /// layout; format version 1 chain files too), checking every tensor's dtype and shape
    /// against the description.
    pub fn load(json: &Path, weights: &Path) -> Result<Self, GraphError> {
        spec::load(json, weights)
    }
}

fn check_input_shape(shape: &[usize]) -> Result<(), GraphError> {
    let fits = shape_len(shape).is_ok_and(|n| n <= MAX_SAMPLE_ELEMENTS);
    if !matches!(shape.len(), 1 | 3) || shape.contains(&0) || !fits {
        return Err(GraphError::InputShape(shape.to_vec()));
    }
    Ok(())
}

/// Kahn's algorithm, taking the earliest ready node in the given order at each step.
fn topological_order(nodes: Vec<Node>) -> Result<Vec<Node>, GraphError> {
    if nodes.is_empty() {
        return Err(GraphError::Empty);
    }
    let mut index = HashMap::new();
    for (i, node) in nodes.iter().enumerate() {
        if node.name == INPUT || index.insert(node.name.as_str(), i).is_some() {
            return Err(GraphError::DuplicateName(node.name.clone()));
        }
    }
    let mut waiting = vec![0usize; nodes.len()];
    let mut readers = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        check_arity(node)?;
        for input in &node.inputs {
            if input == INPUT {
                continue;
            }
            let &producer = index
                .get(input.as_str())
                .ok_or_else(|| GraphError::UnknownInput {
                    node: node.name.clone(),
                    input: input.clone(),
                })?;
            waiting[i] += 1;
            readers[producer].push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..nodes.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &r in &readers[i] {
            waiting[r] -= 1;
            if waiting[r] == 0 {
                ready.insert(r);
            }
        }
    }
    if let Some(stuck) = (0..nodes.len()).find(|&i| waiting[i] > 0) {
        return Err(GraphError::Cycle {
            node: nodes[stuck].name.clone(),
        });
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

fn check_arity(node: &Node) -> Result<(), GraphError> {
    let (min, max) = node.op.arity();
    let got = node.inputs.len();
    if got < min || got > max {
        let expected = match max {
            usize::MAX => format!("at least {min}"),
            _ if min == max => min.to_string(),
            _ => format!("{min} to {max}"),
        };
        return Err(GraphError::Arity {
            node: node.name.clone(),
            op: node.op.kind(),
            expected,
            got,
        });
    }
    Ok(())
}

/// Every node but the last must be read by some node: a graph has one output.
fn check_single_output(nodes: &[Node]) -> Result<(), GraphError> {
    let read: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.inputs.iter().map(String::as_str))
        .collect();
    let output = &nodes[nodes.len() - 1].name;
    match nodes[..nodes.len() - 1]
        .iter()
        .find(|n| !read.contains(n.name.as_str()))
    {
        Some(unused) => Err(GraphError::Unused {
            node: unused.name.clone(),
            output: output.clone(),
        }),
        None => Ok(()),
    }
}

fn infer_shapes(input_shape: &[usize], nodes: &[Node]) -> Result<Vec<Vec<usize>>, GraphError> {
    let mut known: HashMap<&str, Vec<usize>> = HashMap::from([(INPUT, input_shape.to_vec())]);
    let mut shapes = Vec::with_capacity(nodes.len());
    for node in nodes {
        let inputs: Vec<&[usize]> = node
            .inputs
            .iter()
            .map(|i| known[i.as_str()].as_slice())
            .collect();
        check_finite(node)?;
        let out = shape::infer(&node.name, &node.op, &inputs)?;
        if !shape_len(&out).is_ok_and(|n| n <= MAX_SAMPLE_ELEMENTS) {
            return Err(GraphError::Shape {
                node: node.name.clone(),
                message: format!("output shape {out:?} exceeds {MAX_SAMPLE_ELEMENTS} elements"),
            });
        }
        known.insert(&node.name, out.clone());
        shapes.push(out);
    }
    Ok(shapes)
}

/// Weights and statistics must be finite: a NaN would silently poison every output.
fn check_finite(node: &Node) -> Result<(), GraphError> {
    let tensors: Vec<(&str, &TensorBuf<f32>)> = match &node.op {
        Op::Conv2d(Conv2d { weight, bias, .. }) | Op::Linear(Linear { weight, bias }) => {
            std::iter::once(("weight", weight))
                .chain(bias.as_ref().map(|b| ("bias", b)))
                .collect()
        }
        Op::BatchNorm(bn) => vec![
            ("weight", &bn.gamma),
            ("bias", &bn.beta),
            ("running_mean", &bn.mean),
            ("running_var", &bn.var),
        ],
        _ => Vec::new(),
    };
    for (what, tensor) in tensors {
        if let Some(i) = tensor.data().iter().position(|v| !v.is_finite()) {
            return Err(GraphError::Value {
                node: node.name.clone(),
                message: format!(
                    "{what}[{i}] is {}, expected a finite value",
                    tensor.data()[i]
                ),
            });
        }
    }
    if let Op::BatchNorm(bn) = &node.op
        && let Some(i) = bn.var.data().iter().position(|&v| v < 0.0)
    {
        return Err(GraphError::Value {
            node: node.name.clone(),
            message: format!("running_var[{i}] is {}, expected >= 0", bn.var.data()[i]),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
