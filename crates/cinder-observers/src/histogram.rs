//! A mergeable histogram whose result does not depend on batch order.
//!
//! Bin `k` covers `[k * w, (k + 1) * w)` with a power-of-two width `w = 2^e`, so 0 is
//! always a bin edge and signed and non-negative data bin the same way. The width is
//! canonical: the smallest power of two for which the observed range, widened to
//! contain 0, fits in `bins` bins. When the range grows, the width doubles `j` times and
//! bins merge in aligned groups of `2^j` (`k -> k >> j`), which is exact: the counts
//! equal what a histogram at the final width would have counted from the start. Hence
//! observing batches in any order, or merging per-thread histograms, yields the very
//! same state (the re-binning tolerance is zero). The price is resolution: the data
//! spans between half of and all the `bins` bins.
//!
//! Filling is two passes per batch: the vectorized [`min_max`] scan (which also rejects
//! non-finite values before any state changes), then a pass that computes bin indices
//! in blocks with one multiplication per element (by `2^-e`, exact) and scatters them
//! into four interleaved sub-histograms so repeated bins do not serialize on one
//! counter. Values whose magnitude is below `2^-149 * w` may round into the bin of 0.

use serde::{Deserialize, Serialize};

use crate::error::ObserverError;
use crate::scan::{min_max, union};

/// TensorRT's bin count for entropy calibration.
pub const DEFAULT_BINS: usize = 2048;
/// The largest accepted bin count.
pub const MAX_BINS: usize = 1 << 16;
/// Bin widths range over `2^MIN_EXPONENT ..= 2^MAX_EXPONENT` (enough for any f32 span).
const MIN_EXPONENT: i32 = -126;
const MAX_EXPONENT: i32 = 128;
/// Elements per index block of the fill loop.
const BLOCK: usize = 64;
/// Elements counted in u32 sub-histograms before they are flushed into the u64 counts.
const FLUSH: usize = 1 << 30;
/// Interleaved sub-histograms.
const WAYS: usize = 4;

/// Counts of observed values in power-of-two-wide bins, plus their exact extremes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HistogramState")]
pub struct Histogram {
    bins: usize,
    /// Bin width is `2^exponent`.
    exponent: i32,
    /// Global index of `counts[0]`; never positive, as the window always holds bin 0.
    offset: i64,
    counts: Vec<u64>,
    /// How many observed values were exactly zero (they also count in bin 0).
    zeros: u64,
    min: f32,
    max: f32,
}

/// The serialized form, validated into a [`Histogram`].
#[derive(Deserialize)]
struct HistogramState {
    bins: usize,
    exponent: i32,
    offset: i64,
    counts: Vec<u64>,
    zeros: u64,
    min: f32,
    max: f32,
}

impl TryFrom<HistogramState> for Histogram {
    type Error = ObserverError;

    fn try_from(s: HistogramState) -> Result<Self, ObserverError> {
        check_bins(s.bins)?;
        let h = Self {
            bins: s.bins,
            exponent: s.exponent,
            offset: s.offset,
            counts: s.counts,
            zeros: s.zeros,
            min: s.min,
            max: s.max,
        };
        h.validate()?;
        Ok(h)
    }
}

/// Rejects bin counts the growth rule cannot honour.
pub(crate) fn check_bins(bins: usize) -> Result<(), ObserverError> {
    if (2..=MAX_BINS).contains(&bins) {
        Ok(())
    } else {
        Err(ObserverError::invalid_config(format!(
            "{bins} histogram bins: expected 2..={MAX_BINS}"
        )))
    }
}

/// `floor(x * inv_width)` without a floor instruction (SSE2 has none): truncate, then
/// step down when truncation went up. Exact whenever the product is exact.
#[inline(always)]
fn bin_of(x: f32, inv_width: f32) -> i64 {
    let t = x * inv_width;
    let i = t as i32;
    i64::from(i - i32::from(i as f32 > t))
}

/// `1.5 * 2^23`: adding it rounds any `|t| < 2^22` to an integer held in the low
/// mantissa bits.
const ROUNDING: f32 = 12_582_912.0;

