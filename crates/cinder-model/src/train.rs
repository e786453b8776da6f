//! Training and evaluation of a [`GraphNet`]. The epoch loop ([`train_epoch`]) and the
//! evaluation ([`evaluate_with`]) also serve any other classifier (cinder-qat's).
//!
//! The default [`TrainConfig`] is the reference ConvNet's original recipe: SGD, lr 0.001, momentum 0.9,
//! dampening 0 (PyTorch's; burn's `MomentumConfig` defaults to 0.1), batch 32, 10 epochs.
//! Adam, L2 weight decay, a learning-rate schedule (constant, cosine, step) and data
//! augmentation (random crop and flip, [`Augmentation`]) are options.
//!
//! A [`Trainer`] runs whole epochs. The sample order of an epoch is a function of the
//! seed and the epoch number only ([`crate::data::epoch_batches`]) and the initial weights
//! of the seed only, so a run restored from a checkpoint (model, optimizer state, epoch)
//! continues exactly as the uninterrupted run would have. Batches are gathered on a helper
//! thread while the current step computes.

use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor};
use cinder_tensor::graph::GraphSpec;
use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::backend::BackendKind;
use crate::data::{Batch, ImageSource, epoch_batches, prefetch};
use crate::error::ModelError;
use crate::net::GraphNet;
use crate::stopping::EarlyStopping;

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OptimizerConfig {
    /// SGD with (optionally Nesterov) momentum, PyTorch semantics: `v = μ·v + (1−d)·g`.
    Sgd {
        momentum: f64,
        dampening: f64,
        nesterov: bool,
    },
    /// Adam (Kingma & Ba); `epsilon` defaults to PyTorch's 1e-8 (burn's default is 1e-5).
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl OptimizerConfig {
    /// SGD with momentum 0.9 and dampening 0 (the reference ConvNet's original recipe).
    pub fn sgd() -> Self {
        Self::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }
    }

    /// Adam with β = (0.9, 0.999), ε = 1e-8.
    pub fn adam() -> Self {
        Self::Adam {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
        }
    }

    fn build(&self, weight_decay: f64) -> ModuleOptimizer {
        let decay = (weight_decay > 0.0).then(|| WeightDecayConfig::new(weight_decay as f32));
        match *self {
            Self::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                let momentum = (momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(dampening)
                        .with_nesterov(nesterov)
                });
                SgdConfig::new()
                    .with_weight_decay(decay)
                    .with_momentum(momentum)
                    .init()
            }
            Self::Adam {
                beta1,
                beta2,
                epsilon,
            } => AdamConfig::new()
                .with_beta_1(beta1)
                .with_beta_2(beta2)
                .with_epsilon(epsilon)
                .with_weight_decay(decay)
                .init(),
        }
    }
}

/// Learning rate over the run, as a function of the position in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    /// Cosine annealing per step from the base rate down to `min_lr` at the last step.
    Cosine {
        min_lr: f64,
    },
    /// The base rate times `gamma` once every `every_epochs` epochs.
    Step {
        every_epochs: usize,
        gamma: f64,
    },
}

impl LrSchedule {
    /// The rate for step `step` (0-based) of epoch `epoch` (0-based).
    pub fn lr(
        &self,
        base: f64,
        epoch: usize,
        step: usize,
        steps_per_epoch: usize,
        epochs: usize,
    ) -> f64 {
        match *self {
            Self::Constant => base,
            Self::Cosine { min_lr } => {
                let total = (epochs * steps_per_epoch).saturating_sub(1).max(1) as f64;
                let t = (epoch * steps_per_epoch + step) as f64 / total;
                min_lr + 0.5 * (base - min_lr) * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
            }
            Self::Step {
                every_epochs,
                gamma,
            } => base * gamma.powi((epoch / every_epochs.max(1)) as i32),
        }
    }
}

/// Everything that decides a training run besides the model config and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Base learning rate.
    pub lr: f64,
    pub optimizer: OptimizerConfig,
    /// L2 penalty added to the gradient (`g + λ·w`, as PyTorch's `weight_decay`).
    pub weight_decay: f64,
    pub schedule: LrSchedule,
    /// Fixes the initial weights and the sample order of every epoch.
    pub seed: u64,
    /// Random crop and flip of the training images, if any.
    #[serde(default)]
    pub augment: Option<Augmentation>,
    /// Stop before `epochs` once the validation accuracy stops improving; the epochs
    /// then need a validation set ([`Trainer::run_epoch_validated`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
}

