//! Whole-tensor quantize, dequantize and fake-quantize, per tensor or per channel.

use crate::error::QuantError;
use crate::params::{QuantParams, TensorQuantParams};
use crate::tensor::{AxisLayout, Element, Tensor, TensorBuf};

/// An integer type that stores quantized codes.
pub trait Code: Element {
    const MIN: i32;
    const MAX: i32;
    /// Narrowing from an already range-checked code.
    fn from_code(q: i32) -> Self;
    fn to_code(self) -> i32;
}

macro_rules! impl_code {
    ($t:ty) => {
        impl Code for $t {
            const MIN: i32 = <$t>::MIN as i32;
            const MAX: i32 = <$t>::MAX as i32;
            #[inline]
            fn from_code(q: i32) -> Self {
                q as $t
            }
            #[inline]
            fn to_code(self) -> i32 {
                self as i32
            }
        }
    };
}
impl_code!(i8);
impl_code!(u8);
impl_code!(i32);

/// Applies `f(params_of_element, element)` over a tensor, checking that per-channel
/// parameters match the tensor's channel count.
fn map_with_params<T: Element, U>(
    shape: &[usize],
    data: &[T],
    params: &TensorQuantParams,
    f: impl Fn(&QuantParams, T) -> U,
) -> Result<Vec<U>, QuantError> {
    match params {
        TensorQuantParams::PerTensor(p) => Ok(data.iter().map(|&x| f(p, x)).collect()),
        TensorQuantParams::PerChannel { axis, channels } => {
            let layout = AxisLayout::new(shape, *axis)?;
            if layout.channels != channels.len() {
                return Err(QuantError::ChannelCountMismatch {
                    axis: *axis,
                    channels: layout.channels,
                    params: channels.len(),
                });
            }
            let mut out = Vec::with_capacity(data.len());
            layout.for_each_run(data, |c, run| {
                let p = &channels[c];
                out.extend(run.iter().map(|&x| f(p, x)));
            });
            Ok(out)
        }
    }
}

fn check_storage<Q: Code>(params: &TensorQuantParams) -> Result<(), QuantError> {
    for p in params.as_slice() {
        if p.qmin < Q::MIN || p.qmax > Q::MAX {
            return Err(QuantError::StorageTooNarrow {
                qmin: p.qmin,
                qmax: p.qmax,
                dtype: Q::DTYPE,
            });
        }
    }
    Ok(())
}

/// The first non-finite value, as an error.
fn check_finite(data: &[f32]) -> Result<(), QuantError> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(QuantError::NonFiniteValue {
            index,
            value: data[index],
        }),
        None => Ok(()),
    }
}

/// Quantizes a float tensor into codes of type `Q`. Non-finite values are an error.
pub fn quantize<Q: Code>(
    t: &impl Tensor<f32>,
    params: &TensorQuantParams,
) -> Result<TensorBuf<Q>, QuantError> {
    check_storage::<Q>(params)?;
    check_finite(t.data())?;
    let data = map_with_params(t.shape(), t.data(), params, |p, x| {
        Q::from_code(p.quantize(x))
    })?;
    Ok(TensorBuf::new(t.shape().to_vec(), data)?)
}

/// Maps codes back to real values.
pub fn dequantize<Q: Code>(
    t: &impl Tensor<Q>,
    params: &TensorQuantParams,
) -> Result<TensorBuf<f32>, QuantError> {
    let data = map_with_params(t.shape(), t.data(), params, |p, q| {
        p.dequantize(q.to_code())
    })?;
    Ok(TensorBuf::new(t.shape().to_vec(), data)?)
}

