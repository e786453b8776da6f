//! The graph's on-disk description (JSON) and its weights (safetensors).
//!
//! Format version 2:
//! ```json
//! { "format_version": 2, "input_shape": [3, 32, 32],
//!   "nodes": [ { "name": "conv1", "inputs": ["input"],
//!                "op": { "type": "conv2d", "in_channels": 3, "out_channels": 16,
//!                        "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
//!                        "groups": 1, "bias": false } }, ... ] }
//! ```
//! Unknown keys are refused (a key such as `dilation` would change the meaning). Version 1
//! files (an ordered chain with square kernels: `{"name", "op": "conv2d", "kernel": 3,
//! ...}`) load as the chain they describe.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ops::{AvgPool2d, BatchNorm, Conv2d, Linear, Op, Pool2d};
use super::{FloatGraph, GraphError, Node};
use crate::io::{StoredTensor, TensorArchive, read_json, save_safetensors, write_json_atomic};
use crate::tensor::TensorBuf;

/// Version of the JSON graph description written by this crate.
pub const GRAPH_FORMAT_VERSION: u32 = 2;

/// The first format: a chain of nodes with square kernels.
const CHAIN_FORMAT_VERSION: u32 = 1;

/// A graph's architecture without its weights: what the JSON description holds, and
/// what a trainer builds a network from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphSpec {
    pub format_version: u32,
    /// Per-sample input shape.
    pub input_shape: Vec<usize>,
    pub nodes: Vec<NodeSpec>,
}

/// One node's name, inputs and operator hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub inputs: Vec<String>,
    pub op: OpSpec,
}

/// An operator's hyper-parameters and the shapes of its stored tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OpSpec {
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
        bias: bool,
    },
    BatchNorm {
        channels: usize,
        eps: f32,
    },
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    MaxPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    AvgPool2d {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Add,
    Concat,
    Flatten,
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
}

/// Only the version, read first to choose the parser.
#[derive(Deserialize)]
struct Version {
    format_version: u32,
}

pub(super) fn save(graph: &FloatGraph, json: &Path, weights: &Path) -> Result<(), GraphError> {
    let tensors = graph
        .nodes()
        .iter()
        .flat_map(stored_tensors)
        .collect::<Vec<_>>();
    save_safetensors(weights, &tensors, None)?;
    write_json_atomic(json, &graph.spec())?;
    Ok(())
}

/// The JSON description of `graph` (without weights), as [`FloatGraph::save`] writes it.
pub(super) fn description(graph: &FloatGraph) -> String {
    serde_json::to_string(&graph.spec()).expect("a graph description serializes")
}

impl FloatGraph {
    /// The architecture without the weights.
    pub fn spec(&self) -> GraphSpec {
        GraphSpec {
            format_version: GRAPH_FORMAT_VERSION,
            input_shape: self.input_shape().to_vec(),
            nodes: self
                .nodes()
                .iter()
                .map(|n| NodeSpec {
                    name: n.name.clone(),
                    inputs: n.inputs.clone(),
                    op: OpSpec::of(&n.op),
                })
                .collect(),
        }
    }

    /// The graph of architecture `spec` with tensors from `tensor(name, shape)`, asked for
    /// under their stored names (`conv1.weight`, `bn1.running_var`) with the shape the
    /// description implies.
    pub fn from_spec(
        spec: GraphSpec,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<TensorBuf<f32>, GraphError>,
    ) -> Result<FloatGraph, GraphError> {
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = spec.nodes.iter().find(|n| !names.insert(n.name.as_str())) {
            return Err(GraphError::DuplicateName(twice.name.clone()));
        }
        let nodes = spec
            .nodes
            .into_iter()
            .map(|n| {
                let get =
                    |suffix: &str, shape: &[usize]| tensor(&format!("{}.{suffix}", n.name), shape);
                Ok(Node {
                    op: n.op.load(&n.name, get)?,
                    name: n.name,
                    inputs: n.inputs,
                })
            })
            .collect::<Result<Vec<_>, GraphError>>()?;
        FloatGraph::new(spec.input_shape, nodes)
    }
}

