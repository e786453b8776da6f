//! Pre-packed weight operands of the GEMMs: panels of [`NR`] output columns, the depth in
//! groups of 32 bits per column: pairs of i8 for the AVX2 and portable int8 GEMMs
//! ([`PairRow`]), quads of i8 for the VNNI ones ([`QuadRow`]), pairs of i16 for
//! Winograd's transformed filters ([`WidePairRow`]). Which layout a [`PackedMatrix`] holds
//! is decided when it is packed, by the process's [`Isa`].

use std::fmt;

use super::KernelError;
use super::isa::Isa;

/// Output columns per packed panel (the micro-kernels' tile width: one zmm or two ymm of
/// i32).
pub const NR: usize = 16;

/// The largest depth accepted: `MAX_DEPTH * 128 * 127 <= i32::MAX`, so no sum of
/// products of an i8 activation and a weight in [-127, 127] can overflow.
pub const MAX_DEPTH: usize = (i32::MAX / (128 * 127)) as usize;

/// The offset that makes an i8 activation a u8 for `vpdpbusd` (`a ^ 0x80 = a + 128`).
pub(super) const VNNI_OFFSET: i32 = 128;

/// An element of a micro-kernel's A operand, converted from an i8 activation.
pub(super) trait LhsElem: Copy {
    /// The value the kernels multiply for activation `code`.
    fn from_code(code: i8) -> Self;
    /// The value, for the portable kernel.
    fn value(self) -> i32;
    /// A given as offset bytes (`code + 128`, as [`super::gemm_u8_cols`] takes it) read in
    /// place, where they are this element; `None` where they must be converted.
    fn in_place(offset_bytes: &[u8]) -> Option<&[Self]>;
}

impl LhsElem for i16 {
    #[inline(always)]
    fn from_code(code: i8) -> Self {
        Self::from(code)
    }

    #[inline(always)]
    fn in_place(_: &[u8]) -> Option<&[Self]> {
        None
    }

    #[inline(always)]
    fn value(self) -> i32 {
        i32::from(self)
    }
}

impl LhsElem for u8 {
    /// `code + 128`.
    #[inline(always)]
    fn from_code(code: i8) -> Self {
        code as u8 ^ 0x80
    }

    #[inline(always)]
    fn in_place(offset_bytes: &[u8]) -> Option<&[Self]> {
        Some(offset_bytes)
    }

    #[inline(always)]
    fn value(self) -> i32 {
        i32::from(self)
    }
}

/// One group row of a panel: for each of the panel's [`NR`] columns, [`Self::GROUP`]
/// consecutive depths, 32 bits in all (so that a kernel broadcasts one 32-bit group of
/// an A row against the whole row).
pub(super) trait PanelRow: Copy {
    /// Depths per column in one row.
    const GROUP: usize;
    /// The A operand's element that multiplies this panel's.
    type Lhs: LhsElem;
    /// Element `i`: column `i / GROUP`, depth `i % GROUP` of the group.
    fn weight(&self, i: usize) -> i32;
}

/// A [`PanelRow`] of i8 weights, packed from a row-major matrix.
pub(super) trait CodeRow: PanelRow + PartialEq + Eq {
    const ZERO: Self;
    fn set(&mut self, i: usize, v: i8);
}

macro_rules! code_row {
    ($(#[$doc:meta])* $name:ident, $group:literal, $lhs:ty, $align:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        #[repr(C, align($align))]
        pub(super) struct $name(pub(super) [i8; $group * NR]);

        impl PanelRow for $name {
            const GROUP: usize = $group;
            type Lhs = $lhs;

            #[inline(always)]
            fn weight(&self, i: usize) -> i32 {
                i32::from(self.0[i])
            }
        }

        impl CodeRow for $name {
            const ZERO: Self = Self([0; $group * NR]);

            fn set(&mut self, i: usize, v: i8) {
                self.0[i] = v;
            }
        }
    };
}

code_row!(
    /// One depth pair of a panel: bytes `2j` and `2j + 1` hold depth `2p` and `2p + 1` of
    /// column `j`. Aligned so that its two 16-byte halves never straddle a cache line.
    PairRow, 2, i16, 32
);
code_row!(
    /// One depth quad of a panel (`vpdpbusd`'s weight operand): bytes `4j .. 4j + 4` hold
    /// depths `4p .. 4p + 4` of column `j`. 64 bytes, aligned to a cache line.
    QuadRow, 4, u8, 64
);

/// [`PairRow`] with i16 weights (the operands of `vpmaddwd` / `vpdpwssd` as they are): 64
/// bytes, aligned to a cache line.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(super) struct WidePairRow(pub(super) [i16; 2 * NR]);

impl PanelRow for WidePairRow {
    const GROUP: usize = 2;
    type Lhs = i16;

    #[inline(always)]
    fn weight(&self, i: usize) -> i32 {
        i32::from(self.0[i])
    }
}

/// The panels of a matrix in one layout, with where each panel's sums start.
#[derive(Clone, Copy)]
pub(super) struct Panels<'a, P> {
    data: &'a [P],
    /// Group rows per panel.
    pub(super) groups: usize,
    /// Per column, padded to whole panels: the value the sums start from (the VNNI
    /// offset's compensation), or empty when they start from 0.
    start: &'a [i32],
}

