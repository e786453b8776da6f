//! Fixed-point requantization with a single rounding.
//!
//! A real rescale factor `M = S_in * S_w / S_out` is stored offline as a Q0.31
//! multiplier `M0` in `[0.5, 1)` and a power-of-two exponent, `M = M0 * 2^exponent`.
//! On device, an int32 accumulator is rescaled with integer operations only: the 64-bit
//! product of `acc` and the integer mantissa `M0 * 2^31`, then one rounding right shift
//! by `31 - exponent` (ties toward +infinity), saturated to int32: the exactly rounded
//! `acc * M0 * 2^exponent`.
//!
//! A sum of rescaled values (the residual `Add`'s two operands, each on its own scale) is
//! rounded once too: each term keeps [`SUM_FRACTION_BITS`] fractional bits
//! ([`RequantMultiplier::apply_fraction`]) and only their sum is rounded to an integer
//! ([`round_sum`]). So the result is within half a code plus `2^-32` of the exact sum,
//! where rounding each term first would be up to a whole code off.
//!
//! # Deviation from gemmlowp
//! gemmlowp (and TFLite's default) rounds twice: `SaturatingRoundingDoublingHighMul`
//! (after a left shift for `exponent > 0`), then `RoundingDivideByPOT`. Rounding an
//! already rounded value can land one code off (`0.13 * 3`: gemmlowp 1, exact 0.39 -> 0),
//! and those odd codes make an int8 model disagree with its float simulation on a few
//! images of a test set. One rounding of the exact 64-bit product (TFLite's
//! `TFLITE_SINGLE_ROUNDING` variant) removes that error at the same cost in SIMD
//! (`vpmuldq` computes the 64-bit products either way); the stored
//! `(M0, exponent)` pair is unchanged.

use serde::{Deserialize, Serialize};

use crate::error::QuantError;

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

/// Fractional bits each term of a rescaled sum keeps before the sum's one rounding: as
/// many as the Q0.31 multipliers carry, so the sum is as exact as one rescale.
pub const SUM_FRACTION_BITS: u32 = 32;

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

    /// The right shift of the 64-bit product, `31 - exponent`: `1..=62` for the
    /// exponents `new` and `from_real` produce.
    #[inline]
    pub fn right_shift(&self) -> u32 {
        debug_assert!((-31..=MAX_LEFT_SHIFT).contains(&self.exponent));
        (31 - self.exponent) as u32
    }

    /// On device: rescales an int32 accumulator, `round(acc * M0 / 2^right_shift)` with
    /// ties toward +infinity, saturated to int32.
    #[inline]
    pub fn apply(&self, acc: i32) -> i32 {
        let shift = self.right_shift();
        // |acc * M0| < 2^62 and the rounding term is at most 2^61: no overflow.
        let product = i64::from(acc) * i64::from(self.multiplier);
        let rounded = (product + (1 << (shift - 1))) >> shift;
        rounded.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }

    /// On device: `acc * M0 * 2^exponent` with [`SUM_FRACTION_BITS`] fractional bits,
    /// rounded there (ties toward +infinity): one term of a sum that [`round_sum`] rounds
    /// once. Saturates at i64 only for `|acc| * M` of `2^31` and more (for int8 codes, a
    /// multiplier of `2^23` and more, where every non-zero code saturates any output
    /// anyway).
    #[inline]
    pub fn apply_fraction(&self, acc: i32) -> i64 {
        // |acc * M0| < 2^62; a positive shift adds at most 2^61.
        let product = i64::from(acc) * i64::from(self.multiplier);
        let shift = self.right_shift() as i32 - SUM_FRACTION_BITS as i32;
        if shift > 0 {
            (product + (1 << (shift - 1))) >> shift
        } else {
            product.saturating_mul(1 << -shift)
        }
    }
}

