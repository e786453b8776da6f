//! The flex training operations against burn's own: the im2col + GEMM convolution against
//! burn's `conv2d` (outputs and the gradients of input, weight and bias over strides,
//! paddings and groups, depthwise included), the training BatchNorm against burn's
//! (output, gradients, running statistics) and with its ReLU fused against the two in turn, the linear layer against burn's (output and
//! gradients, across the GEMM's row and column blocks) and the max pooling against burn's
//! (bit for bit, ties and NaNs included), plus the fallback to burn's operations off flex.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::flex::batch_norm::{batch_norm, batch_norm_relu};
use cinder_model::flex::conv2d::conv2d;
use cinder_model::flex::linear::linear;
use cinder_model::flex::max_pool2d::max_pool2d;
use cinder_model::rng::SplitMix64;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    channels_in: usize,
    channels_out: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    groups: usize,
    bias: bool,
    seed: u64,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        (1usize..4, 1usize..4, 1usize..3, 1usize..4, any::<bool>()),
        (
            2usize..9,
            2usize..9,
            1usize..4,
            1usize..4,
            1usize..3,
            1usize..3,
        ),
        (0usize..2, 0usize..2, any::<bool>(), any::<u64>()),
    )
        .prop_map(
            |(
                (batch, groups, per_in, per_out, depthwise),
                (h, w, kh, kw, sh, sw),
                (ph, pw, bias, seed),
            )| {
                let (per_in, per_out) = if depthwise { (1, 1) } else { (per_in, per_out) };
                Case {
                    batch,
                    channels_in: groups * per_in,
                    channels_out: groups * per_out,
                    size: [h, w],
                    kernel: [kh.min(h + 2 * ph), kw.min(w + 2 * pw)],
                    stride: [sh, sw],
                    padding: [ph, pw],
                    groups,
                    bias,
                    seed,
                }
            },
        )
}

/// A tensor's values in row-major order.
fn host<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec().unwrap()
}

fn random(shape: [usize; 4], rng: &mut SplitMix64) -> TensorData {
    let values = (0..shape.iter().product())
        .map(|_| rng.symmetric(1.0))
        .collect::<Vec<f32>>();
    TensorData::new(values, shape)
}

fn layer(case: &Case, device: &Device, rng: &mut SplitMix64) -> Conv2d {
    let [kh, kw] = case.kernel;
    let weight = random(
        [case.channels_out, case.channels_in / case.groups, kh, kw],
        rng,
    );
    let bias = case.bias.then(|| {
        let values: Vec<f32> = (0..case.channels_out).map(|_| rng.symmetric(1.0)).collect();
        Param::from_data(TensorData::new(values, [case.channels_out]), device)
    });
    let [ph, pw] = case.padding;
    Conv2d {
        weight: Param::from_data(weight, device),
        bias,
        stride: case.stride,
        kernel_size: case.kernel,
        dilation: [1, 1],
        groups: case.groups,
        padding: PaddingConfig2d::Explicit(ph, pw, ph, pw),
    }
}

/// Output, input gradient, weight gradient and bias gradient of `forward` for `sum(y · g)`.
fn run(case: &Case, forward: impl Fn(&Conv2d, Tensor<4>) -> Tensor<4>) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let mut rng = SplitMix64::stream(case.seed, 0);
    let conv = layer(case, &device, &mut rng);
    let [h, w] = case.size;
    let input = Tensor::<4>::from_data(
        random([case.batch, case.channels_in, h, w], &mut rng),
        &device,
    )
    .require_grad();
    let output = forward(&conv, input.clone());
    let upstream = Tensor::<4>::from_data(random(output.dims(), &mut rng), &device);
    let grads = (output.clone() * upstream).sum().backward();
    let mut all = vec![
        host(output),
        host(input.grad(&grads).unwrap()),
        host(conv.weight.grad(&grads).unwrap()),
    ];
    if let Some(bias) = &conv.bias {
        all.push(host(bias.grad(&grads).unwrap()));
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn outputs_and_gradients_match_burns_convolution(case in cases()) {
        let ours = run(&case, conv2d);
        let burns = run(&case, |conv, x| conv.forward(x));
        prop_assert_eq!(ours.len(), burns.len());
        for (got, want) in ours.iter().zip(&burns) {
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{} vs {}", g, w);
            }
        }
    }
}

#[test]
fn a_constant_input_gets_only_the_weight_gradient() {
    let device = Device::flex().autodiff();
    let case = Case {
        batch: 2,
        channels_in: 3,
        channels_out: 4,
        size: [5, 5],
        kernel: [3, 3],
        stride: [1, 1],
        padding: [1, 1],
        groups: 1,
        bias: false,
        seed: 3,
    };
    let mut rng = SplitMix64::stream(case.seed, 0);
    let conv = layer(&case, &device, &mut rng);
    let input = Tensor::<4>::from_data(random([2, 3, 5, 5], &mut rng), &device);
    let grads = conv2d(&conv, input.clone()).sum().backward();
    assert!(input.grad(&grads).is_none());
    let ours = conv.weight.grad(&grads).unwrap();
    let burns = conv.forward(input).sum().backward();
    let want = conv.weight.grad(&burns).unwrap();
    let diff: f32 = (ours - want).abs().max().into_scalar();
    assert!(diff < 1e-4, "weight gradients differ by {diff}");
}

