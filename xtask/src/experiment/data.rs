//! The experiment's data: both splits loaded (or generated) once, limited as the config
//! says, normalized, and hashed so that a changed data set retrains.

use cinder_datasets::{Dataset, DatasetSource, Normalization};

use super::config::DataConfig;
use super::store::Key;
use crate::dataset::{DatasetImages, dataset_source, normalization_for};

pub struct ExperimentData {
    pub name: &'static str,
    pub train: Dataset,
    pub test: Dataset,
    pub norm: Normalization,
    /// SHA-256 of both splits' images and labels and the normalization.
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
        let train = splits
            .train
            .limit(config.train_images.unwrap_or(usize::MAX));
        let test = splits.test.limit(config.test_images.unwrap_or(usize::MAX));
        let norm = normalization_for(config.half_normalization(), &train)?;
        let mut key = Key::new("data");
        for split in [&train, &test] {
            key.bytes(split.images()).bytes(split.labels());
        }
        key.json(&norm)?;
        Ok(Self {
            name: source.name(),
            key: key.hex(),
            train,
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

    pub fn test_images(&self) -> DatasetImages<'_> {
        DatasetImages {
            data: &self.test,
            norm: self.norm,
        }
    }
}
