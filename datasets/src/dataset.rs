//! The in-memory dataset: u8 images in CHW order plus labels, and its subsets.
//!
//! Images stay as bytes (CIFAR-10's 60,000 images are 184 MB that way) and become
//! normalized f32 only per batch (see [`crate::batch`]).

use crate::error::DatasetError;
use crate::rng::Rng;

/// Channels of every image.
pub const CHANNELS: usize = 3;
/// Height of every image in pixels.
pub const HEIGHT: usize = 32;
/// Width of every image in pixels.
pub const WIDTH: usize = 32;
/// Pixels of one channel plane.
pub const PLANE: usize = HEIGHT * WIDTH;
/// Bytes of one image: 3 x 32 x 32, channel-major (CHW), row-major within a channel.
pub const IMAGE_LEN: usize = CHANNELS * PLANE;

/// Labelled 3x32x32 u8 images. Invariants (checked by [`Dataset::new`]): one image per
/// label, every label below the class count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u8>,
    class_names: Vec<String>,
}

/// A training and a test split of the same classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    pub train: Dataset,
    pub test: Dataset,
}

impl Dataset {
    /// `images` holds `labels.len()` images of [`IMAGE_LEN`] bytes each, CHW.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u8>,
        class_names: Vec<String>,
    ) -> Result<Self, DatasetError> {
        let expected = labels.len() * IMAGE_LEN;
        if images.len() != expected {
            return Err(DatasetError::ImageBytes {
                labels: labels.len(),
                expected,
                actual: images.len(),
            });
        }
        let classes = class_names.len();
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| usize::from(l) >= classes)
        {
            return Err(DatasetError::SampleLabel {
                index,
                label,
                classes,
            });
        }
        Ok(Self {
            images,
            labels,
            class_names,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn classes(&self) -> usize {
        self.class_names.len()
    }

    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// All images, `len() * IMAGE_LEN` bytes.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Image `index` ([`IMAGE_LEN`] bytes, CHW). Panics when `index >= len()`, like
    /// slice indexing.
    pub fn image(&self, index: usize) -> &[u8] {
        &self.images[index * IMAGE_LEN..(index + 1) * IMAGE_LEN]
    }

    /// The first `n` samples (all of them when `n >= len()`).
    pub fn limit(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.labels.truncate(n);
        self.images.truncate(n * IMAGE_LEN);
        self
    }

    /// The samples at `indices`, in that order. Panics on an index `>= len()`.
    pub fn subset(&self, indices: &[usize]) -> Self {
        let mut images = Vec::with_capacity(indices.len() * IMAGE_LEN);
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        Self {
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
        }
    }

    /// Splits off `round(fraction * len())` samples, drawn at random by `seed`, as a
    /// validation set: returns `(train, validation)`, each in the original order.
    pub fn split_validation(&self, fraction: f32, seed: u64) -> Result<(Self, Self), DatasetError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(DatasetError::invalid(
                "validation fraction",
                fraction,
                "a fraction in [0, 1)",
            ));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        Rng::derive(seed, &[VALIDATION_STREAM]).shuffle(&mut order);
        let held_out = (fraction as f64 * self.len() as f64).round() as usize;
        let (validation, train) = order.split_at_mut(held_out);
        validation.sort_unstable();
        train.sort_unstable();
        Ok((self.subset(train), self.subset(validation)))
    }

    /// Number of samples of each class.
    pub fn class_histogram(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes()];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }
}

/// Stream tag of the validation split's shuffle.
const VALIDATION_STREAM: u64 = 0x7661_6c69;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A dataset whose image `i` is filled with byte `i % 251` and labelled `i % classes`.
    pub(crate) fn numbered(len: usize, classes: usize) -> Dataset {
        let images = (0..len)
            .flat_map(|i| std::iter::repeat_n((i % 251) as u8, IMAGE_LEN))
            .collect();
        let labels = (0..len).map(|i| (i % classes) as u8).collect();
        let names = (0..classes).map(|c| format!("c{c}")).collect();
        Dataset::new(images, labels, names).unwrap()
    }

    #[test]
    fn new_checks_sizes_and_labels() {
        let names = vec!["a".to_string(), "b".to_string()];
        assert!(matches!(
            Dataset::new(vec![0; IMAGE_LEN - 1], vec![0], names.clone()),
            Err(DatasetError::ImageBytes { .. })
        ));
        assert!(matches!(
            Dataset::new(vec![0; 2 * IMAGE_LEN], vec![0, 2], names),
            Err(DatasetError::SampleLabel {
                index: 1,
                label: 2,
                classes: 2
            })
        ));
    }

    #[test]
    fn limit_and_histogram() {
        let d = numbered(25, 10).limit(12);
        assert_eq!(d.len(), 12);
        assert_eq!(d.images().len(), 12 * IMAGE_LEN);
        assert_eq!(d.class_histogram(), vec![2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn validation_split_partitions_the_samples() {
        let d = numbered(100, 10);
        let (train, val) = d.split_validation(0.2, 5).unwrap();
        assert_eq!((train.len(), val.len()), (80, 20));
        let mut seen: Vec<u8> = train.images().iter().step_by(IMAGE_LEN).copied().collect();
        seen.extend(val.images().iter().step_by(IMAGE_LEN));
        seen.sort_unstable();
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
        assert_eq!(d.split_validation(0.2, 5).unwrap(), (train, val));
        assert!(d.split_validation(1.0, 5).is_err());
        assert!(d.split_validation(f32::NAN, 5).is_err());
    }
}
