//! Fixed-point requantization, as in gemmlowp and TFLite.
//!
//! A real rescale factor `M = S_in * S_w / S_out` is stored offline as a Q0.31
//! multiplier `M0` in `[0.5, 1)` and a power-of-two exponent, `M = M0 * 2^exponent`.
//! On device, an int32 accumulator is rescaled with integer operations only:
//!
//! 1. if `exponent > 0`, a saturating left shift by `exponent` (multipliers >= 1);
//! 2. `saturating_rounding_doubling_high_mul(acc, M0)`: the high 32 bits of `2*acc*M0`,
//!    rounded to nearest with ties toward +infinity;
//! 3. if `exponent < 0`, `rounding_divide_by_pot` by `-exponent`: rounded to nearest,
//!    ties away from zero.
//!
//! Two roundings happen, so the result is within 1 of the exactly rounded real product
//! `round(acc * M)` (tested over the accumulator range), and bit-identical to TFLite's
//! `MultiplyByQuantizedMultiplier` for the same `(M0, exponent)`.

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

/// `round(a * b / 2^31)` with ties toward +infinity (gemmlowp's nudge then truncating
/// division), saturating the single overflow case `a == b == i32::MIN`.
#[inline]
pub fn saturating_rounding_doubling_high_mul(a: i32, b: i32) -> i32 {
    if a == i32::MIN && b == i32::MIN {
        return i32::MAX;
    }
    let ab = i64::from(a) * i64::from(b);
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// `round(x / 2^exponent)` with ties away from zero, for `exponent` in `0..=31`.
#[inline]
pub fn rounding_divide_by_pot(x: i32, exponent: u32) -> i32 {
    debug_assert!(exponent <= 31);
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + i32::from(x < 0);
    (x >> exponent) + i32::from(remainder > threshold)
}

/// An integer-only rescale factor: `M0 * 2^exponent` with `M0` in Q0.31.
///
/// This is the on-device type: it holds integers only. [`RequantMultiplier::from_real`]
/// is the offline constructor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequantMultiplier {
    /// Q0.31 mantissa in `[2^30, 2^31)`, or 0 for a multiplier too small to matter.
    pub multiplier: i32,
    /// Power of two: positive shifts left before the multiply, negative shifts right after.
    pub exponent: i32,
}

/// The largest left shift accepted: beyond it every non-zero accumulator saturates.
pub const MAX_LEFT_SHIFT: i32 = 30;

impl RequantMultiplier {
    /// Offline: encodes a real multiplier `m > 0`.
    ///
    /// Multipliers below `2^-32` encode as 0 (every accumulator rounds to 0 anyway, as in
    /// TFLite); multipliers at or above `2^30` are rejected.
    pub fn from_real(m: f64) -> Result<Self, QuantError> {
        if !(m.is_finite() && m > 0.0) {
            return Err(QuantError::InvalidMultiplier { multiplier: m });
        }
        let (mantissa, mut exponent) = frexp(m);
        let mut q = (mantissa * f64::from(1u32 << 31)).round() as i64;
        if q == 1 << 31 {
            q /= 2;
            exponent += 1;
        }
        if exponent < -31 {
            return Ok(Self {
                multiplier: 0,
                exponent: 0,
            });
        }
        if exponent > MAX_LEFT_SHIFT {
            return Err(QuantError::MultiplierTooLarge { multiplier: m });
        }
        Ok(Self {
            multiplier: q as i32,
            exponent,
        })
    }

    /// Checked constructor for values read from a file.
    pub fn new(multiplier: i32, exponent: i32) -> Result<Self, QuantError> {
        let valid_mantissa = multiplier == 0 || (1 << 30..=i32::MAX).contains(&multiplier);
        if !valid_mantissa || !(-31..=MAX_LEFT_SHIFT).contains(&exponent) {
            return Err(QuantError::InvalidFixedPoint {
                multiplier,
                exponent,
            });
        }
        Ok(Self {
            multiplier,
            exponent,
        })
    }

    /// The real value this multiplier encodes (for reports and tests).
    pub fn to_real(&self) -> f64 {
        f64::from(self.multiplier) / f64::from(1u32 << 31) * 2f64.powi(self.exponent)
    }

    /// On device: rescales an int32 accumulator.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let left = self.exponent.max(0) as u32;
        let right = (-self.exponent).max(0) as u32;
        let shifted = acc.saturating_mul(1 << left);
        rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(shifted, self.multiplier),
            right,
        )
    }
}

