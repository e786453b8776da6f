//! Affine quantization parameters and how they are derived from a real range.
//!
//! Offline code: scales are computed in f64 and stored as f32. The rounding of real
//! values to codes is round-half-to-even, the same as PyTorch and ONNX, and every
//! crate (runtime, simulation, QAT) goes through [`QuantParams::quantize`].

use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::scheme::{Granularity, Mapping, QuantScheme};

/// Smallest scale ever produced from a range. A range narrower than this (all zeros, a
/// constant, or a tiny spread) still gets valid parameters: real 0 maps exactly, and
/// values below the floor quantize to the zero point. PyTorch uses the same floor.
pub const MIN_SCALE: f32 = f32::EPSILON;

/// One affine mapping `real = scale * (q - zero_point)` with codes in `[qmin, qmax]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QuantParams {
    pub scale: f32,
    pub zero_point: i32,
    pub qmin: i32,
    pub qmax: i32,
}

impl QuantParams {
    /// Checked constructor for parameters that come from outside (files, configs).
    pub fn new(scale: f32, zero_point: i32, qmin: i32, qmax: i32) -> Result<Self, QuantError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(QuantError::InvalidScale { scale });
        }
        if !(qmin <= zero_point && zero_point <= qmax) {
            return Err(QuantError::ZeroPointOutOfRange {
                zero_point,
                qmin,
                qmax,
            });
        }
        Ok(Self {
            scale,
            zero_point,
            qmin,
            qmax,
        })
    }

    /// Parameters covering `[min, max]` under `scheme` (its granularity is ignored).
    ///
    /// The range is first widened to contain 0 so that real zero (padding, ReLU's floor)
    /// is exact. Symmetric mappings use the larger magnitude on both sides.
    pub fn from_range(min: f32, max: f32, scheme: &QuantScheme) -> Result<Self, QuantError> {
        if !(min.is_finite() && max.is_finite()) {
            return Err(QuantError::NonFiniteRange { min, max });
        }
        if min > max {
            return Err(QuantError::InvertedRange { min, max });
        }
        let (qmin, qmax) = (scheme.qmin(), scheme.qmax());
        let lo = f64::from(min.min(0.0));
        let hi = f64::from(max.max(0.0));
        let (scale, zero_point) = match scheme.mapping {
            Mapping::Symmetric => {
                let zero_point = symmetric_zero_point(qmin, qmax);
                let half_steps = f64::from((qmax - zero_point).min(zero_point - qmin));
                (lo.abs().max(hi) / half_steps, zero_point)
            }
            Mapping::Asymmetric => {
                let scale = (hi - lo) / f64::from(qmax - qmin);
                let scale = scale.max(f64::from(MIN_SCALE));
                let zero_point = (f64::from(qmin) - (lo / scale).round_ties_even())
                    .clamp(f64::from(qmin), f64::from(qmax))
                    as i32;
                (scale, zero_point)
            }
        };
        let scale = (scale as f32).max(MIN_SCALE);
        Self::new(scale, zero_point, qmin, qmax)
    }

    /// The real interval this grid represents.
    pub fn real_range(&self) -> (f32, f32) {
        (self.dequantize(self.qmin), self.dequantize(self.qmax))
    }

    /// Nearest code, ties to even, saturated to the grid. NaN maps to the zero point and
    /// infinities saturate; callers that must reject them check finiteness first.
    #[inline]
    pub fn quantize(&self, x: f32) -> i32 {
        let q = round_ties_even(x / self.scale) + self.zero_point as f32;
        // `f32::max` drops NaN, so NaN is mapped to the zero point explicitly.
        let q = if q.is_nan() {
            self.zero_point as f32
        } else {
            q
        };
        let q = q.max(self.qmin as f32).min(self.qmax as f32);
        // SAFETY: q is finite (NaN was replaced, infinities clamped) and within
        // [qmin, qmax], so it is representable as i32. The checked `as` cast would block
        // vectorization.
        unsafe { q.to_int_unchecked::<i32>() }
    }

    #[inline]
    pub fn dequantize(&self, q: i32) -> f32 {
        self.scale * (q - self.zero_point) as f32
    }

    /// As [`QuantParams::quantize`], but exact at every magnitude (for grids wider than
    /// [`ROUNDING_LIMIT`]: int32 bias codes, where `quantize` saturates) and never
    /// clamping: `None` when `x` is not finite or its code lies outside the grid, so that
    /// a value the grid cannot hold is refused rather than silently changed. Not
    /// vectorized (the standard library's rounding); meant for per-channel values.
    pub fn quantize_exact(&self, x: f32) -> Option<i32> {
        let q = (x / self.scale).round_ties_even() + self.zero_point as f32;
        if !q.is_finite() {
            return None;
        }
        // Compared in i64, where every f32 code below 2^63 and the i32 bounds are exact.
        let code = q as i64;
        (i64::from(self.qmin)..=i64::from(self.qmax))
            .contains(&code)
            .then_some(code as i32)
    }

    /// Quantize then dequantize: the value the integer path will see, in real units.
    #[inline]
    pub fn fake_quantize(&self, x: f32) -> f32 {
        self.dequantize(self.quantize(x))
    }
}