/// [`bin_of`] for the fill loop, where `|t| <= MAX_BINS`: round to nearest with the
/// magic constant, read the integer from the bits, step down if rounding went up.
/// Only adds, compares and integer ops, so the compiler vectorizes it even on SSE2.
#[inline(always)]
fn floor_small(t: f32) -> i32 {
    let y = t + ROUNDING;
    let rounded = y - ROUNDING;
    let i = y.to_bits() as i32 - ROUNDING.to_bits() as i32;
    i - i32::from(rounded > t)
}

fn inv_width(exponent: i32) -> f32 {
    2f64.powi(-exponent) as f32
}

/// Whether `[lo, hi]` spans at most `bins` bins of width `2^exponent`.
fn fits(lo: f32, hi: f32, exponent: i32, bins: usize) -> bool {
    let inv = inv_width(exponent);
    bin_of(hi, inv) - bin_of(lo, inv) < bins as i64
}

/// The canonical exponent of a range that contains 0: the smallest that fits.
fn exponent_for(lo: f32, hi: f32, bins: usize) -> i32 {
    let span = f64::from(hi) - f64::from(lo);
    // A range of `bins` bins is wider than the span, so this bound is never too high.
    let mut e = if span > 0.0 {
        ((span / bins as f64).log2().floor() as i32).clamp(MIN_EXPONENT, MAX_EXPONENT)
    } else {
        MIN_EXPONENT
    };
    while e < MAX_EXPONENT && !fits(lo, hi, e, bins) {
        e += 1;
    }
    e
}

impl Histogram {
    /// The histogram of one batch (`bins` already checked).
    pub(crate) fn of_batch(data: &[f32], bins: usize) -> Result<Self, ObserverError> {
        let range = min_max(data)?;
        let mut h = Self {
            bins,
            exponent: MIN_EXPONENT,
            offset: 0,
            counts: vec![0],
            zeros: 0,
            min: range.0,
            max: range.1,
        };
        h.rebin(range);
        h.fill(data);
        Ok(h)
    }

    /// Adds one batch; a rejected batch leaves the histogram as it was.
    pub(crate) fn add(&mut self, data: &[f32]) -> Result<(), ObserverError> {
        let batch = min_max(data)?;
        self.rebin(union((self.min, self.max), batch));
        self.fill(data);
        Ok(())
    }

