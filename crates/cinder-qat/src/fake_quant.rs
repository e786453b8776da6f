//! Fake quantization of burn tensors with a straight-through estimator (STE).
//!
//! Forward: `dq = (clamp(round(x / s) + zp, qmin, qmax) - zp) * s`, with the same
//! operations and rounding (half to even) as `cinder_tensor::QuantParams::fake_quantize`,
//! so the simulation sees the values the int8 runtime sees.
//!
//! Backward: rounding is treated as the identity (`v + (round(v) - v).detach()`) and the
//! clamp keeps its own gradient, so `d dq / dx` is 1 where the code lies inside
//! `[qmin, qmax]` and 0 where it was clipped; `d dq / ds` is LSQ's
//! `round(x/s) - x/s` inside and `qmin - zp` or `qmax - zp` outside (Esser et al. 2019).
//!
//! burn autodiff has no QAT of its own: its quantize op detaches.

use burn::tensor::{Device, Tensor, TensorData};
use cinder_tensor::TensorQuantParams;

/// The integer grid of a fake quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeQuantGrid {
    pub qmin: i32,
    pub qmax: i32,
}

/// Fake-quantizes `x` with broadcastable `scale` and `zero_point` tensors (shape `[1; D]`
/// per tensor, or the channel count on the channel axis and 1 elsewhere):
/// [`quantize_centred`] times the scale.
pub fn fake_quantize<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Tensor<D>,
    grid: FakeQuantGrid,
) -> Tensor<D> {
    quantize_centred(x, scale.clone(), zero_point, grid) * scale
}

/// The centred codes `clamp(round(x / s) + zp, qmin, qmax) - zp` (integer-valued f32)
/// with the straight-through gradient: a layer that multiplies centred codes sums
/// integers, exactly in f32 below 2^24, as the int8 runtime does.
pub fn quantize_centred<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Tensor<D>,
    grid: FakeQuantGrid,
) -> Tensor<D> {
    let rounded = round_ste(x / scale);
    (rounded + zero_point.clone()).clamp(grid.qmin, grid.qmax) - zero_point
}

/// `v` rounded half to even, with the identity's gradient (`v + (round(v) - v)` with the
/// difference detached: exactly `round(v)` in the forward pass).
pub fn round_ste<const D: usize>(v: Tensor<D>) -> Tensor<D> {
    v.clone() + (v.clone().round() - v).detach()
}

/// Multiplies the gradient flowing into `t` by `g` while leaving its value bit-exact
/// (`t + (g*t - g*t)` in the forward pass, unlike `(t - g*t).detach() + g*t`).
pub fn scaled_gradient<const D: usize>(t: Tensor<D>, g: f64) -> Tensor<D> {
    let scaled = t.clone().mul_scalar(g);
    t.detach() + (scaled.clone() - scaled.detach())
}

/// LSQ's gradient scale `1 / sqrt(N * Q_P)` for a step size shared by `elements` values
/// on a grid whose largest positive code offset is `qmax - zero_point`.
pub fn lsq_gradient_scale(elements: usize, positive_levels: i32) -> f64 {
    1.0 / ((elements.max(1) as f64) * f64::from(positive_levels.max(1))).sqrt()
}

