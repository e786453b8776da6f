//! Elementwise rescaling of int8 codes to other parameters by Q0.31 fixed-point
//! multipliers: one operand (a `Concat` input whose parameters differ from the output's)
//! or the sum of two (the residual `Add`, as TFLite's quantized ADD rescales both
//! operands to the output's scale).
//!
//! # Rounding
//! Once per output: a single operand is `M·(q - zp)` with `M = s_in / s_out` applied by
//! [`RequantMultiplier::apply`] (nearest, ties toward +∞); a sum of two keeps
//! [`cinder_tensor::SUM_FRACTION_BITS`] fractional bits of each rescaled operand
//! ([`RequantMultiplier::apply_fraction`]) and rounds their sum ([`round_sum`]), so it
//! is within half a code (plus `2^-32`) of the exact sum. Then the output zero point is
//! added and the result clamped (a fused ReLU or clip narrows the clamp).
//!
//! An operand's rescale depends on its code alone, so the residual `Add` looks it up in a
//! [`RescaleTable`] of the 256 codes, built once per plan, without a 64-bit multiply
//! per element.

use cinder_tensor::{RequantMultiplier, round_sum};

/// One operand's path to the output: its zero point and multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rescale {
    pub zero_point: i32,
    pub multiplier: RequantMultiplier,
}

impl Rescale {
    /// The operand code `q` on the output's scale, without the output zero point.
    #[inline]
    pub fn apply(&self, q: i8) -> i32 {
        self.multiplier.apply(i32::from(q) - self.zero_point)
    }

    /// The operand code `q` on the output's scale with the fractional bits of a term of
    /// a sum.
    #[inline]
    pub fn apply_fraction(&self, q: i8) -> i64 {
        self.multiplier
            .apply_fraction(i32::from(q) - self.zero_point)
    }
}

/// [`Rescale::apply_fraction`] of every int8 code, indexed by the code's bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RescaleTable(Box<[i64; 256]>);

impl RescaleTable {
    pub fn new(rescale: &Rescale) -> Self {
        Self(Box::new(std::array::from_fn(|bits| {
            rescale.apply_fraction(bits as u8 as i8)
        })))
    }

    #[inline]
    fn get(&self, q: i8) -> i64 {
        self.0[usize::from(q as u8)]
    }
}

/// The output side: zero point and clamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clamp {
    pub zero_point: i32,
    pub lo: i32,
    pub hi: i32,
}

impl Clamp {
    #[inline]
    fn code(&self, v: i32) -> i8 {
        (i64::from(self.zero_point) + i64::from(v)).clamp(i64::from(self.lo), i64::from(self.hi))
            as i8
    }
}

/// `out[i] = clamp(zp_out + a.apply(x[i]))`.
pub fn rescale_s8(x: &[i8], a: &Rescale, clamp: &Clamp, out: &mut [i8]) {
    for (o, &q) in out.iter_mut().zip(x) {
        *o = clamp.code(a.apply(q));
    }
}

/// `out[i] = clamp(zp_out + round_sum(a.apply_fraction(x[i]) + b.apply_fraction(y[i])))`,
/// the operands' rescales looked up in their tables.
pub fn add_s8(x: &[i8], y: &[i8], [a, b]: [&RescaleTable; 2], clamp: &Clamp, out: &mut [i8]) {
    for ((o, &p), &q) in out.iter_mut().zip(x).zip(y) {
        *o = clamp.code(round_sum(a.get(p).saturating_add(b.get(q))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_equals_the_fixed_point_rescale_for_every_code() {
        for (real, zero_point) in [(0.37, -3), (1.0, 0), (2.9, 120), (1e-4, -128)] {
            let rescale = Rescale {
                zero_point,
                multiplier: RequantMultiplier::from_real(real).unwrap(),
            };
            let table = RescaleTable::new(&rescale);
            for q in i8::MIN..=i8::MAX {
                assert_eq!(
                    table.get(q),
                    rescale.apply_fraction(q),
                    "{real} {zero_point} {q}"
                );
            }
        }
    }
}
