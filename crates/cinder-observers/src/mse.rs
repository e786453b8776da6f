//! The MSE-optimal range: the clipping range that minimizes the expected quantization
//! error, estimated from the histogram.
//!
//! Values are taken as uniform inside each bin of width `w` (exact zeros apart: they
//! are always on the grid and cost nothing). A candidate range becomes real parameters
//! (`QuantParams::from_range`, so zero-point rounding and the widening to 0 count),
//! whose grid `[lo, hi]` of step `s` (its points are the multiples of `s`) gives:
//! - rounding error for the bins inside: the exact mean of `(x - s round(x / s))^2`
//!   over the bin, from the closed-form integral of the squared sawtooth. It is
//!   `s^2 / 12` for bins much wider than `s` and the distance to the nearest grid
//!   point for narrow ones, so a coarse grid over data clustered near 0 is not charged
//!   noise it does not make;
//! - clipping error `(v - hi)^2 + w^2 / 12` for a bin beyond `hi` (`v` its centre,
//!   clamped into the observed range), likewise below `lo`, from prefix sums.
//!
//! Candidates: windows of bin edges around 0, searched coarse-to-fine ([`minimize`]):
//! one distance for symmetric schemes and one-sided data, two for asymmetric schemes
//! on two-sided data; and always the observed `[min, max]`. The model is an expectation: over `n` values the
//! actual rounding noise deviates from it by about `0.9 / sqrt(n)` of itself, so a
//! clipped range replaces `[min, max]` only when it predicts a gain above
//! [`SIGNIFICANCE`]` / sqrt(n)`. Clipping that pays (outliers) gains far more; clipping
//! that would be noise (uniform data) is not done.

use cinder_tensor::{Granularity, Mapping, QuantParams, QuantScheme};

use crate::error::ObserverError;
use crate::histogram::{Bins, Histogram};
use crate::search::minimize;

/// Grid values per axis of the one-sided (or symmetric) and the two-sided search.
const GRID_1D: usize = 64;
const GRID_2D: usize = 32;
/// Required predicted gain, in units of `1 / sqrt(n)` of the full range's error.
const SIGNIFICANCE: f64 = 5.0;

/// The MSE-optimal range under `scheme`, inside the observed extremes.
pub(crate) fn mse_range(h: &Histogram, scheme: &QuantScheme) -> Result<(f32, f32), ObserverError> {
    let b = h.signed();
    let scheme = scheme.with_granularity(Granularity::PerTensor);
    let model = Model::new(&b);
    let full = (b.min, b.max);
    if model.nonzero == 0 {
        return Ok(full);
    }
    let full_cost = model.cost(full, &scheme)?;
    let (zero, n) = (b.zero_bin(), b.counts.len());
    let symmetric = scheme.mapping == Mapping::Symmetric;
    // Windows reach `a` bins below 0 and `h` above; a symmetric grid only sees the
    // larger magnitude, so it searches one distance for both.
    let (below, above, grid) = match (symmetric, b.min < 0.0, b.max > 0.0) {
        (true, ..) => (0..=0, 1..=zero.max(n - zero), GRID_1D),
        (false, false, _) => (0..=0, 1..=n - zero, GRID_1D),
        (false, true, false) => (1..=zero, 0..=0, GRID_1D),
        (false, true, true) => (1..=zero, 1..=n - zero, GRID_2D),
    };
    let window = |a: usize, h: usize| {
        let a = if symmetric { h } else { a };
        (b.edge(zero as f64 - a as f64), b.edge((zero + h) as f64))
    };
    let best = minimize(below, above, grid, |a, h| {
        model.cost(window(a, h), &scheme).ok()
    });
    let Some((a, h)) = best else {
        return Ok(full);
    };
    let chosen = window(a, h);
    let margin = SIGNIFICANCE / (model.nonzero as f64).sqrt();
    Ok(
        if model.cost(chosen, &scheme)? < full_cost * (1.0 - margin) {
            chosen
        } else {
            full
        },
    )
}