/// Scale and zero-point tensors shaped to broadcast over a rank-`D` tensor, and the
/// grid, from cinder-tensor parameters.
pub fn params_tensors<const D: usize>(
    params: &TensorQuantParams,
    device: &Device,
) -> (Tensor<D>, Tensor<D>, FakeQuantGrid) {
    let all = params.as_slice();
    let mut shape = [1usize; D];
    if let TensorQuantParams::PerChannel { axis, channels } = params {
        shape[*axis] = channels.len();
    }
    let scales: Vec<f32> = all.iter().map(|p| p.scale).collect();
    let zero_points: Vec<f32> = all.iter().map(|p| p.zero_point as f32).collect();
    let grid = FakeQuantGrid {
        qmin: all[0].qmin,
        qmax: all[0].qmax,
    };
    (
        Tensor::from_data(TensorData::new(scales, shape), device),
        Tensor::from_data(TensorData::new(zero_points, shape), device),
        grid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::{Granularity, QuantParams, QuantScheme};
    use proptest::prelude::*;

    fn device() -> Device {
        Device::flex().autodiff()
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().as_slice::<f32>().unwrap().to_vec()
    }

    fn scalar(v: f32, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(vec![v], [1]), device)
    }

    #[test]
    fn ste_gradient_is_the_clipping_mask() {
        let device = device();
        let x = Tensor::<1>::from_data(
            TensorData::new(vec![-3.0f32, -0.5, 0.2, 0.7, 5.0, 0.74, -0.8], [7]),
            &device,
        )
        .require_grad();
        let grid = FakeQuantGrid { qmin: -8, qmax: 7 };
        let y = fake_quantize(x.clone(), scalar(0.1, &device), scalar(0.0, &device), grid);
        let grads = y.sum().backward();
        // Codes: -30 (clipped), -5, 2, 7 (edge, kept), 50 (clipped), 7 (round 7.4), -8 (edge).
        assert_eq!(
            values(x.grad(&grads).unwrap()),
            vec![0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
        );
    }

    #[test]
    fn forward_equals_cinder_tensor_bit_for_bit() {
        let device = Device::flex();
        let scheme = QuantScheme::activations_uint8();
        let p = QuantParams::from_range(-1.3, 2.9, &scheme).unwrap();
        let xs: Vec<f32> = (0..2001).map(|i| -2.0 + i as f32 * 0.0027).collect();
        let (s, z, grid) = params_tensors::<1>(&TensorQuantParams::PerTensor(p), &device);
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device);
        let got = values(fake_quantize(x, s, z, grid));
        let want: Vec<f32> = xs.iter().map(|&x| p.fake_quantize(x)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn per_channel_params_broadcast_along_their_axis() {
        let device = Device::flex();
        let scheme = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        let params =
            TensorQuantParams::from_ranges(&[(-1.0, 1.0), (-0.01, 0.02)], &scheme).unwrap();
        let data = vec![0.5f32, -0.3, 0.013, -0.004];
        let x = Tensor::<2>::from_data(TensorData::new(data.clone(), [2, 2]), &device);
        let (s, z, grid) = params_tensors::<2>(&params, &device);
        let got = fake_quantize(x, s, z, grid)
            .into_data()
            .as_slice::<f32>()
            .unwrap()
            .to_vec();
        let want: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, &v)| params.channel(i / 2).fake_quantize(v))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn scaled_gradient_keeps_the_value_and_scales_the_gradient() {
        let device = device();
        let s = scalar(0.3, &device).require_grad();
        let y = scaled_gradient(s.clone(), 0.25).mul_scalar(2.0);
        assert_eq!(values(y.clone()), vec![0.6]);
        let grads = y.sum().backward();
        assert_eq!(values(s.grad(&grads).unwrap()), vec![0.5]);
    }

    /// The STE surrogate of `dq(s)` with every rounding offset frozen at `s0`: what the
    /// LSQ gradient differentiates.
    fn surrogate(xs: &[f64], s: f64, s0: f64, grid: FakeQuantGrid) -> f64 {
        xs.iter()
            .map(|&x| {
                let offset = (x / s0).round_ties_even() - x / s0;
                let q = (x / s + offset).clamp(f64::from(grid.qmin), f64::from(grid.qmax));
                q * s
            })
            .sum()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn forward_equals_cinder_tensor_for_any_grid(
            bits in 2u8..=8,
            signed in any::<bool>(),
            symmetric in any::<bool>(),
            (lo, hi) in (-4.0f32..0.5, -0.5f32..4.0),
            xs in prop::collection::vec(-6.0f32..6.0, 1..200),
        ) {
            let device = Device::flex();
            let scheme = QuantScheme::new(
                bits,
                if signed { cinder_tensor::Signedness::Signed } else { cinder_tensor::Signedness::Unsigned },
                if symmetric { cinder_tensor::Mapping::Symmetric } else { cinder_tensor::Mapping::Asymmetric },
                false,
                Granularity::PerTensor,
            ).unwrap();
            let p = QuantParams::from_range(lo.min(hi), hi.max(lo), &scheme).unwrap();
            let (s, z, grid) = params_tensors::<1>(&TensorQuantParams::PerTensor(p), &device);
            let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device);
            let got: Vec<u32> = values(fake_quantize(x, s, z, grid)).iter().map(|v| v.to_bits()).collect();
            let want: Vec<u32> = xs.iter().map(|&x| p.fake_quantize(x).to_bits()).collect();
            prop_assert_eq!(got, want);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn lsq_scale_gradient_matches_finite_differences(
            xs in prop::collection::vec(-2.0f64..2.0, 1..40),
            s0 in 0.05f64..0.5,
        ) {
            let device = device();
            let grid = FakeQuantGrid { qmin: -8, qmax: 7 };
            // The surrogate has a kink where a value rounds onto an edge code; LSQ takes
            // the inside branch there, finite differences average both, so skip them.
            let s0 = f64::from(s0 as f32);
            let on_edge = |x: f64| {
                let code = (x / s0).round_ties_even();
                code == f64::from(grid.qmin) || code == f64::from(grid.qmax)
            };
            let xs: Vec<f64> = xs.into_iter().filter(|&x| !on_edge(x)).collect();
            prop_assume!(!xs.is_empty());
            let x = Tensor::<1>::from_data(
                TensorData::new(xs.iter().map(|&v| v as f32).collect::<Vec<_>>(), [xs.len()]),
                &device,
            );
            let s = scalar(s0 as f32, &device).require_grad();
            let y = fake_quantize(x, s.clone(), scalar(0.0, &device), grid);
            let grads = y.sum().backward();
            let got = f64::from(values(s.grad(&grads).unwrap())[0]);
            let h = 1e-6 * s0;
            let numeric = (surrogate(&xs, s0 + h, s0, grid) - surrogate(&xs, s0 - h, s0, grid)) / (2.0 * h);
            prop_assert!((got - numeric).abs() <= 1e-3 * (1.0 + numeric.abs()), "burn {got} vs numeric {numeric}");
        }
    }
}
