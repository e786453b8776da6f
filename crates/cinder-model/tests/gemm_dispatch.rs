//! burn flex multiplies with the `gemm` crate, built here with its AVX-512 kernels
//! (`x86-v4`, through burn's feature of that name). `gemm` chooses its kernel once per
//! process from the CPU it finds (`is_x86_feature_detected!("avx512f")`, else `"fma"`,
//! else scalar), so one binary serves every x86-64 CPU. This test checks the kernel that
//! this CPU selects against an f64 reference, at fc1's and conv2's shapes; to check the
//! other paths on an AVX-512 machine, run this test binary under an emulated CPU
//! without AVX-512 (QEMU's user mode, see the README's development section).

use burn::tensor::{Tensor, TensorData};
use cinder_model::BackendKind;

/// A deterministic f32 matrix body in [-1, 1] (an LCG; the test needs no RNG crate).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Largest |flex − f64 reference| of an `m×k · k×n` product, relative to the largest
/// possible magnitude `k` (entries are in [-1, 1]).
fn worst_relative_error(m: usize, k: usize, n: usize) -> f64 {
    let (a, b) = (values(m * k, 1), values(k * n, 2));
    let device = BackendKind::Flex.device().expect("flex is compiled in");
    let lhs = Tensor::<2>::from_data(TensorData::new(a.clone(), [m, k]), &device);
    let rhs = Tensor::<2>::from_data(TensorData::new(b.clone(), [k, n]), &device);
    let got = lhs
        .matmul(rhs)
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 product");
    let mut worst = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k)
                .map(|p| f64::from(a[i * k + p]) * f64::from(b[p * n + j]))
                .sum();
            worst = worst.max((f64::from(got[i * n + j]) - exact).abs());
        }
    }
    worst / k as f64
}

#[test]
fn the_gemm_kernel_this_cpu_selects_matches_an_f64_reference() {
    #[cfg(target_arch = "x86_64")]
    eprintln!(
        "gemm path on this CPU: {}",
        if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("fma") {
            "AVX2 + FMA"
        } else {
            "scalar"
        }
    );
    // fc1 at batch 16 (8192 deep) and a slice of conv2's im2col product (576 deep).
    for (m, k, n) in [(16, 8192, 96), (200, 576, 128)] {
        let err = worst_relative_error(m, k, n);
        assert!(err < 1e-6, "{m}x{k}x{n}: relative error {err:e}");
    }
}
