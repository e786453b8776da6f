//! Fine-tuning a [`QatModel`]: whole epochs with cinder-model's seeded batch plan,
//! schedule, optimizer and metrics ([`cinder_model::train::train_epoch`]), evaluation of
//! the fake-quant forward, and per-epoch checkpoints with exact resume.
//!
//! A checkpoint directory holds `model-eNNNN.bpk` (the QAT module: weights and learned
//! scales), `optim-eNNNN.bpk` (the optimizer state) and `qat.json`, the manifest written
//! last (the commit point): format version, configs, backend, the observer state and
//! frozen params, the two file names with the SHA-256 of their bytes, and the metrics
//! history. A resume refuses corrupt files, a state that misses an observer or frozen
//! params, and figures that disagree, naming the file and the field.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleRecord;
use burn::tensor::Device;
use cinder_model::checkpoint::{part_names, part_path, read_part, write_part};
use cinder_model::train::{
    build_optimizer, check_source, count_correct, cross_entropy, evaluate_with, train_epoch,
};
use cinder_model::{
    BackendKind, Batch, EpochMetrics, Evaluation, GraphNet, ImageSource, ModelError, StepProgress,
};
use cinder_observers::ObserverError;
use cinder_tensor::graph::GraphSpec;
use cinder_tensor::io::{read_json, write_json_atomic};
use serde::{Deserialize, Serialize};

use crate::config::QatConfig;
use crate::error::QatError;
use crate::model::{QatModel, QatNet, QuantState};
use crate::plan::QatPlan;

/// Version of the QAT checkpoint manifest (3: the model is a graph architecture, the
/// state keyed by its activation points and layers).
pub const QAT_CHECKPOINT_VERSION: u32 = 3;
/// The manifest's file name inside a QAT checkpoint directory.
pub const QAT_MANIFEST: &str = "qat.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QatManifest {
    pub format_version: u32,
    pub epochs_done: usize,
    /// The BatchNorm-free architecture under fine-tuning.
    pub model: GraphSpec,
    pub config: QatConfig,
    pub backend: BackendKind,
    pub state: QuantState,
    pub model_file: String,
    /// SHA-256 of `model_file`'s bytes, hex.
    pub model_sha256: String,
    pub optimizer_file: String,
    /// SHA-256 of `optimizer_file`'s bytes, hex.
    pub optimizer_sha256: String,
    pub history: Vec<EpochMetrics>,
}

/// A QAT (or control) fine-tuning run: the model, its optimizer and its history.
pub struct QatTrainer {
    /// Always `Some` between calls; taken while the optimizer consumes it.
    model: Option<QatModel>,
    optimizer: ModuleOptimizer,
    backend: BackendKind,
    history: Vec<EpochMetrics>,
}

impl QatTrainer {
    /// A fresh run over a copy of `model` (BatchNorm folded) on `backend`'s autodiff
    /// device.
    pub fn new(
        model: &GraphNet,
        config: QatConfig,
        backend: BackendKind,
    ) -> Result<Self, QatError> {
        let device = backend.device()?.autodiff();
        let optimizer = build_optimizer(&config.training);
        Ok(Self {
            model: Some(QatModel::new(model, config, &device)?),
            optimizer,
            backend,
            history: Vec::new(),
        })
    }

    /// The model being trained (autodiff device).
    pub fn model(&self) -> &QatModel {
        self.model.as_ref().expect("model is present between steps")
    }

    pub fn into_model(self) -> QatModel {
        self.model.expect("model is present between steps")
    }

