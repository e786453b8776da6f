//! Observer throughput on a realistic activation tensor (64×64×32×32 f32, the reference
//! ConvNet's conv1 output for a batch of 64, after ReLU), the cost of each histogram
//! range chooser, and a whole calibration batch: every quantization point of the
//! reference ConvNet for 64 images, from which the time for 1,000 images follows.

use cinder_benches::pseudo_random;
use cinder_observers::{
    Calibrator, HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver, Observer,
    ObserverSpec, PerChannelMinMaxObserver, RangeMethod, min_max,
};
use cinder_tensor::{QuantScheme, Tensor, TensorBuf};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const SHAPE: [usize; 4] = [64, 64, 32, 32];
const BATCH: usize = 64;

/// Roughly Gaussian values (a sum of four uniforms), scaled.
fn pre_activation(shape: &[usize], seed: u64) -> TensorBuf<f32> {
    let len = shape.iter().product();
    let parts: Vec<Vec<f32>> = (0..4).map(|i| pseudo_random(len, 1.0, seed + i)).collect();
    let data = (0..len)
        .map(|j| parts.iter().map(|p| p[j]).sum::<f32>())
        .collect();
    TensorBuf::new(shape.to_vec(), data).expect("shape matches data")
}

fn relu(t: &TensorBuf<f32>) -> TensorBuf<f32> {
    t.map(|x| x.max(0.0))
}

fn observe_bench(c: &mut Criterion) {
    let x = relu(&pre_activation(&SHAPE, 1));
    let mut group = c.benchmark_group("observers");
    group.throughput(Throughput::Bytes((x.data().len() * 4) as u64));
    group.bench_function("min_max", |b| b.iter(|| min_max(black_box(x.data()))));
    let mut observers: Vec<(&str, Box<dyn Observer>)> = vec![
        ("minmax", Box::new(MinMaxObserver::new())),
        (
            "moving_average",
            Box::new(MovingAverageMinMaxObserver::new(0.01).expect("valid")),
        ),
        (
            "per_channel_minmax_axis1",
            Box::new(PerChannelMinMaxObserver::new(1)),
        ),
        (
            "histogram",
            Box::new(HistogramObserver::new(RangeMethod::Mse).expect("valid")),
        ),
    ];
    for (name, o) in &mut observers {
        group.bench_function(*name, |b| b.iter(|| o.observe(black_box(&x))));
    }
    group.finish();
}

fn chooser_bench(c: &mut Criterion) {
    let signed = pre_activation(&SHAPE, 2);
    let tensors = [("relu", relu(&signed)), ("signed", signed)];
    let scheme = QuantScheme::activations_uint8();
    let mut group = c.benchmark_group("range_chooser");
    for method in [
        RangeMethod::Entropy,
        RangeMethod::Percentile { percent: 99.99 },
        RangeMethod::Mse,
    ] {
        for (data, t) in &tensors {
            let mut o = HistogramObserver::new(method).expect("valid");
            o.observe(t).expect("finite data");
            let name = format!("{method:?}").to_lowercase();
            group.bench_function(BenchmarkId::new(name, data), |b| {
                b.iter(|| o.params(black_box(&scheme)))
            });
        }
    }
    group.finish();
}

/// The reference ConvNet's quantization points for one batch: conv and linear outputs
/// before ReLU (signed), after ReLU, and after pooling.
fn convnet_activations() -> Vec<(&'static str, TensorBuf<f32>)> {
    let conv1 = pre_activation(&[BATCH, 64, 32, 32], 10);
    let conv2 = pre_activation(&[BATCH, 128, 16, 16], 11);
    let fc1 = pre_activation(&[BATCH, 1024], 12);
    vec![
        ("input", pre_activation(&[BATCH, 3, 32, 32], 13)),
        ("relu1", relu(&conv1)),
        ("pool1", relu(&pre_activation(&[BATCH, 64, 16, 16], 14))),
        ("relu2", relu(&conv2)),
        ("pool2", relu(&pre_activation(&[BATCH, 128, 8, 8], 15))),
        ("relu3", relu(&fc1)),
        ("fc2", pre_activation(&[BATCH, 10], 16)),
        ("conv1", conv1),
        ("conv2", conv2),
        ("fc1", fc1),
    ]
}

fn calibration_bench(c: &mut Criterion) {
    let batch = convnet_activations();
    let bytes: usize = batch.iter().map(|(_, t)| t.data().len() * 4).sum();
    let mut group = c.benchmark_group("calibrate_convnet_batch64");
    group.throughput(Throughput::Bytes(bytes as u64));
    for spec in [
        "minmax",
        "moving-average",
        "entropy",
        "percentile=99.99",
        "mse",
    ] {
        let spec: ObserverSpec = spec.parse().expect("known spec");
        let mut calibrator =
            Calibrator::new(spec, QuantScheme::activations_uint8()).expect("valid");
        group.bench_function(spec.to_string(), |b| {
            b.iter(|| {
                for (name, t) in &batch {
                    calibrator.observe(name, t).expect("finite data");
                }
            })
        });
        group.bench_function(format!("{spec}_table"), |b| b.iter(|| calibrator.table()));
    }
    group.finish();
}

criterion_group!(benches, observe_bench, chooser_bench, calibration_bench);
criterion_main!(benches);
