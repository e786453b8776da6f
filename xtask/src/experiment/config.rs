//! The experiment config: one TOML file per named experiment in `experiments/`, read
//! with serde. It fixes the data, the model and training recipe, calibration and
//! evaluation settings, the QAT recipe, and the matrix as a list of named cells, each a
//! method plus a [`QuantConfig`] (the runtime's own per-layer config type).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cinder_model::{ConvNetConfig, TrainConfig, zoo};
use cinder_observers::ObserverSpec;
use cinder_ptq::AdaRoundOptions;
use cinder_ptq::mixed::Target;
use cinder_runtime::QuantConfig;
use cinder_tensor::graph::GraphSpec;
use serde::{Deserialize, Serialize};

/// The whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// Names the default output directory `results/NAME`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub data: DataConfig,
    #[serde(default)]
    pub model: ModelConfig,
    pub training: TrainConfig,
    pub calibration: CalibrationConfig,
    pub evaluation: EvaluationConfig,
    pub qat: QatConfig,
    /// How AdaRound runs in the cells that ask for it (`adaround` in their config).
    #[serde(default)]
    pub adaround: AdaRoundOptions,
    pub cells: Vec<CellConfig>,
}

/// Which images, how many, and their normalization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// synthetic, fashion-mnist, cifar10 or cifar100.
    pub dataset: String,
    /// Directory of the data set files (not for synthetic; Fashion-MNIST has a default).
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The first N training images (all when absent).
    #[serde(default)]
    pub train_images: Option<usize>,
    /// The first N test images (all when absent).
    #[serde(default)]
    pub test_images: Option<usize>,
    /// The last N of the training images, held out of training for early stopping
    /// (`training.early_stopping`) and the report's validation curve.
    #[serde(default)]
    pub validation_images: Option<usize>,
    /// `half` (mean 0.5, std 0.5) or `fit` (per-channel statistics of the training
    /// split); default `half` for Fashion-MNIST, `fit` otherwise.
    #[serde(default)]
    pub normalization: Option<NormKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    Half,
    Fit,
}

impl DataConfig {
    /// Whether the images are normalized with mean 0.5 / std 0.5.
    pub fn half_normalization(&self) -> bool {
        self.normalization
            .map_or(self.dataset == "fashion-mnist", |n| n == NormKind::Half)
    }
}

/// The model: a zoo network by name (the reference ConvNet by default), and for the
/// ConvNet its sizes (the reference's where absent); input shape and classes come from
/// the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// One of `cinder_model::zoo::MODELS`.
    #[serde(default = "default_model")]
    pub name: String,
    #[serde(default)]
    pub channels: Option<[usize; 2]>,
    #[serde(default)]
    pub hidden: Option<usize>,
    #[serde(default)]
    pub batch_norm: Option<bool>,
}

fn default_model() -> String {
    "convnet".to_owned()
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            name: default_model(),
            channels: None,
            hidden: None,
            batch_norm: None,
        }
    }
}

impl ModelConfig {
    /// The architecture for images of `input` shape and `classes` classes.
    pub fn spec(&self, input: [usize; 3], classes: usize) -> anyhow::Result<GraphSpec> {
        let batch_norm = self.batch_norm.unwrap_or(false);
        if self.name != "convnet" {
            if self.channels.is_some() || self.hidden.is_some() {
                bail!(
                    "model.channels and model.hidden size the convnet only, not `{}`",
                    self.name
                );
            }
            return Ok(zoo::by_name(&self.name, input, classes, batch_norm)?);
        }
        let reference = ConvNetConfig::reference();
        let convnet = ConvNetConfig {
            in_channels: input[0],
            input_size: input[1],
            channels: self.channels.unwrap_or(reference.channels),
            hidden: self.hidden.unwrap_or(reference.hidden),
            classes,
            ..reference.with_batch_norm(batch_norm)
        };
        Ok(convnet.spec()?)
    }
}

/// Calibration images come from the training split, in a seeded random order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    pub images: usize,
    pub batch_size: usize,
    /// Images (of the calibration set) over which activation errors are measured.
    pub error_images: usize,
    pub seed: u64,
}

/// How cells are measured on the test split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Batch of the accuracy pass, whose median batch time is the batch latency.
    pub batch: usize,
    /// Single images timed for the batch-1 latency.
    pub single: usize,
    /// Runtime worker threads.
    pub threads: usize,
    /// Test images the sensitivity analysis scores each layer on.
    pub sensitivity_images: usize,
}

