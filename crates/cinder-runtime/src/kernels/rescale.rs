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
//! per element instead of two 64-bit rescales, a rounding and a clamp. On the AVX-512
//! VNNI path the same arithmetic runs on 8 elements per vector in 64-bit lanes
//! ([`AddLanes`]), faster than the lookups (192 against 280–308 µs for 512 k elements on
//! one Zen 4 core), for every operand whose term cannot overflow 64 bits there.

use cinder_tensor::{RequantMultiplier, SUM_FRACTION_BITS, round_sum};

use super::isa::Isa;

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
/// `(p as u8) << 8 | (q as u8)`; and the same arithmetic as vector constants where they
/// are exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddTable {
    codes: Box<[i8; 1 << 16]>,
    lanes: Option<AddLanes>,
}

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
        let lanes = Term::new(a).zip(Term::new(b)).map(|(a, b)| AddLanes {
            terms: [a, b],
            clamp: *clamp,
        });
        Self { codes, lanes }
    }

    /// The output code of operand codes `p` and `q` (the index is below `2^16`, so the
    /// fixed-size table needs no bounds check).
    #[inline]
    pub fn get(&self, p: i8, q: i8) -> i8 {
        self.codes[usize::from(u16::from_le_bytes([q as u8, p as u8]))]
    }

    /// `out[i] = self.get(x[i], y[i])`; returns the path that ran.
    pub fn add(&self, x: &[i8], y: &[i8], out: &mut [i8]) -> Isa {
        #[cfg(target_arch = "x86_64")]
        if let (Some(lanes), Some(token)) = (&self.lanes, Isa::detect().avx512vnni()) {
            let whole = out.len().min(x.len()).min(y.len()) / 8 * 8;
            token.add_s8(lanes, &x[..whole], &y[..whole], &mut out[..whole]);
            self.add_generic(&x[whole..], &y[whole..], &mut out[whole..]);
            return Isa::Avx512Vnni;
        }
        self.add_generic(x, y, out);
        Isa::Generic
    }

    /// [`Self::add`] by lookups.
    fn add_generic(&self, x: &[i8], y: &[i8], out: &mut [i8]) {
        for ((o, &p), &q) in out.iter_mut().zip(x).zip(y) {
            *o = self.get(p, q);
        }
    }
}

/// An `Add`'s arithmetic for vector lanes: each operand's term and the output's clamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AddLanes {
    pub(super) terms: [Term; 2],
    pub(super) clamp: Clamp,
}

/// One operand's [`Rescale::apply_fraction`] as `((q - zp) · m << left + round) >> right`
/// in 64-bit lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Term {
    pub(super) zero_point: i32,
    pub(super) multiplier: i32,
    pub(super) left: u32,
    pub(super) round: i64,
    pub(super) right: u32,
}

impl Term {
    /// The lanes' form of `r`, where it is exact: an int8 zero point (so that `q - zp` and
    /// the product fit 9 and 40 bits) and a left shift of at most 20 (the term within
    /// 2^60, and the sum of two within i64 with no saturation to mirror).
    fn new(r: &Rescale) -> Option<Self> {
        let shift = r.multiplier.right_shift() as i32 - SUM_FRACTION_BITS as i32;
        let exact = (-128..=127).contains(&r.zero_point) && shift >= -20;
        exact.then(|| {
            let (left, right) = (shift.min(0).unsigned_abs(), shift.max(0).unsigned_abs());
            Self {
                zero_point: r.zero_point,
                multiplier: r.multiplier.multiplier,
                left,
                round: if right > 0 { 1 << (right - 1) } else { 0 },
                right,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rescale(real: f64, zero_point: i32) -> Rescale {
        Rescale {
            zero_point,
            multiplier: RequantMultiplier::from_real(real).unwrap(),
        }
    }

    proptest! {
        /// The path the process takes (in vector lanes on AVX-512 VNNI) equals the table,
        /// for multipliers whose terms shift right or left, any zero points and clamps,
        /// and lengths with and without a tail of fewer than 8.
        #[test]
        fn add_equals_the_table(
            reals in (1e-6f64..8.0, 1e-6f64..8.0), zps in (-128i32..=127, -128i32..=127),
            out in (-128i32..=127, -128i32..=127, -128i32..=127), len in 0usize..100,
            seed in any::<u64>(),
        ) {
            let (a, b) = (rescale(reals.0, zps.0), rescale(reals.1, zps.1));
            let clamp = Clamp { zero_point: out.0, lo: out.1.min(out.2), hi: out.1.max(out.2) };
            let table = AddTable::new([&a, &b], &clamp);
            let mut rng = crate::synthetic::Rng::new(seed);
            let (x, y): (Vec<i8>, Vec<i8>) = (0..len).map(|_| (rng.next_u64() as i8, rng.next_u64() as i8)).unzip();
            let mut got = vec![0x55; len];
            let ran = table.add(&x, &y, &mut got);
            let want: Vec<i8> = x.iter().zip(&y).map(|(&p, &q)| table.get(p, q)).collect();
            prop_assert_eq!(got, want);
            let lanes = table.lanes.is_some() && Isa::detect() == Isa::Avx512Vnni;
            prop_assert_eq!(ran, if lanes { Isa::Avx512Vnni } else { Isa::Generic });
        }
    }

    #[test]
    fn the_lanes_take_every_usual_multiplier() {
        for real in [1e-4, 0.1, 0.5, 0.99, 1.0, 1.7, 100.0] {
            let r = rescale(real, -5);
            assert!(Term::new(&r).is_some(), "{real}");
        }
        assert!(
            Term::new(&rescale(1e7, 0)).is_none(),
            "a left shift past 20 bits"
        );
        assert!(
            Term::new(&rescale(1.0, 300)).is_none(),
            "a zero point past int8"
        );
    }

    #[test]
    fn add_table_equals_the_fixed_point_sum_for_every_pair_of_codes() {
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
