//! The calibration table: the observed range and chosen parameters of every activation
//! tensor in a float graph, saved as JSON.
//!
//! Keys are tensor names: [`GRAPH_INPUT`] for the graph's input, and a node's name for
//! that node's output (so `relu1` is the activation after `conv1`'s ReLU). The runtime
//! reads a layer's input parameters from the tensor before it and its output parameters
//! from the tensor after it (after a fused ReLU).

use std::collections::BTreeMap;
use std::path::Path;

use cinder_tensor::graph::{FloatGraph, Node, Op};
use cinder_tensor::io::{FileError, read_json, write_json_atomic};
use cinder_tensor::{QuantParams, QuantScheme};
use serde::{Deserialize, Serialize};

/// Name of the graph's input tensor in a calibration table.
pub const GRAPH_INPUT: &str = cinder_tensor::graph::INPUT;

/// Version of the table's JSON layout.
pub const TABLE_FORMAT_VERSION: u32 = 1;

/// What one observer concluded about one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorRange {
    /// The range the observer chose (after clipping, for histogram observers).
    pub min: f32,
    pub max: f32,
    /// Parameters derived from that range under the table's scheme.
    pub params: QuantParams,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTable {
    pub format_version: u32,
    /// The observer that produced the ranges, as given on the command line (`minmax`,
    /// `entropy`, `percentile=99.99`, ...).
    pub observer: String,
    pub scheme: QuantScheme,
    /// Number of calibration samples seen.
    pub samples: usize,
    pub tensors: BTreeMap<String, TensorRange>,
}

impl CalibrationTable {
    pub fn new(observer: impl Into<String>, scheme: QuantScheme, samples: usize) -> Self {
        Self {
            format_version: TABLE_FORMAT_VERSION,
            observer: observer.into(),
            scheme,
            samples,
            tensors: BTreeMap::new(),
        }
    }

    pub fn get(&self, tensor: &str) -> Option<&TensorRange> {
        self.tensors.get(tensor)
    }

    pub fn save(&self, path: &Path) -> Result<(), FileError> {
        write_json_atomic(path, self)
    }

    /// Loads a table, rejecting other format versions and invalid parameters.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let table: Self = read_json(path)?;
        let invalid = |message: String| FileError::Content {
            path: path.to_path_buf(),
            message,
        };
        if table.format_version != TABLE_FORMAT_VERSION {
            return Err(invalid(format!(
                "format_version {} is not supported (expected {TABLE_FORMAT_VERSION})",
                table.format_version
            )));
        }
        for (name, r) in &table.tensors {
            let p = &r.params;
            QuantParams::new(p.scale, p.zero_point, p.qmin, p.qmax)
                .map_err(|e| invalid(format!("tensors.{name}.params: {e}")))?;
            if !(r.min.is_finite() && r.max.is_finite() && r.min <= r.max) {
                return Err(invalid(format!(
                    "tensors.{name}: range [{}, {}] is not a finite, ordered range",
                    r.min, r.max
                )));
            }
        }
        Ok(table)
    }
}

/// The tensors of `graph` that an int8 runtime may quantize, in graph order: the input
/// and every node's output, except a weighted node's output that only a ReLU or clip
/// reads (the activation is fused into the layer's output stage, so only the tensor after
/// it is ever quantized).
pub fn quantization_points(graph: &FloatGraph) -> Vec<String> {
    let fused = |node: &Node| {
        let readers = graph.consumers(&node.name);
        node.op.is_weighted()
            && matches!(readers.as_slice(), [r] if matches!(r.op, Op::Relu | Op::Clip { .. }))
    };
    std::iter::once(GRAPH_INPUT.to_owned())
        .chain(
            graph
                .nodes()
                .iter()
                .filter(|n| !fused(n))
                .map(|n| n.name.clone()),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CalibrationTable {
        let scheme = QuantScheme::activations_uint8();
        let mut t = CalibrationTable::new("minmax", scheme, 100);
        let params = QuantParams::from_range(-1.0, 2.0, &scheme).unwrap();
        t.tensors.insert(
            GRAPH_INPUT.into(),
            TensorRange {
                min: -1.0,
                max: 2.0,
                params,
            },
        );
        t
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calib.json");
        table().save(&path).unwrap();
        assert_eq!(CalibrationTable::load(&path).unwrap(), table());
    }

    #[test]
    fn hand_edited_tables_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calib.json");
        table().save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let scale = table().tensors[GRAPH_INPUT].params.scale;
        std::fs::write(
            &path,
            text.replace(&format!("\"scale\": {scale}"), "\"scale\": -1.0"),
        )
        .unwrap();
        let err = CalibrationTable::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("tensors.input.params") && err.contains("calib.json"),
            "{err}"
        );
        std::fs::write(
            &path,
            text.replace("\"format_version\": 1", "\"format_version\": 2"),
        )
        .unwrap();
        assert!(CalibrationTable::load(&path).is_err());
    }

    #[test]
    fn quantization_points_skip_outputs_consumed_by_a_fused_relu() {
        use cinder_tensor::TensorBuf;
        use cinder_tensor::graph::Linear;
        let linear = |i: usize, o: usize| {
            Op::Linear(Linear {
                weight: TensorBuf::new(vec![o, i], vec![0.5; o * i]).unwrap(),
                bias: None,
            })
        };
        let graph = FloatGraph::new(
            vec![4],
            vec![
                Node::new("fc1", &["input"], linear(4, 3)),
                Node::new("relu1", &["fc1"], Op::Relu),
                Node::new("fc2", &["relu1"], linear(3, 3)),
                Node::new("add", &["fc2", "relu1"], Op::Add),
                Node::new("relu2", &["fc2"], Op::Relu),
                Node::new("sum", &["add", "relu2"], Op::Add),
            ],
        )
        .unwrap();
        // fc2 is read by the add too, so its ReLU cannot be fused.
        assert_eq!(
            quantization_points(&graph),
            ["input", "relu1", "fc2", "add", "relu2", "sum"]
        );
        let chain = FloatGraph::chain(
            vec![4],
            vec![
                ("fc1".into(), linear(4, 3)),
                ("relu1".into(), Op::RELU6),
                ("fc2".into(), linear(3, 2)),
            ],
        )
        .unwrap();
        assert_eq!(quantization_points(&chain), ["input", "relu1", "fc2"]);
    }
}
