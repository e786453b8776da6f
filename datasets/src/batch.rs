//! Epochs of normalized f32 batches, with seeded shuffling and augmentation.
//!
//! Each epoch visits every sample exactly once (the last partial batch is kept or
//! dropped by option). The order is a function of `(seed, epoch)` and a sample's
//! augmentation of `(seed, epoch, sample index)`, so results do not depend on the batch
//! size or on how many batches were consumed before.

use cinder_tensor::TensorBuf;

use crate::dataset::{CHANNELS, Dataset, HEIGHT, IMAGE_LEN, PLANE, WIDTH};
use crate::error::DatasetError;
use crate::normalize::{Lut, Normalization};
use crate::rng::Rng;

/// Random crop after zero padding, and random horizontal flip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augmentation {
    /// Pixels of zero padding on each side before a random 32x32 crop; 0 turns it off.
    pub crop_padding: usize,
    /// Mirror left-right with probability 1/2.
    pub horizontal_flip: bool,
}

impl Augmentation {
    pub const NONE: Self = Self {
        crop_padding: 0,
        horizontal_flip: false,
    };
    /// The usual CIFAR recipe: 4-pixel padded random crop and horizontal flip.
    pub const STANDARD: Self = Self {
        crop_padding: 4,
        horizontal_flip: true,
    };

    fn is_active(&self) -> bool {
        self.crop_padding > 0 || self.horizontal_flip
    }
}

/// How [`Dataset::batches`] cuts an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub batch_size: usize,
    /// Visit the samples in a seeded random order instead of index order.
    pub shuffle: bool,
    pub seed: u64,
    /// Drop the last batch when it has fewer than `batch_size` samples.
    pub drop_last: bool,
    pub augment: Augmentation,
}

impl Default for BatchOptions {
    /// Batches of 128, shuffled with seed 0, last batch kept, no augmentation.
    fn default() -> Self {
        Self {
            batch_size: 128,
            shuffle: true,
            seed: 0,
            drop_last: false,
            augment: Augmentation::NONE,
        }
    }
}

/// A batch of normalized images `[B, 3, 32, 32]`, their labels and their sample indices
/// in the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: TensorBuf<f32>,
    pub labels: Vec<u8>,
    pub indices: Vec<usize>,
}

const SHUFFLE_STREAM: u64 = 0x7368_7566;
const AUGMENT_STREAM: u64 = 0x6175_676d;

/// The order in which epoch `epoch` visits `len` samples (before dropping a partial batch).
pub fn epoch_order(len: usize, options: &BatchOptions, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if options.shuffle {
        Rng::derive(options.seed, &[SHUFFLE_STREAM, epoch]).shuffle(&mut order);
    }
    order
}

/// The augmentation of one epoch: a sample's crop and flip are drawn from
/// `(seed, epoch, sample index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeededAugmentation {
    pub augmentation: Augmentation,
    pub seed: u64,
    pub epoch: u64,
}

impl SeededAugmentation {
    fn crop(&self, index: usize) -> Crop {
        let a = self.augmentation;
        let mut rng = Rng::derive(self.seed, &[AUGMENT_STREAM, self.epoch, index as u64]);
        let span = 2 * a.crop_padding + 1;
        Crop {
            padding: a.crop_padding,
            dx: rng.below(span),
            dy: rng.below(span),
            flip: a.horizontal_flip && rng.chance(0.5),
        }
    }
}

fn check_augmentation(a: &Augmentation) -> Result<(), DatasetError> {
    if a.crop_padding > WIDTH.min(HEIGHT) {
        return Err(DatasetError::invalid(
            "crop padding",
            a.crop_padding,
            "at most 32 pixels",
        ));
    }
    Ok(())
}

