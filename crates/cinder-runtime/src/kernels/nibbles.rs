//! The product of one activation row by weights of at most 4 bits, held as nibbles: a
//! batch-1 linear layer streams its weights once and does little else with them (the
//! reference ConvNet's fc1: 8 MiB of int8 from L3 per image), so half the bytes is what
//! makes it faster, if unpacking them costs less than the bytes saved.
//!
//! # Layout
//! Panels of [`NR`] output columns, as [`super::PackedMatrix`]'s; each 64-byte row of a
//! panel holds [`NIBBLE_DEPTH`] depths of its 16 columns: byte `4j + t` of row `r` carries
//! `w[j][8r + t] + 8` in its low nibble and `w[j][8r + 4 + t] + 8` in its high nibble
//! (codes in [-8, 7], so `u = w + 8` in [0, 15]; depths past `k` and columns past `n` hold
//! `u = 8`, a zero weight).
//!
//! # Paths
//! | path | kernel |
//! |---|---|
//! | generic | scalar, over the same layout |
//! | avxvnni, avx512vnni-ymm | `vpdpbusd` ymm (VEX, EVEX), a row in two loads of 8 columns |
//! | avx512vnni | `vpdpbusd` zmm, one row (16 columns × 8 depths) per load |
//!
//! On the VNNI paths the unpacking is two `vpand`s: the low nibbles (`u`) and the high ones
//! masked in place (`16u`) are `vpdpbusd`'s unsigned operand and the activation codes its
//! signed one, so that one chain sums `Σ u·a` and the other `16 Σ u·a`, shifted back at
//! the end; then `Σ w·a = Σ u·a - 8 Σ a`. Sign-extending the nibbles instead (xor, sub)
//! made the loop compute-bound, no faster than the int8 weights. The plan takes this
//! kernel for static linear layers whose codes fit 4 bits, at batch 1, on the paths where
//! it was measured faster ([`Isa::nibble_gemv_pays`]).
//!
//! # Exactness
//! Every product and sum of four is exact in `vpdpbusd`. The high chain reaches at most
//! `k / 8 · 4 · 240 · 128 = 15360 k`, the low one a sixteenth of that, and `8 |Σ a|` at
//! most `1024 k`: all within i32 for `k ≤` [`super::MAX_DEPTH`], which the packing checks.

use std::ops::Range;

use super::KernelError;
use super::isa::Isa;
use super::pack::{MAX_DEPTH, NR};
#[cfg(target_arch = "x86_64")]
use super::x86::{Avx512Vnni, AvxVnni};

/// Depths per row of a panel.
pub const NIBBLE_DEPTH: usize = 8;

/// One 64-byte row of a panel (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub(super) struct NibbleRow(pub(super) [u8; 64]);

/// The nibble `u = w + 8` of a code in [-8, 7].
fn nibble(w: i8) -> u8 {
    (w + 8) as u8
}

/// Weights of at most 4 bits packed as nibbles, for [`gemv_s4`].
#[derive(Clone, PartialEq, Eq)]
pub struct PackedNibbles {
    n: usize,
    k: usize,
    isa: Isa,
    rows: Vec<NibbleRow>,
}

impl std::fmt::Debug for PackedNibbles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedNibbles")
            .field("n", &self.n)
            .field("k", &self.k)
            .field("isa", &self.isa)
            .finish()
    }
}

impl PackedNibbles {
    /// Packs `b` (`n` rows of `k` codes, row-major) for the process's path
    /// ([`Isa::detect`]) when every code lies in [-8, 7]; `Ok(None)` when one does not
    /// (weights of more than 4 bits).
    pub fn pack(b: &[i8], n: usize, k: usize) -> Result<Option<Self>, KernelError> {
        Self::pack_for(Isa::detect(), b, n, k)
    }