/// Per-bin counts and edges, and prefix sums of count, count * v and count * v^2 over
/// the bin representatives `v`.
struct Model {
    counts: Vec<f64>,
    edges: Vec<f64>,
    reps: Vec<f64>,
    c0: Vec<f64>,
    c1: Vec<f64>,
    c2: Vec<f64>,
    spread: f64,
    nonzero: u64,
}

impl Model {
    fn new(b: &Bins) -> Self {
        let n = b.counts.len();
        let (min, max) = (f64::from(b.min), f64::from(b.max));
        let counts: Vec<f64> = (0..n)
            .map(|j| (b.counts[j] - if j == b.zero_bin() { b.zeros } else { 0 }) as f64)
            .collect();
        let edges: Vec<f64> = (0..=n)
            .map(|j| (b.offset + j as i64) as f64 * b.width)
            .collect();
        let reps: Vec<f64> = edges
            .windows(2)
            .map(|e| (0.5 * (e[0] + e[1])).clamp(min, max))
            .collect();
        let prefix = |f: &dyn Fn(f64, f64) -> f64| {
            let mut p = vec![0.0; n + 1];
            for j in 0..n {
                p[j + 1] = p[j] + f(counts[j], reps[j]);
            }
            p
        };
        Self {
            c0: prefix(&|c, _| c),
            c1: prefix(&|c, v| c * v),
            c2: prefix(&|c, v| c * v * v),
            counts,
            edges,
            reps,
            spread: b.width * b.width / 12.0,
            nonzero: b.total() - b.zeros,
        }
    }

    /// Expected total squared error of quantizing the data with `range`'s parameters.
    fn cost(&self, range: (f32, f32), scheme: &QuantScheme) -> Result<f64, ObserverError> {
        let p = QuantParams::from_range(range.0, range.1, scheme)?;
        let (lo, hi) = p.real_range();
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        let n = self.reps.len();
        let below = self.reps.partition_point(|&v| v < lo);
        let above = self.reps.partition_point(|&v| v <= hi);
        let rounding = self.rounding(below, above, f64::from(p.scale));
        Ok(rounding + self.clip(0, below, lo) + self.clip(above, n, hi))
    }

    /// Rounding error of bins `from..to` on the grid of multiples of `step`.
    fn rounding(&self, from: usize, to: usize, step: f64) -> f64 {
        let inv = 1.0 / step;
        let mut sum = 0.0;
        let mut left = sawtooth_integral(self.edges[from] * inv);
        for j in from..to {
            let right = sawtooth_integral(self.edges[j + 1] * inv);
            sum += self.counts[j] * (right - left);
            left = right;
        }
        // Mean over a bin: step^3 * (H(b / step) - H(a / step)) / w, w = b - a.
        let width = self.edges[1] - self.edges[0];
        sum * step * step * step / width
    }

    /// `sum c (v - edge)^2` plus the in-bin spread, over bins `from..to`.
    fn clip(&self, from: usize, to: usize, edge: f64) -> f64 {
        let c0 = self.c0[to] - self.c0[from];
        let c1 = self.c1[to] - self.c1[from];
        let c2 = self.c2[to] - self.c2[from];
        (c2 - 2.0 * edge * c1 + edge * edge * c0).max(0.0) + c0 * self.spread
    }
}