impl Default for TrainConfig {
    /// The reference ConvNet's original recipe: SGD lr 0.001, momentum 0.9, dampening 0,
    /// batch 32, 10 epochs.
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 32,
            lr: 0.001,
            optimizer: OptimizerConfig::sgd(),
            weight_decay: 0.0,
            schedule: LrSchedule::Constant,
            seed: 0,
            augment: None,
            early_stopping: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |what: &str| Err(ModelError::Training(what.to_owned()));
        if self.epochs == 0 || self.batch_size == 0 {
            return bad("epochs and batch size must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("learning rate must be finite and positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay must be finite and non-negative");
        }
        self.optimizer.validate()?;
        if let Some(stopping) = &self.early_stopping {
            stopping.validate()?;
        }
        self.schedule.validate()
    }
}

/// `Err` naming `field`, its `value` and the `expected` range unless `ok`.
fn check_field(ok: bool, field: &str, value: f64, expected: &str) -> Result<(), ModelError> {
    if ok {
        Ok(())
    } else {
        Err(ModelError::Training(format!(
            "{field} = {value}: expected {expected}"
        )))
    }
}

impl OptimizerConfig {
    /// SGD: momentum and dampening in [0, 1); Adam: betas in [0, 1), epsilon finite and
    /// positive.
    pub fn validate(&self) -> Result<(), ModelError> {
        let unit = |x: f64| (0.0..1.0).contains(&x);
        match *self {
            Self::Sgd {
                momentum,
                dampening,
                ..
            } => {
                check_field(unit(momentum), "momentum", momentum, "a number in [0, 1)")?;
                check_field(
                    unit(dampening),
                    "dampening",
                    dampening,
                    "a number in [0, 1)",
                )
            }
            Self::Adam {
                beta1,
                beta2,
                epsilon,
            } => {
                let (b1, b2, eps) = (f64::from(beta1), f64::from(beta2), f64::from(epsilon));
                check_field(unit(b1), "beta1", b1, "a number in [0, 1)")?;
                check_field(unit(b2), "beta2", b2, "a number in [0, 1)")?;
                check_field(
                    eps.is_finite() && eps > 0.0,
                    "epsilon",
                    eps,
                    "a finite positive number",
                )
            }
        }
    }
}

impl LrSchedule {
    /// Cosine: `min_lr` finite and non-negative; step: `every_epochs` at least 1 and
    /// `gamma` finite and positive.
    pub fn validate(&self) -> Result<(), ModelError> {
        match *self {
            Self::Constant => Ok(()),
            Self::Cosine { min_lr } => check_field(
                min_lr.is_finite() && min_lr >= 0.0,
                "min_lr",
                min_lr,
                "a finite non-negative number",
            ),
            Self::Step {
                every_epochs,
                gamma,
            } => {
                check_field(
                    every_epochs >= 1,
                    "every_epochs",
                    every_epochs as f64,
                    "at least 1",
                )?;
                check_field(
                    gamma.is_finite() && gamma > 0.0,
                    "gamma",
                    gamma,
                    "a finite positive number",
                )
            }
        }
    }
}

/// Top-1 accuracy, mean cross-entropy and the confusion matrix over a data set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub samples: usize,
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true_class][predicted_class]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// One line of the metrics log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    /// Rate of the epoch's last step.
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub train_images: usize,
    pub seconds: f64,
    /// Training images per second, data preparation and metrics included.
    pub images_per_sec: f64,
    /// On the validation set, when the epoch had one (early stopping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Evaluation>,
    pub test: Option<Evaluation>,
}

/// What the progress callback sees after each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// 0-based.
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    pub steps: usize,
    pub images: usize,
    /// Mean loss and accuracy over this epoch so far.
    pub running_loss: f64,
    pub running_accuracy: f64,
    pub images_per_sec: f64,
    pub lr: f64,
}

/// The optimizer `config` describes, with empty state.
pub fn build_optimizer(config: &TrainConfig) -> ModuleOptimizer {
    config.optimizer.build(config.weight_decay)
}

/// Per-sample cross-entropy `[B]` of logits `[B, K]` against class indices `[B]`.
pub fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let [batch, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, targets.reshape([batch, 1]))
        .reshape([batch])
        .neg()
}

/// A model with its optimizer, the run's configuration and its history.
pub struct Trainer {
    /// Always `Some` between calls; taken while the optimizer consumes it.
    model: Option<GraphNet>,
    optimizer: ModuleOptimizer,
    pub(crate) spec: GraphSpec,
    pub(crate) config: TrainConfig,
    pub(crate) backend: BackendKind,
    device: Device,
    pub(crate) history: Vec<EpochMetrics>,
}

impl Trainer {
    /// A fresh run: the network of architecture `spec` initialised from `config.seed` on
    /// `backend`'s autodiff device.
    pub fn new(
        spec: &GraphSpec,
        config: TrainConfig,
        backend: BackendKind,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let device = backend.device()?.autodiff();
        let model = GraphNet::init(spec, &device, config.seed)?;
        let optimizer = build_optimizer(&config);
        Ok(Self::from_parts(
            model,
            optimizer,
            config,
            backend,
            Vec::new(),
        ))
    }

