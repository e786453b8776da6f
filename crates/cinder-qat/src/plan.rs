//! Where the int8 runtime quantizes a graph, read off its architecture: the activation
//! points (the tensors whose parameters the converted model holds), the weighted layers,
//! and the steps of the fake-quant forward in the runtime's order.
//!
//! The rules are those of `cinder_runtime::convert` for a model whose layers are all
//! static (what QAT simulates):
//!
//! - A ReLU or clip that is the only reader of a layer, `Add` or `Concat` is fused into
//!   it: the layer (or merge) writes the activation's tensor, and that tensor is the
//!   activation point.
//! - A layer reads int8; a float tensor it reads (the graph input, or what float-domain
//!   operators made of it) is quantized first, at its own point.
//! - `Add` and `Concat` are int8 when any input is (each float input quantized at its
//!   own point), with their own output point; otherwise they run in float.
//! - ReLU, clip, pools and flatten run in the domain of their input, int8 when it has
//!   codes, keeping its parameters (an int8 ReLU or clip clamps the codes).
//! - BatchNorm must be folded before (the runtime refuses it).
//!
//! Every name here comes from the graph: nothing is specific to one network.

use std::collections::{HashMap, HashSet};

use cinder_runtime::Activation;
use cinder_tensor::graph::{GraphSpec, INPUT, NodeSpec, OpSpec};

use crate::error::QatError;

/// One step of the fake-quant forward.
#[derive(Debug, Clone, PartialEq)]
pub enum QatStep {
    /// The float tensor `tensor` quantized at activation point `point` (the runtime's
    /// step `quantize:{tensor}`).
    Quantize { tensor: String, point: usize },
    /// Weighted layer `layer` (an index of [`QatPlan::layers`], the node of that name)
    /// reading the int8 tensor `input` and writing `output` at point `point`, after the
    /// fused `activation`.
    Layer {
        layer: usize,
        input: String,
        activation: Activation,
        output: String,
        point: usize,
    },
    /// The int8 `Add` or `Concat` node `node` of `inputs`, writing `output` at point
    /// `point` after the fused `activation`.
    Merge {
        node: String,
        concat: bool,
        inputs: Vec<String>,
        activation: Activation,
        output: String,
        point: usize,
    },
    /// A parameter-free node on float tensors (before anything is quantized).
    Float(NodeSpec),
    /// A ReLU, clip, pool or flatten node on the codes of its int8 input, whose
    /// parameters its output keeps.
    Codes(NodeSpec),
}

/// The quantization plan of a BatchNorm-free graph; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub struct QatPlan {
    points: Vec<String>,
    layers: Vec<String>,
    steps: Vec<QatStep>,
    /// The tensors to drop after each step (read for the last time there).
    drops: Vec<Vec<String>>,
    output: String,
    /// The point whose parameters the output's codes have, when it ends in int8.
    output_point: Option<usize>,
}

/// The plan in the making.
struct Builder<'a> {
    readers: HashMap<&'a str, Vec<&'a NodeSpec>>,
    /// Every tensor written so far, with the point whose parameters its int8 codes have
    /// (`None` while it is float only).
    tensors: HashMap<String, Option<usize>>,
    fused: HashSet<String>,
    plan: QatPlan,
}

impl QatPlan {
    /// The plan of `spec`, whose nodes are in topological order (as a `GraphNet` holds
    /// them).
    pub fn new(spec: &GraphSpec) -> Result<Self, QatError> {
        let mut readers: HashMap<&str, Vec<&NodeSpec>> = HashMap::new();
        for node in &spec.nodes {
            for input in &node.inputs {
                readers.entry(input.as_str()).or_default().push(node);
            }
        }
        let output = match spec.nodes.last() {
            Some(node) => node.name.clone(),
            None => return Err(QatError::Config("the graph has no nodes".into())),
        };
        let mut b = Builder {
            readers,
            tensors: HashMap::from([(INPUT.to_owned(), None)]),
            fused: HashSet::new(),
            plan: QatPlan {
                points: Vec::new(),
                layers: Vec::new(),
                steps: Vec::new(),
                drops: Vec::new(),
                output,
                output_point: None,
            },
        };
        for node in &spec.nodes {
            if !b.fused.contains(&node.name) {
                b.node(node)?;
            }
        }
        let output_point = b.point_of(&b.plan.output)?;
        let mut plan = b.plan;
        plan.output_point = output_point;
        plan.drops = last_reads(&plan.steps, &plan.output);
        Ok(plan)
    }

    /// The activation points (tensor names) in the order the forward meets them.
    pub fn points(&self) -> &[String] {
        &self.points
    }

