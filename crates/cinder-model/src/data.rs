//! What training and evaluation read: labelled images gathered into batches.
//!
//! The model crate does not know where images come from; anything that can gather
//! samples by index into a [`Batch`] is an [`ImageSource`] (the xtask adapts
//! `cinder-datasets`, tests use [`InMemoryImages`]). Data order is decided here, from
//! the seed and the epoch alone, so a resumed run sees exactly the batches it would have.

use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_tensor::{Tensor as _, TensorBuf};

use crate::error::ModelError;
use crate::rng::SplitMix64;

/// Images `[B, C, H, W]` (normalised f32) and their `B` class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: TensorBuf<f32>,
    pub labels: Vec<u32>,
}

impl Batch {
    /// Checks the shapes agree: rank 4, one label per image, every label below `classes`.
    pub fn validate(&self, classes: usize) -> Result<(), ModelError> {
        let shape = self.images.shape();
        if shape.len() != 4 || shape[0] != self.labels.len() {
            return Err(ModelError::Batch(format!(
                "images {shape:?} do not match {} labels (expected [B, C, H, W] with B = labels)",
                self.labels.len()
            )));
        }
        check_labels(&self.labels, classes)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The batch as burn tensors on `device`: images `[B, C, H, W]`, labels `[B]`.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let (images, labels) = self.to_tensor_data();
        (
            Tensor::from_data(images, device),
            Tensor::from_data(labels, device),
        )
    }

    /// Host-side burn data (cheap to move to a device later).
    pub(crate) fn to_tensor_data(&self) -> (TensorData, TensorData) {
        let shape: [usize; 4] = self.images.shape().try_into().expect("validated rank 4");
        let labels: Vec<i64> = self.labels.iter().map(|&l| i64::from(l)).collect();
        let n = labels.len();
        (
            TensorData::new(self.images.data().to_vec(), shape),
            TensorData::new(labels, [n]),
        )
    }
}

fn check_labels(labels: &[u32], classes: usize) -> Result<(), ModelError> {
    match labels.iter().find(|&&l| l as usize >= classes) {
        Some(l) => Err(ModelError::Batch(format!(
            "label {l} is not below the class count {classes}"
        ))),
        None => Ok(()),
    }
}

/// A labelled image set that batches can be gathered from.
pub trait ImageSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn classes(&self) -> usize;
    /// Per-sample shape `[C, H, W]`.
    fn image_shape(&self) -> [usize; 3];
    /// The samples at `indices` (each below `len()`), in that order.
    fn gather(&self, indices: &[usize]) -> Result<Batch, ModelError>;
}

/// Images held in memory as normalised f32, mostly for tests and small experiments.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemoryImages {
    image_shape: [usize; 3],
    images: Vec<f32>,
    labels: Vec<u32>,
    classes: usize,
}

impl InMemoryImages {
    /// `images` holds `labels.len()` images of `C·H·W` finite values each.
    pub fn new(
        image_shape: [usize; 3],
        images: Vec<f32>,
        labels: Vec<u32>,
        classes: usize,
    ) -> Result<Self, ModelError> {
        let per = image_shape.iter().product::<usize>();
        if images.len() != per * labels.len() {
            return Err(ModelError::Batch(format!(
                "{} values for {} images of shape {image_shape:?}",
                images.len(),
                labels.len()
            )));
        }
        check_labels(&labels, classes)?;
        // A NaN or infinite pixel would surface only as a diverged loss or a silent
        // evaluation figure; name it here instead.
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Batch(format!(
                "image {} holds {} at value {}: pixels must be finite",
                i / per.max(1),
                images[i],
                i % per.max(1)
            )));
        }
        Ok(Self {
            image_shape,
            images,
            labels,
            classes,
        })
    }
}