    /// Adds the counts of `other`, which must have the same bin count.
    pub(crate) fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        if self.bins != other.bins {
            return Err(ObserverError::merge_mismatch(format!(
                "{} and {} histogram bins",
                self.bins, other.bins
            )));
        }
        self.rebin(union((self.min, self.max), (other.min, other.max)));
        let shift = self.exponent - other.exponent;
        for (j, &c) in other.counts.iter().enumerate() {
            let k = self.local(coarser(other.offset + j as i64, shift));
            self.counts[k] += c;
        }
        self.zeros += other.zeros;
        Ok(())
    }

    /// Widens the window (and the bin width, if needed) to hold `range`.
    fn rebin(&mut self, range: (f32, f32)) {
        let (lo, hi) = (range.0.min(0.0), range.1.max(0.0));
        let exponent = exponent_for(lo, hi, self.bins).max(self.exponent);
        let inv = inv_width(exponent);
        let shift = exponent - self.exponent;
        let old_first = coarser(self.offset, shift);
        let old_last = coarser(self.offset + self.counts.len() as i64 - 1, shift);
        let first = bin_of(lo, inv).min(old_first);
        let last = bin_of(hi, inv).max(old_last);
        self.min = self.min.min(range.0);
        self.max = self.max.max(range.1);
        if shift == 0 && first == self.offset && last == old_last {
            return;
        }
        let mut counts = vec![0u64; (last - first + 1) as usize];
        for (j, &c) in self.counts.iter().enumerate() {
            counts[(coarser(self.offset + j as i64, shift) - first) as usize] += c;
        }
        self.exponent = exponent;
        self.offset = first;
        self.counts = counts;
    }

    /// The position in `counts` of global bin `k` (inside the window by construction).
    fn local(&self, k: i64) -> usize {
        (k - self.offset).clamp(0, self.counts.len() as i64 - 1) as usize
    }

    /// Counts `data`, whose range the window already covers.
    fn fill(&mut self, data: &[f32]) {
        let len = self.counts.len();
        let mut ways = vec![0u32; WAYS * len];
        let mut indices = [0u32; BLOCK];
        for part in data.chunks(FLUSH) {
            for block in part.chunks(BLOCK) {
                self.zeros += block.iter().filter(|&&x| x == 0.0).count() as u64;
                self.block_indices(block, &mut indices);
                scatter(&indices[..block.len()], &mut ways, len);
            }
            for (j, c) in self.counts.iter_mut().enumerate() {
                *c += (0..WAYS).map(|w| u64::from(ways[w * len + j])).sum::<u64>();
            }
            ways.fill(0);
        }
    }

    /// Window positions of up to [`BLOCK`] values: a loop the compiler vectorizes.
    #[inline(always)]
    fn block_indices(&self, block: &[f32], indices: &mut [u32; BLOCK]) {
        let inv = inv_width(self.exponent);
        // The window holds at most MAX_BINS bins around 0, so both fit in i32.
        let (offset, last) = (self.offset as i32, self.counts.len() as i32 - 1);
        for (out, &x) in indices.iter_mut().zip(block) {
            *out = (floor_small(x * inv) - offset).clamp(0, last) as u32;
        }
    }

    fn validate(&self) -> Result<(), ObserverError> {
        let fail = |m: String| Err(ObserverError::invalid_state(m));
        if !(MIN_EXPONENT..=MAX_EXPONENT).contains(&self.exponent) {
            return fail(format!(
                "histogram exponent {} is out of range",
                self.exponent
            ));
        }
        if !(self.min.is_finite() && self.max.is_finite() && self.min <= self.max) {
            return fail(format!(
                "histogram range [{}, {}] is invalid",
                self.min, self.max
            ));
        }
        let (lo, hi) = (self.min.min(0.0), self.max.max(0.0));
        let inv = inv_width(self.exponent);
        let window = self.offset..self.offset + self.counts.len() as i64;
        if self.counts.len() > self.bins
            || !window.contains(&bin_of(lo, inv))
            || !window.contains(&bin_of(hi, inv))
        {
            return fail("histogram window does not match its range".into());
        }
        if self.zeros > self.counts[self.local(0)] || self.total() == 0 {
            return fail("histogram counts are inconsistent".into());
        }
        Ok(())
    }

    pub fn bins(&self) -> usize {
        self.bins
    }

    /// The exact extremes observed.
    pub fn range(&self) -> (f32, f32) {
        (self.min, self.max)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn width(&self) -> f64 {
        2f64.powi(self.exponent)
    }

    /// The signed bins, for the range choosers.
    pub(crate) fn signed(&self) -> Bins {
        Bins {
            counts: self.counts.clone(),
            offset: self.offset,
            width: self.width(),
            zeros: self.zeros,
            min: self.min,
            max: self.max,
        }
    }

    /// The bins of `|x|`: bin `k < 0` covers `(-(k+1) w, -k w]` in magnitude, so it
    /// folds exactly onto bin `-k - 1`.
    pub(crate) fn magnitudes(&self) -> Bins {
        let len = (-self.offset).max(self.offset + self.counts.len() as i64) as usize;
        let mut counts = vec![0u64; len];
        for (j, &c) in self.counts.iter().enumerate() {
            let k = self.offset + j as i64;
            counts[if k < 0 { -k - 1 } else { k } as usize] += c;
        }
        Bins {
            counts,
            offset: 0,
            width: self.width(),
            zeros: self.zeros,
            min: 0.0,
            max: self.min.abs().max(self.max.abs()),
        }
    }
}

/// Global bin `k` at a width `2^shift` times coarser (floor division, negatives too).
fn coarser(k: i64, shift: i32) -> i64 {
    k >> shift.clamp(0, 63)
}

