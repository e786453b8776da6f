//! `cargo xtask train`: trains a zoo model (`--model`, the reference ConvNet by default)
//! and writes, under `--out`,
//!
//! - `checkpoint/`: the per-epoch checkpoint (`checkpoint.json` + burnpack model and
//!   optimizer state; see `cinder_model::checkpoint`), which `--resume` continues from,
//! - `metrics.jsonl`: one JSON line per epoch (loss, accuracy, test metrics with the
//!   confusion matrix, images/s),
//! - `graph.json` + `graph.safetensors`: the trained float graph (BatchNorm folded): its
//!   architecture and weights, from which every later command rebuilds the model,
//! - `summary.json`: data set, normalization, configs and the final figures.
//!
//! With `--validation-images N` the last N training images are held out and evaluated
//! after every epoch; `--patience P` then stops training once their accuracy has not
//! improved for P epochs (`--epochs` is the cap).
//!
//! Example (the Fashion-MNIST recipe PyTorch and ONNX Runtime were compared on):
//! `cargo xtask train --dataset fashion-mnist --limit 20000 --epochs 2 --batch 64 --lr 0.01 --out runs/fmnist`
//!
//! ResNet-20 (He et al.'s CIFAR recipe):
//! `cargo xtask train --model resnet20 --dataset fashion-mnist --epochs 30 --batch 128 --lr 0.1
//! --weight-decay 5e-4 --schedule cosine --augment --out runs/resnet20`

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use cinder_datasets::{Dataset, Normalization};
use cinder_model::checkpoint::read_manifest;
use cinder_model::stopping::best_epoch;
use cinder_model::train::write_metrics_log;
use cinder_model::zoo;
use cinder_model::{
    Augmentation, BackendKind, EarlyStopping, ImageSource, LrSchedule, OptimizerConfig,
    StepProgress, TrainConfig, Trainer,
};
use cinder_tensor::graph::GraphSpec;
use cinder_tensor::io::{read_json, write_json_atomic};
use cinder_tensor::lock::DirLock;
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::dataset::{DatasetImages, NormArg, dataset_source, hold_out_tail, normalization_for};
use crate::progress::{epoch_bar, epoch_line, show};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    Constant,
    Cosine,
    Step,
}

