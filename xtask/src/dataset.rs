//! The data behind every command: the data set named on the command line, the
//! normalization a training run gives it (and records in its `summary.json`), a split seen
//! as the model crate's batch source, and the seeded choice of calibration images.

use std::path::Path;

use anyhow::{Context, bail};
use cinder_datasets::{Dataset, DatasetSource, Normalization, SyntheticSpec};
use cinder_model::data::epoch_order;
use cinder_model::{Batch, ImageSource, ModelError};
use serde::Deserialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormArg {
    /// Per-channel mean/std fitted on the training split.
    Fit,
    /// mean 0.5, std 0.5 (the Fashion-MNIST transform of PyTorch's usual recipe).
    Half,
}

/// A split of `cinder-datasets` seen through the model crate's batch interface.
pub struct DatasetImages<'a> {
    pub data: &'a Dataset,
    pub norm: Normalization,
}

impl ImageSource for DatasetImages<'_> {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn classes(&self) -> usize {
        self.data.classes()
    }
    fn image_shape(&self) -> [usize; 3] {
        [
            cinder_datasets::CHANNELS,
            cinder_datasets::HEIGHT,
            cinder_datasets::WIDTH,
        ]
    }
    fn gather(&self, indices: &[usize]) -> Result<Batch, ModelError> {
        if let Some(i) = indices.iter().find(|&&i| i >= self.data.len()) {
            return Err(ModelError::Batch(format!(
                "sample {i} out of range (len {})",
                self.data.len()
            )));
        }
        let subset = self.data.subset(indices);
        let images = self
            .norm
            .normalize(subset.images())
            .map_err(|e| ModelError::Batch(e.to_string()))?;
        let labels = subset.labels().iter().map(|&l| u32::from(l)).collect();
        Ok(Batch { images, labels })
    }
}

/// The data set named on the command line.
pub fn dataset_source(name: &str, dir_arg: Option<&Path>) -> anyhow::Result<DatasetSource> {
    let dir = |what: &str| {
        dir_arg
            .map(Path::to_path_buf)
            .with_context(|| format!("--data-dir is required for {what}"))
    };
    Ok(match name {
        "synthetic" => DatasetSource::Synthetic(SyntheticSpec::default()),
        "fashion-mnist" => match dir_arg {
            Some(d) => DatasetSource::FashionMnist(d.to_path_buf()),
            None => DatasetSource::fashion_mnist_default(),
        },
        "cifar10" => DatasetSource::Cifar10(dir("cifar10")?),
        "cifar100" => DatasetSource::Cifar100 {
            dir: dir("cifar100")?,
            labels: cinder_datasets::Cifar100Labels::Fine,
        },
        other => bail!(
            "unknown dataset `{other}` (expected synthetic, fashion-mnist, cifar10 or cifar100)"
        ),
    })
}

/// mean 0.5 / std 0.5 when `half`, else per-channel statistics fitted on `train`.
pub fn normalization_for(half: bool, train: &Dataset) -> anyhow::Result<Normalization> {
    Ok(if half {
        Normalization::new([0.5; 3], [0.5; 3])?
    } else {
        Normalization::fit(train)?
    })
}

/// The training split of `dataset` and the normalization `cargo xtask train` gives it
/// (`half` for Fashion-MNIST, the split's statistics otherwise): the calibration data of
/// a model that comes without a checkpoint.
pub fn training_split(
    dataset: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<(Dataset, Normalization)> {
    let source = dataset_source(dataset, data_dir)?;
    let train = cinder_datasets::load(&source)?.train;
    let norm = normalization_for(dataset == "fashion-mnist", &train)?;
    Ok((train, norm))
}

/// The parts of `cargo xtask train`'s summary.json that later commands read.
#[derive(Deserialize)]
pub struct TrainSummary {
    pub dataset: String,
    pub train_images: usize,
    pub normalization: Normalization,
}

/// `n` of `len` training images, in a seeded random order.
pub fn calibration_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut order = epoch_order(seed, 0, len);
    order.truncate(n);
    order
}

/// `(all but the last n, the last n)` of `data`: the validation images held out right
/// after the trained ones, so that "images past the trained ones" are unseen.
pub fn hold_out_tail(data: &Dataset, n: usize) -> anyhow::Result<(Dataset, Dataset)> {
    if n >= data.len() {
        anyhow::bail!(
            "{n} validation images: expected fewer than the {} training images",
            data.len()
        );
    }
    let indices: Vec<usize> = (0..data.len()).collect();
    let (train, validation) = indices.split_at(data.len() - n);
    Ok((data.subset(train), data.subset(validation)))
}
