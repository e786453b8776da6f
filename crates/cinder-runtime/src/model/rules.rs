//! The arithmetic conventions of the quantized model, shared by conversion, validation,
//! the reference interpreter and the plan: grids, the accumulator bound, requantization
//! multipliers and clamps, and the per-batch parameters of dynamic layers.

use std::ops::RangeInclusive;

use cinder_tensor::{
    Granularity, Mapping, QuantError, QuantParams, QuantScheme, RequantMultiplier, Signedness,
};

use super::types::Activation;
use crate::error::RunError;

/// The int8 activation grid: every activation code fits an `i8`.
pub const ACTIVATION_GRID: (i32, i32) = (-128, 127);

/// Weight bit widths the runtime executes. Every width runs as int8 codes; the model
/// file packs narrow ones ([`codes_per_byte`]).
pub const WEIGHT_BITS: RangeInclusive<u8> = 2..=8;

/// How many `bits`-bit weight codes the model file stores per byte: one for 5–8 bits,
/// two (nibbles) for 3–4 bits, four for 2 bits.
pub fn codes_per_byte(bits: u8) -> usize {
    match bits {
        ..=2 => 4,
        3..=4 => 2,
        _ => 1,
    }
}

/// The largest `|a - za| * |w - zw|` summand bound the accumulator analysis uses: the
/// kernel's raw sum and the three zero-point correction terms are each at most
/// `128 * 127` per tap, so `4 * 128 * 127` per tap bounds every partial sum.
const ACC_PER_TAP: i64 = 4 * 128 * 127;

/// The grid of `bits`-bit weights: signed and narrow, `[-(2^(b-1) - 1), 2^(b-1) - 1]`, so
/// that int8 codes stay in `[-127, 127]` as the exact kernels require.
pub fn weight_grid(bits: u8) -> (i32, i32) {
    let max = (1i32 << (bits - 1)) - 1;
    (-max, max)
}

/// The weight scheme of a layer config.
pub fn weight_scheme(
    bits: u8,
    mapping: Mapping,
    per_channel: bool,
) -> Result<QuantScheme, QuantError> {
    let granularity = if per_channel {
        Granularity::PerChannel { axis: 0 }
    } else {
        Granularity::PerTensor
    };
    QuantScheme::new(bits, Signedness::Signed, mapping, true, granularity)
}

/// The activation scheme of dynamic layers: signed, asymmetric, the full int8 grid.
fn dynamic_scheme() -> QuantScheme {
    QuantScheme::new(
        8,
        Signedness::Signed,
        Mapping::Asymmetric,
        false,
        Granularity::PerTensor,
    )
    .expect("8 bits are supported")
}

/// A dynamic layer's input parameters for the batch `data`, from its range: `known` (as
/// its producer tracked it) or else scanned.
pub(crate) fn dynamic_params(
    layer: &str,
    data: &[f32],
    known: Option<(f32, f32)>,
) -> Result<QuantParams, RunError> {
    let range = match known {
        Some(r) => r,
        None => scan_range(layer, data)?,
    };
    QuantParams::from_range(range.0, range.1, &dynamic_scheme()).map_err(|e| {
        RunError::DynamicRange {
            layer: layer.to_owned(),
            message: e.to_string(),
        }
    })
}

/// The range of a dynamic layer's whole input batch, by the observers' min/max scan.
fn scan_range(layer: &str, data: &[f32]) -> Result<(f32, f32), RunError> {
    cinder_observers::min_max(data).map_err(|e| RunError::DynamicRange {
        layer: layer.to_owned(),
        message: e.to_string(),
    })
}

/// The real value of one accumulator unit, `s_in * s_w` in f32: the scale of a static
/// layer's int32 bias and of a dynamic layer's accumulators.
pub(crate) fn acc_scale(s_in: f32, s_w: f32) -> f32 {
    s_in * s_w
}

/// A dynamic layer's output: `acc * (s_in * s_w) + bias`, with a fused activation.
#[inline]
pub(crate) fn dynamic_output(acc: i32, scale: f32, bias: f32, activation: Activation) -> f32 {
    activation.apply(acc as f32 * scale + bias)
}

/// The requantization multiplier `s_in * s_w / s_out`, computed in f64.
pub(crate) fn requant_multiplier(
    s_in: f32,
    s_w: f32,
    s_out: f32,
) -> Result<RequantMultiplier, QuantError> {
    RequantMultiplier::from_real(f64::from(s_in) * f64::from(s_w) / f64::from(s_out))
}

/// The largest bias magnitude with which no partial sum of a layer of `depth` taps can
/// overflow int32, or `None` when the layer is too deep for int32 accumulation: the
/// clamp of a static layer's int32 bias codes.
pub fn bias_bound(depth: usize) -> Option<i32> {
    let worst = i64::try_from(depth).ok()?.checked_mul(ACC_PER_TAP)?;
    i32::try_from(i64::from(i32::MAX) - worst)
        .ok()
        .filter(|b| *b >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_and_bounds() {
        assert_eq!(weight_grid(8), (-127, 127));
        assert_eq!(weight_grid(4), (-7, 7));
        assert_eq!(weight_grid(2), (-1, 1));
        let per_byte: Vec<usize> = WEIGHT_BITS.map(codes_per_byte).collect();
        assert_eq!(per_byte, [4, 2, 2, 1, 1, 1, 1]);
        assert_eq!(bias_bound(1), Some(i32::MAX - 65024));
        assert!(bias_bound(40_000).is_none());
        let p = QuantParams::new(0.1, -100, -128, 127).unwrap();
        assert_eq!(Activation::Relu.bounds(&p), (-100, 127));
        assert_eq!(Activation::None.bounds(&p), (-128, 127));
        let six = Activation::Clip { min: 0.0, max: 6.0 };
        assert_eq!(six.bounds(&p), (-100, -40));
    }

    #[test]
    fn dynamic_params_cover_the_range() {
        let p = dynamic_params("fc", &[-1.0, 3.0, 0.5], None).unwrap();
        assert_eq!((p.qmin, p.qmax), ACTIVATION_GRID);
        assert_eq!(p.quantize(0.0), p.zero_point);
        assert_eq!(p.quantize(3.0), 127);
        assert_eq!(p.quantize(-1.0), -128);
    }
}
