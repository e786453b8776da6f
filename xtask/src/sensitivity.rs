//! Per-layer weight sensitivity, shared by the experiment's `sensitivity` cells and
//! `cargo xtask autoquant`: one layer's weights at a time are quantized as a config says
//! (the rest of the model, and all activations, float) and the logits of burn's forward
//! are compared with the fp32 logits on some images. Cheap, because every forward runs on
//! burn's fast float path.

use cinder_model::{Batch, GraphNet, ImageSource};
use cinder_observers::CalibrationTable;
use cinder_runtime::{QuantConfig, convert};
use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{ErrorAccumulator, TensorBuf};
use serde::{Deserialize, Serialize};

use crate::dataset::DatasetImages;
use crate::evaluate::argmax;

/// How much quantizing one layer alone (the rest float) moves the logits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivity {
    pub layer: String,
    /// SQNR of the logits against the all-float model's (higher: less sensitive).
    pub logits_sqnr_db: Option<f64>,
    pub accuracy: f64,
}

/// The float model and the images a sensitivity analysis scores layers on.
pub struct Probe<'a> {
    /// The float model on burn (inference mode).
    pub model: &'a GraphNet,
    /// Its graph, whose weights are replaced one layer at a time.
    pub graph: &'a FloatGraph,
    pub images: DatasetImages<'a>,
    /// Images per forward.
    pub batch: usize,
}

impl Probe<'_> {
    fn batches(&self) -> anyhow::Result<Vec<Batch>> {
        let all: Vec<usize> = (0..self.images.len()).collect();
        Ok(all
            .chunks(self.batch.max(1))
            .map(|chunk| self.images.gather(chunk))
            .collect::<Result<_, _>>()?)
    }

    /// The float model's accuracy on the probe's images.
    pub fn float_accuracy(&self) -> anyhow::Result<f64> {
        let logits = logits_of(self.model, &self.batches()?)?;
        Ok(self.accuracy(&logits))
    }

    fn accuracy(&self, logits: &[f32]) -> f64 {
        let n = self.images.len().max(1);
        let classes = (logits.len() / n).max(1);
        let right = logits
            .chunks_exact(classes)
            .zip(self.images.data.labels())
            .filter(|(row, l)| argmax(row) == usize::from(**l))
            .count();
        right as f64 / n as f64
    }
}

/// The logits of burn's forward of `model` on `batch`, row-major.
pub fn float_logits(model: &GraphNet, batch: &Batch) -> anyhow::Result<Vec<f32>> {
    let (x, _) = batch.to_tensors(&model.device());
    model
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
}

fn logits_of(net: &GraphNet, batches: &[Batch]) -> anyhow::Result<Vec<f32>> {
    let per_batch = batches.iter().map(|b| float_logits(net, b));
    Ok(per_batch.collect::<anyhow::Result<Vec<_>>>()?.concat())
}

/// Every weighted layer that `quant` quantizes, scored alone: its weights quantized as
/// `quant` (with `table`) says, the rest float.
pub fn weight_sensitivity(
    probe: &Probe<'_>,
    table: &CalibrationTable,
    quant: &QuantConfig,
) -> anyhow::Result<Vec<LayerSensitivity>> {
    let batches = probe.batches()?;
    let reference = logits_of(probe.model, &batches)?;
    let model = convert(probe.graph, table, quant)?;
    model
        .steps()
        .iter()
        .filter_map(|s| Some((&s.name, s.op.layer()?.quant_weights()?.dequantized())))
        .map(|(layer, weight)| {
            let graph = with_weight(probe.graph, layer, weight)?;
            let net = GraphNet::from_float_graph(&graph, &probe.model.device())?;
            let got = logits_of(&net, &batches)?;
            let mut noise = ErrorAccumulator::default();
            reference
                .iter()
                .zip(&got)
                .for_each(|(&x, &y)| noise.add(x, y));
            Ok(LayerSensitivity {
                layer: layer.clone(),
                logits_sqnr_db: noise.metrics().sqnr_db,
                accuracy: probe.accuracy(&got),
            })
        })
        .collect()
}

/// `graph` with the weight of `layer` replaced.
fn with_weight(
    graph: &FloatGraph,
    layer: &str,
    weight: TensorBuf<f32>,
) -> anyhow::Result<FloatGraph> {
    let nodes = graph.nodes().iter().cloned().map(|mut node| {
        if node.name == layer {
            match &mut node.op {
                Op::Conv2d(c) => c.weight = weight.clone(),
                Op::Linear(l) => l.weight = weight.clone(),
                _ => {}
            }
        }
        node
    });
    Ok(FloatGraph::new(
        graph.input_shape().to_vec(),
        nodes.collect(),
    )?)
}