/// `H(u) = integral from 0 to u of (t - round(t))^2 dt = m / 12 + (u - m)^3 / 3` with
/// `m = round(u)`; continuous, so the direction of ties does not matter. Rounds with
/// the 1.5 * 2^52 trick (no libm call; exact for `|u| < 2^51`).
#[inline]
fn sawtooth_integral(u: f64) -> f64 {
    const MAGIC: f64 = 6_755_399_441_055_744.0;
    let m = (u + MAGIC) - MAGIC;
    let d = u - m;
    m / 12.0 + d * d * d / 3.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::DEFAULT_BINS;
    use crate::testutil::Rng;

    #[test]
    fn clips_gaussian_outliers_when_it_pays() {
        let data = Rng::new(11).normals_with_outliers(200_000, 20, 40.0);
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let s4 = QuantScheme::weights_int8(Granularity::PerTensor)
            .with_bits(4)
            .unwrap();
        let (lo, hi) = mse_range(&h, &s4).unwrap();
        assert!(
            (2.0..6.0).contains(&hi) && lo == (-hi).max(h.range().0),
            "{lo} {hi}"
        );
        let (lo, hi) =
            mse_range(&h, &QuantScheme::activations_uint8().with_bits(4).unwrap()).unwrap();
        // Asymmetric: the outliers above pull the upper end out a little, not to 40.
        assert!(
            (2.0..10.0).contains(&hi) && (-4.0..-1.5).contains(&lo),
            "{lo} {hi}"
        );
        // At 8 bits, 20 outliers at 40 cost more clipped (20 * 35^2) than the rounding
        // noise they add to 200k values (~500): the MSE optimum keeps them.
        let s8 = QuantScheme::activations_uint8();
        let kept = mse_range(&h, &s8).unwrap();
        assert!(kept.1 > 35.0, "{kept:?}");
        let mse = actual_mse(&data, kept, &s8);
        assert!(mse <= actual_mse(&data, h.range(), &s8));
        assert!(mse < actual_mse(&data, (-4.5, 4.5), &s8));
    }

    fn actual_mse(data: &[f32], range: (f32, f32), scheme: &QuantScheme) -> f64 {
        let p = QuantParams::from_range(range.0, range.1, scheme).unwrap();
        let sum: f64 = data
            .iter()
            .map(|&x| f64::from(x - p.fake_quantize(x)).powi(2))
            .sum();
        sum / data.len() as f64
    }

    #[test]
    fn matches_the_brute_force_optimum_at_low_bits() {
        let data = Rng::new(5).normals(50_000);
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let s8 = QuantScheme::weights_int8(Granularity::PerTensor);
        let mut thresholds = vec![];
        for bits in [2, 3, 4] {
            let scheme = s8.with_bits(bits).unwrap();
            let chosen = mse_range(&h, &scheme).unwrap();
            let brute = (1..=500)
                .map(|i| actual_mse(&data, (-0.01 * i as f32, 0.01 * i as f32), &scheme))
                .fold(f64::INFINITY, f64::min);
            let got = actual_mse(&data, chosen, &scheme);
            assert!(
                got <= brute * 1.01,
                "{bits} bits: {chosen:?} {got} vs {brute}"
            );
            thresholds.push(chosen.1);
        }
        assert!(thresholds.windows(2).all(|w| w[0] < w[1]), "{thresholds:?}");
    }

    #[test]
    fn uniform_data_keeps_its_range() {
        let data: Vec<f32> = (0..10_000).map(|i| i as f32 / 10_000.0).collect();
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let r = mse_range(&h, &QuantScheme::activations_uint8()).unwrap();
        assert_eq!(r, h.range());
    }

    #[test]
    fn sawtooth_integral_known_values() {
        assert_eq!(sawtooth_integral(0.0), 0.0);
        assert!((sawtooth_integral(0.5) - 1.0 / 24.0).abs() < 1e-15);
        assert!((sawtooth_integral(3.0) - 0.25).abs() < 1e-15);
        assert!((sawtooth_integral(-2.5) + 2.5 / 12.0).abs() < 1e-15);
        // Continuous at ties, from both sides.
        let h = |u: f64| sawtooth_integral(u);
        assert!((h(1.5 - 1e-12) - h(1.5 + 1e-12)).abs() < 1e-10);
    }

    #[test]
    fn coarse_grids_over_clustered_data_are_not_overcharged() {
        // 2-bit asymmetric over normals and one far outlier: the full range puts every
        // normal value within half a step of 0, which costs far less than s^2 / 12.
        let data = Rng::new(0).normals_with_outliers(473, 1, -48.9);
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let u2 = QuantScheme::activations_uint8().with_bits(2).unwrap();
        let chosen = mse_range(&h, &u2).unwrap();
        assert!(actual_mse(&data, chosen, &u2) <= actual_mse(&data, h.range(), &u2));
    }

    #[test]
    fn zeros_alone_keep_their_range() {
        let h = Histogram::of_batch(&[0.0; 10], DEFAULT_BINS).unwrap();
        assert_eq!(
            mse_range(&h, &QuantScheme::activations_uint8()).unwrap(),
            (0.0, 0.0)
        );
    }
}