    /// [`Self::pack`] for the best path at or below `isa` that the CPU supports (the
    /// layout is the same for every path; [`gemv_s4`] takes the recorded one).
    pub fn pack_for(isa: Isa, b: &[i8], n: usize, k: usize) -> Result<Option<Self>, KernelError> {
        let expected = n.checked_mul(k).filter(|&e| e == b.len());
        if expected.is_none() {
            return Err(KernelError::WrongLength {
                rows: n,
                depth: k,
                expected: n.saturating_mul(k),
                got: b.len(),
            });
        }
        if k > MAX_DEPTH {
            return Err(KernelError::DepthTooLarge {
                depth: k,
                max: MAX_DEPTH,
            });
        }
        if b.iter().any(|w| !(-8..=7).contains(w)) {
            return Ok(None);
        }
        let per_panel = k.div_ceil(NIBBLE_DEPTH);
        let mut rows = vec![NibbleRow([0x88; 64]); n.div_ceil(NR) * per_panel];
        for (j, column) in b.chunks_exact(k.max(1)).enumerate().take(n) {
            let panel = &mut rows[j / NR * per_panel..][..per_panel];
            for (d, &w) in column.iter().enumerate() {
                let byte = &mut panel[d / NIBBLE_DEPTH].0[j % NR * 4 + d % 4];
                let high = d % NIBBLE_DEPTH >= 4;
                *byte = match high {
                    false => *byte & 0xf0 | nibble(w),
                    true => *byte & 0x0f | nibble(w) << 4,
                };
            }
        }
        Ok(Some(Self {
            n,
            k,
            isa: Isa::best_up_to(isa),
            rows,
        }))
    }

    /// Output columns.
    pub fn rows(&self) -> usize {
        self.n
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    /// The path this matrix was packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The rows of panel `q`.
    pub(super) fn panel(&self, q: usize) -> &[NibbleRow] {
        let per_panel = self.k.div_ceil(NIBBLE_DEPTH);
        &self.rows[q * per_panel..][..per_panel]
    }
}

/// `c[j - cols.start] = Σ_p a[p] · b[j][p]` for the output columns `j` in `cols`, exact;
/// returns the path that ran. `a_sum` is `Σ_p a[p]` (as [`super::row_sums_s8`] gives it),
/// taken once per row by the caller so that blocks of columns do not sum it again. Ranges
/// starting at a multiple of [`NR`] store whole panels in place.
///
/// # Panics
/// If `a` holds fewer than `b.depth()` values, `cols` is not inside `0..b.rows()`, or `c`
/// holds fewer than `cols.len()` values.
pub fn gemv_s4(a: &[i8], a_sum: i32, b: &PackedNibbles, cols: Range<usize>, c: &mut [i32]) -> Isa {
    assert!(
        a.len() >= b.k,
        "gemv_s4: a holds {} values, need {}",
        a.len(),
        b.k
    );
    assert!(
        cols.start <= cols.end && cols.end <= b.n && c.len() >= cols.len(),
        "gemv_s4: columns {cols:?} outside 0..{} or c too short",
        b.n
    );
    let a = &a[..b.k];
    debug_assert_eq!(a.iter().map(|&v| i32::from(v)).sum::<i32>(), a_sum);
    #[cfg(target_arch = "x86_64")]
    match (b.isa, Avx512Vnni::detect(), AvxVnni::detect()) {
        (Isa::Avx512Vnni, Some(token), _) => {
            token.gemv_s4(a, a_sum, b, cols, c);
            return Isa::Avx512Vnni;
        }
        (Isa::Avx512VnniYmm, Some(token), _) => {
            token.ymm().gemv_s4(a, a_sum, b, cols, c);
            return Isa::Avx512VnniYmm;
        }
        (Isa::AvxVnni, _, Some(token)) => {
            token.gemv_s4(a, a_sum, b, cols, c);
            return Isa::AvxVnni;
        }
        _ => {}
    }
    gemv_generic(a, a_sum, b, cols, c);
    Isa::Generic
}

/// The SIMD paths' walk over the panels of `cols`: `panel_sums(whole, tail, panel)` gives
/// a panel's 16 sums, `whole` holding 8 activation codes per whole row of depths and
/// `tail` the codes of the partial last row (padded with zero activations), if any.
#[cfg(target_arch = "x86_64")]
pub(super) fn by_panels(
    a: &[i8],
    b: &PackedNibbles,
    cols: Range<usize>,
    c: &mut [i32],
    mut panel_sums: impl FnMut(&[i8], &[i8; NIBBLE_DEPTH], &[NibbleRow]) -> [i32; NR],
) {
    let whole = a.len() / NIBBLE_DEPTH * NIBBLE_DEPTH;
    let mut tail = [0i8; NIBBLE_DEPTH];
    tail[..a.len() - whole].copy_from_slice(&a[whole..]);
    for q in cols.start / NR..cols.end.div_ceil(NR) {
        let sums = panel_sums(&a[..whole], &tail, b.panel(q));
        let lanes = (q * NR).max(cols.start)..(q * NR + NR).min(cols.end);
        let from = lanes.start - q * NR;
        c[lanes.start - cols.start..][..lanes.len()].copy_from_slice(&sums[from..][..lanes.len()]);
    }
}

/// [`gemv_s4`] in scalar code. Operands checked by the caller.
pub(super) fn gemv_generic(
    a: &[i8],
    a_sum: i32,
    b: &PackedNibbles,
    cols: Range<usize>,
    c: &mut [i32],
) {
    for (j, out) in cols.clone().zip(c.iter_mut()) {
        let (panel, lane) = (b.panel(j / NR), j % NR);
        let mut sum = 0i32;
        for (d, &v) in a.iter().enumerate() {
            let byte = panel[d / NIBBLE_DEPTH].0[lane * 4 + d % 4];
            let u = match d % NIBBLE_DEPTH >= 4 {
                false => byte & 0x0f,
                true => byte >> 4,
            };
            sum += i32::from(u) * i32::from(v);
        }
        *out = sum - 8 * a_sum;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::kernels::generic::reference;
    use crate::kernels::row_sums_s8;
    use crate::synthetic::Rng;

    /// `n × k` codes in [-8, 7], and an activation row of any i8 (the extremes often).
    fn operands(n: usize, k: usize, seed: u64) -> (Vec<i8>, Vec<i8>) {
        let mut rng = Rng::new(seed);
        let b = (0..n * k)
            .map(|_| (rng.next_u64() % 16) as i8 - 8)
            .collect();
        let a = (0..k)
            .map(|_| match rng.next_u64() % 4 {
                0 => -128,
                1 => 127,
                _ => rng.next_u64() as i8,
            })
            .collect();
        (b, a)
    }

    /// The paths this CPU has.
    fn paths() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|isa| isa.supported())
    }

