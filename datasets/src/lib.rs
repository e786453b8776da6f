//! cinder's datasets: CIFAR-style 3x32x32 images with labels, kept as bytes in memory
//! and turned into normalized `cinder_tensor::TensorBuf<f32>` batches on demand.
//!
//! Sources: the binary CIFAR-10 and CIFAR-100 distributions, IDX files (the real
//! Fashion-MNIST that Debian ships, padded to 32x32 and replicated to 3 channels), and a
//! seeded synthetic CIFAR-style set that needs no download. No burn here: `cinder-model`
//! turns the batches into burn tensors.
//!
//! ```no_run
//! use cinder_datasets::{BatchOptions, DatasetSource, Normalization, load};
//!
//! let splits = load(&DatasetSource::Synthetic(Default::default()))?;
//! let norm = Normalization::fit(&splits.train)?;
//! let (train, validation) = splits.train.split_validation(0.1, 7)?;
//! for batch in train.batches(&BatchOptions::default(), 0, &norm)? {
//!     // batch.images: [B, 3, 32, 32] f32, batch.labels: [B] u8
//! }
//! # Ok::<(), cinder_datasets::DatasetError>(())
//! ```

mod batch;
mod cifar;
mod dataset;
mod error;
mod idx;
mod normalize;
mod preview;
mod rng;
mod synthetic;

use std::path::PathBuf;

pub use batch::{Augmentation, Batch, BatchOptions, Batches, SeededAugmentation, epoch_order};
pub use cifar::{CIFAR10_CLASSES, Cifar100Labels, load_cifar10, load_cifar100};
pub use dataset::{CHANNELS, Dataset, HEIGHT, IMAGE_LEN, PLANE, Splits, WIDTH};
pub use error::DatasetError;
pub use idx::{
    FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IdxArray, load_fashion_mnist, load_idx_pair, read_idx,
};
pub use normalize::{MIN_STD, Normalization};
pub use preview::{RgbImage, Summary, class_grid};
pub use synthetic::{
    DEFAULT_DIFFICULTY, Generator, Part, SYNTHETIC_CLASSES, SyntheticSpec, generate,
};

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSource {
    /// The generated default; see [`SyntheticSpec`].
    Synthetic(SyntheticSpec),
    /// The directory of CIFAR-10's binary version.
    Cifar10(PathBuf),
    /// The directory of CIFAR-100's binary version and which label to use.
    Cifar100 {
        dir: PathBuf,
        labels: Cifar100Labels,
    },
    /// A directory of Fashion-MNIST IDX files (see [`FASHION_MNIST_DIR`]).
    FashionMnist(PathBuf),
}

impl DatasetSource {
    /// Fashion-MNIST where Debian's `dataset-fashion-mnist` installs it.
    pub fn fashion_mnist_default() -> Self {
        Self::FashionMnist(PathBuf::from(FASHION_MNIST_DIR))
    }

    /// A short name for reports: `synthetic`, `cifar10`, `cifar100`, `fashion-mnist`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Synthetic(_) => "synthetic",
            Self::Cifar10(_) => "cifar10",
            Self::Cifar100 { .. } => "cifar100",
            Self::FashionMnist(_) => "fashion-mnist",
        }
    }
}

/// Loads (or generates) the training and test splits of `source`.
pub fn load(source: &DatasetSource) -> Result<Splits, DatasetError> {
    match source {
        DatasetSource::Synthetic(spec) => generate(spec),
        DatasetSource::Cifar10(dir) => load_cifar10(dir),
        DatasetSource::Cifar100 { dir, labels } => load_cifar100(dir, *labels),
        DatasetSource::FashionMnist(dir) => load_fashion_mnist(dir),
    }
}