/// Splits a positive finite `m` into `mantissa * 2^exponent`, mantissa in `[0.5, 1)`.
fn frexp(m: f64) -> (f64, i32) {
    const EXPONENT_MASK: u64 = 0x7ff << 52;
    let (m, bias) = if m < f64::MIN_POSITIVE {
        (m * 2f64.powi(64), 64)
    } else {
        (m, 0)
    };
    let bits = m.to_bits();
    let exponent = ((bits & EXPONENT_MASK) >> 52) as i32 - 1022;
    let mantissa = f64::from_bits((bits & !EXPONENT_MASK) | (1022 << 52));
    (mantissa, exponent - bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frexp_known_values() {
        assert_eq!(frexp(1.0), (0.5, 1));
        assert_eq!(frexp(0.75), (0.75, 0));
        assert_eq!(frexp(3.0), (0.75, 2));
        assert_eq!(frexp(f64::MIN_POSITIVE / 4.0), (0.5, -1023));
    }

    #[test]
    fn high_mul_rounds_and_saturates() {
        assert_eq!(
            saturating_rounding_doubling_high_mul(i32::MIN, i32::MIN),
            i32::MAX
        );
        assert_eq!(
            saturating_rounding_doubling_high_mul(1 << 30, 1 << 30),
            1 << 29
        );
        // 3 * 2^30 * 2 / 2^32 = 1.5 -> 2 and -1.5 -> -1 (ties toward +infinity).
        assert_eq!(saturating_rounding_doubling_high_mul(3, 1 << 30), 2);
        assert_eq!(saturating_rounding_doubling_high_mul(-3, 1 << 30), -1);
        assert_eq!(saturating_rounding_doubling_high_mul(-5, 1 << 30), -2);
        assert_eq!(saturating_rounding_doubling_high_mul(-7, 1 << 30), -3);
    }

    #[test]
    fn divide_by_pot_rounds_half_away_from_zero() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
        assert_eq!(rounding_divide_by_pot(17, 0), 17);
    }

    #[test]
    fn encodes_known_multipliers() {
        let m = RequantMultiplier::from_real(0.5).unwrap();
        assert_eq!((m.multiplier, m.exponent), (1 << 30, 0));
        let m = RequantMultiplier::from_real(1.0).unwrap();
        assert_eq!((m.multiplier, m.exponent), (1 << 30, 1));
        assert_eq!(m.apply(1234), 1234);
        assert_eq!(
            RequantMultiplier::from_real(1e-12).unwrap().apply(i32::MAX),
            0
        );
        assert!(RequantMultiplier::from_real(0.0).is_err());
        assert!(RequantMultiplier::from_real(f64::NAN).is_err());
        assert!(RequantMultiplier::from_real(2f64.powi(31)).is_err());
    }

    #[test]
    fn checked_constructor() {
        assert!(RequantMultiplier::new(1 << 30, -5).is_ok());
        assert!(RequantMultiplier::new(0, 0).is_ok());
        assert!(RequantMultiplier::new(12, 0).is_err());
        assert!(RequantMultiplier::new(1 << 30, 31).is_err());
        assert!(RequantMultiplier::new(-(1 << 30), 0).is_err());
    }

    fn exact(acc: i32, m: f64) -> f64 {
        (f64::from(acc) * m).round()
    }

    proptest! {
        #[test]
        fn within_one_of_the_exact_product_below_one(acc in any::<i32>(), m in 1e-9f64..1.0) {
            let r = RequantMultiplier::from_real(m).unwrap();
            let got = f64::from(r.apply(acc));
            prop_assert!((got - exact(acc, m)).abs() <= 1.0, "acc={acc} m={m} got={got}");
        }

        #[test]
        fn within_one_of_the_exact_product_above_one(acc in any::<i32>(), m in 1.0f64..1e6) {
            let r = RequantMultiplier::from_real(m).unwrap();
            let want = exact(acc, m);
            // Beyond the i32 range the result saturates.
            if want.abs() < f64::from(i32::MAX) / 2.0 {
                prop_assert!((f64::from(r.apply(acc)) - want).abs() <= 1.0, "acc={acc} m={m}");
            } else {
                prop_assert_eq!(r.apply(acc).signum(), acc.signum());
            }
        }

        #[test]
        fn encoding_is_accurate(m in 1e-9f64..1e8) {
            let r = RequantMultiplier::from_real(m).unwrap();
            prop_assert!((1 << 30..=i32::MAX).contains(&r.multiplier));
            prop_assert!(((r.to_real() - m) / m).abs() <= 2f64.powi(-31));
        }

        #[test]
        fn matches_gemmlowp_definition(acc in any::<i32>(), m in 1e-6f64..0.99) {
            let r = RequantMultiplier::from_real(m).unwrap();
            // gemmlowp, from its definition in exact i128 arithmetic: the doubling high
            // multiply rounds half up, the power-of-two division rounds half away from zero.
            let high = (i128::from(acc) * i128::from(r.multiplier) + (1 << 30)).div_euclid(1 << 31);
            let shift = -r.exponent;
            let want = if shift == 0 {
                high
            } else {
                let half = 1i128 << (shift - 1);
                high.signum() * ((high.abs() + half) >> shift)
            };
            prop_assert_eq!(i128::from(r.apply(acc)), want);
        }
    }
}
