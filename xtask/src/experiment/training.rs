//! The training stage: trains the float model, or reuses the checkpoint in
//! `OUT/checkpoint/` when the model config, training config and data are those it was
//! trained with (their key is kept in `OUT/training.json`). An interrupted training
//! resumes from its last epoch; a changed recipe or data set starts over.

use std::path::Path;

use burn::module::Module;
use cinder_datasets::{CHANNELS, HEIGHT, WIDTH};
use cinder_model::checkpoint::read_manifest;
use cinder_model::stopping::best_epoch;
use cinder_model::train::write_metrics_log;
use cinder_model::{BackendKind, EpochMetrics, GraphNet, ImageSource, TrainConfig, Trainer};
use cinder_tensor::graph::{FloatGraph, GraphSpec};
use cinder_tensor::{Tensor, TensorBuf};
use indicatif::MultiProgress;
use serde::{Deserialize, Serialize};

use super::config::ExperimentConfig;
use super::data::ExperimentData;
use super::store::{Key, read_cached, write_cached};
use crate::progress::{epoch_bar, epoch_line, show};

/// What the report says about training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// The zoo name of the model.
    pub model: String,
    /// Its architecture.
    pub spec: GraphSpec,
    pub parameters: usize,
    pub training: TrainConfig,
    pub train_images: usize,
    pub epochs: usize,
    /// Sum of the epochs' training times (over all runs that contributed).
    pub seconds: f64,
    /// Median over epochs of training images/s.
    pub images_per_sec: f64,
    pub final_train_loss: f64,
    pub final_train_accuracy: f64,
    /// Images held out of training for early stopping (0: none).
    #[serde(default)]
    pub validation_images: usize,
    /// The epoch of the best validation accuracy, when there was a validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended the run before its epoch cap.
    #[serde(default)]
    pub stopped_early: bool,
    /// Every epoch's metrics (the report's training curve).
    #[serde(default)]
    pub history: Vec<EpochMetrics>,
    /// Whether this run found the finished checkpoint and did not train.
    pub reused: bool,
    /// The float ONNX file the model was imported from instead of trained (`model`
    /// and `training` then only echo the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_from: Option<String>,
}

/// The trained model, in inference mode, and its float graph (BatchNorm folded).
pub struct Trained {
    pub model: GraphNet,
    pub graph: FloatGraph,
    pub summary: TrainingSummary,
}

/// The key of a training run: architecture, training config and data.
fn training_key(
    model: &GraphSpec,
    training: &TrainConfig,
    data: &ExperimentData,
) -> anyhow::Result<String> {
    Ok(Key::new("training")
        .json(model)?
        .json(training)?
        .bytes(data.key.as_bytes())
        .hex())
}

/// The trained model of `out`, training (or resuming) it first unless `may_train` is
/// false, which requires a finished checkpoint of this recipe and data.
pub fn train_or_reuse(
    config: &ExperimentConfig,
    data: &ExperimentData,
    out: &Path,
    bars: &MultiProgress,
    may_train: bool,
) -> anyhow::Result<Trained> {
    let train = data.train_images();
    let spec = config.model.spec(train.image_shape(), train.classes())?;
    let key = training_key(&spec, &config.training, data)?;
    let (ckpt, marker) = (out.join("checkpoint"), out.join("training.json"));
    let current = read_cached::<serde_json::Value>(&marker, &key).is_some();
    if !may_train {
        return reuse_finished(&ckpt, current, &config.model.name, data);
    }
    if !current && ckpt.exists() {
        super::say(bars, "training config or data changed: training anew");
        std::fs::remove_dir_all(&ckpt)?;
    }
    write_cached(&marker, &key, &(&spec, &config.training))?;
    let mut trainer = match read_manifest(&ckpt)? {
        Some(_) => Trainer::resume(&ckpt, BackendKind::Flex)?,
        None => Trainer::new(&spec, config.training.clone(), BackendKind::Flex)?,
    };
    let reused = trainer.is_finished();
    let validation = data.validation_images();
    while !trainer.is_finished() {
        let bar = bars.add(epoch_bar(&trainer, data.train.len()));
        let m = match &validation {
            Some(v) => trainer.run_epoch_validated(&train, v, None, &mut |p| show(&bar, p))?,
            None => trainer.run_epoch(&train, None, &mut |p| show(&bar, p))?,
        };
        bar.finish_and_clear();
        super::say(bars, &epoch_line(m));
        trainer.save_checkpoint(&ckpt)?;
        write_metrics_log(&out.join("metrics.jsonl"), trainer.history())?;
    }
    // Again from the checkpoint's history: a run killed between its last checkpoint and
    // this log's update resumes with nothing left to train.
    write_metrics_log(&out.join("metrics.jsonl"), trainer.history())?;
    let summary = summarize(&trainer, &config.model.name, data, reused);
    trained(&trainer, summary)
}