    /// The weighted layers (node names) in graph order.
    pub fn layers(&self) -> &[String] {
        &self.layers
    }

    pub fn steps(&self) -> &[QatStep] {
        &self.steps
    }

    /// The tensors read for the last time by step `i`.
    pub(crate) fn drops(&self, i: usize) -> &[String] {
        &self.drops[i]
    }

    /// The graph's output tensor.
    pub fn output(&self) -> &str {
        &self.output
    }

    /// The point whose parameters the graph's output has, when it ends in int8 (its
    /// scale is the size of one logit step).
    pub fn output_point(&self) -> Option<&str> {
        self.output_point.map(|p| self.points[p].as_str())
    }
}

impl<'a> Builder<'a> {
    fn node(&mut self, node: &'a NodeSpec) -> Result<(), QatError> {
        match &node.op {
            OpSpec::Conv2d { .. } | OpSpec::Linear { .. } => {
                let input = self.int(&node.inputs[0])?;
                let (activation, output) = self.fused_activation(node);
                let point = self.point(&output);
                self.plan.layers.push(node.name.clone());
                self.plan.steps.push(QatStep::Layer {
                    layer: self.plan.layers.len() - 1,
                    input,
                    activation,
                    output: output.clone(),
                    point,
                });
                self.tensors.insert(output, Some(point));
            }
            OpSpec::BatchNorm { .. } => {
                return Err(QatError::Config(format!(
                    "node `{}`: BatchNorm must be folded into its layer before QAT",
                    node.name
                )));
            }
            OpSpec::Add | OpSpec::Concat if self.any_int(&node.inputs)? => {
                let inputs = node
                    .inputs
                    .iter()
                    .map(|t| self.int(t))
                    .collect::<Result<Vec<_>, _>>()?;
                let (activation, output) = self.fused_activation(node);
                let point = self.point(&output);
                self.plan.steps.push(QatStep::Merge {
                    node: node.name.clone(),
                    concat: matches!(node.op, OpSpec::Concat),
                    inputs,
                    activation,
                    output: output.clone(),
                    point,
                });
                self.tensors.insert(output, Some(point));
            }
            _ => {
                // Unary operators run on codes when their input has them; merges here
                // have float inputs only.
                let (step, point) = match self.point_of(&node.inputs[0])? {
                    Some(point) if node.inputs.len() == 1 => {
                        (QatStep::Codes(node.clone()), Some(point))
                    }
                    _ => (QatStep::Float(node.clone()), None),
                };
                self.plan.steps.push(step);
                self.tensors.insert(node.name.clone(), point);
            }
        }
        Ok(())
    }

    /// The point whose parameters `tensor`'s codes have (`None` while it is float).
    fn point_of(&self, tensor: &str) -> Result<Option<usize>, QatError> {
        self.tensors.get(tensor).copied().ok_or_else(|| {
            QatError::Config(format!(
                "tensor `{tensor}` is read before it is written (the graph is not sorted)"
            ))
        })
    }

    fn any_int(&self, tensors: &[String]) -> Result<bool, QatError> {
        tensors
            .iter()
            .try_fold(false, |any, t| Ok(any || self.point_of(t)?.is_some()))
    }

    /// `tensor` in int8: as it is, or quantized at its own point first.
    fn int(&mut self, tensor: &str) -> Result<String, QatError> {
        if self.point_of(tensor)?.is_none() {
            let point = self.point(tensor);
            self.plan.steps.push(QatStep::Quantize {
                tensor: tensor.to_owned(),
                point,
            });
            self.tensors.insert(tensor.to_owned(), Some(point));
        }
        Ok(tensor.to_owned())
    }

    /// The index of activation point `tensor`, added if new.
    fn point(&mut self, tensor: &str) -> usize {
        match self.plan.points.iter().position(|p| p == tensor) {
            Some(i) => i,
            None => {
                self.plan.points.push(tensor.to_owned());
                self.plan.points.len() - 1
            }
        }
    }

    /// The ReLU or clip that is the only reader of `node`, fused into it: its
    /// activation and the tensor it writes (else none, and `node`'s own tensor).
    fn fused_activation(&mut self, node: &NodeSpec) -> (Activation, String) {
        let readers = self.readers.get(node.name.as_str()).map_or(&[][..], |r| r);
        let fused = match readers {
            [r] => Activation::fused_by(&r.op).map(|a| (a, r)),
            _ => None,
        };
        match fused {
            Some((activation, r)) => {
                self.fused.insert(r.name.clone());
                (activation, r.name.clone())
            }
            None => (Activation::None, node.name.clone()),
        }
    }
}

