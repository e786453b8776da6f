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

proptest! {
    #[test]
    fn the_fma_tile_equals_its_scalar_reference_bit_for_bit(
        (x, plane, taps, w) in tile_case(),
    ) {
        if !available() {
            return Ok(()); // no FMA kernel to compare on this CPU
        }
        let (mut fast, mut reference) = (vec![f32::NAN; PANEL * BLOCK], vec![f32::NAN; PANEL * BLOCK]);
        tile(&x, plane, &taps, &w, &mut fast);
        generic::tile(&x, plane, &taps, &w, &mut reference);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fast), bits(&reference));
    }
}

proptest! {
    #[test]
    fn the_fma_weight_tile_equals_its_scalar_reference_bit_for_bit(
        positions in 0usize..40,
        extra in 0usize..30,
        offsets in proptest::array::uniform6(0usize..30),
        seed in any::<u64>(),
    ) {
        if !available() {
            return Ok(()); // no FMA kernel to compare on this CPU
        }
        let mut rng = crate::rng::SplitMix64::stream(seed, 0);
        let mut draw = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.symmetric(1.0)).collect() };
        let dy = draw(positions * BLOCK);
        let x = draw(30 + positions + extra);
        let start = draw(PAIRS * BLOCK);
        let (mut fast, mut reference) = (start.clone(), start);
        weight_gradient::tile(&dy, &x, &offsets, &mut fast);
        generic::weight_tile(&dy, &x, &offsets, &mut reference);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&fast), bits(&reference));
    }
}
