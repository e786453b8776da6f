//! Per-channel normalization of u8 images into f32: `(pixel / 255 - mean) / std`.
//!
//! The statistics are fitted on a training split (exactly, from per-channel byte
//! histograms) or given, and are serializable so that a trained model and the int8
//! runtime apply the very same transform.

use cinder_tensor::TensorBuf;
use serde::{Deserialize, Serialize};

use crate::dataset::{CHANNELS, Dataset, HEIGHT, IMAGE_LEN, PLANE, WIDTH};
use crate::error::DatasetError;

/// Per-channel mean and standard deviation, in units of pixel / 255. Deserializing
/// checks them as [`Normalization::new`] does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Statistics")]
pub struct Normalization {
    pub mean: [f32; CHANNELS],
    pub std: [f32; CHANNELS],
}

/// The serialized fields of a [`Normalization`], before they are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Statistics {
    mean: [f32; CHANNELS],
    std: [f32; CHANNELS],
}

impl TryFrom<Statistics> for Normalization {
    type Error = DatasetError;

    fn try_from(s: Statistics) -> Result<Self, DatasetError> {
        Self::new(s.mean, s.std)
    }
}

/// The smallest standard deviation [`Normalization::fit`] reports: one grey level, so that
/// a constant channel does not divide by zero.
pub const MIN_STD: f32 = 1.0 / 255.0;

impl Normalization {
    /// Pixels scaled to `[0, 1]` and otherwise unchanged.
    pub const UNIT: Self = Self {
        mean: [0.0; CHANNELS],
        std: [1.0; CHANNELS],
    };

    /// Given statistics of pixels in `[0, 1]`: means in `[0, 1]`, standard deviations in
    /// `[MIN_STD, 1]` (what [`Normalization::fit`] can report, and the usual 0.5).
    pub fn new(mean: [f32; CHANNELS], std: [f32; CHANNELS]) -> Result<Self, DatasetError> {
        if let Some(m) = mean.iter().find(|m| !(0.0..=1.0).contains(*m)) {
            return Err(DatasetError::invalid(
                "normalization mean",
                m,
                "a number in [0, 1]",
            ));
        }
        if let Some(s) = std.iter().find(|s| !(MIN_STD..=1.0).contains(*s)) {
            return Err(DatasetError::invalid(
                "normalization std",
                s,
                "a number in [1/255, 1]",
            ));
        }
        Ok(Self { mean, std })
    }

    /// The exact per-channel mean and (population) standard deviation of `dataset`,
    /// with the standard deviation floored at [`MIN_STD`].
    pub fn fit(dataset: &Dataset) -> Result<Self, DatasetError> {
        if dataset.is_empty() {
            return Err(DatasetError::invalid(
                "normalization dataset size",
                0,
                "at least one image to fit on",
            ));
        }
        let mut histograms = [[0u64; 256]; CHANNELS];
        for image in dataset.images().chunks_exact(IMAGE_LEN) {
            for (hist, plane) in histograms.iter_mut().zip(image.chunks_exact(PLANE)) {
                for &p in plane {
                    hist[usize::from(p)] += 1;
                }
            }
        }
        let mut stats = Self::UNIT;
        for (c, hist) in histograms.iter().enumerate() {
            let (mean, std) = histogram_moments(hist);
            stats.mean[c] = mean;
            stats.std[c] = std.max(MIN_STD);
        }
        Ok(stats)
    }

    /// Normalizes whole images (`k * IMAGE_LEN` bytes, CHW) into a `[k, 3, 32, 32]` tensor:
    /// the input the trained float model and the runtime expect.
    pub fn normalize(&self, images: &[u8]) -> Result<TensorBuf<f32>, DatasetError> {
        if !images.len().is_multiple_of(IMAGE_LEN) {
            return Err(DatasetError::invalid(
                "image bytes",
                images.len(),
                "a multiple of 3072 (3x32x32 per image)",
            ));
        }
        let lut = self.lut();
        let mut out = vec![0f32; images.len()];
        for (src, dst) in images
            .chunks_exact(IMAGE_LEN)
            .zip(out.chunks_exact_mut(IMAGE_LEN))
        {
            lut.apply(src, dst);
        }
        let count = images.len() / IMAGE_LEN;
        Ok(TensorBuf::new(vec![count, CHANNELS, HEIGHT, WIDTH], out)?)
    }