/// The tensors each step reads for the last time (never the graph's output).
fn last_reads(steps: &[QatStep], output: &str) -> Vec<Vec<String>> {
    let reads = |step: &QatStep| -> Vec<String> {
        match step {
            QatStep::Quantize { tensor, .. } => vec![tensor.clone()],
            QatStep::Layer { input, .. } => vec![input.clone()],
            QatStep::Merge { inputs, .. } => inputs.clone(),
            QatStep::Float(node) | QatStep::Codes(node) => node.inputs.clone(),
        }
    };
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for t in reads(step) {
            last.insert(t, i);
        }
    }
    let mut drops = vec![Vec::new(); steps.len()];
    for (tensor, i) in last {
        if tensor != output {
            drops[i].push(tensor);
        }
    }
    drops
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::GRAPH_FORMAT_VERSION;

    fn node(name: &str, inputs: &[&str], op: OpSpec) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            inputs: inputs.iter().map(|&s| s.to_owned()).collect(),
            op,
        }
    }

    fn conv(c: usize) -> OpSpec {
        OpSpec::Conv2d {
            in_channels: c,
            out_channels: c,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            groups: 1,
            bias: true,
        }
    }

    fn spec(nodes: Vec<NodeSpec>) -> GraphSpec {
        GraphSpec {
            format_version: GRAPH_FORMAT_VERSION,
            input_shape: vec![2, 4, 4],
            nodes,
        }
    }

    /// A residual block: the add reads the input (quantized once, at its own point) and
    /// the conv's fused ReLU; the ReLU after the add is fused into it; the max-pool keeps
    /// the add's parameters; the classifier ends the graph at its own point.
    #[test]
    fn residual_block_points_and_fusions() {
        let plan = QatPlan::new(&spec(vec![
            node("conv", &["input"], conv(2)),
            node("relu", &["conv"], OpSpec::Relu),
            node("add", &["relu", "input"], OpSpec::Add),
            node("relu_add", &["add"], OpSpec::Relu),
            node(
                "pool",
                &["relu_add"],
                OpSpec::MaxPool2d {
                    kernel: [2, 2],
                    stride: [2, 2],
                    padding: [0, 0],
                },
            ),
            node("flatten", &["pool"], OpSpec::Flatten),
            node(
                "fc",
                &["flatten"],
                OpSpec::Linear {
                    in_features: 8,
                    out_features: 3,
                    bias: true,
                },
            ),
        ]))
        .unwrap();
        assert_eq!(plan.points(), ["input", "relu", "relu_add", "fc"]);
        assert_eq!(plan.layers(), ["conv", "fc"]);
        assert_eq!(plan.output_point(), Some("fc"));
        let kinds: Vec<String> = plan
            .steps()
            .iter()
            .map(|s| match s {
                QatStep::Quantize { tensor, .. } => format!("quantize:{tensor}"),
                QatStep::Layer { output, .. } => format!("layer->{output}"),
                QatStep::Merge { output, .. } => format!("merge->{output}"),
                QatStep::Float(n) => format!("float:{}", n.name),
                QatStep::Codes(n) => format!("codes:{}", n.name),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "quantize:input",
                "layer->relu",
                "merge->relu_add",
                "codes:pool",
                "codes:flatten",
                "layer->fc"
            ]
        );
        // The input lives until the add reads it.
        assert!(plan.drops(2).contains(&"input".to_owned()));
    }

    #[test]
    fn float_operators_before_the_first_layer_and_unfolded_batch_norms() {
        let pool = OpSpec::MaxPool2d {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
        };
        let plan = QatPlan::new(&spec(vec![
            node("pool", &["input"], pool),
            node("conv", &["pool"], conv(2)),
            node("relu6", &["conv"], OpSpec::Clip { min: 0.0, max: 6.0 }),
            node("relu", &["relu6"], OpSpec::Relu),
        ]))
        .unwrap();
        assert_eq!(plan.points(), ["pool", "relu6"]);
        assert!(matches!(&plan.steps()[0], QatStep::Float(n) if n.name == "pool"));
        assert!(matches!(&plan.steps()[3], QatStep::Codes(n) if n.name == "relu"));
        assert_eq!(plan.output_point(), Some("relu6"));
        let err = QatPlan::new(&spec(vec![
            node("conv", &["input"], conv(2)),
            node(
                "bn",
                &["conv"],
                OpSpec::BatchNorm {
                    channels: 2,
                    eps: 1e-5,
                },
            ),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("node `bn`"), "{err}");
    }
}