    proptest! {
        /// Every path the CPU has (and the generic kernel) equals the reference GEMM on
        /// the same codes, for any columns.
        #[test]
        fn gemv_equals_the_reference(
            n in prop_oneof![1usize..40, Just(1024)], k in prop_oneof![1usize..70, 500usize..520],
            from in 0usize..40, len in 0usize..40, seed in any::<u64>(),
        ) {
            let (b, a) = operands(n, k, seed);
            let mut want = vec![0; n];
            reference::gemm_s8(&a, k, 1, &b, n, k, &mut want, n);
            let start = from % n;
            let cols = start..n.min(start + len);
            let mut a_sum = [0];
            row_sums_s8(&a, k, 1, k, &mut a_sum);
            for isa in paths() {
                let packed = PackedNibbles::pack_for(isa, &b, n, k).unwrap().expect("4-bit codes");
                let mut got = vec![0x5eed; cols.len()];
                gemv_s4(&a, a_sum[0], &packed, cols.clone(), &mut got);
                prop_assert_eq!(&got[..], &want[cols.clone()], "path {}", isa);
                let mut generic = vec![0x5eed; cols.len()];
                gemv_generic(&a, a_sum[0], &packed, cols.clone(), &mut generic);
                prop_assert_eq!(&generic[..], &want[cols.clone()]);
            }
        }
    }

    /// Each VNNI path the CPU has runs its own kernel; the others the generic one.
    #[test]
    fn every_vnni_path_runs_its_own_kernel() {
        let (b, a) = operands(20, 24, 1);
        let a_sum = a.iter().map(|&v| i32::from(v)).sum();
        for isa in paths() {
            let packed = PackedNibbles::pack_for(isa, &b, 20, 24).unwrap().unwrap();
            let ran = gemv_s4(&a, a_sum, &packed, 0..20, &mut [0; 20]);
            let want = match isa >= Isa::AvxVnni {
                true => isa,
                false => Isa::Generic,
            };
            assert_eq!(ran, want);
        }
    }

    #[test]
    fn wider_codes_are_not_packed_and_bad_shapes_are_errors() {
        assert_eq!(PackedNibbles::pack(&[0, 8], 1, 2), Ok(None));
        assert_eq!(PackedNibbles::pack(&[0, -9], 2, 1), Ok(None));
        assert!(matches!(
            PackedNibbles::pack(&[0; 5], 2, 3),
            Err(KernelError::WrongLength { .. })
        ));
        assert!(matches!(
            PackedNibbles::pack(&[], 0, MAX_DEPTH + 1),
            Err(KernelError::DepthTooLarge { .. })
        ));
    }
}