/// The fine-tuning recipe of QAT cells and of their control run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QatConfig {
    pub epochs: usize,
    pub lr: f64,
    /// The first N training images.
    pub train_images: usize,
}

/// How a cell gets its model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Post-training quantization of the trained model with `quant`.
    #[default]
    Ptq,
    /// PTQ with `quant`, keeping float the `keep_float` layers whose quantization alone
    /// hurts the logits most.
    Sensitivity,
    /// Quantization-aware fine-tuning under `quant`, then conversion.
    Qat,
    /// The QAT control: the same extra fine-tuning without fake-quant, then PTQ.
    QatControl,
    /// `cargo xtask autoquant`'s search on `quant`: each layer's weight width (or float)
    /// chosen within the cell's `autoquant` accuracy budget on held-out training images.
    Autoquant,
}

impl Method {
    /// Whether the cell trains the model further before quantizing it (QAT and its
    /// control): its accuracy then includes what the extra training adds, so it is
    /// compared with its control, not ranked with the post-training cells.
    pub fn fine_tunes(self) -> bool {
        matches!(self, Method::Qat | Method::QatControl)
    }
}

/// One named strategy of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellConfig {
    pub name: String,
    /// The matrix row the cell belongs to (observer, bits, granularity, ...), for the report.
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub method: Method,
    /// The activation observer of the calibration.
    #[serde(default = "minmax")]
    pub observer: ObserverSpec,
    #[serde(default)]
    pub quant: QuantConfig,
    /// Layers kept float by a sensitivity cell.
    #[serde(default)]
    pub keep_float: usize,
    /// The search of an autoquant cell (its defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoquant: Option<AutoquantCell>,
    /// Cross-layer equalization through ReLU6 by replacing it with ReLU (Nagel et al.'s
    /// MobileNetV2 recipe; changes the float model where activations exceed 6). Without
    /// it, pairs through ReLU6 are left alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relu6_as_relu: bool,
}

impl CellConfig {
    /// Whether any layer of the cell is equalized.
    pub fn equalizes(&self) -> bool {
        self.quant.default.equalize || self.quant.layers.values().any(|o| o.equalize == Some(true))
    }
}

/// The settings of an autoquant cell's search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoquantCell {
    /// The largest accuracy drop against fp32 on the held-out split, pp.
    pub budget_pp: f64,
    pub target: Target,
    /// The weight widths a layer may take, highest first.
    pub widths: Vec<u8>,
    /// Whether a layer may fall back to float weights.
    pub allow_float: bool,
    /// Training images, beyond the ones trained on where the data has them, that every
    /// decision is measured on.
    pub held_out_images: usize,
}

impl Default for AutoquantCell {
    fn default() -> Self {
        Self {
            budget_pp: 0.5,
            target: Target::Size,
            widths: vec![8, 6, 4, 2],
            allow_float: true,
            held_out_images: 2000,
        }
    }
}

fn minmax() -> ObserverSpec {
    ObserverSpec::MinMax
}

/// `name` (the config field `field`) is a plain file name: letters, digits, `-` and `_`
/// (no path separator, no `..`).
fn check_file_name(field: &str, name: &str) -> anyhow::Result<()> {
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if name.is_empty() || !name.chars().all(valid) {
        bail!("{field} `{name}`: use letters, digits, `-` and `_` only");
    }
    Ok(())
}

/// The workspace's root directory (the one above xtask's).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// The workspace's `experiments/` directory.
pub fn experiments_dir() -> PathBuf {
    workspace_dir().join("experiments")
}

/// A suite of experiments (see `suite`): `name`, `description` and the member configs, relative to the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub experiments: Vec<PathBuf>,
}

/// The suite that `path` holds, or `None` when it is a single experiment's config (a
/// suite is a table with an `experiments` list).
pub fn load_suite(path: &Path) -> anyhow::Result<Option<SuiteConfig>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: invalid experiment config", path.display()))?;
    if !table.contains_key("experiments") {
        return Ok(None);
    }
    let suite: SuiteConfig = toml::from_str(&text)
        .with_context(|| format!("{}: invalid suite of experiments", path.display()))?;
    check_file_name("name", &suite.name)?;
    if suite.experiments.is_empty() {
        bail!(
            "{}: experiments: expected at least one config",
            path.display()
        );
    }
    Ok(Some(suite))
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> anyhow::Result<ExperimentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: ExperimentConfig = toml::from_str(&text)
        .with_context(|| format!("{}: invalid experiment config", path.display()))?;
    config
        .validate()
        .with_context(|| format!("{}: invalid experiment config", path.display()))?;
    Ok(config)
}