    /// Reassembles a run from its parts (checkpoint restore); `model` is on the autodiff
    /// device of `backend`.
    pub(crate) fn from_parts(
        model: GraphNet,
        optimizer: ModuleOptimizer,
        config: TrainConfig,
        backend: BackendKind,
        history: Vec<EpochMetrics>,
    ) -> Self {
        Self {
            spec: model.spec().clone(),
            device: model.device().autodiff(),
            optimizer,
            model: Some(model),
            config,
            backend,
            history,
        }
    }

    pub(crate) fn optimizer(&self) -> &ModuleOptimizer {
        &self.optimizer
    }

    /// The model being trained (on the autodiff device; use `.valid()` for inference).
    pub fn model(&self) -> &GraphNet {
        self.model.as_ref().expect("model is present between steps")
    }

    pub fn into_model(self) -> GraphNet {
        self.model.expect("model is present between steps")
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The architecture being trained.
    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Completed epochs.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    /// Whether the run is done: all `epochs`, or stopped early.
    pub fn is_finished(&self) -> bool {
        self.epochs_done() >= self.config.epochs || self.stopped_early()
    }

    /// Whether the early-stopping rule ended the run before its epoch cap.
    pub fn stopped_early(&self) -> bool {
        self.config
            .early_stopping
            .is_some_and(|rule| rule.should_stop(&self.history))
    }

    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    /// Trains the next epoch on `train`, then evaluates on `test` when given, and appends
    /// the epoch's metrics to the history. `progress` is called after every step. A run
    /// with early stopping takes [`Self::run_epoch_validated`] instead.
    pub fn run_epoch(
        &mut self,
        train: &dyn ImageSource,
        test: Option<&dyn ImageSource>,
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<&EpochMetrics, ModelError> {
        if self.config.early_stopping.is_some() {
            return Err(ModelError::Training(
                "early stopping needs a validation set in every epoch: use run_epoch_validated"
                    .to_owned(),
            ));
        }
        self.epoch(train, None, test, progress)
    }

    /// [`Self::run_epoch`], also evaluating on `validation`, which early stopping watches.
    pub fn run_epoch_validated(
        &mut self,
        train: &dyn ImageSource,
        validation: &dyn ImageSource,
        test: Option<&dyn ImageSource>,
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<&EpochMetrics, ModelError> {
        self.epoch(train, Some(validation), test, progress)
    }

    fn epoch(
        &mut self,
        train: &dyn ImageSource,
        validation: Option<&dyn ImageSource>,
        test: Option<&dyn ImageSource>,
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<&EpochMetrics, ModelError> {
        if self.is_finished() {
            return Err(ModelError::Training(format!(
                "the run is done after {} of at most {} epochs",
                self.epochs_done(),
                self.config.epochs
            )));
        }
        let (shape, classes) = (self.model().input_shape(), self.model().classes());
        for source in std::iter::once(train).chain(validation).chain(test) {
            check_source(shape, classes, source)?;
        }
        let config = self.config.clone();
        let mut metrics =
            train_epoch(&config, self.epochs_done(), train, progress, |batch, lr| {
                self.step(batch, lr)
            })?;
        let batch = self.config.batch_size.max(64);
        let held_out = |source: Option<&dyn ImageSource>| {
            source.map(|s| evaluate(self.model(), s, batch)).transpose()
        };
        metrics.validation = held_out(validation)?;
        metrics.test = held_out(test)?;
        self.history.push(metrics);
        Ok(self.history.last().expect("just pushed"))
    }

    /// One SGD/Adam step; returns the batch's mean loss and its number of correct guesses.
    fn step(&mut self, batch: &Batch, lr: f64) -> Result<(f64, u64), ModelError> {
        batch.validate(self.model().classes())?;
        let (images, targets) = batch.to_tensors(&self.device);
        let model = self.model.take().expect("model is present between steps");
        let logits = model.forward(images);
        let correct = count_correct(logits.clone().detach(), targets.clone());
        let loss = cross_entropy(logits, targets).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optimizer.step(lr, model, grads));
        let loss = loss.detach().into_scalar::<f32>();
        Ok((f64::from(loss), correct))
    }
}

/// Checks that `source` fits a model of input shape `want` predicting `classes` classes:
/// the image shape, and no more classes than the model predicts.
pub fn check_source(
    want: [usize; 3],
    classes: usize,
    source: &dyn ImageSource,
) -> Result<(), ModelError> {
    if source.image_shape() != want || source.classes() > classes {
        return Err(ModelError::Batch(format!(
            "data has images {:?} and {} classes, the model takes {want:?} and {} classes",
            source.image_shape(),
            source.classes(),
            classes
        )));
    }
    Ok(())
}

/// Trains epoch `epoch` (0-based) of a run under `config` for any model: the seeded
/// batch plan, the learning-rate schedule, the running metrics and the progress callback.
/// `step` trains on one batch at the given rate and returns the batch's mean loss and
/// its number of correct guesses. The metrics have no held-out evaluation.
pub fn train_epoch(
    config: &TrainConfig,
    epoch: usize,
    train: &dyn ImageSource,
    progress: &mut dyn FnMut(&StepProgress),
    mut step: impl FnMut(&Batch, f64) -> Result<(f64, u64), ModelError>,
) -> Result<EpochMetrics, ModelError> {
    let plan = epoch_batches(config.seed, epoch, train.len(), config.batch_size);
    let steps = plan.len();
    let start = Instant::now();
    let (mut loss_sum, mut correct, mut images, mut lr) = (0.0f64, 0u64, 0usize, config.lr);
    prefetch(train, &plan, |i, batch| {
        lr = config
            .schedule
            .lr(config.lr, epoch, i, steps, config.epochs);
        let batch = match config.augment {
            Some(a) => a.apply(batch, config.seed, epoch, i),
            None => batch,
        };
        let (loss, right) = step(&batch, lr)?;
        if !loss.is_finite() {
            return Err(ModelError::Diverged {
                epoch: epoch + 1,
                step: i + 1,
                loss,
            });
        }
        loss_sum += loss * batch.len() as f64;
        correct += right;
        images += batch.len();
        let seconds = start.elapsed().as_secs_f64();
        progress(&StepProgress {
            epoch,
            step: i + 1,
            steps,
            images,
            running_loss: loss_sum / images as f64,
            running_accuracy: correct as f64 / images as f64,
            images_per_sec: images as f64 / seconds.max(1e-9),
            lr,
        });
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(EpochMetrics {
        epoch: epoch + 1,
        lr,
        train_loss: loss_sum / images.max(1) as f64,
        train_accuracy: correct as f64 / images.max(1) as f64,
        train_images: images,
        seconds,
        images_per_sec: images as f64 / seconds.max(1e-9),
        validation: None,
        test: None,
    })
}

/// How many rows of `logits` have their largest entry at the target class.
pub fn count_correct(logits: Tensor<2>, targets: Tensor<1, Int>) -> u64 {
    let predicted: Tensor<1, Int> = logits.argmax(1).flatten(0, 1);
    predicted.equal(targets).int().sum().into_scalar::<i64>() as u64
}

/// Evaluates `model` (switched to inference mode) on all of `data`, in order.
pub fn evaluate(
    model: &GraphNet,
    data: &dyn ImageSource,
    batch_size: usize,
) -> Result<Evaluation, ModelError> {
    let model = model.valid();
    let device = model.device().without_autodiff();
    evaluate_with(data, batch_size, model.classes(), &device, |images| {
        Ok(model.forward(images))
    })
}

/// Evaluates any classifier given as its inference `forward` (images on `device` to
/// logits `[B, classes]`) on all of `data`, in order.
pub fn evaluate_with(
    data: &dyn ImageSource,
    batch_size: usize,
    classes: usize,
    device: &Device,
    mut forward: impl FnMut(Tensor<4>) -> Result<Tensor<2>, ModelError>,
) -> Result<Evaluation, ModelError> {
    let indices: Vec<usize> = (0..data.len()).collect();
    let plan: Vec<Vec<usize>> = indices
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut loss_sum = 0.0f64;
    prefetch(data, &plan, |_, batch| {
        batch.validate(classes)?;
        let (images, targets) = batch.to_tensors(device);
        let logits = forward(images)?;
        let predicted: Tensor<1, Int> = logits.clone().argmax(1).flatten(0, 1);
        loss_sum += f64::from(cross_entropy(logits, targets).sum().into_scalar::<f32>());
        let predicted = predicted
            .into_data()
            .try_into_vec_as::<i64>()
            .map_err(|e| ModelError::Data(format!("{e:?}")))?;
        for (&truth, &guess) in batch.labels.iter().zip(&predicted) {
            confusion[truth as usize][guess as usize] += 1;
        }
        Ok(())
    })?;
    let samples = data.len();
    let correct: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Ok(Evaluation {
        samples,
        loss: loss_sum / samples.max(1) as f64,
        accuracy: correct as f64 / samples.max(1) as f64,
        confusion,
    })
}

/// Writes `history` as JSON lines (one [`EpochMetrics`] per line), atomically.
pub fn write_metrics_log(
    path: &std::path::Path,
    history: &[EpochMetrics],
) -> Result<(), ModelError> {
    let mut text = String::new();
    for m in history {
        let line =
            serde_json::to_string(m).map_err(|e| ModelError::Training(format!("metrics: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    Ok(cinder_tensor::io::write_atomic(path, text.as_bytes())?)
}
