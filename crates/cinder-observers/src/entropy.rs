//! Entropy calibration, as TensorRT's (and MXNet's) KL-divergence calibrator.
//!
//! For every candidate window of histogram bins, the reference distribution `P` is the
//! window with the outliers on either side folded into its edge bins; the candidate `Q`
//! merges the window's bins (without outliers) into as many groups as the grid has
//! codes over the window, and spreads each group's mass evenly over the bins where `P`
//! is non-zero. `P` and `Q` are smoothed (empty bins get `1e-4`, taken from the others)
//! and the window with the smallest `KL(P || Q)` wins.
//!
//! One deviation: groups split the window evenly (`m / codes` bins, rounded down or
//! up), where MXNet and TensorRT give the whole remainder to the last group, which with
//! few bins per code makes that group absurdly wide.
//!
//! Symmetric schemes and one-sided data search thresholds `T` over the histogram of
//! `|x|` (bin edges from the code count up, as TensorRT does: 128 codes for
//! narrow-range int8); asymmetric schemes over two-sided data search `[lo, hi]`
//! windows. Both searches are coarse-to-fine ([`minimize`]). Windows must hold at
//! least half of the values: a guard TensorRT does not need for zero-centred data, but
//! for data far from 0 a window below nearly all of it folds everything into one edge
//! bin, which `Q` reproduces exactly, so its divergence is spuriously small.

use cinder_tensor::{Mapping, QuantParams, QuantScheme};

use crate::error::ObserverError;
use crate::histogram::{Bins, Histogram};
use crate::search::minimize;

/// Smoothing mass given to empty bins (MXNet's `_smooth_distribution`).
const SMOOTHING: f64 = 1e-4;
/// Grid values per axis of the threshold search and of the two-sided window search.
const GRID_1D: usize = 64;
const GRID_2D: usize = 16;

/// The entropy-calibrated range, inside the observed extremes.
pub(crate) fn entropy_range(
    h: &Histogram,
    scheme: &QuantScheme,
) -> Result<(f32, f32), ObserverError> {
    let (min, max) = h.range();
    let codes = codes(scheme)?;
    let clamp = |lo: f32, hi: f32| (lo.clamp(min, max), hi.clamp(min, max));
    if scheme.mapping == Mapping::Asymmetric && min < 0.0 && max > 0.0 {
        let b = h.signed();
        let (zero, n) = (b.zero_bin(), b.counts.len());
        let mut d = Divergence::new(&b, codes);
        let best = minimize(1..=zero, 1..=n - zero, GRID_2D, |a, h| {
            d.at(zero - a, zero + h)
        });
        let (lo, hi) = best.map_or((0, n), |(a, h)| (zero - a, zero + h));
        return Ok(clamp(b.edge(lo as f64), b.edge(hi as f64)));
    }
    let b = h.magnitudes();
    let n = b.counts.len();
    let mut d = Divergence::new(&b, codes);
    let best = minimize(0..=0, codes..=n, GRID_1D, |_, i| d.at(0, i));
    let t = b.edge(best.map_or(n, |(_, i)| i) as f64);
    Ok(clamp(-t, t))
}

/// How many codes cover the searched side(s): all of them for asymmetric grids, the
/// non-negative half (with 0) for symmetric ones.
fn codes(scheme: &QuantScheme) -> Result<usize, ObserverError> {
    let p = QuantParams::from_range(-1.0, 1.0, scheme)?;
    let codes = match scheme.mapping {
        Mapping::Asymmetric => p.qmax - p.qmin + 1,
        Mapping::Symmetric => (p.qmax - p.zero_point).min(p.zero_point - p.qmin) + 1,
    };
    Ok(codes as usize)
}

/// Divergences of windows of one histogram, with buffers reused across windows.
struct Divergence<'a> {
    counts: &'a [u64],
    prefix: Vec<u64>,
    codes: usize,
    p: Vec<f64>,
    q: Vec<f64>,
}

impl<'a> Divergence<'a> {
    fn new(b: &'a Bins, codes: usize) -> Self {
        let mut prefix = Vec::with_capacity(b.counts.len() + 1);
        prefix.push(0);
        for &c in &b.counts {
            prefix.push(prefix.last().copied().unwrap_or(0) + c);
        }
        Self {
            counts: &b.counts,
            prefix,
            codes,
            p: Vec::new(),
            q: Vec::new(),
        }
    }

