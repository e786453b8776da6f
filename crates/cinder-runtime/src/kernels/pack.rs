//! Pre-packed weight operands of the GEMMs: panels of [`NR`] output columns, depth in
//! pairs; i8 for the int8 GEMM ([`PairRow`]), i16 for Winograd's transformed filters
//! ([`WidePairRow`]).

use std::fmt;

use super::KernelError;

/// Output columns per packed panel (the micro-kernel's tile width: two AVX2 vectors of i32).
pub const NR: usize = 16;

/// The largest depth accepted: `MAX_DEPTH * 128 * 127 <= i32::MAX`, so no accumulator can
/// overflow whatever the operands.
pub const MAX_DEPTH: usize = (i32::MAX / (128 * 127)) as usize;

/// One depth pair of one panel: `[column][pair]` for the panel's [`NR`] columns, i.e.
/// bytes `2j` and `2j + 1` hold depth `2p` and `2p + 1` of column `j`. Aligned so that the
/// two 16-byte halves never straddle a cache line.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(32))]
pub(super) struct PairRow(pub(super) [i8; 2 * NR]);

/// [`PairRow`] with i16 weights (the operands of `vpmaddwd` as they are, no widening): 64
/// bytes, aligned to a cache line.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(super) struct WidePairRow(pub(super) [i16; 2 * NR]);

/// One depth pair of a panel as the portable micro-kernel reads it: `weight(2j + t)` is
/// column `j` at depth `2p + t`.
pub(super) trait PanelRow: Copy {
    fn weight(&self, i: usize) -> i32;
}

impl PanelRow for PairRow {
    #[inline(always)]
    fn weight(&self, i: usize) -> i32 {
        i32::from(self.0[i])
    }
}

impl PanelRow for WidePairRow {
    #[inline(always)]
    fn weight(&self, i: usize) -> i32 {
        i32::from(self.0[i])
    }
}

/// A pre-packed B operand: `n` rows (output channels) × `k` depth of i8 in [-127, 127].
///
/// Layout: `ceil(n / NR)` panels, each `ceil(k / 2)` `PairRow`s; columns past `n` and
/// the odd depth past `k` are zero. Column sums (for activation zero-point corrections)
/// are computed once here.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedMatrix {
    rows: usize,
    depth: usize,
    data: Vec<PairRow>,
    col_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Packs `b`, row-major `[n][k]`. Errors if `b.len() != n * k`, if a value is -128, or
    /// if `k > MAX_DEPTH`.
    pub fn pack(b: &[i8], n: usize, k: usize) -> Result<Self, KernelError> {
        let wrong_length = || KernelError::WrongLength {
            rows: n,
            depth: k,
            expected: n.saturating_mul(k),
            got: b.len(),
        };
        if n.checked_mul(k).ok_or_else(wrong_length)? != b.len() {
            return Err(wrong_length());
        }
        if k > MAX_DEPTH {
            return Err(KernelError::DepthTooLarge {
                depth: k,
                max: MAX_DEPTH,
            });
        }
        if let Some(i) = b.iter().position(|&v| v == i8::MIN) {
            return Err(KernelError::WeightOutOfRange {
                row: i / k,
                col: i % k,
            });
        }
        let pairs = k.div_ceil(2);
        let mut data = vec![PairRow([0; 2 * NR]); n.div_ceil(NR) * pairs];
        let mut col_sums = Vec::with_capacity(n);
        for j in 0..n {
            let row = &b[j * k..][..k];
            let panel = &mut data[j / NR * pairs..][..pairs];
            for (p, &v) in row.iter().enumerate() {
                panel[p / 2].0[2 * (j % NR) + p % 2] = v;
            }
            col_sums.push(row.iter().map(|&v| i32::from(v)).sum());
        }
        Ok(Self {
            rows: n,
            depth: k,
            data,
            col_sums,
        })
    }

    /// Number of rows `n` (output columns of the GEMM).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Depth `k`.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// `Σ_p b[j][p]` for every row `j`: the correction term for an activation zero point.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Depth pairs per panel, `ceil(k / 2)`.
    pub(super) fn pairs(&self) -> usize {
        self.depth.div_ceil(2)
    }

    /// Panel `q`: output columns `q * NR ..`, all depth pairs.
    pub(super) fn panel(&self, q: usize) -> &[PairRow] {
        let pairs = self.pairs();
        &self.data[q * pairs..][..pairs]
    }
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("depth", &self.depth)
            .finish_non_exhaustive()
    }
}
