//! Import: a float ONNX model to a [`FloatGraph`].
//!
//! The importer walks the nodes in the file's (topological) order. Initializers and
//! `Constant` nodes become weights and operands; `Identity` and inference `Dropout` are
//! aliases; the `Add` of a constant after a bias-free `MatMul` / `Gemm` becomes its bias;
//! every other node maps to exactly one graph node, named after the ONNX node (or its
//! output when unnamed), reading the graph input as [`INPUT`]. The graph then checks
//! every shape, and the importer checks that the model's output is the graph's output.

mod ops;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::ops::RangeInclusive;
use std::path::Path;

use cinder_tensor::TensorBuf;
use cinder_tensor::graph::{FloatGraph, INPUT, Node, Op};
use prost::Message;

use crate::attrs::Attrs;
use crate::error::OnnxError;
use crate::proto::tensor_proto::DataType;
use crate::proto::tensor_shape_proto::dimension::Value as DimValue;
use crate::proto::type_proto::Value as TypeValue;
use crate::proto::{GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use crate::tensor;
use ops::{Input, Lowered};

/// The largest file read: protobuf's own limit for one message (2 GiB). Decoding holds the
/// file and the decoded messages, a constant factor of the file's size.
pub const MAX_MODEL_BYTES: u64 = i32::MAX as u64;

/// The opsets of the default domain the importer maps.
pub const SUPPORTED_OPSETS: &str = "13 to 21";
const OPSETS: RangeInclusive<i64> = 13..=21;

/// The operators the importer maps.
pub const SUPPORTED_OPS: &str = "Conv, BatchNormalization, Relu, Clip, MaxPool, AveragePool, \
    GlobalAveragePool, Add, Concat, Flatten, Reshape (to [batch, features]), Gemm, MatMul, \
    Identity, Dropout, Constant";

/// Reads and imports an ONNX file; errors name the file.
pub fn import_file(path: &Path) -> Result<FloatGraph, OnnxError> {
    let bytes = read_bounded(path)?;
    import_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// Imports an encoded ONNX model.
pub fn import_bytes(bytes: &[u8]) -> Result<FloatGraph, OnnxError> {
    let model = ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
    import_model(&model)
}

/// Imports a decoded ONNX model.
pub fn import_model(model: &ModelProto) -> Result<FloatGraph, OnnxError> {
    Ok(import_with_tensors(model)?.0)
}

/// [`import_model`], with the cinder tensor (a node's name or [`INPUT`]) each ONNX
/// activation tensor became.
pub(crate) fn import_with_tensors(
    model: &ModelProto,
) -> Result<(FloatGraph, HashMap<String, String>), OnnxError> {
    check_opset(model)?;
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Model {
        field: "graph",
        message: "missing".into(),
    })?;
    let mut importer = Importer::new(graph)?;
    for node in &graph.node {
        importer.node(node)?;
    }
    importer.finish(graph)
}

pub(crate) fn read_bounded(path: &Path) -> Result<Vec<u8>, OnnxError> {
    let io = |source| OnnxError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > MAX_MODEL_BYTES {
        return Err(OnnxError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: MAX_MODEL_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(MAX_MODEL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

pub(crate) fn check_opset(model: &ModelProto) -> Result<(), OnnxError> {
    let version = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version);
    match version {
        Some(v) if OPSETS.contains(&v) => Ok(()),
        found => Err(OnnxError::Opset {
            found: found.map_or_else(|| "none".into(), |v| v.to_string()),
            supported: SUPPORTED_OPSETS,
        }),
    }
}

/// The state of one import.
struct Importer<'g> {
    /// Initializers and `Constant` values by ONNX tensor name.
    constants: HashMap<String, Cow<'g, TensorProto>>,
    /// ONNX activation name -> the cinder tensor ([`INPUT`] or a node's name) it is.
    tensors: HashMap<String, String>,
    /// ONNX rank (batch included) of each cinder tensor.
    ranks: HashMap<String, usize>,
    /// How many node inputs and graph outputs read each ONNX tensor.
    readers: HashMap<&'g str, usize>,
    input_shape: Vec<usize>,
    nodes: Vec<Node>,
    /// `Reshape` nodes with the feature count they asked for.
    reshapes: Vec<(String, usize)>,
}

impl<'g> Importer<'g> {
    fn new(graph: &'g GraphProto) -> Result<Self, OnnxError> {
        let constants: HashMap<String, Cow<'g, TensorProto>> = graph
            .initializer
            .iter()
            .map(|t| (t.name.clone(), Cow::Borrowed(t)))
            .collect();
        let (name, rank, input_shape) = graph_input(graph, &constants)?;
        let mut readers = HashMap::new();
        let read = graph.node.iter().flat_map(|n| n.input.iter());
        for tensor in read.chain(graph.output.iter().map(|o| &o.name)) {
            *readers.entry(tensor.as_str()).or_insert(0) += 1;
        }
        Ok(Self {
            constants,
            tensors: HashMap::from([(name, INPUT.to_owned())]),
            ranks: HashMap::from([(INPUT.to_owned(), rank)]),
            readers,
            input_shape,
            nodes: Vec::new(),
            reshapes: Vec::new(),
        })
    }

    fn node(&mut self, node: &'g NodeProto) -> Result<(), OnnxError> {
        let name = match (&node.name, node.output.first()) {
            (n, _) if !n.is_empty() => n.clone(),
            (_, Some(out)) => out.clone(),
            _ => String::new(),
        };
        let error = |message: String| OnnxError::Node {
            node: name.clone(),
            op_type: node.op_type.clone(),
            message,
        };
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(OnnxError::UnsupportedOp {
                node: name.clone(),
                op_type: format!("{}:{}", node.domain, node.op_type),
                supported: SUPPORTED_OPS,
            });
        }
        let output = match node.output.first() {
            Some(o) if !o.is_empty() => o.clone(),
            _ => return Err(error("has no output".into())),
        };
        if let Some(extra) = node.output[1..].iter().find(|o| self.read(o)) {
            return Err(error(format!(
                "its output `{extra}` is read; only the first output is supported"
            )));
        }
        match node.op_type.as_str() {
            "Constant" => self.constant(node, &name, output),
            "Identity" | "Dropout" => self.alias(node, &name, output),
            _ => {
                let inputs = self.inputs(node, &name)?;
                if node.op_type == "Add" && inputs.iter().any(|i| matches!(i, Input::Constant(_))) {
                    let (tensor, values) = self.bias_operand(node, &name, &inputs)?;
                    return self.fuse_bias(node, &name, tensor, values, output);
                }
                let lowered =
                    ops::lower(node, &name, &inputs)?.ok_or_else(|| OnnxError::UnsupportedOp {
                        node: name.clone(),
                        op_type: node.op_type.clone(),
                        supported: SUPPORTED_OPS,
                    })?;
                self.push(name, output, lowered);
                Ok(())
            }
        }
    }

    fn read(&self, tensor: &str) -> bool {
        !tensor.is_empty() && self.readers.get(tensor).is_some_and(|&n| n > 0)
    }

    fn push(&mut self, name: String, output: String, lowered: Lowered) {
        if let Some(features) = lowered.features {
            self.reshapes.push((name.clone(), features));
        }
        self.ranks.insert(name.clone(), lowered.rank);
        self.tensors.insert(output, name.clone());
        self.nodes.push(Node {
            name,
            inputs: lowered.inputs,
            op: lowered.op,
        });
    }

    fn inputs(&self, node: &NodeProto, name: &str) -> Result<Vec<Input<'_>>, OnnxError> {
        node.input
            .iter()
            .map(|i| {
                if i.is_empty() {
                    return Ok(Input::Absent);
                }
                if let Some(t) = self.constants.get(i) {
                    return Ok(Input::Constant(t));
                }
                let tensor = self.tensors.get(i).ok_or_else(|| OnnxError::Node {
                    node: name.to_owned(),
                    op_type: node.op_type.clone(),
                    message: format!(
                        "reads `{i}`, which is no initializer, graph input or earlier node's \
                         output (nodes must be in topological order)"
                    ),
                })?;
                Ok(Input::Activation {
                    tensor: tensor.clone(),
                    rank: self.ranks[tensor],
                })
            })
            .collect()
    }

    /// A `Constant` node: its tensor value becomes an operand named after its output.
    fn constant(
        &mut self,
        node: &'g NodeProto,
        name: &str,
        output: String,
    ) -> Result<(), OnnxError> {
        let a = Attrs::new(node, name, &["value"])?;
        let value = a
            .tensor("value")?
            .ok_or_else(|| a.error("has no tensor `value`".into()))?;
        let mut value = value.clone();
        value.name.clone_from(&output);
        self.constants.insert(output, Cow::Owned(value));
        Ok(())
    }

    /// `Identity`, or `Dropout` at inference (no ratio applies, the mask is not read).
    fn alias(&mut self, node: &'g NodeProto, name: &str, output: String) -> Result<(), OnnxError> {
        let a = Attrs::new(node, name, &["seed"])?;
        let source = node
            .input
            .first()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| a.error("has no input".into()))?;
        if node.op_type == "Dropout"
            && let Some(mode) = node.input.get(2).filter(|m| !m.is_empty())
        {
            let training = self.constants.get(mode).and_then(|t| {
                t.int32_data
                    .first()
                    .copied()
                    .or(t.raw_data.first().map(|&b| i32::from(b)))
            });
            if training != Some(0) {
                return Err(a.error("training_mode must be a constant false".into()));
            }
        }
        if let Some(t) = self.constants.get(source).cloned() {
            self.constants.insert(output, t);
        } else {
            let tensor = self
                .tensors
                .get(source)
                .cloned()
                .ok_or_else(|| a.error(format!("reads `{source}`, which is not known yet")))?;
            self.tensors.insert(output, tensor);
        }
        Ok(())
    }

    /// `Add` of a constant: which bias-free linear node it follows, and the bias.
    fn bias_operand(
        &self,
        node: &NodeProto,
        name: &str,
        inputs: &[Input],
    ) -> Result<(String, TensorBuf<f32>), OnnxError> {
        let a = Attrs::new(node, name, &[])?;
        let (i, tensor, constant) = match inputs {
            [Input::Activation { tensor, .. }, Input::Constant(c)] => (0, tensor, c),
            [Input::Constant(c), Input::Activation { tensor, .. }] => (1, tensor, c),
            _ => return Err(not_a_bias(&a)),
        };
        let target = self.nodes.iter().find(|n| &n.name == tensor);
        let bias_free = matches!(target, Some(Node { op: Op::Linear(l), .. }) if l.bias.is_none());
        if !bias_free || self.readers.get(node.input[i].as_str()) != Some(&1) {
            return Err(not_a_bias(&a));
        }
        Ok((tensor.clone(), tensor::to_f32(constant)?))
    }

    /// Makes `values` the bias of the linear node `tensor`; the `Add`'s output is its.
    fn fuse_bias(
        &mut self,
        node: &NodeProto,
        name: &str,
        tensor: String,
        values: TensorBuf<f32>,
        output: String,
    ) -> Result<(), OnnxError> {
        let a = Attrs::new(node, name, &[])?;
        if let Some(Node {
            op: Op::Linear(linear),
            ..
        }) = self.nodes.iter_mut().find(|n| n.name == tensor)
        {
            linear.bias = Some(ops::bias_vector(&a, values, linear.out_features())?);
        }
        self.tensors.insert(output, tensor);
        Ok(())
    }

    fn finish(
        self,
        graph: &GraphProto,
    ) -> Result<(FloatGraph, HashMap<String, String>), OnnxError> {
        let output = match graph.output.as_slice() {
            [o] => &o.name,
            outputs => {
                return Err(OnnxError::Model {
                    field: "output",
                    message: format!("{} graph outputs, expected 1", outputs.len()),
                });
            }
        };
        let sink = self.tensors.get(output).cloned();
        let g = FloatGraph::new(self.input_shape, self.nodes)?;
        if sink.as_deref() != Some(g.output().name.as_str()) {
            return Err(OnnxError::Model {
                field: "output",
                message: format!(
                    "`{output}` is not computed by the last node `{}`",
                    g.output().name
                ),
            });
        }
        for (node, features) in self.reshapes {
            let shape = g.shape(&node).unwrap_or_default();
            if shape != [features] {
                return Err(OnnxError::Node {
                    node,
                    op_type: "Reshape".into(),
                    message: format!(
                        "target [batch, {features}] does not match the {} values of each sample",
                        shape.iter().product::<usize>()
                    ),
                });
            }
        }
        Ok((g, self.tensors))
    }
}

