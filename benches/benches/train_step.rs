//! Where one training step of the reference ConvNet goes, operation by operation, on
//! burn's flex backend at batch 64 (the README's profile table comes from this bench).
//!
//! Each layer is run on the autodiff device on its own, with inputs of the shapes it
//! sees in the network: `<op>/fwd` is its forward (graph recording included) and
//! `<op>/fwd_bwd` its forward, a `sum` and the backward, which computes the gradients
//! the network needs (weights, bias, and the input's unless the input is the images).
//! `sum_bwd/<shape>` is that `sum` with its backward alone on a tracked leaf, so an
//! op's backward is `fwd_bwd − fwd − sum_bwd` of its output shape. Around the layers:
//! gathering and normalising a batch, moving it into burn tensors, the loss, the SGD
//! momentum update, and the whole step as `Trainer` runs it. The step minus the sum of
//! the parts is autodiff bookkeeping and allocation that no single op owns.
//!
//! `cargo bench -p cinder-benches --bench train_step`

use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use cinder_benches::pseudo_random;
use cinder_datasets::{Normalization, SyntheticSpec};
use cinder_model::train::{build_optimizer, cross_entropy};
use cinder_model::{BackendKind, Batch, ConvNetConfig, GraphNet, TrainConfig};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};

const BATCH: usize = 64;

fn tensor<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    let len = shape.iter().product();
    Tensor::from_data(
        TensorData::new(pseudo_random(len, 1.0, seed), shape),
        device,
    )
}

/// A leaf that autodiff tracks, as every activation after the images is.
fn tracked<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> Tensor<D> {
    tensor(shape, seed, device).require_grad()
}

/// Times `op(input)` and `op(input).sum().backward()` under `name`.
fn op<const D: usize, const E: usize>(
    group: &mut BenchmarkGroup<WallTime>,
    name: &str,
    input: &Tensor<D>,
    op: impl Fn(Tensor<D>) -> Tensor<E>,
) {
    group.bench_function(format!("{name}/fwd"), |b| {
        b.iter(|| black_box(op(input.clone())))
    });
    group.bench_function(format!("{name}/fwd_bwd"), |b| {
        b.iter(|| black_box(op(input.clone()).sum().backward()))
    });
}

/// Times the `sum` harness alone on a tracked leaf of `shape`.
fn sum_backward<const D: usize>(
    group: &mut BenchmarkGroup<WallTime>,
    shape: [usize; D],
    device: &Device,
) {
    let leaf = tracked(shape, 9, device);
    let name = shape.map(|d| d.to_string()).join("x");
    group.bench_function(format!("sum_bwd/{name}"), |b| {
        b.iter(|| black_box(leaf.clone().sum().backward()))
    });
}

fn conv(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

fn layers(group: &mut BenchmarkGroup<WallTime>, device: &Device) {
    let (conv1, conv2) = (conv(3, 64, device), conv(64, 128, device));
    let fc1: Linear = LinearConfig::new(8192, 1024).init(device);
    let fc2: Linear = LinearConfig::new(1024, 10).init(device);
    let pool: MaxPool2d = MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init();
    let relu = Relu::new();
    let images = tensor([BATCH, 3, 32, 32], 1, device);
    op(group, "conv1", &images, |x| conv1.forward(x));
    op(
        group,
        "relu1",
        &tracked([BATCH, 64, 32, 32], 2, device),
        |x| relu.forward(x),
    );
    op(
        group,
        "pool1",
        &tracked([BATCH, 64, 32, 32], 3, device),
        |x| pool.forward(x),
    );
    op(
        group,
        "conv2",
        &tracked([BATCH, 64, 16, 16], 4, device),
        |x| conv2.forward(x),
    );
    op(
        group,
        "relu2",
        &tracked([BATCH, 128, 16, 16], 5, device),
        |x| relu.forward(x),
    );
    op(
        group,
        "pool2",
        &tracked([BATCH, 128, 16, 16], 6, device),
        |x| pool.forward(x),
    );
    op(
        group,
        "flatten_fc1",
        &tracked([BATCH, 128, 8, 8], 7, device),
        |x| fc1.forward(x.flatten::<2>(1, 3)),
    );
    op(group, "relu3", &tracked([BATCH, 1024], 8, device), |x| {
        relu.forward(x)
    });
    op(group, "fc2", &tracked([BATCH, 1024], 9, device), |x| {
        fc2.forward(x)
    });
    let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![3i64; BATCH], [BATCH]), device);
    op(group, "loss", &tracked([BATCH, 10], 10, device), |x| {
        cross_entropy(x, targets.clone()).mean()
    });
    sum_backward(group, [BATCH, 64, 32, 32], device);
    sum_backward(group, [BATCH, 64, 16, 16], device);
    sum_backward(group, [BATCH, 128, 16, 16], device);
    sum_backward(group, [BATCH, 128, 8, 8], device);
    sum_backward(group, [BATCH, 1024], device);
    sum_backward(group, [BATCH, 10], device);
}