impl ImageSource for InMemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn classes(&self) -> usize {
        self.classes
    }
    fn image_shape(&self) -> [usize; 3] {
        self.image_shape
    }
    fn gather(&self, indices: &[usize]) -> Result<Batch, ModelError> {
        let per = self.image_shape.iter().product::<usize>();
        let mut images = Vec::with_capacity(indices.len() * per);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            let image = self.images.get(i * per..(i + 1) * per).ok_or_else(|| {
                ModelError::Batch(format!("sample {i} out of range (len {})", self.len()))
            })?;
            images.extend_from_slice(image);
            labels.push(self.labels[i]);
        }
        let [c, h, w] = self.image_shape;
        Ok(Batch {
            images: TensorBuf::new(vec![indices.len(), c, h, w], images)?,
            labels,
        })
    }
}

/// Generator stream of epoch `e`'s shuffle is `DATA_STREAM + e`.
const DATA_STREAM: u64 = 1 << 32;

/// The sample order of `epoch` (0-based) for `seed`: a permutation of `0..len`.
pub fn epoch_order(seed: u64, epoch: usize, len: usize) -> Vec<usize> {
    SplitMix64::stream(seed, DATA_STREAM + epoch as u64).permutation(len)
}

/// The batches of an epoch: consecutive chunks of [`epoch_order`], the last one short
/// when `len` is not a multiple of `batch_size` (nothing is dropped).
pub fn epoch_batches(seed: u64, epoch: usize, len: usize, batch_size: usize) -> Vec<Vec<usize>> {
    epoch_order(seed, epoch, len)
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Runs `consume` on each batch of `plan` while a helper thread gathers the next ones
/// (up to two ahead), so that data preparation overlaps the compute in `consume`.
pub fn prefetch<T>(
    source: &dyn ImageSource,
    plan: &[Vec<usize>],
    mut consume: impl FnMut(usize, Batch) -> Result<T, ModelError>,
) -> Result<Vec<T>, ModelError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        scope.spawn(move || {
            for indices in plan {
                let batch = source.gather(indices);
                let stop = batch.is_err();
                if tx.send(batch).is_err() || stop {
                    break;
                }
            }
        });
        let mut out = Vec::with_capacity(plan.len());
        for (i, batch) in rx.iter().enumerate() {
            out.push(consume(i, batch?)?);
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> InMemoryImages {
        let images = (0..n).flat_map(|i| [i as f32; 4]).collect();
        InMemoryImages::new([1, 2, 2], images, (0..n as u32).map(|i| i % 3).collect(), 3).unwrap()
    }

    #[test]
    fn batches_cover_every_sample_once_and_follow_the_seed() {
        let plan = epoch_batches(5, 0, 10, 4);
        assert_eq!(plan.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 4, 2]);
        let mut all: Vec<usize> = plan.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(plan, epoch_batches(5, 0, 10, 4));
        assert_ne!(plan, epoch_batches(5, 1, 10, 4));
    }

    #[test]
    fn prefetch_delivers_batches_in_order_and_stops_on_errors() {
        let src = numbered(7);
        let plan = vec![vec![3, 1], vec![6], vec![0, 2, 4]];
        let firsts = prefetch(&src, &plan, |i, b| {
            Ok((i, b.images.data()[0], b.labels.clone()))
        })
        .unwrap();
        assert_eq!(
            firsts,
            vec![
                (0, 3.0, vec![0, 1]),
                (1, 6.0, vec![0]),
                (2, 0.0, vec![0, 2, 1])
            ]
        );
        let bad = vec![vec![0], vec![99], vec![1]];
        let err = prefetch(&src, &bad, |_, b| Ok(b.len())).unwrap_err();
        assert!(err.to_string().contains("sample 99"), "{err}");
    }

    #[test]
    fn malformed_sets_and_batches_are_rejected() {
        assert!(InMemoryImages::new([1, 2, 2], vec![0.0; 7], vec![0, 1], 2).is_err());
        assert!(InMemoryImages::new([1, 2, 2], vec![0.0; 8], vec![0, 2], 2).is_err());
        let mut b = numbered(3).gather(&[0, 1]).unwrap();
        assert!(b.validate(3).is_ok());
        b.labels.push(0);
        assert!(b.validate(3).is_err());
    }
}