impl<'a, P> Panels<'a, P> {
    pub(super) fn new(data: &'a [P], groups: usize, start: &'a [i32]) -> Self {
        Self {
            data,
            groups,
            start,
        }
    }

    /// Panel `q`: output columns `q * NR ..`, group rows `rows`, and the values its sums
    /// start from.
    #[inline(always)]
    pub(super) fn panel(
        &self,
        q: usize,
        rows: std::ops::Range<usize>,
    ) -> (&'a [P], Option<&'a [i32; NR]>) {
        let data = &self.data[q * self.groups..][rows];
        let start = self.start.get(q * NR..q * NR + NR);
        (data, start.map(|s| s.try_into().expect("NR values")))
    }
}

/// The packed panels of a [`PackedMatrix`], in its path's layout.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Layout {
    Pairs(Vec<PairRow>),
    /// With `-128 ·` the column sums, padded to whole panels: the sums start there.
    Quads(Vec<QuadRow>, Vec<i32>),
}

/// A pre-packed B operand: `n` rows (output channels) × `k` depth of i8 in [-127, 127].
///
/// Layout: `ceil(n / NR)` panels of `ceil(k / G)` group rows (`G` = 2 or 4 depths, by the
/// path it was packed for); columns past `n` and depths past `k` are zero. Column sums
/// (for activation zero-point corrections) are computed once here.
#[derive(Clone, PartialEq, Eq)]
pub struct PackedMatrix {
    rows: usize,
    depth: usize,
    isa: Isa,
    layout: Layout,
    col_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Packs `b`, row-major `[n][k]`, for the process's path ([`Isa::detect`]). Errors if
    /// `b.len() != n * k`, if a value is -128, or if `k > MAX_DEPTH`.
    pub fn pack(b: &[i8], n: usize, k: usize) -> Result<Self, KernelError> {
        Self::pack_for(Isa::detect(), b, n, k)
    }

    /// [`Self::pack`] for the path `isa` (the GEMM then takes that path when the CPU
    /// supports it, else the portable kernel on the same layout).
    pub fn pack_for(isa: Isa, b: &[i8], n: usize, k: usize) -> Result<Self, KernelError> {
        check_weights(b, n, k)?;
        let col_sums: Vec<i32> = (0..n)
            .map(|j| b[j * k..][..k].iter().map(|&v| i32::from(v)).sum())
            .collect();
        let layout = if isa >= Isa::AvxVnni {
            let mut start = vec![0; n.div_ceil(NR) * NR];
            // |col sum| <= 127 · MAX_DEPTH, so 128 times it fits i32.
            for (s, &sum) in start.iter_mut().zip(&col_sums) {
                *s = -VNNI_OFFSET * sum;
            }
            Layout::Quads(pack_panels(b, n, k), start)
        } else {
            Layout::Pairs(pack_panels(b, n, k))
        };
        Ok(Self {
            rows: n,
            depth: k,
            isa,
            layout,
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

    /// The path this matrix was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `Σ_p b[j][p]` for every row `j`: the correction term for an activation zero point.
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// The packed panels.
    pub(super) fn layout(&self) -> &Layout {
        &self.layout
    }
}

/// Checks the operands of [`PackedMatrix::pack`].
fn check_weights(b: &[i8], n: usize, k: usize) -> Result<(), KernelError> {
    KernelError::check_length(b.len(), n, k)?;
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
    Ok(())
}

/// `b` (`[n][k]`) in panels of [`NR`] columns by group rows of `P::GROUP` depths.
fn pack_panels<P: CodeRow>(b: &[i8], n: usize, k: usize) -> Vec<P> {
    let groups = k.div_ceil(P::GROUP);
    let mut data = vec![P::ZERO; n.div_ceil(NR) * groups];
    for j in 0..n {
        let panel = &mut data[j / NR * groups..][..groups];
        for (p, &v) in b[j * k..][..k].iter().enumerate() {
            panel[p / P::GROUP].set(P::GROUP * (j % NR) + p % P::GROUP, v);
        }
    }
    data
}

impl fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("rows", &self.rows)
            .field("depth", &self.depth)
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}