    pub fn config(&self) -> &QatConfig {
        self.model().config()
    }

    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }

    pub fn is_finished(&self) -> bool {
        self.epochs_done() >= self.config().training.epochs
    }

    /// Fine-tunes the next epoch on `train`, evaluates the fake-quant forward (the float
    /// forward for a control) on `test` when given, and records the epoch's metrics.
    pub fn run_epoch(
        &mut self,
        train: &dyn ImageSource,
        test: Option<&dyn ImageSource>,
        progress: &mut dyn FnMut(&StepProgress),
    ) -> Result<&EpochMetrics, QatError> {
        let config = self.config().training.clone();
        if self.is_finished() {
            return Err(QatError::Config(format!(
                "all {} epochs are done",
                config.epochs
            )));
        }
        let net = self.model().net();
        check_source(net.input_shape(), net.classes(), train)?;
        // The step's own error is kept typed; train_epoch only sees that it failed.
        let (epoch, mut step) = (self.epochs_done() + 1, 0);
        let mut failure = None;
        let result = train_epoch(&config, self.epochs_done(), train, progress, |batch, lr| {
            step += 1;
            self.step(batch, lr).map_err(|e| {
                let message = ModelError::Training(e.to_string());
                failure = Some(diverged_or(e, epoch, step));
                message
            })
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let mut metrics = result?;
        metrics.test = test
            .map(|t| evaluate(self.model(), t, config.batch_size.max(64)))
            .transpose()?;
        self.history.push(metrics);
        Ok(self.history.last().expect("just pushed"))
    }

    /// One optimizer step; the batch's mean loss and number of correct guesses.
    fn step(&mut self, batch: &Batch, lr: f64) -> Result<(f64, u64), QatError> {
        let mut model = self.model.take().expect("model is present between steps");
        let result = batch
            .validate(model.net().classes())
            .map_err(QatError::from)
            .and_then(|()| {
                let (images, targets) = batch.to_tensors(&model.net().device());
                Ok((model.train_forward(images)?, targets))
            });
        let (logits, targets) = match result {
            Ok(r) => r,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let correct = count_correct(logits.clone().detach(), targets.clone());
        let loss = cross_entropy(logits, targets).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model.net);
        let net = self.optimizer.step(lr, model.net, grads);
        self.model = Some(QatModel { net, ..model });
        Ok((f64::from(loss.detach().into_scalar::<f32>()), correct))
    }

    /// Writes the current state to `dir` (created if needed), atomically, and removes
    /// the previous epoch's files once the new manifest is committed.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), QatError> {
        let epoch = self.epochs_done();
        let model = self.model();
        let previous = read_qat_manifest(dir)?;
        let (model_file, optimizer_file) = part_names(epoch);
        let model_path = dir.join(&model_file);
        let model_bytes = model
            .net
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let optim_path = dir.join(&optimizer_file);
        let optim_bytes = self
            .optimizer
            .into_bytes()
            .map_err(|e| checkpoint_error(&optim_path, e))?;
        let manifest = QatManifest {
            format_version: QAT_CHECKPOINT_VERSION,
            epochs_done: epoch,
            model: model.net().spec().clone(),
            config: model.config().clone(),
            backend: self.backend,
            state: model.state().clone(),
            model_sha256: write_part(&model_path, &model_bytes)?,
            model_file,
            optimizer_sha256: write_part(&optim_path, &optim_bytes)?,
            optimizer_file,
            history: self.history.clone(),
        };
        write_json_atomic(&dir.join(QAT_MANIFEST), &manifest)?;
        for old in previous
            .iter()
            .flat_map(|p| [&p.model_file, &p.optimizer_file])
        {
            if *old != manifest.model_file && *old != manifest.optimizer_file {
                let path = part_path(dir, &dir.join(QAT_MANIFEST), old)?;
                std::fs::remove_file(&path)
                    .map_err(|e| cinder_tensor::io::FileError::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Restores the run saved in `dir` on `backend`.
    pub fn resume(dir: &Path, backend: BackendKind) -> Result<Self, QatError> {
        let manifest_path = dir.join(QAT_MANIFEST);
        let m: QatManifest = read_json(&manifest_path)?;
        if m.format_version != QAT_CHECKPOINT_VERSION
            || m.history.len() != m.epochs_done
            || m.epochs_done > m.config.training.epochs
        {
            return Err(checkpoint_error(
                &manifest_path,
                format!(
                    "format version {} (expected {QAT_CHECKPOINT_VERSION}), history length {} and epochs_done {} (expected equal and at most config.training.epochs = {})",
                    m.format_version,
                    m.history.len(),
                    m.epochs_done,
                    m.config.training.epochs
                ),
            ));
        }
        let device: Device = backend.device()?.autodiff();
        let model_path = part_path(dir, &manifest_path, &m.model_file)?;
        let record = ModuleRecord::from_bytes(read_part(&model_path, &m.model_sha256)?)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        let net = GraphNet::init(&m.model, &device, 0)
            .map_err(|e| checkpoint_error(&manifest_path, e))?;
        let plan = QatPlan::new(net.spec()).map_err(|e| checkpoint_error(&manifest_path, e))?;
        m.config
            .validate(plan.layers())
            .map_err(|e| checkpoint_error(&manifest_path, e))?;
        let net = QatNet::new(net, &plan, &m.config)
            .map_err(|e| checkpoint_error(&manifest_path, e))?
            .try_load_record(record)
            .map_err(|e| checkpoint_error(&model_path, e))?;
        m.state
            .check(&plan, &net.net)
            .map_err(|e| checkpoint_error(&manifest_path, e))?;
        let optim_path = part_path(dir, &manifest_path, &m.optimizer_file)?;
        let optimizer = build_optimizer(&m.config.training)
            .from_bytes(read_part(&optim_path, &m.optimizer_sha256)?)
            .map_err(|e| checkpoint_error(&optim_path, e))?;
        Ok(Self {
            model: Some(QatModel {
                net,
                plan,
                state: m.state,
                config: m.config,
            }),
            optimizer,
            backend,
            history: m.history,
        })
    }
}

/// Evaluates `model`'s inference forward (fake-quant, or float for a control) on `data`.
pub fn evaluate(
    model: &QatModel,
    data: &dyn ImageSource,
    batch_size: usize,
) -> Result<Evaluation, QatError> {
    let device = model.net().device().without_autodiff();
    let mut failure = None;
    let result = evaluate_with(data, batch_size, model.net().classes(), &device, |x| {
        model.forward(x).map_err(|e| {
            let message = ModelError::Data(e.to_string());
            failure = Some(e);
            message
        })
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(result?),
    }
}

/// The manifest of a QAT checkpoint directory, if there is one.
pub fn read_qat_manifest(dir: &Path) -> Result<Option<QatManifest>, QatError> {
    let path = dir.join(QAT_MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(read_json(&path)?))
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> QatError {
    QatError::Checkpoint {
        path: PathBuf::from(path),
        message: message.to_string(),
    }
}

/// A non-finite value met by an observer in a training step means that earlier steps
/// overflowed the weights (image sources refuse non-finite pixels): the run diverged, and
/// is reported as such, with the NaN loss the step would have had.
fn diverged_or(e: QatError, epoch: usize, step: usize) -> QatError {
    match e {
        QatError::Observer(ObserverError::NonFiniteValue { .. }) => {
            QatError::Model(ModelError::Diverged {
                epoch,
                step,
                loss: f64::NAN,
            })
        }
        other => other,
    }
}
