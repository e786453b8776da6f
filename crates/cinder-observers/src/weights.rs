//! Weight quantization: min/max ranges per tensor or per output channel, then the codes.

use cinder_tensor::{
    Code, Granularity, QuantScheme, Tensor, TensorBuf, TensorQuantParams, TensorRef, quantize,
};

use crate::error::ObserverError;
use crate::minmax::{MinMaxObserver, PerChannelMinMaxObserver};
use crate::observer::Observer;

/// A quantized weight tensor: its parameters and its integer codes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight<Q> {
    pub params: TensorQuantParams,
    pub codes: TensorBuf<Q>,
}

/// Parameters of a weight tensor under `scheme`: the min/max range of the whole tensor,
/// or of each slice along the scheme's axis (axis 0 is the output channel of both
/// convolution `[out, in, k, k]` and linear `[out, in]` weights).
pub fn weight_params(
    w: &dyn Tensor<f32>,
    scheme: &QuantScheme,
) -> Result<TensorQuantParams, ObserverError> {
    match scheme.granularity {
        Granularity::PerTensor => {
            let mut o = MinMaxObserver::new();
            o.observe(w)?;
            o.params(scheme)
        }
        Granularity::PerChannel { axis } => {
            let mut o = PerChannelMinMaxObserver::new(axis);
            o.observe(w)?;
            o.params(scheme)
        }
    }
}

/// Quantizes a float weight tensor into codes of type `Q` (`i8` for signed schemes,
/// `u8` for unsigned ones; a grid wider than `Q` is an error).
pub fn quantize_weight<Q: Code>(
    w: &dyn Tensor<f32>,
    scheme: &QuantScheme,
) -> Result<QuantizedWeight<Q>, ObserverError> {
    let params = weight_params(w, scheme)?;
    let codes = quantize(&TensorRef::new(w.shape(), w.data())?, &params)?;
    Ok(QuantizedWeight { params, codes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::{QuantError, dequantize};
    use proptest::prelude::*;

    fn scheme(bits: u8, signed: bool, symmetric: bool, granularity: Granularity) -> QuantScheme {
        crate::testutil::scheme_of(bits, signed, symmetric, signed, granularity)
    }

    #[test]
    fn per_channel_int8_known_answer() {
        let w = TensorBuf::new(vec![2, 3], vec![-1.27, 0.0, 0.64, 0.1, 0.254, -0.05]).unwrap();
        let s = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        let q = quantize_weight::<i8>(&w, &s).unwrap();
        assert_eq!(q.codes.data(), &[-127, 0, 64, 50, 127, -25]);
        assert_eq!(q.params.as_slice().len(), 2);
        let storage = quantize_weight::<u8>(&w, &s);
        assert!(matches!(
            storage,
            Err(ObserverError::Quant(QuantError::StorageTooNarrow { .. }))
        ));
    }

    proptest! {
        #[test]
        fn round_trip_error_is_at_most_half_a_step(
            bits in 2u8..=8,
            signed in any::<bool>(),
            symmetric in any::<bool>(),
            per_channel in any::<bool>(),
            values in prop::collection::vec(-3f32..3.0, 12),
        ) {
            let granularity = if per_channel { Granularity::PerChannel { axis: 0 } } else { Granularity::PerTensor };
            let s = scheme(bits, signed, symmetric, granularity);
            let w = TensorBuf::new(vec![3, 4], values).unwrap();
            let (params, back) = if signed {
                let q = quantize_weight::<i8>(&w, &s).unwrap();
                (q.params.clone(), dequantize(&q.codes, &q.params).unwrap())
            } else {
                let q = quantize_weight::<u8>(&w, &s).unwrap();
                (q.params.clone(), dequantize(&q.codes, &q.params).unwrap())
            };
            for (i, (&x, &y)) in w.data().iter().zip(back.data()).enumerate() {
                let p = params.channel(if per_channel { i / 4 } else { 0 });
                prop_assert!((x - y).abs() <= p.scale * 0.5 + 2e-5, "{x} {y} {p:?}");
            }
        }
    }
}
