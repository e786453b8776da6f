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
//! An `Add`'s output depends on its two operand codes alone, so it is an [`AddTable`] of
//! all 65,536 pairs (64 KiB, built once per plan, from L2 at run time): one byte load
//! per element instead of two 64-bit rescales, a rounding and a clamp.

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

/// The output code of a residual `Add` for every pair of operand codes:
/// `clamp(zp_out + round_sum(a.apply_fraction(p) + b.apply_fraction(q)))` at
/// `(p as u8) << 8 | (q as u8)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddTable(Box<[i8; 1 << 16]>);

impl AddTable {
    pub fn new([a, b]: [&Rescale; 2], clamp: &Clamp) -> Self {
        let terms = |r: &Rescale| -> [i64; 256] {
            std::array::from_fn(|bits| r.apply_fraction(bits as u8 as i8))
        };
        let (p_terms, q_terms) = (terms(a), terms(b));
        let mut codes = Box::new([0i8; 1 << 16]);
        for (row, &p) in codes.chunks_exact_mut(256).zip(&p_terms) {
            for (code, &q) in row.iter_mut().zip(&q_terms) {
                *code = clamp.code(round_sum(p.saturating_add(q)));
            }
        }
        Self(codes)
    }

    /// The output code of operand codes `p` and `q` (the index is below `2^16`, so the
    /// fixed-size table needs no bounds check).
    #[inline]
    pub fn get(&self, p: i8, q: i8) -> i8 {
        self.0[usize::from(u16::from_le_bytes([q as u8, p as u8]))]
    }

    /// `out[i] = self.get(x[i], y[i])`.
    pub fn add(&self, x: &[i8], y: &[i8], out: &mut [i8]) {
        for ((o, &p), &q) in out.iter_mut().zip(x).zip(y) {
            *o = self.get(p, q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_table_equals_the_fixed_point_sum_for_every_pair_of_codes() {
        let rescale = |real: f64, zero_point: i32| Rescale {
            zero_point,
            multiplier: RequantMultiplier::from_real(real).unwrap(),
        };
        let cases = [
            (
                rescale(0.37, -3),
                rescale(1.9, 7),
                Clamp {
                    zero_point: -128,
                    lo: -128,
                    hi: 127,
                },
            ),
            (
                rescale(1.0, 0),
                rescale(1.0, 0),
                Clamp {
                    zero_point: 0,
                    lo: 0,
                    hi: 127,
                },
            ),
            (
                rescale(2.9, 120),
                rescale(1e-4, -128),
                Clamp {
                    zero_point: 5,
                    lo: -20,
                    hi: 90,
                },
            ),
        ];
        for (a, b, clamp) in cases {
            let table = AddTable::new([&a, &b], &clamp);
            for p in i8::MIN..=i8::MAX {
                for q in i8::MIN..=i8::MAX {
                    let sum = round_sum(a.apply_fraction(p) + b.apply_fraction(q));
                    let want = (i64::from(clamp.zero_point) + i64::from(sum))
                        .clamp(i64::from(clamp.lo), i64::from(clamp.hi));
                    assert_eq!(
                        i64::from(table.get(p, q)),
                        want,
                        "{a:?} {b:?} {clamp:?} {p} {q}"
                    );
                }
            }
        }
    }
}
