//! The experiment's data: both splits loaded (or generated) once, limited as the config
//! says, the validation images held out of the training ones, normalized, and hashed so
//! that a changed data set retrains.

use anyhow::Context;
use cinder_datasets::{Dataset, DatasetSource, Normalization};

use super::config::DataConfig;
use super::store::Key;
use crate::dataset::{DatasetImages, dataset_source, hold_out_tail, normalization_for};

pub struct ExperimentData {
    pub name: &'static str,
    /// The images the model trains on.
    pub train: Dataset,
    /// The last `validation_images` of the configured training images, held out for
    /// early stopping; empty when the config holds none out.
    pub validation: Dataset,
    pub test: Dataset,
    pub norm: Normalization,
    /// SHA-256 of the three sets' images and labels and the normalization.
    pub key: String,
}

impl ExperimentData {
    pub fn load(config: &DataConfig) -> anyhow::Result<Self> {
        let mut source = dataset_source(&config.dataset, config.dir.as_deref())?;
        if let DatasetSource::Synthetic(spec) = &mut source {
            // A smaller synthetic set is a prefix of a larger one: generate only that.
            spec.train = config.train_images.unwrap_or(spec.train);
            spec.test = config.test_images.unwrap_or(spec.test);
        }
        let splits = cinder_datasets::load(&source)?;
        let configured = splits
            .train
            .limit(config.train_images.unwrap_or(usize::MAX));
        let (train, validation) = hold_out_tail(&configured, config.validation_images.unwrap_or(0))
            .context("data.validation_images")?;
        let test = splits.test.limit(config.test_images.unwrap_or(usize::MAX));
        let norm = normalization_for(config.half_normalization(), &train)?;
        let mut key = Key::new("data");
        // Without validation images the key is that of the two splits alone, so earlier
        // runs' checkpoints stay valid.
        let held_out = (!validation.is_empty()).then_some(&validation);
        for split in std::iter::once(&train).chain(held_out).chain([&test]) {
            key.bytes(split.images()).bytes(split.labels());
        }
        key.json(&norm)?;
        Ok(Self {
            name: source.name(),
            key: key.hex(),
            train,
            validation,
            test,
            norm,
        })
    }

    /// The first `trained + extra` training images of `config`'s data set (fewer where it
    /// has fewer): the ones the model trained on, then images it never saw.
    pub fn with_unseen(
        config: &DataConfig,
        trained: usize,
        extra: usize,
    ) -> anyhow::Result<Dataset> {
        let mut source = dataset_source(&config.dataset, config.dir.as_deref())?;
        let n = trained.saturating_add(extra);
        if let DatasetSource::Synthetic(spec) = &mut source {
            spec.train = n;
            spec.test = 1;
        }
        Ok(cinder_datasets::load(&source)?.train.limit(n))
    }

    pub fn train_images(&self) -> DatasetImages<'_> {
        DatasetImages {
            data: &self.train,
            norm: self.norm,
        }
    }

    /// The validation images, when the config holds any out.
    pub fn validation_images(&self) -> Option<DatasetImages<'_>> {
        (!self.validation.is_empty()).then_some(DatasetImages {
            data: &self.validation,
            norm: self.norm,
        })
    }

    pub fn test_images(&self) -> DatasetImages<'_> {
        DatasetImages {
            data: &self.test,
            norm: self.norm,
        }
    }
}