/// Adds one count per index, spreading consecutive indices over [`WAYS`] sub-histograms.
#[inline(always)]
fn scatter(indices: &[u32], ways: &mut [u32], len: usize) {
    let (w0, rest) = ways.split_at_mut(len);
    let (w1, rest) = rest.split_at_mut(len);
    let (w2, w3) = rest.split_at_mut(len);
    let quads = indices.chunks_exact(WAYS);
    let rest = quads.remainder();
    for q in quads {
        w0[q[0] as usize] += 1;
        w1[q[1] as usize] += 1;
        w2[q[2] as usize] += 1;
        w3[q[3] as usize] += 1;
    }
    for &i in rest {
        w0[i as usize] += 1;
    }
}

/// A snapshot of histogram bins for the range choosers: `counts[j]` covers
/// `[(offset + j) w, (offset + j + 1) w)`, and `[min, max]` bounds the data.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    pub counts: Vec<u64>,
    pub offset: i64,
    pub width: f64,
    pub zeros: u64,
    pub min: f32,
    pub max: f32,
}

impl Bins {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The position of the bin that holds 0.
    pub fn zero_bin(&self) -> usize {
        (-self.offset) as usize
    }

    /// The real value of bin edge `j` (local index), clamped into `[min, max]`.
    pub fn edge(&self, j: f64) -> f32 {
        (((self.offset as f64 + j) * self.width) as f32).clamp(self.min, self.max)
    }