    pub(crate) fn lut(&self) -> Lut {
        let mut table = [[0f32; 256]; CHANNELS];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = (v as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Lut(table)
    }
}

/// Mean and population standard deviation of a byte histogram, in units of 1/255.
fn histogram_moments(hist: &[u64; 256]) -> (f32, f32) {
    let (mut n, mut sum, mut sum_sq) = (0f64, 0f64, 0f64);
    for (v, &count) in hist.iter().enumerate() {
        let (v, count) = (v as f64 / 255.0, count as f64);
        n += count;
        sum += v * count;
        sum_sq += v * v * count;
    }
    let mean = sum / n;
    let var = (sum_sq / n - mean * mean).max(0.0);
    (mean as f32, var.sqrt() as f32)
}

/// Byte -> normalized value, one table per channel.
pub(crate) struct Lut([[f32; 256]; CHANNELS]);

impl Lut {
    /// Normalizes one CHW image.
    pub(crate) fn apply(&self, image: &[u8], out: &mut [f32]) {
        for (c, (src, dst)) in image
            .chunks_exact(PLANE)
            .zip(out.chunks_exact_mut(PLANE))
            .enumerate()
        {
            for (p, o) in src.iter().zip(dst) {
                *o = self.0[c][usize::from(*p)];
            }
        }
    }

    /// The normalized value of byte `value` in channel `channel`.
    pub(crate) fn value(&self, channel: usize, value: u8) -> f32 {
        self.0[channel][usize::from(value)]
    }
}

#[cfg(test)]
mod tests {
    use cinder_tensor::Tensor;

    use super::*;

    #[test]
    fn fit_matches_direct_moments() {
        // Two images: channel 0 all 0 / all 255, channel 1 constant 51, channel 2 ramp.
        let mut images = vec![0u8; 2 * IMAGE_LEN];
        images[IMAGE_LEN..IMAGE_LEN + PLANE].fill(255);
        for img in images.chunks_exact_mut(IMAGE_LEN) {
            img[PLANE..2 * PLANE].fill(51);
            for (i, p) in img[2 * PLANE..].iter_mut().enumerate() {
                *p = (i % 256) as u8;
            }
        }
        let d = Dataset::new(images, vec![0, 0], vec!["x".into()]).unwrap();
        let n = Normalization::fit(&d).unwrap();
        assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
        assert!((n.mean[1] - 0.2).abs() < 1e-6 && n.std[1] == MIN_STD);
        let ramp_std = ((256.0f64 * 256.0 - 1.0) / 12.0).sqrt() / 255.0;
        assert!((f64::from(n.std[2]) - ramp_std).abs() < 1e-5);

        let t = n.normalize(d.image(1)).unwrap();
        assert_eq!(t.shape(), &[1, 3, 32, 32]);
        assert!((t.data()[0] - 1.0).abs() < 1e-6);
        assert_eq!(t.data()[PLANE], 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let empty = Dataset::new(vec![], vec![], vec!["x".into()]).unwrap();
        assert!(Normalization::fit(&empty).is_err());
        assert!(Normalization::new([0.0; 3], [1.0, 0.0, 1.0]).is_err());
        assert!(Normalization::new([f32::NAN, 0.0, 0.0], [1.0; 3]).is_err());
        assert!(Normalization::new([1e38, 0.0, 0.0], [1.0; 3]).is_err());
        assert!(Normalization::new([0.5; 3], [-0.5, 0.5, 0.5]).is_err());
        assert!(Normalization::new([0.5; 3], [0.5, f32::INFINITY, 0.5]).is_err());
        let json = r#"{"mean": [0.5, 0.5, 0.5], "std": [0.5, -1.0, 0.5]}"#;
        let err = serde_json::from_str::<Normalization>(json).unwrap_err();
        assert!(err.to_string().contains("normalization std"), "{err}");
        let json = r#"{"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}"#;
        assert!(serde_json::from_str::<Normalization>(json).is_ok());
        assert!(Normalization::UNIT.normalize(&[0; 100]).is_err());
    }
}