pub(super) fn load(json: &Path, weights: &Path) -> Result<FloatGraph, GraphError> {
    read(json, weights).map_err(|e| match e {
        GraphError::File(e) => GraphError::File(e),
        e => GraphError::InFile {
            path: json.to_path_buf(),
            source: Box::new(e),
        },
    })
}

fn read(json: &Path, weights: &Path) -> Result<FloatGraph, GraphError> {
    let Version { format_version } = read_json(json)?;
    let spec = match format_version {
        GRAPH_FORMAT_VERSION => read_json::<GraphSpec>(json)?,
        CHAIN_FORMAT_VERSION => read_json::<v1::ChainSpec>(json)?.migrate(),
        found => return Err(GraphError::Version { found }),
    };
    let archive = TensorArchive::open(weights)?;
    FloatGraph::from_spec(spec, |name, shape| {
        Ok(archive.get::<f32>(name, Some(shape))?)
    })
}

/// The safetensors entries of one node, with PyTorch's names.
fn stored_tensors(node: &Node) -> Vec<(String, StoredTensor)> {
    let named = |suffix: &str, t: &TensorBuf<f32>| {
        (
            format!("{}.{suffix}", node.name),
            StoredTensor::from_tensor(t),
        )
    };
    match &node.op {
        Op::Conv2d(Conv2d { weight, bias, .. }) | Op::Linear(Linear { weight, bias }) => {
            std::iter::once(named("weight", weight))
                .chain(bias.iter().map(|b| named("bias", b)))
                .collect()
        }
        Op::BatchNorm(bn) => vec![
            named("weight", &bn.gamma),
            named("bias", &bn.beta),
            named("running_mean", &bn.mean),
            named("running_var", &bn.var),
        ],
        _ => Vec::new(),
    }
}

impl OpSpec {
    /// The hyper-parameters of `op`, without its tensors.
    pub fn of(op: &Op) -> Self {
        match op {
            Op::Conv2d(c) => OpSpec::Conv2d {
                in_channels: c.in_channels(),
                out_channels: c.out_channels(),
                kernel: c.kernel(),
                stride: c.stride,
                padding: c.padding,
                groups: c.groups,
                bias: c.bias.is_some(),
            },
            Op::BatchNorm(bn) => OpSpec::BatchNorm {
                channels: bn.channels(),
                eps: bn.eps,
            },
            Op::Relu => OpSpec::Relu,
            &Op::Clip { min, max } => OpSpec::Clip { min, max },
            Op::MaxPool2d(p) => OpSpec::MaxPool2d {
                kernel: p.kernel,
                stride: p.stride,
                padding: p.padding,
            },
            Op::AvgPool2d(a) => OpSpec::AvgPool2d {
                kernel: a.window.kernel,
                stride: a.window.stride,
                padding: a.window.padding,
                count_include_pad: a.count_include_pad,
            },
            Op::GlobalAvgPool => OpSpec::GlobalAvgPool,
            Op::Add => OpSpec::Add,
            Op::Concat => OpSpec::Concat,
            Op::Flatten => OpSpec::Flatten,
            Op::Linear(l) => OpSpec::Linear {
                in_features: l.in_features(),
                out_features: l.out_features(),
                bias: l.bias.is_some(),
            },
        }
    }