#[test]
fn off_flex_it_is_burns_convolution() {
    #[allow(deprecated)]
    let device = Device::ndarray();
    let case = Case {
        batch: 1,
        channels_in: 2,
        channels_out: 2,
        size: [4, 4],
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        groups: 2,
        bias: true,
        seed: 5,
    };
    let mut rng = SplitMix64::stream(case.seed, 0);
    let conv = layer(&case, &device, &mut rng);
    let input = Tensor::<4>::from_data(random([1, 2, 4, 4], &mut rng), &device);
    let ours = conv2d(&conv, input.clone()).into_data();
    ours.assert_eq(&conv.forward(input).into_data(), true);
}

/// Output, gradients of input, γ and β for `sum(y · g)`, and the running statistics after,
/// of `forward` on a BatchNorm over `shape`.
fn run_norm(
    shape: [usize; 4],
    seed: u64,
    forward: impl Fn(&BatchNorm, Tensor<4>) -> Tensor<4>,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let mut rng = SplitMix64::stream(seed, 1);
    let channels = shape[1];
    let mut bn: BatchNorm = BatchNormConfig::new(channels).init(&device);
    let affine = |rng: &mut SplitMix64, offset: f32| {
        let values: Vec<f32> = (0..channels).map(|_| offset + rng.symmetric(0.5)).collect();
        Param::from_data(TensorData::new(values, [channels]), &device)
    };
    bn.gamma = affine(&mut rng, 1.0);
    bn.beta = affine(&mut rng, 0.0);
    let input = Tensor::<4>::from_data(random(shape, &mut rng), &device)
        .mul_scalar(3.0)
        .add_scalar(0.5);
    let input = input.detach().require_grad();
    let output = forward(&bn, input.clone());
    let upstream = Tensor::<4>::from_data(random(shape, &mut rng), &device);
    let grads = (output.clone() * upstream).sum().backward();
    vec![
        host(output),
        host(input.grad(&grads).unwrap()),
        host(bn.gamma.grad(&grads).unwrap()),
        host(bn.beta.grad(&grads).unwrap()),
        host(bn.running_mean.value()),
        host(bn.running_var.value()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn batch_norm_matches_burns_in_training(
        batch in 1usize..5, channels in 1usize..5, h in 1usize..6, w in 1usize..6, seed in any::<u64>()
    ) {
        prop_assume!(batch * h * w > 1);
        let shape = [batch, channels, h, w];
        let ours = run_norm(shape, seed, batch_norm);
        let burns = run_norm(shape, seed, |bn, x| bn.forward(x));
        for (got, want) in ours.iter().zip(&burns) {
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                prop_assert!((g - w).abs() <= 2e-4 * (1.0 + w.abs()), "{} vs {}", g, w);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The ReLU fused into the normalisation equals the two operations one after the other:
    /// output, gradients and running statistics, bit for bit.
    #[test]
    fn batch_norm_with_its_relu_fused_is_the_two_in_turn(
        batch in 1usize..5, channels in 1usize..5, h in 1usize..6, w in 1usize..6, seed in any::<u64>()
    ) {
        prop_assume!(batch * h * w > 1);
        let shape = [batch, channels, h, w];
        let fused = run_norm(shape, seed, batch_norm_relu);
        let in_turn = run_norm(shape, seed, |bn, x| relu(batch_norm(bn, x)));
        let bits = |v: &[Vec<f32>]| v.iter().map(|t| t.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fused), bits(&in_turn));
    }
}

#[test]
fn batch_norm_in_inference_is_burns() {
    let device = Device::flex();
    let bn: BatchNorm = BatchNormConfig::new(3).init(&device);
    let input =
        Tensor::<4>::from_data(random([2, 3, 4, 4], &mut SplitMix64::stream(9, 0)), &device);
    let ours = batch_norm(&bn, input.clone()).into_data();
    ours.assert_eq(&bn.forward(input).into_data(), true);
}

/// Output, input gradient (where the input requires one), weight and bias gradients of
/// `forward` on a `d_in → d_out` linear layer and a batch of `batch` vectors.
fn run_linear(
    [batch, d_in, d_out]: [usize; 3],
    input_grad: bool,
    seed: u64,
    forward: impl Fn(&Linear, Tensor<2>) -> Tensor<2>,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let mut rng = SplitMix64::stream(seed, 2);
    let mut values = |len: usize| (0..len).map(|_| rng.symmetric(1.0)).collect::<Vec<f32>>();
    let layer = Linear {
        weight: Param::from_data(
            TensorData::new(values(d_in * d_out), [d_in, d_out]),
            &device,
        ),
        bias: Some(Param::from_data(
            TensorData::new(values(d_out), [d_out]),
            &device,
        )),
    };
    let input = Tensor::<2>::from_data(
        TensorData::new(values(batch * d_in), [batch, d_in]),
        &device,
    );
    let input = if input_grad {
        input.require_grad()
    } else {
        input
    };
    let upstream = TensorData::new(values(batch * d_out), [batch, d_out]);
    let output = forward(&layer, input.clone());
    let grads = (output.clone() * Tensor::from_data(upstream, &device))
        .sum()
        .backward();
    let bias_grad = layer.bias.as_ref().and_then(|b| b.grad(&grads));
    [
        Some(host(output)),
        input.grad(&grads).map(host),
        layer.weight.grad(&grads).map(host),
        bias_grad.map(host),
    ]
    .into_iter()
    .flatten()
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn linear_matches_burns(
        batch in 1usize..6, d_in in 1usize..40, d_out in 1usize..600,
        input_grad in any::<bool>(), seed in any::<u64>()
    ) {
        let shape = [batch, d_in, d_out];
        let ours = run_linear(shape, input_grad, seed, linear);
        let burns = run_linear(shape, input_grad, seed, |l, x| l.forward(x));
        prop_assert_eq!(ours.len(), 3 + usize::from(input_grad));
        prop_assert_eq!(ours.len(), burns.len());
        for (got, want) in ours.iter().zip(&burns) {
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(want) {
                prop_assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{} vs {}", g, w);
            }
        }
    }
}

/// Output and input gradient of `forward` on a max pooling over `shape`, with values drawn
/// from a few integers (ties in most windows) and, where `nan` is set, some NaNs.
fn run_pool(
    shape: [usize; 4],
    pool: &MaxPool2d,
    nan: bool,
    seed: u64,
    forward: impl Fn(&MaxPool2d, Tensor<4>) -> Tensor<4>,
) -> Vec<Vec<f32>> {
    let device = Device::flex().autodiff();
    let mut rng = SplitMix64::stream(seed, 3);
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| {
            let v = rng.symmetric(4.0).round();
            if nan && v == 4.0 { f32::NAN } else { v }
        })
        .collect();
    let input = Tensor::<4>::from_data(TensorData::new(values, shape), &device).require_grad();
    let output = forward(pool, input.clone());
    let upstream = random(output.dims(), &mut rng);
    let grads = (output.clone() * Tensor::from_data(upstream, &device))
        .sum()
        .backward();
    vec![host(output), host(input.grad(&grads).unwrap())]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn max_pooling_is_burns_bit_for_bit(
        (batch, channels, h, w) in (1usize..3, 1usize..4, 1usize..9, 1usize..9),
        (kh, kw, sh, sw) in (1usize..4, 1usize..4, 1usize..4, 1usize..4),
        (ph, pw, nan, seed) in (0usize..2, 0usize..2, any::<bool>(), any::<u64>()),
    ) {
        let (kh, kw) = (kh.min(h), kw.min(w));
        let pool = MaxPool2d {
            stride: [sh, sw],
            kernel_size: [kh, kw],
            padding: PaddingConfig2d::Explicit(ph.min(kh / 2), pw.min(kw / 2), ph.min(kh / 2), pw.min(kw / 2)),
            dilation: [1, 1],
            ceil_mode: false,
        };
        let shape = [batch, channels, h, w];
        let ours = run_pool(shape, &pool, nan, seed, max_pool2d);
        let burns = run_pool(shape, &pool, nan, seed, |p, x| p.forward(x));
        for (got, want) in ours.iter().zip(&burns) {
            let bits = |v: &Vec<f32>| v.iter().map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() }).collect::<Vec<_>>();
            prop_assert_eq!(bits(got), bits(want));
        }
    }
}

#[test]
fn off_flex_they_are_burns_linear_and_pooling() {
    #[allow(deprecated)]
    let device = Device::ndarray();
    let mut rng = SplitMix64::stream(11, 0);
    let mut values = |len: usize| (0..len).map(|_| rng.symmetric(1.0)).collect::<Vec<f32>>();
    let layer = Linear {
        weight: Param::from_data(TensorData::new(values(12), [4, 3]), &device),
        bias: Some(Param::from_data(TensorData::new(values(3), [3]), &device)),
    };
    let x = Tensor::<2>::from_data(TensorData::new(values(8), [2, 4]), &device);
    linear(&layer, x.clone())
        .into_data()
        .assert_eq(&layer.forward(x).into_data(), true);
    let pool = MaxPool2d {
        stride: [2, 2],
        kernel_size: [2, 2],
        padding: PaddingConfig2d::Explicit(0, 0, 0, 0),
        dilation: [1, 1],
        ceil_mode: false,
    };
    let image = Tensor::<4>::from_data(TensorData::new(values(32), [1, 2, 4, 4]), &device);
    max_pool2d(&pool, image.clone())
        .into_data()
        .assert_eq(&pool.forward(image).into_data(), true);
}