impl ExperimentConfig {
    /// Positive sizes, a bounded thread count, a name and unique cell names usable as
    /// file names.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.training.validate()?;
        check_file_name("name", &self.name)?;
        // Every data set's images are 3×32×32; the class count does not change validity.
        self.model.spec([3, 32, 32], 10).context("model")?;
        crate::checks::threads("evaluation.threads", self.evaluation.threads)?;
        let optional = [
            ("data.train_images", self.data.train_images),
            ("data.test_images", self.data.test_images),
            ("data.validation_images", self.data.validation_images),
        ];
        if let Some((name, _)) = optional.iter().find(|(_, v)| *v == Some(0)) {
            bail!("{name} must be at least 1 (or absent)");
        }
        if let (Some(train), Some(held_out)) = (self.data.train_images, self.data.validation_images)
            && held_out >= train
        {
            bail!(
                "data.validation_images = {held_out}: expected fewer than data.train_images = \
                 {train} (they are held out of the training images)"
            );
        }
        if self.training.early_stopping.is_some() && self.data.validation_images.is_none() {
            bail!(
                "training.early_stopping watches the validation accuracy: set \
                 data.validation_images"
            );
        }
        if let Some(problem) = self.adaround.problem() {
            bail!("adaround: {problem}");
        }
        if !(self.qat.lr.is_finite() && self.qat.lr > 0.0) {
            bail!("qat.lr = {}: expected a finite number above 0", self.qat.lr);
        }
        let sizes = [
            ("qat.epochs", self.qat.epochs),
            ("qat.train_images", self.qat.train_images),
            ("calibration.images", self.calibration.images),
            ("calibration.batch_size", self.calibration.batch_size),
            ("calibration.error_images", self.calibration.error_images),
            ("evaluation.batch", self.evaluation.batch),
            ("evaluation.threads", self.evaluation.threads),
            (
                "evaluation.sensitivity_images",
                self.evaluation.sensitivity_images,
            ),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            bail!("{name} must be at least 1");
        }
        let mut seen = BTreeMap::new();
        for (i, cell) in self.cells.iter().enumerate() {
            check_file_name(&format!("cells[{i}].name"), &cell.name)?;
            if let Some(j) = seen.insert(cell.name.as_str(), i) {
                bail!("cells[{j}] and cells[{i}] are both named `{}`", cell.name);
            }
            if let Some(a) = &cell.autoquant {
                if cell.method != Method::Autoquant {
                    bail!(
                        "cells[{i}] (`{}`): `autoquant` settings need method = \"autoquant\"",
                        cell.name
                    );
                }
                if !(a.budget_pp.is_finite() && a.budget_pp >= 0.0) || a.held_out_images == 0 {
                    bail!(
                        "cells[{i}] (`{}`): autoquant.budget_pp = {} and held_out_images = {}: \
                         expected a finite budget >= 0 and at least 1 image",
                        cell.name,
                        a.budget_pp,
                        a.held_out_images
                    );
                }
            }
            if cell.relu6_as_relu && !cell.equalizes() {
                bail!(
                    "cells[{i}] (`{}`): relu6_as_relu needs equalize = true on some layer",
                    cell.name
                );
            }
            if cell.method == Method::Sensitivity && cell.keep_float == 0 {
                bail!(
                    "cells[{i}] (`{}`): a sensitivity cell needs keep_float >= 1",
                    cell.name
                );
            }
        }
        Ok(())
    }

    /// Replaces the data set (name and optional directory) given on the command line.
    pub fn with_dataset(mut self, spec: &[String]) -> anyhow::Result<Self> {
        match spec {
            [] => {}
            [name] => (self.data.dataset, self.data.dir) = (name.clone(), None),
            [name, dir] => {
                (self.data.dataset, self.data.dir) = (name.clone(), Some(PathBuf::from(dir)))
            }
            _ => bail!("--dataset takes a name and at most one directory"),
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::OpSpec;

    fn all_configs() -> Vec<(PathBuf, ExperimentConfig)> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(experiments_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .filter(|p| load_suite(p).unwrap().is_none())
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let c = load(&p).unwrap_or_else(|e| panic!("{e:#}"));
                (p, c)
            })
            .collect()
    }

    #[test]
    fn shipped_configs_parse_and_validate() {
        let configs = all_configs();
        let names: Vec<&str> = configs.iter().map(|(_, c)| c.name.as_str()).collect();
        for want in [
            "default",
            "quick",
            "fashion-mnist",
            "mobilenetv2-tiny",
            "resnet20",
        ] {
            assert!(names.contains(&want), "{names:?}");
        }
        let (_, default) = configs.iter().find(|(_, c)| c.name == "default").unwrap();
        for method in [
            Method::Ptq,
            Method::Sensitivity,
            Method::Qat,
            Method::QatControl,
        ] {
            assert!(
                default.cells.iter().any(|c| c.method == method),
                "{method:?}"
            );
        }
        let bits: Vec<u8> = default
            .cells
            .iter()
            .map(|c| c.quant.default.weight_bits)
            .collect();
        for b in [8, 6, 4, 2] {
            assert!(bits.contains(&b), "bits {b} missing: {bits:?}");
        }
    }

    #[test]
    fn the_zoo_suite_names_a_config_of_every_zoo_model() {
        let path = experiments_dir().join("zoo.toml");
        let suite = load_suite(&path).unwrap().expect("zoo.toml is a suite");
        let models: Vec<String> = suite
            .experiments
            .iter()
            .map(|member| load(&experiments_dir().join(member)).unwrap().model.name)
            .collect();
        for name in zoo::MODELS {
            assert!(models.iter().any(|m| m == name), "{name} not in {models:?}");
        }
    }

    #[test]
    fn the_model_is_any_zoo_network() {
        let model = |name: &str| ModelConfig {
            name: name.into(),
            ..ModelConfig::default()
        };
        let depthwise = |spec: GraphSpec| {
            spec.nodes
                .iter()
                .filter(|n| matches!(n.op, OpSpec::Conv2d { groups, .. } if groups > 1))
                .count()
        };
        let mobile = model("mobilenetv2-tiny").spec([3, 32, 32], 10).unwrap();
        assert_eq!(depthwise(mobile), 7);
        let reference = ModelConfig::default().spec([3, 32, 32], 10).unwrap();
        assert_eq!(reference, ConvNetConfig::reference().spec().unwrap());
        let err = model("vgg").spec([3, 32, 32], 10).unwrap_err().to_string();
        assert!(err.contains("unknown model `vgg`"), "{err}");
        let sized = ModelConfig {
            hidden: Some(64),
            ..model("resnet20")
        };
        let err = format!("{:#}", sized.spec([3, 32, 32], 10).unwrap_err());
        assert!(err.contains("convnet only, not `resnet20`"), "{err}");
    }

    #[test]
    fn bad_configs_are_rejected_with_the_field() {
        let (_, mut c) = all_configs().remove(0);
        c.cells.push(c.cells[0].clone());
        assert!(c.validate().unwrap_err().to_string().contains("both named"));
        c.cells.pop();
        c.cells[0].name = "a/b".into();
        assert!(c.validate().unwrap_err().to_string().contains("cells[0]"));
        c.cells[0].name = "ok".into();
        c.name = "../../x".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("name `../../x`")
        );
        c.name = "ok".into();
        c.data.test_images = Some(0);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("data.test_images"), "{err}");
        c.data.test_images = None;
        (c.data.train_images, c.data.validation_images) = (Some(100), Some(100));
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("data.validation_images = 100"), "{err}");
        c.data.validation_images = None;
        c.training.early_stopping = Some(cinder_model::EarlyStopping {
            patience: 2,
            min_delta: 0.0,
        });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("set data.validation_images"), "{err}");
        c.training.early_stopping = None;
        c.evaluation.threads = 100_000;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("evaluation.threads = 100000"), "{err}");
        c.evaluation.threads = 1;
        c.qat.train_images = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("qat.train_images")
        );
        c.qat.train_images = 10;
        c.cells[0].relu6_as_relu = true;
        c.cells[0].quant.default.equalize = false;
        c.cells[0].quant.layers.clear();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("relu6_as_relu needs equalize"), "{err}");
        c.cells[0].quant.default.equalize = true;
        c.validate().unwrap();
        c.evaluation.batch = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("evaluation.batch")
        );
        let err = toml::from_str::<ExperimentConfig>("name = 3").unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }

    #[test]
    fn dataset_override() {
        let (_, c) = all_configs().remove(0);
        let c = c
            .with_dataset(&["cifar10".into(), "/data/cifar".into()])
            .unwrap();
        assert_eq!(c.data.dataset, "cifar10");
        assert_eq!(c.data.dir.as_deref(), Some(Path::new("/data/cifar")));
        assert!(!c.data.half_normalization());
        assert!(
            c.with_dataset(&["a".into(), "b".into(), "c".into()])
                .is_err()
        );
    }
}
