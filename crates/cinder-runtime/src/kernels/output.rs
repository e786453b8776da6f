//! The output stage's contract (bias, requantization, zero point, clamp: [`OutputStage`])
//! and its entry points, dispatched by the process's [`Isa`]; row sums of A.

use cinder_tensor::RequantMultiplier;

use super::generic;
use super::isa::{Isa, dispatch};
use super::work::Vectorizable;

/// Largest `|zp_out|` accepted: keeps `lo - zp_out` and `hi - zp_out` far from overflow.
const MAX_ZERO_POINT: i32 = 1 << 24;

/// Parameters of the output stage for `bias.len()` channels:
/// `out[j] = clamp(zp_out + requant_j(acc[j] + bias[j]), lo, hi)`.
#[derive(Debug, Clone, Copy)]
pub struct OutputStage<'a> {
    /// One int32 bias per channel (scale `S_in · S_w`, zero point 0); `acc + bias` wraps.
    pub bias: &'a [i32],
    /// One multiplier per channel, or a single one for all channels. Mantissas must be
    /// non-negative and exponents in `[-31, 30]`, as `RequantMultiplier::new` and
    /// `from_real` guarantee.
    pub mult: &'a [RequantMultiplier],
    /// Output zero point, `|zp_out| <= 2^24`.
    pub zp_out: i32,
    /// Clamp bounds, `-128 <= lo <= hi <= 127` (a fused ReLU raises `lo` to `zp_out`).
    pub lo: i32,
    pub hi: i32,
}

impl OutputStage<'_> {
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.bias.len()
    }

    /// The multiplier of channel `j`.
    #[inline]
    pub fn multiplier(&self, j: usize) -> RequantMultiplier {
        if self.mult.len() == 1 {
            self.mult[0]
        } else {
            self.mult[j]
        }
    }

    /// Panics unless the parameters are consistent (see the field docs).
    fn check(&self) {
        let n = self.channels();
        assert!(
            self.mult.len() == n || self.mult.len() == 1,
            "output stage: {} multipliers for {n} channels",
            self.mult.len()
        );
        assert!(
            -128 <= self.lo && self.lo <= self.hi && self.hi <= 127,
            "output stage: clamp [{}, {}] outside [-128, 127]",
            self.lo,
            self.hi
        );
        assert!(
            self.zp_out.abs() <= MAX_ZERO_POINT,
            "output stage: zero point {} too large",
            self.zp_out
        );
        let valid = |m: &RequantMultiplier| m.multiplier >= 0 && (-31..=30).contains(&m.exponent);
        assert!(
            self.mult.iter().all(valid),
            "output stage: multiplier not built by RequantMultiplier::new"
        );
    }
}

/// Output stage of one row: `out[j] = clamp(zp_out + requant_j(acc[j] + bias[j]), lo, hi)`
/// for `j < bias.len()`, `mult` per channel or a single one broadcast. Bit-identical to
/// `RequantMultiplier::apply` (Q0.31 fixed point, one rounding).
///
/// # Panics
/// If `acc` or `out` are shorter than `bias`, or the parameters are invalid (see
/// [`OutputStage`]).
pub fn requantize_s8(
    acc: &[i32],
    bias: &[i32],
    mult: &[RequantMultiplier],
    zp_out: i32,
    lo: i32,
    hi: i32,
    out: &mut [i8],
) {
    let stage = OutputStage {
        bias,
        mult,
        zp_out,
        lo,
        hi,
    };
    requantize_s8_rows(&stage, acc, 0, 1, out, 0);
}

/// [`requantize_s8`] over `rows` rows: row `i` reads `acc[i * acc_ld ..]` and writes
/// `out[i * out_ld ..]`. Multipliers are unpacked once per call, so prefer one call per
/// GEMM block over one per row.
///
/// # Panics
/// If a buffer is too short for `rows` rows of `stage.channels()` at its stride, a stride
/// is smaller than the row width (for `rows > 1`), or the stage is invalid.
pub fn requantize_s8_rows(
    stage: &OutputStage<'_>,
    acc: &[i32],
    acc_ld: usize,
    rows: usize,
    out: &mut [i8],
    out_ld: usize,
) {
    stage.check();
    let n = stage.channels();
    if rows == 0 {
        return;
    }
    assert!(
        rows == 1 || (acc_ld >= n && out_ld >= n),
        "requantize: strides {acc_ld}, {out_ld} < width {n}"
    );
    assert!(
        acc.len() >= (rows - 1) * acc_ld + n,
        "requantize: acc holds {} values, need {rows} rows of {n}",
        acc.len()
    );
    assert!(
        out.len() >= (rows - 1) * out_ld + n,
        "requantize: out holds {} values, need {rows} rows of {n}",
        out.len()
    );
    requantize_rows_with(Isa::detect(), stage, acc, acc_ld, rows, out, out_ld);
}

/// [`requantize_s8_rows`] on the path `isa` (AVX-512 on [`Isa::Avx512Vnni`], AVX2 from
/// [`Isa::Avx2`] up, when the CPU has it), operands checked.
pub(super) fn requantize_rows_with(
    isa: Isa,
    stage: &OutputStage<'_>,
    acc: &[i32],
    acc_ld: usize,
    rows: usize,
    out: &mut [i8],
    out_ld: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = isa.avx512vnni() {
        return token.requantize_rows(stage, acc, acc_ld, rows, out, out_ld);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(token) = isa.avx2() {
        return token.requantize_rows(stage, acc, acc_ld, rows, out, out_ld);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = isa;
    generic::requantize_rows(stage, acc, acc_ld, rows, 0, out, out_ld);
}

/// `out[i] = Σ_p a[i * lda + p]` for `i < m`, `p < k`: the correction term for a weight
/// zero point.
///
/// # Panics
/// If `a` holds fewer than `m` rows of `k` at stride `lda`, or `out` fewer than `m` values.
pub fn row_sums_s8(a: &[i8], lda: usize, m: usize, k: usize, out: &mut [i32]) {
    if m == 0 {
        return;
    }
    assert!(
        (m == 1 || lda >= k) && a.len() >= (m - 1) * lda + k,
        "row_sums: a too short"
    );
    dispatch(RowSums {
        a,
        lda,
        k,
        out: &mut out[..m],
    });
}

/// The work of [`row_sums_s8`], checked.
struct RowSums<'a> {
    a: &'a [i8],
    lda: usize,
    k: usize,
    out: &'a mut [i32],
}

impl Vectorizable for RowSums<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for (i, o) in self.out.iter_mut().enumerate() {
            *o = self.a[i * self.lda..][..self.k]
                .iter()
                .map(|&v| i32::from(v))
                .sum();
        }
    }
}