impl Dataset {
    /// The batches of epoch `epoch`, normalized by `norm`.
    pub fn batches(
        &self,
        options: &BatchOptions,
        epoch: u64,
        norm: &Normalization,
    ) -> Result<Batches<'_>, DatasetError> {
        if options.batch_size == 0 {
            return Err(DatasetError::invalid("batch size", 0, "at least 1"));
        }
        check_augmentation(&options.augment)?;
        let order = epoch_order(self.len(), options, epoch);
        let end = if options.drop_last {
            order.len() - order.len() % options.batch_size
        } else {
            order.len()
        };
        let augment = SeededAugmentation {
            augmentation: options.augment,
            seed: options.seed,
            epoch,
        };
        Ok(Batches {
            dataset: self,
            order,
            next: 0,
            end,
            batch_size: options.batch_size,
            augment: augment.augmentation.is_active().then_some(augment),
            lut: norm.lut(),
        })
    }

    /// The samples at `indices`, in that order, normalized by `norm` and augmented when
    /// `augment` is given: for callers that decide the data order themselves.
    pub fn gather(
        &self,
        indices: &[usize],
        norm: &Normalization,
        augment: Option<&SeededAugmentation>,
    ) -> Result<Batch, DatasetError> {
        if let Some(&index) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(DatasetError::SampleIndex {
                index,
                len: self.len(),
            });
        }
        if let Some(a) = augment {
            check_augmentation(&a.augmentation)?;
        }
        Ok(self.assemble(indices.to_vec(), &norm.lut(), augment))
    }

    /// Builds a batch from valid indices.
    fn assemble(
        &self,
        indices: Vec<usize>,
        lut: &Lut,
        augment: Option<&SeededAugmentation>,
    ) -> Batch {
        let mut data = vec![0f32; indices.len() * IMAGE_LEN];
        for (&i, out) in indices.iter().zip(data.chunks_exact_mut(IMAGE_LEN)) {
            match augment {
                Some(a) => a.crop(i).apply(lut, self.image(i), out),
                None => lut.apply(self.image(i), out),
            }
        }
        let labels = indices.iter().map(|&i| self.labels()[i]).collect();
        let shape = vec![indices.len(), CHANNELS, HEIGHT, WIDTH];
        let images = TensorBuf::new(shape, data).expect("batch data matches its shape");
        Batch {
            images,
            labels,
            indices,
        }
    }
}

/// The iterator of one epoch; see [`Dataset::batches`].
pub struct Batches<'a> {
    dataset: &'a Dataset,
    order: Vec<usize>,
    next: usize,
    end: usize,
    batch_size: usize,
    augment: Option<SeededAugmentation>,
    lut: Lut,
}

impl Iterator for Batches<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let stop = (self.next + self.batch_size).min(self.end);
        let indices = self.order[self.next..stop].to_vec();
        self.next = stop;
        Some(
            self.dataset
                .assemble(indices, &self.lut, self.augment.as_ref()),
        )
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = (self.end - self.next).div_ceil(self.batch_size);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Batches<'_> {}

/// A 32x32 window at `(dy, dx)` of the image zero-padded by `padding`, then mirrored.
struct Crop {
    padding: usize,
    dx: usize,
    dy: usize,
    flip: bool,
}

impl Crop {
    /// Source coordinate of output coordinate `o` for offset `d`, or `None` in the padding.
    fn source(&self, o: usize, d: usize, size: usize) -> Option<usize> {
        (o + d).checked_sub(self.padding).filter(|&s| s < size)
    }