/// Defaults are the reference ConvNet's original recipe: SGD lr 0.001, momentum 0.9, batch 32, 10 epochs.
#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// synthetic, fashion-mnist, cifar10 or cifar100
    #[arg(long, default_value = "synthetic")]
    pub dataset: String,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 10, value_parser = checks::positive)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32, value_parser = checks::positive)]
    pub batch: usize,
    #[arg(long, default_value_t = 0.001, value_parser = checks::finite_positive)]
    pub lr: f64,
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    pub optimizer: OptimizerArg,
    /// SGD momentum (dampening is 0, as in PyTorch).
    #[arg(long, default_value_t = 0.9, value_parser = checks::unit_fraction)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0, value_parser = checks::finite_non_negative)]
    pub weight_decay: f64,
    #[arg(long, value_enum, default_value_t = ScheduleArg::Constant)]
    pub schedule: ScheduleArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N training images.
    #[arg(long, value_parser = checks::positive)]
    pub limit: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_parser = checks::positive)]
    pub test_limit: Option<usize>,
    /// Hold the last N training images out of training and evaluate on them after every
    /// epoch (needed by --patience).
    #[arg(long, default_value_t = 0)]
    pub validation_images: usize,
    /// Stop early once the validation accuracy has not improved for this many epochs
    /// (--epochs stays the cap).
    #[arg(long, value_parser = checks::positive, requires = "validation_images")]
    pub patience: Option<usize>,
    /// The rise in validation accuracy, in percentage points, that counts as an
    /// improvement for --patience.
    #[arg(long, default_value_t = 0.0, value_parser = checks::finite_non_negative, requires = "patience")]
    pub min_delta_pp: f64,
    /// Input normalization; default: `half` for fashion-mnist, `fit` otherwise.
    #[arg(long, value_enum)]
    pub norm: Option<NormArg>,
    /// flex (default), ndarray, or wgpu (needs `--features wgpu`).
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// The architecture: convnet, resnet20 or mobilenetv2-tiny.
    #[arg(long, default_value = "convnet")]
    pub model: String,
    /// Add a BatchNorm after each convolution of the convnet (folded into the exported
    /// graph; the other models have theirs).
    #[arg(long)]
    pub batch_norm: bool,
    /// Random crop (4-pixel padding) and horizontal flip of the training images.
    #[arg(long)]
    pub augment: bool,
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run checkpointed in `--out` (same settings) instead of starting anew.
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    fn train_config(&self) -> TrainConfig {
        let optimizer = match self.optimizer {
            OptimizerArg::Sgd => OptimizerConfig::Sgd {
                momentum: self.momentum,
                dampening: 0.0,
                nesterov: false,
            },
            OptimizerArg::Adam => OptimizerConfig::adam(),
        };
        let schedule = match self.schedule {
            ScheduleArg::Constant => LrSchedule::Constant,
            ScheduleArg::Cosine => LrSchedule::Cosine {
                min_lr: self.lr * 0.01,
            },
            ScheduleArg::Step => LrSchedule::Step {
                every_epochs: (self.epochs / 3).max(1),
                gamma: 0.1,
            },
        };
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch,
            lr: self.lr,
            optimizer,
            weight_decay: self.weight_decay,
            schedule,
            seed: self.seed,
            augment: self.augment.then(Augmentation::crop_flip),
            early_stopping: self.patience.map(|patience| EarlyStopping {
                patience,
                min_delta: self.min_delta_pp / 100.0,
            }),
        }
    }

    fn normalization(&self, train: &Dataset) -> anyhow::Result<Normalization> {
        let half = self
            .norm
            .map_or(self.dataset == "fashion-mnist", |n| n == NormArg::Half);
        normalization_for(half, train)
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    dataset: &'a str,
    train_images: usize,
    test_images: usize,
    normalization: Normalization,
    backend: BackendKind,
    model_name: &'a str,
    model: &'a GraphSpec,
    parameters: usize,
    training: &'a TrainConfig,
    epochs_done: usize,
    /// Whether early stopping ended the run before `training.epochs`.
    stopped_early: bool,
    /// The epoch with the best validation accuracy, when there was a validation set.
    best_epoch: Option<usize>,
    test_accuracy: Option<f64>,
    test_loss: Option<f64>,
    confusion: Option<&'a Vec<Vec<u64>>>,
    /// Median over epochs of training images/s (data loading and metrics included).
    train_images_per_sec: f64,
    train_seconds: f64,
    wall_seconds: f64,
    graph_json: &'a str,
    graph_weights: &'a str,
}

/// What a run trains on, saved beside its checkpoint (`run.json`) so that `--resume`
/// refuses other data.
#[derive(Debug, Serialize, Deserialize)]
struct RunData {
    dataset: String,
    train_images: usize,
    #[serde(default)]
    validation_images: usize,
    test_images: usize,
    normalization: Normalization,
}

