//! The tile kernels against their scalar references, on every kernel this CPU runs.

use proptest::prelude::*;

use super::weight_gradient::PAIRS;
use super::*;

/// A tile's operands: `channels` padded planes of `plane` values, taps of a `kh × kw` kernel
/// on rows `stride` apart, and packed weights, all small integers and halves.
fn tile_case() -> impl Strategy<Value = (Vec<f32>, usize, Vec<usize>, Vec<f32>)> {
    (1usize..6, 1usize..4, 1usize..4, 0usize..5, any::<u64>()).prop_map(
        |(channels, kh, kw, extra, seed)| {
            let stride = kw + extra;
            let taps: Vec<usize> = (0..kh)
                .flat_map(|i| (0..kw).map(move |j| i * stride + j))
                .collect();
            let plane = taps.iter().max().unwrap() + PANEL + extra;
            let mut rng = crate::rng::SplitMix64::stream(seed, 0);
            let mut draw = |len: usize| (0..len).map(|_| rng.symmetric(1.0)).collect();
            let x = draw(channels * plane);
            let w = draw(channels * taps.len() * BLOCK);
            (x, plane, taps, w)
        },
    )
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_widest_kernel_this_cpu_has_is_the_one_detected() {
    #[cfg(target_arch = "x86_64")]
    let expected = if is_x86_feature_detected!("avx512f") {
        Some(Kernel::Avx512)
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Some(Kernel::Fma)
    } else {
        None
    };
    #[cfg(not(target_arch = "x86_64"))]
    let expected = None;
    assert_eq!(Kernel::detect(), expected);
}

proptest! {
    #[test]
    fn every_tile_kernel_equals_its_scalar_reference_bit_for_bit(
        (x, plane, taps, w) in tile_case(),
    ) {
        let mut reference = vec![f32::NAN; PANEL * BLOCK];
        generic::tile(&x, plane, &taps, &w, &mut reference);
        for kernel in Kernel::supported() {
            let mut fast = vec![f32::NAN; PANEL * BLOCK];
            tile(kernel, &x, plane, &taps, &w, &mut fast);
            prop_assert_eq!(bits(&fast), bits(&reference), "{:?}", kernel);
        }
    }
}

proptest! {
    #[test]
    fn every_weight_tile_kernel_equals_its_scalar_reference_bit_for_bit(
        positions in 0usize..40,
        extra in 0usize..30,
        offsets in proptest::array::uniform12(0usize..30),
        seed in any::<u64>(),
    ) {
        let mut rng = crate::rng::SplitMix64::stream(seed, 0);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.symmetric(1.0)).collect() };
        let dy = draw(positions * BLOCK);
        let x = draw(30 + positions + extra);
        let start = draw(PAIRS * BLOCK);
        let mut reference = start.clone();
        generic::weight_tile(&dy, &x, &offsets, &mut reference);
        for kernel in Kernel::supported() {
            let mut fast = start.clone();
            weight_gradient::tile(kernel, &dy, &x, &offsets, &mut fast);
            prop_assert_eq!(bits(&fast), bits(&reference), "{:?}", kernel);
        }
    }
}
