//! Fast range scans: the minimum and maximum of a slice in one vectorizable pass.
//!
//! The loop keeps [`LANES`] independent running minima and maxima (compare-and-select
//! on fixed-size arrays, which the compiler turns into packed `minps`/`maxps`) and a
//! lane-wise NaN flag. Infinities surface in the extremes and NaN in the flag, so
//! finiteness costs no branch per element; only a failing slice is scanned again to
//! name the first bad index.

use crate::error::ObserverError;

/// Independent accumulators per pass: two AVX2 registers (four SSE2 ones).
const LANES: usize = 16;

/// The smallest and largest value of `data`.
///
/// Errors on an empty slice and on any NaN or infinity (naming the first one), so the
/// result is always a finite, ordered pair. This is the runtime's dynamic-range scan.
pub fn min_max(data: &[f32]) -> Result<(f32, f32), ObserverError> {
    if data.is_empty() {
        return Err(ObserverError::EmptyTensor);
    }
    finite_range(data).ok_or_else(|| first_non_finite(data))
}

/// The extremes of `data`, or `None` when it is empty or holds a non-finite value.
pub(crate) fn finite_range(data: &[f32]) -> Option<(f32, f32)> {
    let (lo, hi, nan) = scan(data);
    (!nan && lo.is_finite() && hi.is_finite()).then_some((lo, hi))
}

/// Lane-parallel min, max and "saw a NaN" over `data` (`+inf`, `-inf` when empty).
fn scan(data: &[f32]) -> (f32, f32, bool) {
    let mut lo = [f32::INFINITY; LANES];
    let mut hi = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = data.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for j in 0..LANES {
            let x = chunk[j];
            lo[j] = if x < lo[j] { x } else { lo[j] };
            hi[j] = if x > hi[j] { x } else { hi[j] };
            nan[j] |= x.is_nan();
        }
    }
    for (j, &x) in rest.iter().enumerate() {
        lo[j] = if x < lo[j] { x } else { lo[j] };
        hi[j] = if x > hi[j] { x } else { hi[j] };
        nan[j] |= x.is_nan();
    }
    let lo = lo.into_iter().fold(f32::INFINITY, f32::min);
    let hi = hi.into_iter().fold(f32::NEG_INFINITY, f32::max);
    (lo, hi, nan.contains(&true))
}

/// The error for the first non-finite value of a slice known to hold one.
pub(crate) fn first_non_finite(data: &[f32]) -> ObserverError {
    let (index, &value) = data
        .iter()
        .enumerate()
        .find(|(_, x)| !x.is_finite())
        .unwrap_or((0, &f32::NAN));
    ObserverError::NonFiniteValue { index, value }
}

/// Widens `range` to cover `other`.
pub(crate) fn union(range: (f32, f32), other: (f32, f32)) -> (f32, f32) {
    (range.0.min(other.0), range.1.max(other.1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_answers() {
        assert_eq!(min_max(&[3.0]), Ok((3.0, 3.0)));
        assert_eq!(min_max(&[1.0, -2.0, 5.5, 0.0]), Ok((-2.0, 5.5)));
        let long: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        assert_eq!(min_max(&long), Ok((-50.0, 50.0)));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(min_max(&[]), Err(ObserverError::EmptyTensor));
        let mut data = vec![0.5f32; 100];
        data[40] = f32::NAN;
        data[70] = f32::INFINITY;
        assert!(matches!(
            min_max(&data),
            Err(ObserverError::NonFiniteValue { index: 40, .. })
        ));
        data[40] = 1.0;
        assert!(matches!(
            min_max(&data),
            Err(ObserverError::NonFiniteValue { index: 70, .. })
        ));
        data[70] = f32::NEG_INFINITY;
        assert!(min_max(&data).is_err());
        // NaN in the remainder after the last full chunk.
        let mut tail = vec![0.0f32; LANES + 3];
        tail[LANES + 1] = f32::NAN;
        assert!(min_max(&tail).is_err());
    }

    proptest! {
        #[test]
        fn equals_the_scalar_fold(data in prop::collection::vec(-1e30f32..1e30, 1..300)) {
            let want = data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |r, &x| union(r, (x, x)));
            prop_assert_eq!(min_max(&data), Ok(want));
        }
    }
}