/// On device: the integer nearest to a sum of [`RequantMultiplier::apply_fraction`]
/// terms (ties toward +infinity), saturated to int32.
#[inline]
pub fn round_sum(sum: i64) -> i32 {
    let half = 1i64 << (SUM_FRACTION_BITS - 1);
    (sum.saturating_add(half) >> SUM_FRACTION_BITS).clamp(i64::from(i32::MIN), i64::from(i32::MAX))
        as i32
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
    fn rounds_once_ties_up_and_saturates() {
        let half = RequantMultiplier::from_real(0.5).unwrap();
        // 3 * 0.5 = 1.5 -> 2 and -1.5 -> -1: ties toward +infinity.
        assert_eq!(half.apply(3), 2);
        assert_eq!(half.apply(-3), -1);
        assert_eq!(half.apply(-5), -2);
        assert_eq!(half.apply(i32::MIN), -(1 << 30));
        // 3 * 0.13 = 0.39 -> 0, where gemmlowp's two roundings give 1: M0 = 0.52,
        // round(3 * 0.52) = 2, then 2 / 2^2 = 0.5 -> 1.
        assert_eq!(RequantMultiplier::from_real(0.13).unwrap().apply(3), 0);
        let big = RequantMultiplier::from_real(2f64.powi(29)).unwrap();
        assert_eq!(big.apply(8), i32::MAX);
        assert_eq!(big.apply(-8), i32::MIN);
        assert_eq!(big.apply(-4), i32::MIN);
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

    /// The single-rounding definition in exact i128 arithmetic.
    fn definition(acc: i32, r: RequantMultiplier) -> i128 {
        let shift = 31 - r.exponent;
        let product = i128::from(acc) * i128::from(r.multiplier);
        let rounded = (product + (1i128 << (shift - 1))).div_euclid(1i128 << shift);
        rounded.clamp(i128::from(i32::MIN), i128::from(i32::MAX))
    }

    proptest! {
        #[test]
        fn equals_the_single_rounding_definition(acc in any::<i32>(), m in 1e-9f64..1e8) {
            let r = RequantMultiplier::from_real(m).unwrap();
            prop_assert_eq!(i128::from(r.apply(acc)), definition(acc, r));
        }

        #[test]
        fn a_sum_is_rounded_once(
            a in -255i32..=255,
            b in -255i32..=255,
            ma in 1e-6f64..300.0,
            mb in 1e-6f64..300.0,
        ) {
            let (ra, rb) = (RequantMultiplier::from_real(ma).unwrap(), RequantMultiplier::from_real(mb).unwrap());
            let got = round_sum(ra.apply_fraction(a) + rb.apply_fraction(b));
            // The exact sum of the encoded multipliers' products, in units of 2^-100.
            let exact = |acc: i32, r: RequantMultiplier| {
                i128::from(acc) * i128::from(r.multiplier) * (1i128 << (69 + r.exponent))
            };
            let sum = exact(a, ra) + exact(b, rb);
            let error = (i128::from(got) << 100) - sum;
            // Half a code, plus 2^-33 for each term's rounding.
            let bound = (1i128 << 99) + (1i128 << 68);
            prop_assert!(-bound < error && error <= bound, "{a}*{ma} + {b}*{mb} -> {got}");
        }

        #[test]
        fn within_half_a_code_of_the_real_product(acc in any::<i32>(), m in 1e-9f64..1.0) {
            let r = RequantMultiplier::from_real(m).unwrap();
            let real = f64::from(acc) * m;
            // The encoding's relative error is at most 2^-32 (`encoding_is_accurate`).
            let bound = 0.5 + real.abs() * 2f64.powi(-31) + 1e-9;
            prop_assert!((f64::from(r.apply(acc)) - real).abs() <= bound, "acc={acc} m={m}");
        }

        #[test]
        fn encoding_is_accurate(m in 1e-9f64..1e8) {
            let r = RequantMultiplier::from_real(m).unwrap();
            prop_assert!((1 << 30..=i32::MAX).contains(&r.multiplier));
            prop_assert!(((r.to_real() - m) / m).abs() <= 2f64.powi(-31));
        }
    }
}
