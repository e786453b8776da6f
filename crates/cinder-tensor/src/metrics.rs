//! Error metrics between a float tensor and its dequantized copy.
//!
//! Accumulation is in f64. The mean absolute error is the reference article's
//! `L = (1/N) * sum |q_i - w_i|` with `q` in real units (dequantized).

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

/// How far a dequantized tensor lies from the float reference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorMetrics {
    pub mean_abs_error: f64,
    pub mse: f64,
    pub max_abs_error: f64,
    /// `10 * log10(sum x^2 / sum (x - x_q)^2)`. `None` when there is no noise at all
    /// (an exact copy has unbounded SQNR), so that reports never carry infinities.
    pub sqnr_db: Option<f64>,
    pub count: usize,
}

impl ErrorMetrics {
    /// Compares `approx` against `reference` element by element.
    pub fn between(reference: &[f32], approx: &[f32]) -> Result<Self, QuantError> {
        if reference.len() != approx.len() {
            return Err(QuantError::LengthMismatch {
                reference: reference.len(),
                other: approx.len(),
            });
        }
        if reference.is_empty() {
            return Err(QuantError::Empty);
        }
        let mut sum = ErrorAccumulator::default();
        for (index, (&x, &y)) in reference.iter().zip(approx).enumerate() {
            for value in [x, y] {
                if !value.is_finite() {
                    return Err(QuantError::NonFiniteValue { index, value });
                }
            }
            sum.add(x, y);
        }
        Ok(sum.metrics())
    }
}

/// Running sums behind [`ErrorMetrics`], for errors gathered batch after batch (and
/// merged across threads) without keeping the tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorAccumulator {
    abs: f64,
    squared: f64,
    max_abs: f64,
    signal: f64,
    count: usize,
}

impl ErrorAccumulator {
    /// Adds one pair: the reference `x` and its approximation `y` (both finite).
    pub fn add(&mut self, x: f32, y: f32) {
        let (x, y) = (f64::from(x), f64::from(y));
        let e = (x - y).abs();
        self.abs += e;
        self.squared += e * e;
        self.max_abs = self.max_abs.max(e);
        self.signal += x * x;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Self) {
        self.abs += other.abs;
        self.squared += other.squared;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.signal += other.signal;
        self.count += other.count;
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// The metrics of everything added so far (all zero when nothing was).
    pub fn metrics(&self) -> ErrorMetrics {
        let n = self.count.max(1) as f64;
        let sqnr_db = (self.squared > 0.0).then(|| {
            // A zero signal with noise is "infinitely bad"; clamp to a finite floor.
            if self.signal > 0.0 {
                10.0 * (self.signal / self.squared).log10()
            } else {
                f64::from(f32::MIN)
            }
        });
        ErrorMetrics {
            mean_abs_error: self.abs / n,
            mse: self.squared / n,
            max_abs_error: self.max_abs,
            sqnr_db,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let m = ErrorMetrics::between(&[1.0, -2.0, 3.0, 0.0], &[1.5, -2.0, 2.0, 0.0]).unwrap();
        assert!((m.mean_abs_error - 0.375).abs() < 1e-12);
        assert!((m.mse - 0.3125).abs() < 1e-12);
        assert_eq!(m.max_abs_error, 1.0);
        let want = 10.0 * (14.0f64 / 1.25).log10();
        assert!((m.sqnr_db.unwrap() - want).abs() < 1e-9);
        assert_eq!(m.count, 4);
    }

    #[test]
    fn exact_copy_has_no_sqnr() {
        let m = ErrorMetrics::between(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        assert_eq!(m.sqnr_db, None);
        assert_eq!(m.mse, 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(ErrorMetrics::between(&[], &[]), Err(QuantError::Empty));
        assert!(matches!(
            ErrorMetrics::between(&[1.0], &[1.0, 2.0]),
            Err(QuantError::LengthMismatch { .. })
        ));
        assert!(matches!(
            ErrorMetrics::between(&[1.0, f32::NAN], &[1.0, 2.0]),
            Err(QuantError::NonFiniteValue { index: 1, .. })
        ));
        let zero_signal = ErrorMetrics::between(&[0.0], &[1.0]).unwrap();
        assert!(zero_signal.sqnr_db.unwrap().is_finite());
    }
}
