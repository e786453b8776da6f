//! Training-time data augmentation: random crop with padding and horizontal flip (the
//! CIFAR recipe of He et al. 2016), seeded per (seed, epoch, step) so a run and its
//! resumed continuation see the same images.
//!
//! The crop reads the image shifted by up to `padding` pixels each way; pixels that fall
//! outside repeat the nearest border pixel (edge padding). On images with a uniform
//! border, such as Fashion-MNIST's black frame, this is zero padding of the raw image,
//! without knowing how the batch was normalised.

use serde::{Deserialize, Serialize};

use cinder_tensor::{Tensor as _, TensorBuf};

use crate::data::Batch;
use crate::rng::SplitMix64;

/// Generator streams of augmentation: `AUGMENT_STREAM + (epoch << 24) + step`.
const AUGMENT_STREAM: u64 = 3 << 48;

/// Random crop and flip settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Largest shift of the crop in pixels, each direction (4 in the CIFAR recipe).
    pub crop_padding: usize,
    /// Mirror each image left-right with probability 1/2.
    pub flip: bool,
}

impl Augmentation {
    /// Crop with 4-pixel padding and random horizontal flip.
    pub fn crop_flip() -> Self {
        Self {
            crop_padding: 4,
            flip: true,
        }
    }

    /// `batch` with every image randomly shifted and mirrored; the draws depend on
    /// `(seed, epoch, step)` only.
    pub fn apply(&self, batch: Batch, seed: u64, epoch: usize, step: usize) -> Batch {
        let stream = AUGMENT_STREAM + ((epoch as u64) << 24) + step as u64;
        let mut rng = SplitMix64::stream(seed, stream);
        let shape = batch.images.shape().to_vec();
        let [n, c, h, w] = match shape[..] {
            [n, c, h, w] => [n, c, h, w],
            _ => return batch,
        };
        let src = batch.images.data();
        let mut out = vec![0.0f32; src.len()];
        let p = self.crop_padding as isize;
        for (image, dst) in src.chunks(c * h * w).zip(out.chunks_mut(c * h * w)).take(n) {
            let dy = rng.below(2 * self.crop_padding + 1) as isize - p;
            let dx = rng.below(2 * self.crop_padding + 1) as isize - p;
            let flip = self.flip && rng.below(2) == 1;
            shift(image, dst, [c, h, w], [dy, dx], flip);
        }
        Batch {
            images: TensorBuf::new(shape, out).expect("same shape and length as the input"),
            labels: batch.labels,
        }
    }
}

/// `dst[ch][y][x] = src[ch][clamp(y + dy)][clamp(x' + dx)]`, `x'` mirrored when `flip`.
fn shift(src: &[f32], dst: &mut [f32], [c, h, w]: [usize; 3], [dy, dx]: [isize; 2], flip: bool) {
    let clamp = |v: isize, len: usize| v.clamp(0, len as isize - 1) as usize;
    for ch in 0..c {
        for y in 0..h {
            let sy = clamp(y as isize + dy, h);
            let row = &src[(ch * h + sy) * w..][..w];
            let out = &mut dst[(ch * h + y) * w..][..w];
            for (x, o) in out.iter_mut().enumerate() {
                let x = if flip { w - 1 - x } else { x };
                *o = row[clamp(x as isize + dx, w)];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Batch {
        let data = (0..n * 2 * 6 * 6).map(|i| i as f32).collect();
        Batch {
            images: TensorBuf::new(vec![n, 2, 6, 6], data).unwrap(),
            labels: vec![0; n],
        }
    }

    #[test]
    fn shift_moves_and_mirrors_with_edge_padding() {
        let src: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let mut dst = vec![0.0; 9];
        shift(&src, &mut dst, [1, 3, 3], [1, -1], false);
        assert_eq!(dst, vec![3.0, 3.0, 4.0, 6.0, 6.0, 7.0, 6.0, 6.0, 7.0]);
        shift(&src, &mut dst, [1, 3, 3], [0, 0], true);
        assert_eq!(dst, vec![2.0, 1.0, 0.0, 5.0, 4.0, 3.0, 8.0, 7.0, 6.0]);
    }

    #[test]
    fn augmentation_follows_the_seed_and_keeps_labels() {
        let a = Augmentation::crop_flip();
        let one = a.apply(batch(8), 1, 0, 0);
        assert_eq!(one.images, a.apply(batch(8), 1, 0, 0).images);
        assert_ne!(one.images, a.apply(batch(8), 1, 0, 1).images);
        assert_ne!(one.images, batch(8).images);
        assert_eq!(one.labels, vec![0; 8]);
    }
}