fn not_a_bias(a: &Attrs) -> OnnxError {
    a.error(
        "the Add of a constant is supported only as the bias of a MatMul or Gemm without \
         bias that nothing else reads"
            .into(),
    )
}

/// The one graph input that is not an initializer: its name, ONNX rank and per-sample
/// shape (the batch dimension may be symbolic).
fn graph_input(
    graph: &GraphProto,
    constants: &HashMap<String, Cow<'_, TensorProto>>,
) -> Result<(String, usize, Vec<usize>), OnnxError> {
    let inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !constants.contains_key(&i.name))
        .collect();
    let bad = |message: String| OnnxError::Model {
        field: "input",
        message,
    };
    let [input] = inputs.as_slice() else {
        return Err(bad(format!(
            "{} graph inputs besides initializers, expected 1",
            inputs.len()
        )));
    };
    let Some(TypeValue::TensorType(t)) = input.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(bad(format!("`{}` is not a tensor", input.name)));
    };
    if t.elem_type != DataType::Float as i32 {
        return Err(bad(format!(
            "`{}` has element type {}, expected float32 (1)",
            input.name, t.elem_type
        )));
    }
    let dims = t
        .shape
        .as_ref()
        .map(|s| s.dim.as_slice())
        .unwrap_or_default();
    let per_sample: Option<Vec<usize>> = dims
        .iter()
        .skip(1)
        .map(|d| match d.value {
            Some(DimValue::DimValue(v)) => usize::try_from(v).ok().filter(|&v| v > 0),
            _ => None,
        })
        .collect();
    match per_sample {
        Some(shape) if matches!(dims.len(), 2 | 4) => Ok((input.name.clone(), dims.len(), shape)),
        _ => Err(bad(format!(
            "`{}` has shape {dims:?}, expected [batch, C, H, W] or [batch, features] with \
             fixed positive sizes after the batch",
            input.name
        ))),
    }
}
