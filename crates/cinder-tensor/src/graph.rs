//! The backend-neutral float graph: the hand-off from training to everything else.
//!
//! A trained model is an ordered list of named nodes (convolution, ReLU, max-pool,
//! flatten, linear). Weights use the layout every other framework uses: convolution
//! `[out, in, kh, kw]`, linear `[out, in]`. On disk a graph is a JSON description plus a
//! safetensors file holding `<name>.weight` and `<name>.bias` for each weighted node,
//! so other tools can load the same trained weights.

use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::io::{
    FileError, StoredTensor, TensorArchive, read_json, save_safetensors, write_json_atomic,
};
use crate::tensor::{Tensor, TensorBuf};

/// Version of the JSON graph description; bumped on incompatible changes.
pub const GRAPH_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum GraphError {
    #[error("node `{node}`: {message}")]
    Shape { node: String, message: String },
    #[error("node name `{0}` is used twice")]
    DuplicateName(String),
    #[error("graph format version {found} is not supported (expected {GRAPH_FORMAT_VERSION})")]
    Version { found: u32 },
    #[error(transparent)]
    File(#[from] FileError),
}

/// A 2-D convolution with square kernel, stride and zero padding.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// `[out_channels, in_channels, kernel, kernel]`
    pub weight: TensorBuf<f32>,
    /// `[out_channels]`
    pub bias: TensorBuf<f32>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn out_channels(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn in_channels(&self) -> usize {
        self.weight.shape()[1]
    }
    pub fn kernel(&self) -> usize {
        self.weight.shape()[2]
    }
}

/// A fully connected layer `y = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[out_features, in_features]`
    pub weight: TensorBuf<f32>,
    /// `[out_features]`
    pub bias: TensorBuf<f32>,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv2d(Conv2d),
    Relu,
    MaxPool2d { kernel: usize, stride: usize },
    Flatten,
    Linear(Linear),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Stable path name (`conv1`, `relu1`, `fc2`): keys calibration tables and configs.
    pub name: String,
    pub op: Op,
}

/// An ordered float network over one sample of shape `input_shape` (`[C, H, W]`).
#[derive(Debug, Clone, PartialEq)]
pub struct FloatGraph {
    input_shape: Vec<usize>,
    nodes: Vec<Node>,
}

impl FloatGraph {
    /// Builds a graph, checking names are unique and every node's shapes chain.
    pub fn new(input_shape: Vec<usize>, nodes: Vec<Node>) -> Result<Self, GraphError> {
        let graph = Self { input_shape, nodes };
        graph.validate()?;
        Ok(graph)
    }

    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Per-sample output shape of every node, in order.
    pub fn output_shapes(&self) -> Result<Vec<Vec<usize>>, GraphError> {
        let mut shape = self.input_shape.clone();
        let mut out = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            shape = node_output_shape(node, &shape)?;
            out.push(shape.clone());
        }
        Ok(out)
    }

    fn validate(&self) -> Result<(), GraphError> {
        let mut seen = std::collections::HashSet::new();
        for node in &self.nodes {
            if !seen.insert(node.name.as_str()) {
                return Err(GraphError::DuplicateName(node.name.clone()));
            }
        }
        self.output_shapes().map(drop)
    }

    /// Writes the description (`json`) and the weights (`weights`), each atomically.
    pub fn save(&self, json: &Path, weights: &Path) -> Result<(), GraphError> {
        let mut tensors = Vec::new();
        for node in &self.nodes {
            if let Some((w, b)) = node.op.weight_and_bias() {
                tensors.push((
                    format!("{}.weight", node.name),
                    StoredTensor::from_tensor(w),
                ));
                tensors.push((format!("{}.bias", node.name), StoredTensor::from_tensor(b)));
            }
        }
        save_safetensors(weights, &tensors, None)?;
        write_json_atomic(json, &self.spec())?;
        Ok(())
    }

    /// Reads a graph written by [`FloatGraph::save`] (or by another tool in the same
    /// layout), checking every tensor's dtype and shape against the description.
    pub fn load(json: &Path, weights: &Path) -> Result<Self, GraphError> {
        let spec: GraphSpec = read_json(json)?;
        if spec.format_version != GRAPH_FORMAT_VERSION {
            return Err(GraphError::Version {
                found: spec.format_version,
            });
        }
        let archive = TensorArchive::open(weights)?;
        let nodes = spec
            .nodes
            .into_iter()
            .map(|n| n.load(&archive))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(spec.input_shape, nodes)
    }

    fn spec(&self) -> GraphSpec {
        GraphSpec {
            format_version: GRAPH_FORMAT_VERSION,
            input_shape: self.input_shape.clone(),
            nodes: self.nodes.iter().map(NodeSpec::of).collect(),
        }
    }
}

