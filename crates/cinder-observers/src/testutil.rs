//! Test support: a seeded deterministic generator (SplitMix64, Box-Muller normals), the
//! per-tensor observer specs, and schemes from flags.

use cinder_tensor::{Granularity, Mapping, QuantScheme, Signedness};

/// Every per-tensor observer kind, as spelled on the command line.
pub(crate) const PER_TENSOR_SPECS: [&str; 5] = [
    "minmax",
    "moving-average",
    "entropy",
    "percentile=99",
    "mse",
];

/// A valid scheme from flags (`bits` in 2..=8).
pub(crate) fn scheme_of(
    bits: u8,
    signed: bool,
    symmetric: bool,
    narrow: bool,
    granularity: Granularity,
) -> QuantScheme {
    let signedness = if signed {
        Signedness::Signed
    } else {
        Signedness::Unsigned
    };
    let mapping = if symmetric {
        Mapping::Symmetric
    } else {
        Mapping::Asymmetric
    };
    QuantScheme::new(bits, signedness, mapping, narrow, granularity)
        .expect("bits in 2..=8 make a valid scheme")
}

pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `(0, 1]`.
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// `n` standard normal samples.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }

    /// `n` standard normals followed by `outliers` copies of `outlier`.
    pub fn normals_with_outliers(&mut self, n: usize, outliers: usize, outlier: f32) -> Vec<f32> {
        let mut v = self.normals(n);
        v.extend(std::iter::repeat_n(outlier, outliers));
        v
    }
}