/// The file name of [`RunData`] in `--out`.
const RUN_DATA: &str = "run.json";

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    let _lock = DirLock::acquire(&args.out)?;
    let backend: BackendKind = args.backend.parse()?;
    let source = dataset_source(&args.dataset, args.data_dir.as_deref())?;
    eprintln!("loading {} ...", source.name());
    let splits = cinder_datasets::load(&source)?;
    let limited = splits.train.limit(args.limit.unwrap_or(usize::MAX));
    let (train, validation) =
        hold_out_tail(&limited, args.validation_images).context("--validation-images")?;
    let test = splits.test.limit(args.test_limit.unwrap_or(usize::MAX));
    let norm = args.normalization(&train)?;
    let (train_src, test_src) = (
        DatasetImages { data: &train, norm },
        DatasetImages { data: &test, norm },
    );
    let validation_src = (!validation.is_empty()).then_some(DatasetImages {
        data: &validation,
        norm,
    });
    let image_shape = train_src.image_shape();
    let spec = zoo::by_name(&args.model, image_shape, train.classes(), args.batch_norm)?;
    let config = args.train_config();
    let ckpt_dir = args.out.join("checkpoint");
    let data = RunData {
        dataset: source.name().to_owned(),
        train_images: train.len(),
        validation_images: validation.len(),
        test_images: test.len(),
        normalization: norm,
    };
    let mut trainer = start_or_resume(&args, &data, &spec, config, backend)?;
    eprintln!(
        "{}: {} parameters; {} train / {} test images, backend {backend}, {} of {} epochs done",
        args.model,
        trainer.model().num_params(),
        train.len(),
        test.len(),
        trainer.epochs_done(),
        trainer.config().epochs
    );
    while !trainer.is_finished() {
        let bar = epoch_bar(&trainer, train.len());
        let progress = &mut |p: &StepProgress| show(&bar, p);
        let metrics = match &validation_src {
            Some(v) => trainer.run_epoch_validated(&train_src, v, Some(&test_src), progress)?,
            None => trainer.run_epoch(&train_src, Some(&test_src), progress)?,
        };
        bar.finish_and_clear();
        eprintln!("{}", epoch_line(metrics));
        trainer.save_checkpoint(&ckpt_dir)?;
        write_metrics_log(&args.out.join("metrics.jsonl"), trainer.history())?;
    }
    // Again from the checkpoint's history: a run killed between its last checkpoint and
    // this log's update resumes with nothing left to train.
    write_metrics_log(&args.out.join("metrics.jsonl"), trainer.history())?;
    let (graph_json, graph_weights) = ("graph.json", "graph.safetensors");
    let graph = trainer.model().to_inference_graph()?;
    graph.save(&args.out.join(graph_json), &args.out.join(graph_weights))?;
    let history = trainer.history();
    let last = history.last().and_then(|m| m.test.as_ref());
    let summary = Summary {
        dataset: source.name(),
        train_images: train.len(),
        test_images: test.len(),
        normalization: norm,
        backend,
        model_name: &args.model,
        model: trainer.spec(),
        parameters: trainer.model().num_params(),
        training: trainer.config(),
        epochs_done: trainer.epochs_done(),
        stopped_early: trainer.stopped_early(),
        best_epoch: best_epoch(
            history,
            trainer.config().early_stopping.map_or(0.0, |r| r.min_delta),
        ),
        test_accuracy: last.map(|e| e.accuracy),
        test_loss: last.map(|e| e.loss),
        confusion: last.map(|e| &e.confusion),
        train_images_per_sec: median(history.iter().map(|m| m.images_per_sec).collect()),
        train_seconds: history.iter().map(|m| m.seconds).sum(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        graph_json,
        graph_weights,
    };
    write_json_atomic(&args.out.join("summary.json"), &summary)?;
    eprintln!(
        "test accuracy {:.2}%, median {:.1} train img/s; wrote {}",
        100.0 * summary.test_accuracy.unwrap_or(0.0),
        summary.train_images_per_sec,
        args.out.display()
    );
    Ok(())
}

/// A fresh run (its data written to `run.json` first), or the checkpointed one when
/// `--resume` is given and the model, training and data settings all match.
fn start_or_resume(
    args: &TrainArgs,
    data: &RunData,
    spec: &GraphSpec,
    config: TrainConfig,
    backend: BackendKind,
) -> anyhow::Result<Trainer> {
    let ckpt_dir = args.out.join("checkpoint");
    let data_path = args.out.join(RUN_DATA);
    match checks::resumable(
        &ckpt_dir,
        read_manifest(&ckpt_dir)?,
        args.resume,
        "checkpoint",
    )? {
        None => {
            let trainer = Trainer::new(spec, config, backend)?;
            write_json_atomic(&data_path, data)?;
            Ok(trainer)
        }
        Some(m) => {
            checks::same_run("model", &m.model, spec)?;
            checks::same_run("training", &m.training, &config)?;
            checks::same_run("data", &read_json::<RunData>(&data_path)?, data)?;
            Ok(Trainer::resume(&ckpt_dir, backend)?)
        }
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