impl Op {
    /// The weight and bias of a weighted op.
    pub fn weight_and_bias(&self) -> Option<(&TensorBuf<f32>, &TensorBuf<f32>)> {
        match self {
            Op::Conv2d(c) => Some((&c.weight, &c.bias)),
            Op::Linear(l) => Some((&l.weight, &l.bias)),
            _ => None,
        }
    }
}

fn shape_error(node: &Node, message: String) -> GraphError {
    GraphError::Shape {
        node: node.name.clone(),
        message,
    }
}

/// Spatial size after a window of `kernel` with `stride` over `size + 2*padding`.
fn window_output(size: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = size + 2 * padding;
    (stride > 0 && kernel > 0 && padded >= kernel).then(|| (padded - kernel) / stride + 1)
}

fn node_output_shape(node: &Node, input: &[usize]) -> Result<Vec<usize>, GraphError> {
    let spatial = |kernel, stride, padding, channels| match input {
        [_, h, w] => match (
            window_output(*h, kernel, stride, padding),
            window_output(*w, kernel, stride, padding),
        ) {
            (Some(oh), Some(ow)) => Ok(vec![channels, oh, ow]),
            _ => Err(shape_error(
                node,
                format!(
                    "kernel {kernel} stride {stride} padding {padding} does not fit input {input:?}"
                ),
            )),
        },
        _ => Err(shape_error(
            node,
            format!("expected a [C, H, W] input, got {input:?}"),
        )),
    };
    match &node.op {
        Op::Conv2d(c) => {
            let w = c.weight.shape();
            if w.len() != 4 || w[2] != w[3] || c.bias.shape() != [w[0]] {
                return Err(shape_error(
                    node,
                    format!(
                        "weight {w:?} / bias {:?}: expected [out, in, k, k] and [out]",
                        c.bias.shape()
                    ),
                ));
            }
            if input.first() != Some(&w[1]) {
                return Err(shape_error(
                    node,
                    format!(
                        "weight {w:?} expects {} input channels, input is {input:?}",
                        w[1]
                    ),
                ));
            }
            spatial(w[2], c.stride, c.padding, w[0])
        }
        Op::MaxPool2d { kernel, stride } => {
            spatial(*kernel, *stride, 0, input.first().copied().unwrap_or(0))
        }
        Op::Relu => Ok(input.to_vec()),
        Op::Flatten => Ok(vec![input.iter().product()]),
        Op::Linear(l) => {
            let w = l.weight.shape();
            if w.len() != 2 || l.bias.shape() != [w[0]] {
                return Err(shape_error(
                    node,
                    format!(
                        "weight {w:?} / bias {:?}: expected [out, in] and [out]",
                        l.bias.shape()
                    ),
                ));
            }
            if input != [w[1]] {
                return Err(shape_error(
                    node,
                    format!("weight {w:?} expects [{}] input, got {input:?}", w[1]),
                ));
            }
            Ok(vec![w[0]])
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct GraphSpec {
    format_version: u32,
    input_shape: Vec<usize>,
    nodes: Vec<NodeSpec>,
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeSpec {
    name: String,
    #[serde(flatten)]
    op: OpSpec,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum OpSpec {
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

impl NodeSpec {
    fn of(node: &Node) -> Self {
        let op = match &node.op {
            Op::Conv2d(c) => OpSpec::Conv2d {
                in_channels: c.in_channels(),
                out_channels: c.out_channels(),
                kernel: c.kernel(),
                stride: c.stride,
                padding: c.padding,
            },
            Op::Relu => OpSpec::Relu,
            Op::MaxPool2d { kernel, stride } => OpSpec::MaxPool2d {
                kernel: *kernel,
                stride: *stride,
            },
            Op::Flatten => OpSpec::Flatten,
            Op::Linear(l) => OpSpec::Linear {
                in_features: l.in_features(),
                out_features: l.out_features(),
            },
        };
        Self {
            name: node.name.clone(),
            op,
        }
    }

    fn load(self, archive: &TensorArchive) -> Result<Node, FileError> {
        let tensor = |suffix: &str, shape: &[usize]| {
            archive.get::<f32>(&format!("{}.{suffix}", self.name), Some(shape))
        };
        let op = match self.op {
            OpSpec::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                padding,
            } => Op::Conv2d(Conv2d {
                weight: tensor("weight", &[out_channels, in_channels, kernel, kernel])?,
                bias: tensor("bias", &[out_channels])?,
                stride,
                padding,
            }),
            OpSpec::Relu => Op::Relu,
            OpSpec::MaxPool2d { kernel, stride } => Op::MaxPool2d { kernel, stride },
            OpSpec::Flatten => Op::Flatten,
            OpSpec::Linear {
                in_features,
                out_features,
            } => Op::Linear(Linear {
                weight: tensor("weight", &[out_features, in_features])?,
                bias: tensor("bias", &[out_features])?,
            }),
        };
        Ok(Node {
            name: self.name,
            op,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: Vec<usize>) -> TensorBuf<f32> {
        let n = shape.iter().product::<usize>();
        TensorBuf::new(shape, (0..n).map(|i| i as f32 * 0.01 - 0.3).collect()).unwrap()
    }

    fn small_graph() -> FloatGraph {
        let node = |name: &str, op| Node {
            name: name.into(),
            op,
        };
        FloatGraph::new(
            vec![3, 8, 8],
            vec![
                node(
                    "conv1",
                    Op::Conv2d(Conv2d {
                        weight: ramp(vec![4, 3, 3, 3]),
                        bias: ramp(vec![4]),
                        stride: 1,
                        padding: 1,
                    }),
                ),
                node("relu1", Op::Relu),
                node(
                    "pool1",
                    Op::MaxPool2d {
                        kernel: 2,
                        stride: 2,
                    },
                ),
                node("flatten", Op::Flatten),
                node(
                    "fc1",
                    Op::Linear(Linear {
                        weight: ramp(vec![10, 64]),
                        bias: ramp(vec![10]),
                    }),
                ),
            ],
        )
        .unwrap()
    }

    #[test]
    fn shapes_chain() {
        let shapes = small_graph().output_shapes().unwrap();
        assert_eq!(
            shapes,
            vec![
                vec![4, 8, 8],
                vec![4, 8, 8],
                vec![4, 4, 4],
                vec![64],
                vec![10]
            ]
        );
    }

    #[test]
    fn mismatched_shapes_are_rejected() {
        let g = small_graph();
        let mut nodes = g.nodes().to_vec();
        nodes[4].op = Op::Linear(Linear {
            weight: ramp(vec![10, 63]),
            bias: ramp(vec![10]),
        });
        let err = FloatGraph::new(vec![3, 8, 8], nodes).unwrap_err();
        assert!(err.to_string().contains("fc1"), "{err}");
        let mut nodes = g.nodes().to_vec();
        nodes[1].name = "conv1".into();
        assert!(matches!(
            FloatGraph::new(vec![3, 8, 8], nodes),
            Err(GraphError::DuplicateName(_))
        ));
    }

    #[test]
    fn save_load_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (json, weights) = (dir.path().join("g.json"), dir.path().join("g.safetensors"));
        let g = small_graph();
        g.save(&json, &weights).unwrap();
        assert_eq!(FloatGraph::load(&json, &weights).unwrap(), g);
        let archive = TensorArchive::open(&weights).unwrap();
        assert_eq!(
            archive.names().unwrap(),
            vec!["conv1.bias", "conv1.weight", "fc1.bias", "fc1.weight"]
        );

        let text = std::fs::read_to_string(&json).unwrap();
        std::fs::write(
            &json,
            text.replace("\"out_features\": 10", "\"out_features\": 11"),
        )
        .unwrap();
        let err = FloatGraph::load(&json, &weights).unwrap_err();
        assert!(
            err.to_string().contains("fc1.weight") && err.to_string().contains("g.safetensors"),
            "{err}"
        );
        std::fs::write(
            &json,
            text.replace("\"format_version\": 1", "\"format_version\": 9"),
        )
        .unwrap();
        assert!(matches!(
            FloatGraph::load(&json, &weights),
            Err(GraphError::Version { found: 9 })
        ));
    }
}