    /// The `q`-quantile (`q` in `[0, 1]`), linear inside a bin, clamped into
    /// `[min, max]`. Non-decreasing in `q`.
    pub fn quantile(&self, q: f64) -> f32 {
        let target = q.clamp(0.0, 1.0) * self.total() as f64;
        let mut below = 0.0;
        for (j, &c) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            let c = c as f64;
            if below + c >= target {
                let fraction = ((target - below) / c).clamp(0.0, 1.0);
                return self.edge(j as f64 + fraction);
            }
            below += c;
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use proptest::prelude::*;

    #[test]
    fn canonical_width_and_window() {
        let h = Histogram::of_batch(&[0.0, 1.0, 2.0, 3.0], 4).unwrap();
        // [0, 3] needs 4 bins of width 1.
        assert_eq!(
            (h.exponent, h.offset, h.counts.clone()),
            (0, 0, vec![1, 1, 1, 1])
        );
        assert_eq!(h.zeros, 1);
        let h = Histogram::of_batch(&[-1.5, 0.25], 4).unwrap();
        assert_eq!((h.exponent, h.offset), (-1, -3));
        assert_eq!(h.counts, vec![1, 0, 0, 1]);
        let h = Histogram::of_batch(&[0.0; 5], DEFAULT_BINS).unwrap();
        assert_eq!(
            (h.exponent, h.counts.clone(), h.zeros),
            (MIN_EXPONENT, vec![5], 5)
        );
        let h = Histogram::of_batch(&[-f32::MAX, f32::MAX], 2).unwrap();
        assert_eq!(h.total(), 2);
    }

    #[test]
    fn fast_floor_known_values() {
        for (t, want) in [
            (-1e-7, -1),
            (0.0, 0),
            (-0.0, 0),
            (2.0, 2),
            (-2.0, -2),
            (2.5, 2),
        ] {
            assert_eq!(floor_small(t), want, "{t}");
        }
        assert_eq!(floor_small(-2.5), -3);
        assert_eq!(floor_small(1.999_999_9), 1);
        assert_eq!(floor_small(65536.5), 65536);
    }

    #[test]
    fn growing_merges_aligned_bins() {
        let mut h = Histogram::of_batch(&[0.5, 1.5, 2.5, 3.5], 4).unwrap();
        h.add(&[7.5, -0.5]).unwrap();
        let direct = Histogram::of_batch(&[0.5, 1.5, 2.5, 3.5, 7.5, -0.5], 4).unwrap();
        assert_eq!(h, direct);
        assert_eq!(
            (h.exponent, h.offset, h.counts.clone()),
            (2, -1, vec![1, 4, 1])
        );
    }

    #[test]
    fn magnitudes_fold_exactly() {
        let data = [-1.4, -0.2, 0.0, 0.7, 0.9, 1.1];
        let h = Histogram::of_batch(&data, 8).unwrap();
        let w = h.width() as f32;
        let m = h.magnitudes();
        let mut want = vec![0u64; m.counts.len()];
        for x in data {
            want[(x.abs() / w) as usize] += 1;
        }
        assert_eq!((m.counts, m.min, m.max), (want, 0.0, 1.4));
    }

    #[test]
    fn rejected_batches_leave_no_trace() {
        let mut h = Histogram::of_batch(&[1.0, 2.0], 16).unwrap();
        let before = h.clone();
        assert!(h.add(&[100.0, f32::NAN]).is_err());
        assert!(h.add(&[]).is_err());
        assert_eq!(h, before);
    }

    #[test]
    fn quantiles_interpolate_and_clamp() {
        let data: Vec<f32> = (0..1000).map(|i| i as f32 / 10.0).collect();
        let b = Histogram::of_batch(&data, DEFAULT_BINS).unwrap().signed();
        assert_eq!(b.quantile(0.0), 0.0);
        assert_eq!(b.quantile(1.0), 99.9);
        assert!((b.quantile(0.5) - 50.0).abs() < 0.2, "{}", b.quantile(0.5));
    }

    #[test]
    fn hand_edited_states_are_rejected() {
        let h = Histogram::of_batch(&[-1.0, 2.0], 8).unwrap();
        let json = serde_json::to_value(&h).unwrap();
        let parse = |v: serde_json::Value| serde_json::from_value::<Histogram>(v);
        assert_eq!(parse(json.clone()).unwrap(), h);
        for (field, value) in [
            ("offset", serde_json::json!(5)),
            ("exponent", serde_json::json!(400)),
            ("bins", serde_json::json!(1)),
            ("counts", serde_json::json!([1])),
            ("zeros", serde_json::json!(99)),
            ("max", serde_json::json!(-5.0)),
        ] {
            let mut bad = json.clone();
            bad[field] = value;
            assert!(parse(bad).is_err(), "{field}");
        }
    }

    fn batches() -> impl Strategy<Value = Vec<Vec<f32>>> {
        let value = prop_oneof![-1e3f32..1e3, -1f32..1.0, Just(0.0f32), -1e-3f32..1e-3];
        prop::collection::vec(prop::collection::vec(value, 1..40), 1..6)
    }

    proptest! {
        #[test]
        fn fast_floor_matches_floor(t in -(MAX_BINS as f32) * 2.0..(MAX_BINS as f32) * 2.0) {
            prop_assert_eq!(i64::from(floor_small(t)), bin_of(t, 1.0));
            prop_assert_eq!(f64::from(floor_small(t)), f64::from(t).floor());
        }

        #[test]
        fn batch_order_and_merging_do_not_matter(batches in batches(), bins in 2usize..300) {
            let all: Vec<f32> = batches.concat();
            let direct = Histogram::of_batch(&all, bins).unwrap();
            let mut forward = Histogram::of_batch(&batches[0], bins).unwrap();
            for b in &batches[1..] {
                forward.add(b).unwrap();
            }
            let mut merged = Histogram::of_batch(batches.last().unwrap(), bins).unwrap();
            for b in batches.iter().rev().skip(1) {
                merged.merge(&Histogram::of_batch(b, bins).unwrap()).unwrap();
            }
            prop_assert_eq!(&forward, &direct);
            prop_assert_eq!(&merged, &direct);
            prop_assert!(direct.counts.len() <= bins);
            prop_assert_eq!(direct.total(), all.len() as u64);
        }

        #[test]
        fn every_value_lands_in_its_bin(seed in any::<u64>(), scale in 1e-3f32..1e3) {
            let data: Vec<f32> = Rng::new(seed).normals(500).into_iter().map(|x| x * scale).collect();
            let h = Histogram::of_batch(&data, DEFAULT_BINS).unwrap();
            let w = h.width();
            let mut counts = vec![0u64; h.counts.len()];
            for &x in &data {
                counts[((f64::from(x) / w).floor() as i64 - h.offset) as usize] += 1;
            }
            prop_assert_eq!(counts, h.counts.clone());
            prop_assert!(h.counts.len() > DEFAULT_BINS / 2 - 1);
        }
    }
}
