//! Portable code of the generic path: the micro-kernel (plain i32 arithmetic the
//! compiler may vectorize, for every panel layout) and the scalar output stage.

use super::reference;
use crate::kernels::output::OutputStage;
use crate::kernels::pack::{LhsElem, NR, PanelRow};
use crate::kernels::tile::{MicroKernel, Rows, TileOut, check_tile};

/// The portable micro-kernel.
#[derive(Debug, Clone, Copy)]
pub(in crate::kernels) struct Portable;

impl<P: PanelRow> MicroKernel<P> for Portable {
    const ROWS: usize = 6;

    #[inline(always)]
    fn tile<const R: usize>(self, a: Rows<'_, P::Lhs>, panel: &[P], mut out: TileOut<'_>) {
        check_tile(R, a, panel, &out);
        let mut acc = [*out.start.unwrap_or(&[0; NR]); R];
        let g = P::GROUP;
        for (p, row) in panel.iter().enumerate() {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a_r = &a.data[r * a.stride + g * p..][..g];
                for (j, v) in acc_r.iter_mut().enumerate() {
                    for (t, x) in a_r.iter().enumerate() {
                        *v = v.wrapping_add(x.value() * row.weight(g * j + t));
                    }
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            out.put_row(r, row);
        }
    }
}

/// The scalar output stage for channels `from..` of every row.
pub(in crate::kernels) fn requantize_rows(
    stage: &OutputStage<'_>,
    acc: &[i32],
    acc_ld: usize,
    rows: usize,
    from: usize,
    out: &mut [i8],
    out_ld: usize,
) {
    let n = stage.channels();
    for i in 0..rows {
        for j in from..n {
            let (zp, lo, hi) = (stage.zp_out, stage.lo, stage.hi);
            out[i * out_ld + j] = reference::requantize_one(
                acc[i * acc_ld + j],
                stage.bias[j],
                stage.multiplier(j),
                zp,
                lo,
                hi,
            );
        }
    }
}
