//! Evaluation of an int8 model on a test split, shared by `infer`, `qat`, `autoquant` and the
//! experiment: normalized batches, predictions with their times, accuracy counts and
//! medians.

use std::time::{Duration, Instant};

use cinder_datasets::{Dataset, Normalization};
use cinder_runtime::Session;
use cinder_tensor::{Tensor, TensorBuf};

/// The index of the largest score (the first of equals).
pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// The median of `times`, in milliseconds (0 for none).
pub fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, |t| t.as_secs_f64() * 1e3)
}

/// Images `range` of `test`, normalized.
pub fn images(
    test: &Dataset,
    norm: &Normalization,
    range: std::ops::Range<usize>,
) -> anyhow::Result<(TensorBuf<f32>, Vec<u8>)> {
    let subset = test.subset(&range.collect::<Vec<_>>());
    Ok((norm.normalize(subset.images())?, subset.labels().to_vec()))
}

/// The predicted class of every image of the split, and the per-batch times.
pub fn predict(
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    batch: usize,
) -> anyhow::Result<(Vec<usize>, Vec<Duration>)> {
    let (mut predicted, mut times) = (Vec::with_capacity(test.len()), Vec::new());
    for start in (0..test.len()).step_by(batch) {
        let (x, _) = images(test, norm, start..(start + batch).min(test.len()))?;
        let t = Instant::now();
        let logits = session.run(&x)?;
        times.push(t.elapsed());
        let classes = logits.shape()[1];
        predicted.extend(logits.data().chunks_exact(classes).map(argmax));
    }
    Ok((predicted, times))
}

/// How many of `predicted` equal the split's labels.
pub fn correct(predicted: &[usize], test: &Dataset) -> usize {
    predicted
        .iter()
        .zip(test.labels())
        .filter(|(p, label)| **p == usize::from(**label))
        .count()
}

/// The times of single-image runs of the first `n` images.
pub fn single_latencies(
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    (0..n.min(test.len()))
        .map(|i| {
            let (x, _) = images(test, norm, i..i + 1)?;
            let t = Instant::now();
            session.run(&x)?;
            Ok(t.elapsed())
        })
        .collect()
}