    fn apply(&self, lut: &Lut, image: &[u8], out: &mut [f32]) {
        for c in 0..CHANNELS {
            let pad = lut.value(c, 0);
            let plane = &image[c * PLANE..(c + 1) * PLANE];
            for (y, row) in out[c * PLANE..(c + 1) * PLANE]
                .chunks_exact_mut(WIDTH)
                .enumerate()
            {
                let Some(sy) = self.source(y, self.dy, HEIGHT) else {
                    row.fill(pad);
                    continue;
                };
                for (x, o) in row.iter_mut().enumerate() {
                    let x = if self.flip { WIDTH - 1 - x } else { x };
                    *o = self
                        .source(x, self.dx, WIDTH)
                        .map_or(pad, |sx| lut.value(c, plane[sy * WIDTH + sx]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cinder_tensor::Tensor;
    use proptest::prelude::*;

    use super::*;
    use crate::dataset::tests::numbered;

    fn all_indices(d: &Dataset, o: &BatchOptions, epoch: u64) -> Vec<Vec<usize>> {
        d.batches(o, epoch, &Normalization::UNIT)
            .unwrap()
            .map(|b| b.indices)
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_sample_once_per_epoch(
            len in 0usize..300,
            batch_size in 1usize..70,
            shuffle: bool,
            drop_last: bool,
            seed: u64,
            epoch in 0u64..5,
        ) {
            let d = numbered(len, 7);
            let o = BatchOptions { batch_size, shuffle, seed, drop_last, augment: Augmentation::NONE };
            let batches = all_indices(&d, &o, epoch);
            prop_assert_eq!(batches.len(), d.batches(&o, epoch, &Normalization::UNIT).unwrap().len());
            let mut seen: Vec<usize> = batches.concat();
            if drop_last {
                prop_assert!(batches.iter().all(|b| b.len() == batch_size));
                prop_assert_eq!(seen.len(), len - len % batch_size);
            } else {
                prop_assert!(batches.iter().rev().skip(1).all(|b| b.len() == batch_size));
                prop_assert_eq!(seen.len(), len);
            }
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), batches.iter().map(Vec::len).sum::<usize>());
            prop_assert!(seen.iter().all(|&i| i < len));
            // Same seed and epoch: same batches.
            prop_assert_eq!(&batches, &all_indices(&d, &o, epoch));
        }

        #[test]
        fn batches_carry_their_samples(len in 1usize..60, batch_size in 1usize..20, seed: u64) {
            let d = numbered(len, 5);
            let o = BatchOptions { batch_size, seed, ..BatchOptions::default() };
            for b in d.batches(&o, 1, &Normalization::UNIT).unwrap() {
                prop_assert_eq!(b.images.shape(), &[b.indices.len(), 3, 32, 32]);
                for (k, &i) in b.indices.iter().enumerate() {
                    prop_assert_eq!(b.labels[k], d.labels()[i]);
                    let px = b.images.data()[k * IMAGE_LEN + 100];
                    prop_assert_eq!(px, f32::from(d.image(i)[100]) / 255.0);
                }
            }
        }
    }

    #[test]
    fn shuffle_depends_on_seed_and_epoch() {
        let d = numbered(100, 10);
        let o = BatchOptions {
            batch_size: 100,
            ..BatchOptions::default()
        };
        let base = all_indices(&d, &o, 0);
        assert_ne!(base, all_indices(&d, &o, 1));
        assert_ne!(base, all_indices(&d, &BatchOptions { seed: 1, ..o }, 0));
        let ordered = BatchOptions {
            shuffle: false,
            ..o
        };
        assert_eq!(
            all_indices(&d, &ordered, 3)[0],
            (0..100).collect::<Vec<_>>()
        );
    }

    #[test]
    fn gather_matches_batches_and_checks_indices() {
        let d = columns();
        let o = BatchOptions {
            batch_size: 1,
            seed: 9,
            augment: Augmentation::STANDARD,
            ..BatchOptions::default()
        };
        let norm = Normalization::fit(&d).unwrap();
        let from_epoch = d.batches(&o, 2, &norm).unwrap().next().unwrap();
        let a = SeededAugmentation {
            augmentation: o.augment,
            seed: 9,
            epoch: 2,
        };
        assert_eq!(d.gather(&[0], &norm, Some(&a)).unwrap(), from_epoch);
        assert!(matches!(
            d.gather(&[0, 1], &norm, None),
            Err(DatasetError::SampleIndex { index: 1, len: 1 })
        ));
    }

    #[test]
    fn zero_batch_size_is_an_error() {
        let o = BatchOptions {
            batch_size: 0,
            ..BatchOptions::default()
        };
        assert!(numbered(3, 2).batches(&o, 0, &Normalization::UNIT).is_err());
    }

    /// An image whose pixel value encodes its column (x * 7 + 1), so crops and flips can
    /// be read back.
    fn columns() -> Dataset {
        let img: Vec<u8> = (0..IMAGE_LEN)
            .map(|i| ((i % WIDTH) * 7 + 1) as u8)
            .collect();
        Dataset::new(img, vec![0], vec!["x".into()]).unwrap()
    }

    #[test]
    fn augmentation_is_a_shifted_mirrored_crop() {
        let d = columns();
        let o = BatchOptions {
            batch_size: 1,
            augment: Augmentation::STANDARD,
            ..BatchOptions::default()
        };
        let mut flips = 0;
        for epoch in 0..40 {
            let b = d
                .batches(&o, epoch, &Normalization::UNIT)
                .unwrap()
                .next()
                .unwrap();
            let row: Vec<i32> = b.images.data()[16 * WIDTH..17 * WIDTH]
                .iter()
                .map(|&v| (v * 255.0).round() as i32)
                .collect();
            let cols: Vec<i32> = row
                .iter()
                .filter(|&&v| v > 0)
                .map(|v| (v - 1) / 7)
                .collect();
            // At least 28 real columns, consecutive, increasing or decreasing together.
            assert!(cols.len() >= 28, "{row:?}");
            let steps: Vec<i32> = cols.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(steps.iter().all(|&s| s == steps[0]) && steps[0].abs() == 1);
            flips += usize::from(steps[0] < 0);
            // Deterministic for the same epoch.
            let again = d
                .batches(&o, epoch, &Normalization::UNIT)
                .unwrap()
                .next()
                .unwrap();
            assert_eq!(b, again);
        }
        assert!((5..35).contains(&flips), "{flips} flips in 40 epochs");
    }
}
