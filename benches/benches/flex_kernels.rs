//! The flex training kernels of ResNet-20 at batch 128, without burn's autodiff around
//! them: the convolution (im2col + GEMM) on its four convolution shapes, forward and both
//! gradients, and the training-mode BatchNorm on its three activation shapes.
//!
//! `cargo bench -p cinder-benches --bench flex_kernels`

use std::hint::black_box;

use cinder_benches::pseudo_random;
use cinder_model::flex::batch_norm::{NormGeometry, batch_stats, normalize, normalize_backward};
use cinder_model::flex::conv2d::{ConvGeometry, Wanted, conv2d_backward, conv2d_forward};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 128;

/// A 3×3 convolution padded by one, as every ResNet-20 convolution but its shortcuts.
fn conv3x3(channels_in: usize, channels_out: usize, size: usize, stride: usize) -> ConvGeometry {
    ConvGeometry {
        batch: BATCH,
        channels_in,
        height: size,
        width: size,
        channels_out,
        kernel: [3, 3],
        stride: [stride, stride],
        padding: [1, 1],
        groups: 1,
    }
}

fn convolutions(c: &mut Criterion) {
    let mut group = c.benchmark_group("flex_conv_b128");
    group.sample_size(20);
    let shapes = [
        ("stage1_16x32x32", conv3x3(16, 16, 32, 1)),
        ("down_16to32_s2", conv3x3(16, 32, 32, 2)),
        ("stage2_32x16x16", conv3x3(32, 32, 16, 1)),
        ("stage3_64x8x8", conv3x3(64, 64, 8, 1)),
    ];
    for (name, geom) in shapes {
        let [oh, ow] = geom.output_size();
        let input = pseudo_random(BATCH * geom.channels_in * geom.height * geom.width, 1.0, 1);
        let weight = pseudo_random(geom.weight_len(), 0.1, 2);
        let output_grad = pseudo_random(BATCH * geom.channels_out * oh * ow, 1.0, 3);
        let multiply_adds = geom.weight_len() * oh * ow * BATCH;
        group.throughput(Throughput::Elements(2 * multiply_adds as u64));
        group.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| black_box(conv2d_forward(&geom, &input, &weight)))
        });
        let both = Wanted {
            input: true,
            weight: true,
        };
        group.throughput(Throughput::Elements(4 * multiply_adds as u64));
        group.bench_function(format!("{name}/backward"), |b| {
            b.iter(|| black_box(conv2d_backward(&geom, &input, &weight, &output_grad, both)))
        });
    }
    group.finish();
}

const EPSILON: f64 = 1e-5;

fn batch_norms(c: &mut Criterion) {
    let mut group = c.benchmark_group("flex_batch_norm_b128");
    group.sample_size(20);
    for (channels, size) in [(16, 32), (32, 16), (64, 8)] {
        let geom = NormGeometry {
            batch: BATCH,
            channels,
            plane: size * size,
        };
        let len = BATCH * channels * size * size;
        let input = pseudo_random(len, 2.0, 4);
        let output_grad = pseudo_random(len, 1.0, 5);
        let (gamma, beta) = (vec![1.5; channels], vec![0.25; channels]);
        let name = format!("{channels}x{size}x{size}");
        group.throughput(Throughput::Elements(len as u64));
        group.bench_function(format!("{name}/forward"), |b| {
            b.iter(|| {
                let (mean, var) = batch_stats(&geom, &input);
                black_box(normalize(
                    &geom,
                    &input,
                    [&mean, &var, &gamma, &beta],
                    EPSILON,
                ))
            })
        });
        let (mean, var) = batch_stats(&geom, &input);
        group.bench_function(format!("{name}/backward"), |b| {
            b.iter(|| {
                let stats = [&mean[..], &var, &gamma];
                black_box(normalize_backward(
                    &geom,
                    &input,
                    &output_grad,
                    stats,
                    EPSILON,
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, convolutions, batch_norms);
criterion_main!(benches);