/// One batch of the synthetic set, gathered from the uint8 images and normalised.
fn data(group: &mut BenchmarkGroup<WallTime>, device: &Device) -> Batch {
    let spec = SyntheticSpec {
        train: 4 * BATCH,
        test: 1,
        ..SyntheticSpec::default()
    };
    let train = cinder_datasets::generate(&spec).expect("valid spec").train;
    let norm = Normalization::fit(&train).expect("non-empty set");
    let indices: Vec<usize> = (0..BATCH).map(|i| (i * 37) % train.len()).collect();
    let gather = || {
        let subset = train.subset(&indices);
        let images = norm.normalize(subset.images()).expect("whole images");
        Batch {
            images,
            labels: subset.labels().iter().map(|&l| u32::from(l)).collect(),
        }
    };
    group.bench_function("data/gather_normalize", |b| b.iter(|| black_box(gather())));
    let batch = gather();
    group.bench_function("data/to_tensors", |b| {
        b.iter(|| black_box(batch.to_tensors(device)))
    });
    batch
}

/// The SGD momentum update alone (gradients computed outside the timed part), and the
/// whole step as `Trainer` runs it.
fn optimizer_and_step(group: &mut BenchmarkGroup<WallTime>, batch: &Batch, device: &Device) {
    let config = TrainConfig {
        lr: 0.01,
        batch_size: BATCH,
        ..TrainConfig::default()
    };
    let mut optimizer = build_optimizer(&config);
    let mut model = Some(
        GraphNet::init(
            &ConvNetConfig::reference().spec().expect("reference config"),
            device,
            0,
        )
        .expect("reference config"),
    );
    let grads_of = |model: &GraphNet| {
        let (images, targets) = batch.to_tensors(device);
        let loss = cross_entropy(model.forward(images), targets).mean();
        GradientsParams::from_grads(loss.backward(), model)
    };
    group.bench_function("sgd_momentum_step", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let m = model.take().expect("model between steps");
                let grads = grads_of(&m);
                let start = Instant::now();
                model = Some(optimizer.step(config.lr, m, grads));
                total += start.elapsed();
            }
            total
        })
    });
    group.bench_function("whole_step", |b| {
        b.iter(|| {
            let m = model.take().expect("model between steps");
            let (images, targets) = batch.to_tensors(device);
            let logits = m.forward(images);
            let correct =
                cinder_model::train::count_correct(logits.clone().detach(), targets.clone());
            let loss = cross_entropy(logits, targets).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            model = Some(optimizer.step(config.lr, m, grads));
            black_box((loss.detach().into_scalar::<f32>(), correct))
        })
    });
}

fn bench(c: &mut Criterion) {
    let device = BackendKind::Flex
        .device()
        .expect("flex is compiled in")
        .autodiff();
    let mut group = c.benchmark_group("train_step");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let batch = data(&mut group, &device);
    layers(&mut group, &device);
    optimizer_and_step(&mut group, &batch, &device);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