    /// The operator with its tensors from `tensor(suffix, shape)`, each of the shape this
    /// description implies.
    fn load(
        self,
        node: &str,
        mut tensor: impl FnMut(&str, &[usize]) -> Result<TensorBuf<f32>, GraphError>,
    ) -> Result<Op, GraphError> {
        Ok(match self {
            OpSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
                groups,
                bias: has_bias,
            } => Op::Conv2d(Conv2d {
                weight: tensor(
                    "weight",
                    &[
                        out_channels,
                        groups_of(node, in_channels, groups)?,
                        kernel[0],
                        kernel[1],
                    ],
                )?,
                bias: match has_bias {
                    true => Some(tensor("bias", &[out_channels])?),
                    false => None,
                },
                stride,
                padding,
                groups,
            }),
            OpSpec::BatchNorm { channels, eps } => Op::BatchNorm(BatchNorm {
                gamma: tensor("weight", &[channels])?,
                beta: tensor("bias", &[channels])?,
                mean: tensor("running_mean", &[channels])?,
                var: tensor("running_var", &[channels])?,
                eps,
            }),
            OpSpec::Relu => Op::Relu,
            OpSpec::Clip { min, max } => Op::Clip { min, max },
            OpSpec::MaxPool2d {
                kernel,
                stride,
                padding,
            } => Op::MaxPool2d(Pool2d {
                kernel,
                stride,
                padding,
            }),
            OpSpec::AvgPool2d {
                kernel,
                stride,
                padding,
                count_include_pad,
            } => Op::AvgPool2d(AvgPool2d {
                window: Pool2d {
                    kernel,
                    stride,
                    padding,
                },
                count_include_pad,
            }),
            OpSpec::GlobalAvgPool => Op::GlobalAvgPool,
            OpSpec::Add => Op::Add,
            OpSpec::Concat => Op::Concat,
            OpSpec::Flatten => Op::Flatten,
            OpSpec::Linear {
                in_features,
                out_features,
                bias: has_bias,
            } => Op::Linear(Linear {
                weight: tensor("weight", &[out_features, in_features])?,
                bias: match has_bias {
                    true => Some(tensor("bias", &[out_features])?),
                    false => None,
                },
            }),
        })
    }
}

/// Input channels per group, checking that the groups divide them.
fn groups_of(node: &str, in_channels: usize, groups: usize) -> Result<usize, GraphError> {
    if groups == 0 || !in_channels.is_multiple_of(groups) {
        return Err(GraphError::Shape {
            node: node.to_owned(),
            message: format!("groups {groups} must divide the {in_channels} input channels"),
        });
    }
    Ok(in_channels / groups)
}

/// Format version 1: an ordered chain of conv / ReLU / max-pool / flatten / linear with
/// square kernels and a bias on every weighted node.
mod v1 {
    use serde::Deserialize;

    use super::{GraphSpec, NodeSpec, OpSpec};
    use crate::graph::INPUT;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct ChainSpec {
        format_version: u32,
        input_shape: Vec<usize>,
        nodes: Vec<ChainNode>,
    }

    #[derive(Debug, Deserialize)]
    struct ChainNode {
        name: String,
        #[serde(flatten)]
        op: ChainOp,
    }

    #[derive(Debug, Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    enum ChainOp {
        Conv2d {
            in_channels: usize,
            out_channels: usize,
            kernel: usize,
            stride: usize,
            padding: usize,
        },
        Relu,
        MaxPool2d {
            kernel: usize,
            stride: usize,
        },
        Flatten,
        Linear {
            in_features: usize,
            out_features: usize,
        },
    }

    impl ChainSpec {
        /// The same network as a version-2 description: each node reads the previous.
        pub(super) fn migrate(self) -> GraphSpec {
            let mut previous = INPUT.to_owned();
            let nodes = self
                .nodes
                .into_iter()
                .map(|n| NodeSpec {
                    inputs: vec![std::mem::replace(&mut previous, n.name.clone())],
                    name: n.name,
                    op: n.op.migrate(),
                })
                .collect();
            GraphSpec {
                format_version: self.format_version,
                input_shape: self.input_shape,
                nodes,
            }
        }
    }

    impl ChainOp {
        fn migrate(self) -> OpSpec {
            match self {
                ChainOp::Conv2d {
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                } => OpSpec::Conv2d {
                    in_channels,
                    out_channels,
                    kernel: [kernel; 2],
                    stride: [stride; 2],
                    padding: [padding; 2],
                    groups: 1,
                    bias: true,
                },
                ChainOp::Relu => OpSpec::Relu,
                ChainOp::MaxPool2d { kernel, stride } => OpSpec::MaxPool2d {
                    kernel: [kernel; 2],
                    stride: [stride; 2],
                    padding: [0; 2],
                },
                ChainOp::Flatten => OpSpec::Flatten,
                ChainOp::Linear {
                    in_features,
                    out_features,
                } => OpSpec::Linear {
                    in_features,
                    out_features,
                    bias: true,
                },
            }
        }
    }
}