/// The finished training of `ckpt`, or an error saying what to run first.
fn reuse_finished(
    ckpt: &Path,
    current: bool,
    model: &str,
    data: &ExperimentData,
) -> anyhow::Result<Trained> {
    let trainer = match read_manifest(ckpt)? {
        Some(_) if current => Trainer::resume(ckpt, BackendKind::Flex)?,
        _ => anyhow::bail!(
            "{}: no checkpoint of this config's training: run the experiment (or its cells) first",
            ckpt.display()
        ),
    };
    if !trainer.is_finished() {
        anyhow::bail!(
            "{}: the training is not finished: run the experiment (or its cells) first",
            ckpt.display()
        );
    }
    let summary = summarize(&trainer, model, data, true);
    trained(&trainer, summary)
}

fn trained(trainer: &Trainer, summary: TrainingSummary) -> anyhow::Result<Trained> {
    let graph = trainer.model().valid().to_inference_graph()?;
    let model = GraphNet::from_float_graph(&graph, &BackendKind::Flex.device()?)?;
    Ok(Trained {
        model,
        graph,
        summary,
    })
}

fn summarize(
    trainer: &Trainer,
    model: &str,
    data: &ExperimentData,
    reused: bool,
) -> TrainingSummary {
    let history = trainer.history();
    let min_delta = trainer
        .config()
        .early_stopping
        .map_or(0.0, |rule| rule.min_delta);
    let mut rates: Vec<f64> = history.iter().map(|m| m.images_per_sec).collect();
    rates.sort_by(f64::total_cmp);
    let last = history.last();
    TrainingSummary {
        model: model.to_owned(),
        spec: trainer.spec().clone(),
        parameters: trainer.model().num_params(),
        training: trainer.config().clone(),
        train_images: data.train.len(),
        epochs: history.len(),
        seconds: history.iter().map(|m| m.seconds).sum(),
        images_per_sec: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        final_train_loss: last.map_or(0.0, |m| m.train_loss),
        final_train_accuracy: last.map_or(0.0, |m| m.train_accuracy),
        validation_images: data.validation.len(),
        best_epoch: best_epoch(history, min_delta),
        stopped_early: trainer.stopped_early(),
        history: history.to_vec(),
        reused,
        imported_from: None,
    }
}

/// The float model of an ONNX file (BatchNorm folded), checked against the data: input
/// `[3, 32, 32]`, one output per class.
pub fn imported(
    path: &Path,
    config: &ExperimentConfig,
    data: &ExperimentData,
) -> anyhow::Result<Trained> {
    let graph = crate::onnx::float_graph(path)?.fold_batch_norms()?;
    let image = [CHANNELS, HEIGHT, WIDTH];
    let classes = data.train.classes();
    let output = graph.shape(&graph.output().name).unwrap_or_default();
    if graph.input_shape() != image || output != [classes] {
        anyhow::bail!(
            "{}: input {:?} and output {output:?}, expected input {image:?} (the data's \
             images) and output [{classes}] (its classes)",
            path.display(),
            graph.input_shape()
        );
    }
    let model = GraphNet::from_float_graph(&graph, &BackendKind::Flex.device()?)?;
    let summary = TrainingSummary {
        model: path.display().to_string(),
        spec: graph.spec(),
        parameters: parameters(&graph),
        training: config.training.clone(),
        train_images: data.train.len(),
        epochs: 0,
        seconds: 0.0,
        images_per_sec: 0.0,
        final_train_loss: 0.0,
        final_train_accuracy: 0.0,
        validation_images: 0,
        best_epoch: None,
        stopped_early: false,
        history: Vec::new(),
        reused: false,
        imported_from: Some(path.display().to_string()),
    };
    Ok(Trained {
        model,
        graph,
        summary,
    })
}

/// Weights and biases of `graph`.
fn parameters(graph: &FloatGraph) -> usize {
    weight_tensors(graph).map(|t| t.len()).sum()
}

/// Every weight and bias tensor of `graph`, in node order.
fn weight_tensors(graph: &FloatGraph) -> impl Iterator<Item = &TensorBuf<f32>> {
    graph.nodes().iter().flat_map(|node| {
        node.op
            .weight_and_bias()
            .into_iter()
            .flat_map(|(w, b)| std::iter::once(w).chain(b))
    })
}

/// The key of a float model: its layout and every weight and bias value.
pub fn graph_key(graph: &FloatGraph) -> anyhow::Result<String> {
    let mut key = Key::new("graph");
    key.bytes(graph.description().as_bytes());
    for t in weight_tensors(graph) {
        key.json(&t.shape())?;
        let bytes: Vec<u8> = t.data().iter().flat_map(|x| x.to_le_bytes()).collect();
        key.bytes(&bytes);
    }
    Ok(key.hex())
}
