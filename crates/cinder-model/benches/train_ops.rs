//! Forward + backward of each operation kind of a ResNet-20 training step at batch 128 on
//! Fashion-MNIST's 28×28 maps, burn flex's own operation against [`cinder_model::flex`]'s,
//! and cinder's convolution kernels alone (no autodiff around them, `conv2d_kernels`):
//! `cargo bench -p cinder-model --bench train_ops`. The rows name the layer shapes
//! (`c16x28` = 16 channels of 28×28; `s2` = stride 2).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Distribution, Tensor};
use cinder_model::flex::conv2d::{ConvGeometry, Wanted, conv2d_backward, conv2d_forward};
use cinder_model::flex::{batch_norm::batch_norm, conv2d::conv2d};
use cinder_model::rng::SplitMix64;
use criterion::{Criterion, criterion_group, criterion_main};

const BATCH: usize = 128;

/// `(name, in channels, out channels, input size, kernel, stride)` of ResNet-20's convolutions.
const CONVS: [(&str, usize, usize, usize, usize, usize); 6] = [
    ("conv1_c1x28", 1, 16, 28, 3, 1),
    ("c16x28", 16, 16, 28, 3, 1),
    ("c16x28_s2", 16, 32, 28, 3, 2),
    ("c32x14", 32, 32, 14, 3, 1),
    ("c32x14_1x1_s2", 32, 64, 14, 1, 2),
    ("c64x7", 64, 64, 7, 3, 1),
];

/// Forward, then backward of `sum(y · g)`, reading one gradient back.
fn step(forward: impl Fn(Tensor<4>) -> Tensor<4>, input: &Tensor<4>, upstream: &Tensor<4>) {
    let x = input.clone().require_grad();
    let grads = (forward(x.clone()) * upstream.clone()).sum().backward();
    std::hint::black_box(x.grad(&grads));
}

fn random(shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

fn convolutions(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut group = c.benchmark_group("conv2d_fwd_bwd");
    group.sample_size(10);
    for (name, cin, cout, size, k, stride) in CONVS {
        let conv: Conv2d = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
            .with_bias(false)
            .init(&device);
        let input = random([BATCH, cin, size, size], &device);
        let upstream = random(conv.forward(input.clone()).dims(), &device);
        group.bench_function(format!("burn/{name}"), |b| {
            b.iter(|| step(|x| conv.forward(x), &input, &upstream))
        });
        group.bench_function(format!("cinder/{name}"), |b| {
            b.iter(|| step(|x| conv2d(&conv, x), &input, &upstream))
        });
    }
    group.finish();
}

/// The forward and both gradients of each convolution as `conv2d_forward` and
/// `conv2d_backward` compute them on slices (the first layer's input gradient skipped, as in
/// training).
fn convolution_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("conv2d_kernels");
    group.sample_size(20);
    for (name, cin, cout, size, k, stride) in CONVS {
        let geom = ConvGeometry {
            batch: BATCH,
            channels_in: cin,
            height: size,
            width: size,
            channels_out: cout,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [k / 2, k / 2],
            groups: 1,
        };
        let [oh, ow] = geom.output_size();
        let values = |len: usize, seed: u64| -> Vec<f32> {
            let mut rng = SplitMix64::stream(seed, 0);
            (0..len).map(|_| rng.symmetric(1.0)).collect()
        };
        let input = values(BATCH * cin * size * size, 1);
        let weight = values(geom.weight_len(), 2);
        let output_grad = values(BATCH * cout * oh * ow, 3);
        let wanted = Wanted {
            input: cin > 1,
            weight: true,
        };
        group.bench_function(format!("forward/{name}"), |b| {
            b.iter(|| std::hint::black_box(conv2d_forward(&geom, &input, &weight)))
        });
        group.bench_function(format!("backward/{name}"), |b| {
            b.iter(|| {
                let grads = conv2d_backward(&geom, &input, &weight, &output_grad, wanted);
                std::hint::black_box(grads)
            })
        });
    }
    group.finish();
}

fn batch_norms(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let mut group = c.benchmark_group("batch_norm_fwd_bwd");
    group.sample_size(10);
    for (name, channels, size) in [("c16x28", 16, 28), ("c64x7", 64, 7)] {
        let bn: BatchNorm = BatchNormConfig::new(channels).init(&device);
        let input = random([BATCH, channels, size, size], &device);
        group.bench_function(format!("burn/{name}"), |b| {
            b.iter(|| step(|x| bn.forward(x), &input, &input))
        });
        group.bench_function(format!("cinder/{name}"), |b| {
            b.iter(|| step(|x| batch_norm(&bn, x), &input, &input))
        });
    }
    group.finish();
}

criterion_group!(benches, convolutions, convolution_kernels, batch_norms);
criterion_main!(benches);