    /// `KL(P || Q)` for bins `lo..hi`; `None` for a window narrower than the code
    /// count, holding less than half of the values, or with a degenerate distribution.
    fn at(&mut self, lo: usize, hi: usize) -> Option<f64> {
        let total = self.prefix[self.counts.len()];
        let outliers = (self.prefix[lo], total - self.prefix[hi]);
        if hi - lo < self.codes || 2 * (outliers.0 + outliers.1) > total {
            return None;
        }
        let window = &self.counts[lo..hi];
        let m = window.len();
        self.p.clear();
        self.p.extend(window.iter().map(|&c| c as f64));
        self.p[0] += outliers.0 as f64;
        self.p[m - 1] += outliers.1 as f64;
        self.q.clear();
        self.q.resize(m, 0.0);
        for j in 0..self.codes {
            let (start, stop) = (j * m / self.codes, (j + 1) * m / self.codes);
            let mass: u64 = window[start..stop].iter().sum();
            let support = self.p[start..stop].iter().filter(|&&x| x > 0.0).count();
            if support > 0 {
                let share = mass as f64 / support as f64;
                for (q, &p) in self.q[start..stop].iter_mut().zip(&self.p[start..stop]) {
                    *q = if p > 0.0 { share } else { 0.0 };
                }
            }
        }
        smooth(&mut self.p)?;
        smooth(&mut self.q)?;
        Some(kl(&self.p, &self.q))
    }
}

/// Gives every empty bin [`SMOOTHING`], taken evenly from the non-empty ones; `None`
/// when all are empty or a bin would go non-positive.
fn smooth(d: &mut [f64]) -> Option<()> {
    let zeros = d.iter().filter(|&&x| x == 0.0).count();
    let nonzeros = d.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let take = SMOOTHING * zeros as f64 / nonzeros as f64;
    for x in d.iter_mut() {
        *x = if *x == 0.0 { SMOOTHING } else { *x - take };
    }
    d.iter().all(|&x| x > 0.0).then_some(())
}

/// `sum p log(p / q)` over the normalized distributions (all entries positive).
fn kl(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(q)
        .map(|(&p, &q)| {
            let (p, q) = (p / sp, q / sq);
            p * (p / q).ln()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::DEFAULT_BINS;
    use crate::testutil::Rng;
    use cinder_tensor::Granularity;

    #[test]
    fn divergence_is_zero_for_a_grid_that_fits() {
        // Each code covers exactly one bin: Q equals P.
        let bins = |counts: Vec<u64>| Bins {
            counts,
            offset: 0,
            width: 1.0,
            zeros: 0,
            min: 0.0,
            max: 4.0,
        };
        let b = bins(vec![3, 0, 5, 1]);
        let kl = Divergence::new(&b, 4).at(0, 4).unwrap();
        assert!(kl.abs() < 1e-12, "{kl}");
        // Merging pairs of unequal bins loses information.
        let b = bins(vec![3, 1, 5, 1]);
        let kl = Divergence::new(&b, 2).at(0, 4).unwrap();
        assert!(kl > 0.01, "{kl}");
        // Too narrow, or holding less than half of the values.
        assert_eq!(Divergence::new(&b, 2).at(0, 1), None);
        assert_eq!(Divergence::new(&b, 1).at(3, 4), None);
        let b = bins(vec![0, 0]);
        assert_eq!(Divergence::new(&b, 1).at(0, 2), None);
    }

    #[test]
    fn smoothing_moves_mass_to_empty_bins() {
        let mut d = [0.0, 2.0, 0.0, 2.0];
        smooth(&mut d).unwrap();
        assert_eq!(d, [1e-4, 2.0 - 1e-4, 1e-4, 2.0 - 1e-4]);
    }

    #[test]
    fn clips_gaussian_outliers_symmetric_and_asymmetric() {
        let data = Rng::new(7).normals_with_outliers(200_000, 20, 40.0);
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let (lo, hi) =
            entropy_range(&h, &QuantScheme::weights_int8(Granularity::PerTensor)).unwrap();
        assert!(
            (3.0..12.0).contains(&hi) && lo == (-hi).max(h.range().0),
            "{lo} {hi}"
        );
        let (lo, hi) = entropy_range(&h, &QuantScheme::activations_uint8()).unwrap();
        assert!(
            (3.0..12.0).contains(&hi) && (-12.0..-3.0).contains(&lo),
            "{lo} {hi}"
        );
        // Non-negative data (after ReLU) under uint8.
        let relu: Vec<f32> = data.iter().map(|x| x.max(0.0)).collect();
        let h = Histogram::of_batch(&relu, DEFAULT_BINS).unwrap();
        let (lo, hi) = entropy_range(&h, &QuantScheme::activations_uint8()).unwrap();
        assert!(lo == 0.0 && (3.0..12.0).contains(&hi), "{lo} {hi}");
    }

    #[test]
    fn coarse_histograms_keep_the_full_range() {
        let h = Histogram::of_batch(&[-1.0, 0.0, 2.0], 64).unwrap();
        assert_eq!(
            entropy_range(&h, &QuantScheme::activations_uint8()).unwrap(),
            (-1.0, 2.0)
        );
    }

    #[test]
    fn data_far_from_zero_is_not_clipped_away() {
        let data: Vec<f32> = Rng::new(3)
            .normals(10_000)
            .iter()
            .map(|x| 100.0 + x)
            .collect();
        let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
        let (lo, hi) = entropy_range(&h, &QuantScheme::activations_uint8()).unwrap();
        assert!(lo == h.range().0 && hi > 100.0, "{lo} {hi}");
    }
}