/// The largest magnitude [`round_ties_even`] returns (2^22): larger values saturate to
/// it, and so do the codes of [`QuantParams::quantize`]; [`QuantParams::quantize_exact`]
/// serves wider grids.
pub const ROUNDING_LIMIT: f32 = 4_194_304.0;

/// Round half to even, branch-free and vectorizable (`f32::round_ties_even` is a libm
/// call on baseline x86-64). Magnitudes are first limited to [`ROUNDING_LIMIT`], far
/// beyond any activation or weight code, so that adding 1.5 * 2^23 lands where the float
/// grid spacing is exactly 1 and the hardware's round-to-nearest-even does the rounding.
#[inline]
pub fn round_ties_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    let v = v.clamp(-ROUNDING_LIMIT, ROUNDING_LIMIT);
    (v + MAGIC) - MAGIC
}

/// The middle of the grid: 0 for signed storage, 2^(bits-1) for unsigned.
fn symmetric_zero_point(qmin: i32, qmax: i32) -> i32 {
    if qmin < 0 { 0 } else { (qmin + qmax + 1) / 2 }
}

/// Parameters for a whole tensor: one mapping, or one per channel along an axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TensorQuantParams {
    PerTensor(QuantParams),
    PerChannel {
        axis: usize,
        channels: Vec<QuantParams>,
    },
}

