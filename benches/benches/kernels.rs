//! The int8 GEMM kernel vs an f32 GEMM of the same shape, single thread, for the GEMMs of
//! the reference ConvNet (NHWC im2col) at batch 1 and 64; plus the other int8 kernels of
//! one image (im2col, output stage, max-pool).
//!
//! Throughput is counted as 2·m·n·k operations, so criterion's `elem/s` reads as GOPS
//! (G = 10^9). int8: `cinder_runtime::kernels::gemm_s8` on pre-packed weights. f32: the
//! `gemm` crate (the GEMM burn's flex backend uses; AVX2 + FMA on this machine) with
//! `Parallelism::None`, weights in both layouts (`[n][k]` and `[k][n]`): take the faster
//! as the baseline. Same operands, interleaved in one run: compare medians side by side.

use cinder_benches::pseudo_random;
use cinder_runtime::kernels::{
    OutputStage, PackedMatrix, gemm_s8, im2col_nhwc_s8, max_pool2d_nhwc_s8, requantize_s8_rows,
};
use cinder_tensor::RequantMultiplier;
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use std::hint::black_box;

/// One GEMM of the model per image: `m` output pixels (rows), depth `k`, `n` channels.
struct Layer {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
}

const LAYERS: [Layer; 4] = [
    Layer {
        name: "conv1",
        m: 32 * 32,
        k: 27,
        n: 64,
    },
    Layer {
        name: "conv2",
        m: 16 * 16,
        k: 576,
        n: 128,
    },
    Layer {
        name: "fc1",
        m: 1,
        k: 8192,
        n: 1024,
    },
    Layer {
        name: "fc2",
        m: 1,
        k: 1024,
        n: 10,
    },
];

/// Maps floats in [-1, 1] to int8 codes in [-127, 127].
fn codes(x: &[f32]) -> Vec<i8> {
    x.iter().map(|v| (v * 127.0).round() as i8).collect()
}

/// `c = a · b` in f32 on one thread, `a` `[m][k]`, `c` `[m][n]`, `b` `k × n` with element
/// `(p, j)` at `b[p * rs + j * cs]`.
struct Sgemm {
    m: usize,
    n: usize,
    k: usize,
    rs: usize,
    cs: usize,
}

impl Sgemm {
    fn run(&self, a: &[f32], b: &[f32], c: &mut [f32]) {
        let Self { m, n, k, rs, cs } = *self;
        assert!(a.len() >= m * k && b.len() > (k - 1) * rs + (n - 1) * cs && c.len() >= m * n);
        // SAFETY: the pointers cover the three matrices at their strides (checked above);
        // `c` does not alias the inputs.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                k as isize,
                b.as_ptr(),
                cs as isize,
                rs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

fn bench_gemm(c: &mut Criterion) {
    for batch in [1, 64] {
        let mut group = c.benchmark_group(format!("gemm_b{batch}"));
        group.sample_size(20);
        for layer in &LAYERS {
            let (m, k, n) = (layer.m * batch, layer.k, layer.n);
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            // Weights `[n][k]`: one row per output channel.
            let (a, b) = (pseudo_random(m * k, 1.0, 1), pseudo_random(n * k, 1.0, 2));
            let packed = PackedMatrix::pack(&codes(&b), n, k).expect("weights in [-127, 127]");
            let a8 = codes(&a);
            let mut c32 = vec![0i32; m * n];
            group.bench_function(format!("{}_int8", layer.name), |bench| {
                bench.iter(|| gemm_s8(black_box(&a8), k, m, &packed, &mut c32, n))
            });
            // f32 in both weight layouts; the faster one is the baseline.
            let b_kn: Vec<f32> = (0..k * n).map(|i| b[i % n * k + i / n]).collect();
            let mut cf = vec![0f32; m * n];
            for (layout, weights, rs, cs) in [("nk", &b, 1, k), ("kn", &b_kn, n, 1)] {
                let sgemm = Sgemm { m, n, k, rs, cs };
                group.bench_function(format!("{}_f32_{layout}", layer.name), |bench| {
                    bench.iter(|| sgemm.run(black_box(&a), weights, &mut cf))
                });
            }
        }
        group.finish();
    }
}

/// Elements per second of the other kernels on one image of the model.
fn bench_image_kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("image");
    group.sample_size(20);
    for (name, h, ch) in [("conv1", 32, 3), ("conv2", 16, 64)] {
        let input = codes(&pseudo_random(h * h * ch, 1.0, 3));
        let k = 9 * ch;
        let mut cols = vec![0i8; h * h * k];
        elements(&mut group, h * h * k);
        group.bench_function(format!("im2col_{name}"), |bench| {
            bench.iter(|| im2col_nhwc_s8(black_box(&input), h, h, ch, 3, 1, 1, 0, &mut cols, k))
        });
    }
    let (rows, n) = (16 * 16, 128);
    let acc: Vec<i32> = pseudo_random(rows * n, 1e5, 4)
        .iter()
        .map(|&v| v as i32)
        .collect();
    let bias: Vec<i32> = pseudo_random(n, 1e3, 5).iter().map(|&v| v as i32).collect();
    let mult: Vec<RequantMultiplier> = (0..n)
        .map(|j| RequantMultiplier::from_real(1e-3 * (1.0 + j as f64 / 64.0)).expect("valid"))
        .collect();
    let stage = OutputStage {
        bias: &bias,
        mult: &mult,
        zp_out: -128,
        lo: -128,
        hi: 127,
    };
    let mut out = vec![0i8; rows * n];
    elements(&mut group, rows * n);
    group.bench_function("requantize_conv2", |bench| {
        bench.iter(|| requantize_s8_rows(&stage, black_box(&acc), n, rows, &mut out, n))
    });
    let act = codes(&pseudo_random(32 * 32 * 64, 1.0, 6));
    let mut pooled = vec![0i8; 16 * 16 * 64];
    elements(&mut group, act.len());
    group.bench_function("max_pool_conv1", |bench| {
        bench.iter(|| max_pool2d_nhwc_s8(black_box(&act), 32, 32, 64, 2, 2, &mut pooled))
    });
    group.finish();
}

fn elements(group: &mut BenchmarkGroup<'_, WallTime>, n: usize) {
    group.throughput(Throughput::Elements(n as u64));
}

criterion_group!(benches, bench_gemm, bench_image_kernels);
criterion_main!(benches);