/// Quantize then dequantize in one pass: what the integer path sees, in real units.
pub fn fake_quantize(
    t: &impl Tensor<f32>,
    params: &TensorQuantParams,
) -> Result<TensorBuf<f32>, QuantError> {
    check_finite(t.data())?;
    let data = map_with_params(t.shape(), t.data(), params, |p, x| p.fake_quantize(x))?;
    Ok(TensorBuf::new(t.shape().to_vec(), data)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheme::{Granularity, QuantScheme};
    use proptest::prelude::*;

    fn per_tensor(min: f32, max: f32, scheme: &QuantScheme) -> TensorQuantParams {
        TensorQuantParams::PerTensor(QuantParams::from_range(min, max, scheme).unwrap())
    }

    #[test]
    fn round_trip_known_values() {
        let s = QuantScheme::activations_uint8();
        let p = per_tensor(0.0, 2.55, &s);
        let t = TensorBuf::new(vec![4], vec![0.0, 0.01, 1.0, 2.55]).unwrap();
        let q: TensorBuf<u8> = quantize(&t, &p).unwrap();
        assert_eq!(q.data(), &[0, 1, 100, 255]);
        let d = dequantize(&q, &p).unwrap();
        for (a, b) in d.data().iter().zip(t.data()) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn non_finite_values_are_errors() {
        let p = per_tensor(0.0, 1.0, &QuantScheme::activations_uint8());
        let t = TensorBuf::new(vec![3], vec![0.0, f32::NAN, 1.0]).unwrap();
        assert!(matches!(
            quantize::<u8>(&t, &p),
            Err(QuantError::NonFiniteValue { index: 1, .. })
        ));
        assert!(matches!(
            fake_quantize(&t, &p),
            Err(QuantError::NonFiniteValue { index: 1, .. })
        ));
    }

    #[test]
    fn storage_must_hold_the_grid() {
        let p = per_tensor(0.0, 1.0, &QuantScheme::activations_uint8());
        let t = TensorBuf::new(vec![1], vec![0.5]).unwrap();
        assert!(matches!(
            quantize::<i8>(&t, &p),
            Err(QuantError::StorageTooNarrow { .. })
        ));
    }

    #[test]
    fn channel_count_must_match() {
        let s = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        let p = TensorQuantParams::from_ranges(&[(-1.0, 1.0); 3], &s).unwrap();
        let t = TensorBuf::new(vec![2, 2], vec![0.0; 4]).unwrap();
        assert!(matches!(
            quantize::<i8>(&t, &p),
            Err(QuantError::ChannelCountMismatch {
                channels: 2,
                params: 3,
                ..
            })
        ));
    }

    fn any_scheme() -> impl Strategy<Value = QuantScheme> {
        (2u8..=8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
            |(bits, signed, symmetric, narrow)| {
                use crate::scheme::{Mapping, Signedness};
                QuantScheme::new(
                    bits,
                    if signed {
                        Signedness::Signed
                    } else {
                        Signedness::Unsigned
                    },
                    if symmetric {
                        Mapping::Symmetric
                    } else {
                        Mapping::Asymmetric
                    },
                    narrow,
                    Granularity::PerTensor,
                )
                .unwrap()
            },
        )
    }

    proptest! {
        #[test]
        fn error_is_at_most_half_a_step_inside_the_range(
            scheme in any_scheme(),
            a in -1e4f32..1e4,
            b in -1e4f32..1e4,
            fractions in prop::collection::vec(0f32..=1.0, 1..64),
        ) {
            let (min, max) = (a.min(b), a.max(b));
            let p = QuantParams::from_range(min, max, &scheme).unwrap();
            let (lo, hi) = p.real_range();
            for f in fractions {
                let x = lo + (hi - lo) * f;
                let x = x.clamp(lo, hi);
                let err = (p.fake_quantize(x) - x).abs();
                // Half a step, plus f32 rounding of x / scale and of the product.
                let tolerance = p.scale * 0.5 + (x.abs() + hi.abs() + lo.abs()) * 4.0 * f32::EPSILON;
                prop_assert!(err <= tolerance, "x={x} err={err} scale={} params={p:?}", p.scale);
            }
        }

        #[test]
        fn zero_round_trips_exactly(scheme in any_scheme(), a in -1e6f32..1e6, b in -1e6f32..1e6) {
            let p = QuantParams::from_range(a.min(b), a.max(b), &scheme).unwrap();
            prop_assert_eq!(p.fake_quantize(0.0), 0.0);
            prop_assert_eq!(p.quantize(0.0), p.zero_point);
        }

        #[test]
        fn params_are_valid_for_any_finite_range(
            scheme in any_scheme(),
            a in prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
            b in prop::num::f32::NORMAL | prop::num::f32::SUBNORMAL | prop::num::f32::ZERO,
        ) {
            let p = QuantParams::from_range(a.min(b), a.max(b), &scheme).unwrap();
            prop_assert!(p.scale.is_finite() && p.scale > 0.0);
            prop_assert!(p.qmin <= p.zero_point && p.zero_point <= p.qmax);
            prop_assert_eq!(p.qmin, scheme.qmin());
            prop_assert_eq!(p.qmax, scheme.qmax());
        }

        #[test]
        fn per_channel_equals_per_tensor_on_each_channel(
            dims in (1usize..4, 1usize..5, 1usize..6),
            axis in 0usize..3,
            seed_values in prop::collection::vec(-10f32..10.0, 120),
        ) {
            let shape = vec![dims.0, dims.1, dims.2];
            let len = dims.0 * dims.1 * dims.2;
            let t = TensorBuf::new(shape.clone(), seed_values[..len].to_vec()).unwrap();
            let layout = AxisLayout::new(&shape, axis).unwrap();
            let mut ranges = vec![(f32::INFINITY, f32::NEG_INFINITY); layout.channels];
            for (i, &x) in t.data().iter().enumerate() {
                let r = &mut ranges[layout.channel_of(i)];
                *r = (r.0.min(x), r.1.max(x));
            }
            let scheme = QuantScheme::weights_int8(Granularity::PerChannel { axis });
            let params = TensorQuantParams::from_ranges(&ranges, &scheme).unwrap();
            let q: TensorBuf<i8> = quantize(&t, &params).unwrap();
            let fq = fake_quantize(&t, &params).unwrap();
            for (i, &x) in t.data().iter().enumerate() {
                let c = layout.channel_of(i);
                let alone = QuantParams::from_range(ranges[c].0, ranges[c].1, &scheme.with_granularity(Granularity::PerTensor)).unwrap();
                prop_assert_eq!(i32::from(q.data()[i]), alone.quantize(x));
                prop_assert_eq!(fq.data()[i], alone.fake_quantize(x));
            }
        }
    }
}
