//! The flex training operations against burn's own: the im2col + GEMM convolution against
//! burn's `conv2d` (outputs and the gradients of input, weight and bias over strides,
//! paddings and groups, depthwise included) and the training BatchNorm against burn's
//! (output, gradients, running statistics), plus the fallback to burn's operations off flex.

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::flex::batch_norm::batch_norm;
use cinder_model::flex::conv2d::conv2d;
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
        output.into_data().try_to_vec().unwrap(),
        input
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
        conv.weight
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
    ];
    if let Some(bias) = &conv.bias {
        all.push(bias.grad(&grads).unwrap().into_data().try_to_vec().unwrap());
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
    let values = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
    vec![
        output.into_data().try_to_vec().unwrap(),
        input
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec()
            .unwrap(),
        values(bn.gamma.grad(&grads).unwrap()),
        values(bn.beta.grad(&grads).unwrap()),
        values(bn.running_mean.value()),
        values(bn.running_var.value()),
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

#[test]
fn batch_norm_in_inference_is_burns() {
    let device = Device::flex();
    let bn: BatchNorm = BatchNormConfig::new(3).init(&device);
    let input =
        Tensor::<4>::from_data(random([2, 3, 4, 4], &mut SplitMix64::stream(9, 0)), &device);
    let ours = batch_norm(&bn, input.clone()).into_data();
    ours.assert_eq(&bn.forward(input).into_data(), true);
}