impl TensorQuantParams {
    /// Builds parameters from per-channel ranges (one range for per-tensor schemes).
    pub fn from_ranges(ranges: &[(f32, f32)], scheme: &QuantScheme) -> Result<Self, QuantError> {
        match scheme.granularity {
            Granularity::PerTensor => {
                let (min, max) = ranges
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(a, b)| {
                        (lo.min(a), hi.max(b))
                    });
                if ranges.is_empty() {
                    return Err(QuantError::Empty);
                }
                Ok(Self::PerTensor(QuantParams::from_range(min, max, scheme)?))
            }
            Granularity::PerChannel { axis } => {
                let channels = ranges
                    .iter()
                    .map(|&(min, max)| QuantParams::from_range(min, max, scheme))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Self::PerChannel { axis, channels })
            }
        }
    }

    /// The parameters of channel `c` (the only ones, per tensor).
    pub fn channel(&self, c: usize) -> &QuantParams {
        match self {
            Self::PerTensor(p) => p,
            Self::PerChannel { channels, .. } => &channels[c],
        }
    }

    pub fn as_slice(&self) -> &[QuantParams] {
        match self {
            Self::PerTensor(p) => std::slice::from_ref(p),
            Self::PerChannel { channels, .. } => channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::Signedness;

    fn asym_u8() -> QuantScheme {
        QuantScheme::activations_uint8()
    }

    #[test]
    fn asymmetric_u8_known_answer() {
        let p = QuantParams::from_range(-1.0, 3.0, &asym_u8()).unwrap();
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-9);
        assert_eq!(p.zero_point, 64);
        assert_eq!(p.quantize(0.0), 64);
        assert_eq!(p.dequantize(64), 0.0);
    }

    #[test]
    fn symmetric_s8_known_answer() {
        let s = QuantScheme::weights_int8(Granularity::PerTensor);
        let p = QuantParams::from_range(-0.5, 2.54, &s).unwrap();
        assert_eq!(p.zero_point, 0);
        assert!((p.scale - 0.02).abs() < 1e-7);
        assert_eq!(p.quantize(2.54), 127);
        assert_eq!(p.quantize(-2.54), -127);
        assert_eq!(p.quantize(-100.0), -127);
    }

    #[test]
    fn symmetric_unsigned_centres_zero() {
        let s = QuantScheme::new(
            8,
            Signedness::Unsigned,
            Mapping::Symmetric,
            false,
            Granularity::PerTensor,
        )
        .unwrap();
        let p = QuantParams::from_range(-1.0, 1.0, &s).unwrap();
        assert_eq!(p.zero_point, 128);
        assert_eq!(p.quantize(1.0), 255);
        assert_eq!(p.quantize(-1.0), 1);
    }

    #[test]
    fn degenerate_ranges_are_valid() {
        for (lo, hi) in [
            (0.0, 0.0),
            (5.0, 5.0),
            (-3.0, -3.0),
            (1e-30, 2e-30),
            (0.0, f32::MAX),
        ] {
            for s in [asym_u8(), QuantScheme::weights_int8(Granularity::PerTensor)] {
                let p = QuantParams::from_range(lo, hi, &s).unwrap();
                assert!(
                    p.scale.is_finite() && p.scale >= MIN_SCALE,
                    "{lo} {hi} {p:?}"
                );
                assert_eq!(p.fake_quantize(0.0), 0.0);
            }
        }
    }

    #[test]
    fn bad_ranges_are_errors() {
        let s = asym_u8();
        assert!(matches!(
            QuantParams::from_range(f32::NAN, 1.0, &s),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QuantParams::from_range(0.0, f32::INFINITY, &s),
            Err(QuantError::NonFiniteRange { .. })
        ));
        assert!(matches!(
            QuantParams::from_range(2.0, 1.0, &s),
            Err(QuantError::InvertedRange { .. })
        ));
    }

    #[test]
    fn checked_constructor_rejects_bad_params() {
        assert!(QuantParams::new(0.0, 0, 0, 255).is_err());
        assert!(QuantParams::new(f32::NAN, 0, 0, 255).is_err());
        assert!(QuantParams::new(1.0, 300, 0, 255).is_err());
        assert!(QuantParams::new(1.0, 3, 0, 255).is_ok());
    }

    #[test]
    fn quantize_saturates_and_handles_non_finite() {
        let p = QuantParams::from_range(-1.0, 1.0, &asym_u8()).unwrap();
        assert_eq!(p.quantize(f32::INFINITY), 255);
        assert_eq!(p.quantize(f32::NEG_INFINITY), 0);
        assert_eq!(p.quantize(f32::NAN), p.zero_point);
        assert_eq!(p.quantize(f32::MAX), 255);
    }

    #[test]
    fn exact_quantization_serves_int32_grids_beyond_the_rounding_limit() {
        let bound = i32::MAX - 65_024;
        let p = QuantParams::new(1e-6, 0, -bound, bound).unwrap();
        // 10.0 / 1e-6 is 1e7 codes: `quantize` saturates at 2^22, `quantize_exact` not.
        assert_eq!(p.quantize(10.0), 4_194_304);
        assert_eq!(
            p.quantize_exact(10.0),
            Some((10.0f32 / 1e-6).round_ties_even() as i32)
        );
        assert_eq!(p.quantize_exact(-10.0), p.quantize_exact(10.0).map(|q| -q));
        let small = QuantParams::from_range(-1.0, 1.0, &asym_u8()).unwrap();
        for x in [-0.9f32, -0.3, 0.0, 0.004, 0.7, 0.9] {
            assert_eq!(small.quantize_exact(x), Some(small.quantize(x)), "{x}");
        }
    }

    #[test]
    fn exact_quantization_refuses_what_the_grid_cannot_hold() {
        let bound = i32::MAX - 65_024;
        let p = QuantParams::new(1e-6, 0, -bound, bound).unwrap();
        let edge = bound as f32 * 1e-6;
        assert!(p.quantize_exact(edge * 0.999).is_some());
        for x in [1e30, -1e30, 3e38, f32::MAX, edge * 1.001, -edge * 1.001] {
            assert_eq!(p.quantize_exact(x), None, "{x}");
        }
        for x in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(p.quantize_exact(x), None, "{x}");
        }
        let small = QuantParams::from_range(-1.0, 1.0, &asym_u8()).unwrap();
        assert_eq!(small.quantize_exact(1.5), None);
        assert_eq!(small.quantize_exact(-2.0), None);
    }

    proptest::proptest! {
        #[test]
        fn fast_rounding_matches_std(v in proptest::num::f32::ANY) {
            let want = v.clamp(-4_194_304.0, 4_194_304.0).round_ties_even();
            let got = round_ties_even(v);
            proptest::prop_assert!(got == want || (got.is_nan() && want.is_nan()), "{v}: {got} vs {want}");
        }

        #[test]
        fn fast_rounding_matches_std_on_ties(i in -4_194_304i32..4_194_304) {
            let v = i as f32 + 0.5;
            proptest::prop_assert_eq!(round_ties_even(v), v.round_ties_even());
        }
    }

    #[test]
    fn per_tensor_from_ranges_takes_the_union() {
        let s = asym_u8();
        let t = TensorQuantParams::from_ranges(&[(-1.0, 0.5), (0.0, 3.0)], &s).unwrap();
        assert_eq!(
            t,
            TensorQuantParams::PerTensor(QuantParams::from_range(-1.0, 3.0, &s).unwrap())
        );
        assert_eq!(
            TensorQuantParams::from_ranges(&[], &s),
            Err(QuantError::Empty)
        );
    }
}
