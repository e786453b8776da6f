//! Looking at a dataset: a text summary (counts, class histogram, channel statistics)
//! and a PNG grid with one row of samples per class.

use std::fmt;
use std::path::Path;

use cinder_tensor::io::write_atomic;

use crate::dataset::{CHANNELS, Dataset, HEIGHT, PLANE, Splits, WIDTH};
use crate::error::DatasetError;
use crate::normalize::Normalization;

/// Counts, class histograms and training-split channel statistics of a [`Splits`].
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub class_names: Vec<String>,
    pub train_histogram: Vec<usize>,
    pub test_histogram: Vec<usize>,
    /// Fitted on the training split.
    pub normalization: Normalization,
}

impl Summary {
    pub fn new(splits: &Splits) -> Result<Self, DatasetError> {
        Ok(Self {
            class_names: splits.train.class_names().to_vec(),
            train_histogram: splits.train.class_histogram(),
            test_histogram: splits.test.class_histogram(),
            normalization: Normalization::fit(&splits.train)?,
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let train: usize = self.train_histogram.iter().sum();
        let test: usize = self.test_histogram.iter().sum();
        let classes = self.class_names.len();
        writeln!(
            f,
            "train {train} images, test {test} images, {classes} classes"
        )?;
        writeln!(
            f,
            "{:>4}  {:<20} {:>8} {:>8}",
            "id", "class", "train", "test"
        )?;
        for (i, name) in self.class_names.iter().enumerate() {
            let (tr, te) = (self.train_histogram[i], self.test_histogram[i]);
            writeln!(f, "{i:>4}  {name:<20} {tr:>8} {te:>8}")?;
        }
        let fmt3 = |v: [f32; CHANNELS]| format!("{:.4} {:.4} {:.4}", v[0], v[1], v[2]);
        writeln!(
            f,
            "channel mean (R G B, train): {}",
            fmt3(self.normalization.mean)
        )?;
        write!(
            f,
            "channel std  (R G B, train): {}",
            fmt3(self.normalization.std)
        )
    }
}

/// An 8-bit RGB image, row-major, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// Grey between cells.
const GAP_COLOR: u8 = 128;
const GAP: usize = 2;

/// The widest and tallest grid [`class_grid`] draws, in pixels (PNG viewers handle it).
pub const MAX_GRID_SIDE: usize = 16_384;

/// A grid with row `c` holding the first `per_class` samples of class `c`, each image
/// magnified `scale` times, cells separated by a 2-pixel grey gap. A grid wider or
/// taller than 16,384 pixels is refused before anything is allocated.
pub fn class_grid(
    dataset: &Dataset,
    per_class: usize,
    scale: usize,
) -> Result<RgbImage, DatasetError> {
    let scale = scale.max(1);
    let side = |count: usize| {
        WIDTH
            .checked_mul(scale)
            .and_then(|w| w.checked_add(GAP))
            .and_then(|cell| cell.checked_mul(count))
            .and_then(|s| s.checked_add(GAP))
            .filter(|&s| s <= MAX_GRID_SIDE)
    };
    let Some(width) = side(per_class) else {
        return Err(DatasetError::invalid(
            "grid width (per class x scale)",
            format!("{per_class} x {scale}"),
            "at most 16384 pixels: (32 * scale + 2) * per_class + 2",
        ));
    };
    let Some(height) = side(dataset.classes()) else {
        return Err(DatasetError::invalid(
            "grid height (classes x scale)",
            format!("{} x {scale}", dataset.classes()),
            "at most 16384 pixels: (32 * scale + 2) * classes + 2",
        ));
    };
    let cell = WIDTH * scale + GAP;
    let mut grid = RgbImage {
        width,
        height,
        pixels: vec![GAP_COLOR; width * height * CHANNELS],
    };
    let mut filled = vec![0usize; dataset.classes()];
    for (i, &label) in dataset.labels().iter().enumerate() {
        let row = usize::from(label);
        if filled[row] < per_class {
            let origin = (GAP + row * cell, GAP + filled[row] * cell);
            grid.paste(dataset.image(i), origin, scale);
            filled[row] += 1;
        }
    }
    Ok(grid)
}

impl RgbImage {
    /// Copies a CHW image, magnified, with its top-left corner at `(top, left)`.
    fn paste(&mut self, image: &[u8], (top, left): (usize, usize), scale: usize) {
        for y in 0..HEIGHT * scale {
            for x in 0..WIDTH * scale {
                let src = (y / scale) * WIDTH + x / scale;
                let dst = ((top + y) * self.width + left + x) * CHANNELS;
                for c in 0..CHANNELS {
                    self.pixels[dst + c] = image[c * PLANE + src];
                }
            }
        }
    }

    /// Writes the image as an 8-bit RGB PNG, atomically.
    pub fn write_png(&self, path: &Path) -> Result<(), DatasetError> {
        let png_error = |e: png::EncodingError| DatasetError::Png {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let too_large = || DatasetError::Png {
            path: path.to_path_buf(),
            message: format!("{}x{} exceeds PNG's size limit", self.width, self.height),
        };
        let width = u32::try_from(self.width).map_err(|_| too_large())?;
        let height = u32::try_from(self.height).map_err(|_| too_large())?;
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(png_error)?;
        writer.write_image_data(&self.pixels).map_err(png_error)?;
        writer.finish().map_err(png_error)?;
        Ok(write_atomic(path, &bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::numbered;

    #[test]
    fn grid_places_samples_by_class() {
        let d = numbered(7, 3); // labels 0 1 2 0 1 2 0, image i filled with i
        let g = class_grid(&d, 2, 1).unwrap();
        assert_eq!((g.width, g.height), (2 * 34 + 2, 3 * 34 + 2));
        let at = |x: usize, y: usize| g.pixels[(y * g.width + x) * 3];
        assert_eq!(at(0, 0), GAP_COLOR);
        assert_eq!(at(2, 2), 0); // class 0, first sample: image 0
        assert_eq!(at(36, 2), 3); // class 0, second sample: image 3
        assert_eq!(at(36, 2 + 2 * 34), 5); // class 2, second sample: image 5
    }

    #[test]
    fn oversized_grids_are_refused_before_allocation() {
        let d = numbered(7, 3);
        for (per_class, scale) in [(100_000, 3), (10, 100_000), (usize::MAX, usize::MAX)] {
            let err = class_grid(&d, per_class, scale).unwrap_err();
            assert!(
                matches!(err, DatasetError::InvalidOption { .. }),
                "{per_class} x {scale}: {err}"
            );
            assert!(err.to_string().contains("16384"), "{err}");
        }
        let widest = class_grid(&d, (MAX_GRID_SIDE - 2) / 34, 1).unwrap();
        assert!(widest.width <= MAX_GRID_SIDE);
    }

    #[test]
    fn png_round_trip_and_summary() {
        let d = numbered(6, 2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let grid = class_grid(&d, 3, 2).unwrap();
        grid.write_png(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width as usize, info.height as usize),
            (grid.width, grid.height)
        );
        assert_eq!(&buf[..info.buffer_size()], grid.pixels.as_slice());

        let splits = Splits {
            train: d.clone(),
            test: d.limit(1),
        };
        let text = Summary::new(&splits).unwrap().to_string();
        assert!(
            text.starts_with("train 6 images, test 1 images, 2 classes"),
            "{text}"
        );
        assert!(text.contains("c1"), "{text}");
        assert!(
            text.contains("channel mean (R G B, train): 0.0098"),
            "{text}"
        );
    }
}
