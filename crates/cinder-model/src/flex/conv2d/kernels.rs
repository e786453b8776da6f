//! 2-D convolution and both of its gradients on contiguous NCHW `f32` slices, by im2col and
//! GEMM (the `gemm` crate, the multiply burn flex uses).
//!
//! Each image is lowered to a column matrix `[K, N]` (`K` = input channels of a group × kernel
//! height × kernel width, `N` = output pixels), so that per image and group
//! - the output is `W [C_out, K] · cols [K, N]`,
//! - the weight gradient accumulates `dY [C_out, N] · colsᵀ [N, K]`,
//! - the input gradient is `Wᵀ [K, C_out] · dY [C_out, N]` folded back onto the image (col2im).
//!
//! A stride-1 convolution whose output is as large as its input skips the column matrix for
//! its output and input gradient where the CPU allows (the `direct` module).
//!
//! Images run in parallel on rayon's pool and each multiply is single-threaded. The weight
//! gradient is summed over a fixed split of the batch (not over threads), so its value does
//! not depend on the number of threads. A 1×1 convolution with stride 1 and no padding uses
//! the image itself as its column matrix.

use rayon::prelude::*;

use super::direct::{self, PackedWeight};
use super::geometry::ConvGeometry;
use crate::flex::gemm::{MatRef, matmul, sum_in_order};

/// Fills `cols [K, N]` with the patches of one group's input channels `image [C_in/g, H, W]`.
fn im2col(geom: &ConvGeometry, image: &[f32], cols: &mut [f32]) {
    let channels = image.chunks_exact(geom.height * geom.width);
    for_each_row(geom, cols, channels, |tap, span, row, channel| match span {
        Some(span) => span.gather(channel, row),
        None => strided_gather(geom, tap, channel, row),
    });
}

/// Adds `cols [K, N]` back onto one group's input channels `image [C_in/g, H, W]` (the
/// adjoint of [`im2col`]). `cols` is scratch: a shifted row's taps outside the image are
/// zeroed in it before the row is added as one span.
fn col2im(geom: &ConvGeometry, cols: &mut [f32], image: &mut [f32]) {
    let channels = image.chunks_exact_mut(geom.height * geom.width);
    for_each_row(geom, cols, channels, |tap, span, row, channel| match span {
        Some(span) => span.scatter_add(row, channel),
        None => strided_scatter_add(geom, tap, row, channel),
    });
}

/// `f(tap, shifted span, row, channel)` for each row of a column matrix `[K, N]`, in row
/// order: the group's channels, each with every kernel tap.
fn for_each_row<C>(
    geom: &ConvGeometry,
    cols: &mut [f32],
    channels: impl Iterator<Item = C>,
    mut f: impl FnMut([usize; 2], Option<ShiftedSpan>, &mut [f32], &mut C),
) {
    let plane_len = geom.height * geom.width;
    let mut rows = cols.chunks_exact_mut(geom.out_pixels());
    for mut channel in channels.take(geom.group_in()) {
        for tap in geom.taps() {
            let row = rows.next().expect("cols holds K rows");
            f(
                tap,
                ShiftedSpan::of(geom, tap, plane_len),
                row,
                &mut channel,
            );
        }
    }
}

/// For a stride-1 convolution whose output is as wide as its input (`kernel width =
/// 2 × padding + 1`), the kernel tap `(i, j)` maps output pixel `f` (flat) to input pixel
/// `f + (i − pad_h)·W + (j − pad_w)`: one column-matrix row is one shifted span of the plane,
/// except at the taps outside the image (whole output rows above or below it, and the
/// columns that a horizontal shift wraps onto the neighbouring row), which read zero.
/// One long copy or add instead of a short one per output row.
struct ShiftedSpan {
    /// Output pixels of the rows whose tap row lies inside the image.
    rows: std::ops::Range<usize>,
    /// Valid output columns `x_lo..x_hi` of each of those rows.
    columns: std::ops::Range<usize>,
    /// Output pixel `rows.start + skip` reads input pixel `input`, for `len` pixels.
    skip: usize,
    input: usize,
    len: usize,
    width: usize,
}

impl ShiftedSpan {
    fn of(geom: &ConvGeometry, [i, j]: [usize; 2], plane_len: usize) -> Option<Self> {
        if !geom.is_same_stride_one() {
            return None;
        }
        let w = geom.width;
        let (y_lo, y_hi) = geom.valid_outputs(0, i);
        let (x_lo, x_hi) = geom.valid_outputs(1, j);
        let (first, last) = (y_lo * w, y_hi * w);
        let shift = (i * w + j) as isize - (geom.padding[0] * w + geom.padding[1]) as isize;
        // The span's ends may fall before or after the plane: those pixels are wrapped
        // columns, which read zero anyway.
        let input = first as isize + shift;
        let skip = input.min(0).unsigned_abs().min(last - first);
        let input = (input.max(0) as usize).min(plane_len);
        Some(Self {
            rows: first..last,
            columns: x_lo..x_hi,
            skip,
            input,
            len: (last - first - skip).min(plane_len - input),
            width: w,
        })
    }

    /// Zeroes the wrapped columns of the valid rows of `row`, a column at a time (a
    /// `fill` per output row would call `memset` for one or two pixels).
    fn clear_wrapped(&self, row: &mut [f32]) {
        let wrapped = (0..self.columns.start).chain(self.columns.end..self.width);
        for x in wrapped {
            let column = row[self.rows.clone()]
                .iter_mut()
                .skip(x)
                .step_by(self.width);
            column.for_each(|v| *v = 0.0);
        }
    }

    fn gather(&self, channel: &[f32], row: &mut [f32]) {
        row[..self.rows.start].fill(0.0);
        row[self.rows.end..].fill(0.0);
        let out = self.rows.start + self.skip;
        row[out..][..self.len].copy_from_slice(&channel[self.input..][..self.len]);
        self.clear_wrapped(row);
    }

    fn scatter_add(&self, row: &mut [f32], channel: &mut [f32]) {
        self.clear_wrapped(row);
        let out = &row[self.rows.start + self.skip..][..self.len];
        let dst = &mut channel[self.input..][..self.len];
        dst.iter_mut().zip(out).for_each(|(d, &v)| *d += v);
    }
}

/// The output columns `x_lo..x_hi` of output row `y` whose tap `(i, j)` lies inside the
/// image, and the flat index of the input pixel that `x_lo` reads; `None` when none does.
fn row_taps(geom: &ConvGeometry, [i, j]: [usize; 2], y: usize) -> Option<(usize, usize, usize)> {
    let (y_lo, y_hi) = geom.valid_outputs(0, i);
    let (x_lo, x_hi) = geom.valid_outputs(1, j);
    let inside = (y_lo..y_hi).contains(&y) && x_lo < x_hi;
    inside.then(|| {
        let first = (y * geom.stride[0] + i - geom.padding[0]) * geom.width;
        (
            x_lo,
            x_hi,
            first + x_lo * geom.stride[1] + j - geom.padding[1],
        )
    })
}

/// One row of [`im2col`] in general: a copy per output row, strided when the stride is.
fn strided_gather(geom: &ConvGeometry, tap: [usize; 2], channel: &[f32], row: &mut [f32]) {
    let (ow, sw) = (geom.output_size()[1], geom.stride[1]);
    for (y, out_row) in row.chunks_exact_mut(ow).enumerate() {
        let Some((x_lo, x_hi, first)) = row_taps(geom, tap, y) else {
            out_row.fill(0.0);
            continue;
        };
        out_row[..x_lo].fill(0.0);
        out_row[x_hi..].fill(0.0);
        let taps = channel[first..].iter().step_by(sw);
        out_row[x_lo..x_hi]
            .iter_mut()
            .zip(taps)
            .for_each(|(d, &v)| *d = v);
    }
}

/// One row of [`col2im`] in general: an add per output row, strided when the stride is.
fn strided_scatter_add(geom: &ConvGeometry, tap: [usize; 2], row: &[f32], channel: &mut [f32]) {
    let (ow, sw) = (geom.output_size()[1], geom.stride[1]);
    for (y, out_row) in row.chunks_exact(ow).enumerate() {
        if let Some((x_lo, x_hi, first)) = row_taps(geom, tap, y) {
            let taps = channel[first..].iter_mut().step_by(sw);
            taps.zip(&out_row[x_lo..x_hi]).for_each(|(d, &v)| *d += v);
        }
    }
}

/// The convolution of `input [B, C_in, H, W]` with `weight [C_out, C_in/g, kh, kw]`:
/// `[B, C_out, H_out, W_out]`, no bias.
pub fn conv2d_forward(geom: &ConvGeometry, input: &[f32], weight: &[f32]) -> Vec<f32> {
    assert_eq!(
        input.len(),
        geom.batch * geom.image_len(),
        "conv2d: input size"
    );
    assert_eq!(weight.len(), geom.weight_len(), "conv2d: weight size");
    if direct::applies(geom) {
        return direct::convolve(geom, input, &PackedWeight::forward(geom, weight));
    }
    let (k, n) = (geom.col_rows(), geom.out_pixels());
    let mut output = vec![0.0; geom.batch * geom.output_image_len()];
    if output.is_empty() {
        return output;
    }
    let buffer_len = if geom.is_pointwise() { 0 } else { k * n };
    output
        .par_chunks_mut(geom.output_image_len())
        .zip(input.par_chunks(geom.image_len().max(1)))
        .for_each_init(
            || vec![0.0; buffer_len],
            |cols, (out_image, image)| {
                for g in 0..geom.groups {
                    let group_image = group_input(geom, image, g);
                    let lhs = MatRef::rows(&weight[g * geom.group_out() * k..], k);
                    let out = &mut out_image[g * geom.group_out() * n..][..geom.group_out() * n];
                    let cols = columns(geom, group_image, cols);
                    matmul(
                        geom.group_out(),
                        n,
                        k,
                        out,
                        false,
                        lhs,
                        MatRef::rows(cols, n),
                    );
                }
            },
        );
    output
}

/// One group's input channels of one image.
fn group_input<'a>(geom: &ConvGeometry, image: &'a [f32], group: usize) -> &'a [f32] {
    let len = geom.group_in() * geom.height * geom.width;
    &image[group * len..][..len]
}

/// The column matrix of one group's channels: the channels themselves for a pointwise
/// convolution, else [`im2col`] into `buffer`.
fn columns<'a>(geom: &ConvGeometry, group_image: &'a [f32], buffer: &'a mut [f32]) -> &'a [f32] {
    if geom.is_pointwise() {
        group_image
    } else {
        im2col(geom, group_image, buffer);
        buffer
    }
}

/// Which gradients [`conv2d_backward`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub input: bool,
    pub weight: bool,
}

/// The gradients of the convolution with respect to its input (`[B, C_in, H, W]`) and its
/// weight (`[C_out, C_in/g, kh, kw]`), given the output gradient `[B, C_out, H_out, W_out]`;
/// each only where `wanted`.
pub fn conv2d_backward(
    geom: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    output_grad: &[f32],
    wanted: Wanted,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    assert_eq!(
        input.len(),
        geom.batch * geom.image_len(),
        "conv2d: input size"
    );
    assert_eq!(weight.len(), geom.weight_len(), "conv2d: weight size");
    assert_eq!(
        output_grad.len(),
        geom.batch * geom.output_image_len(),
        "conv2d: gradient size"
    );
    let weight_grad = match wanted.weight {
        true if direct::applies(geom) => Some(direct::weight_gradient(geom, input, output_grad)),
        true => Some(weight_gradient(geom, input, output_grad)),
        false => None,
    };
    let input_grad = match wanted.input {
        true if direct::applies(geom) => Some(direct::convolve(
            geom,
            output_grad,
            &PackedWeight::adjoint(geom, weight),
        )),
        true => {
            let mut grad = vec![0.0; input.len()];
            input_gradient(geom, weight, output_grad, &mut grad);
            Some(grad)
        }
        false => None,
    };
    (input_grad, weight_grad)
}

/// `Σ_b dY_b · cols_bᵀ` per group, summed over fixed parts of the batch
/// ([`ConvGeometry::images_per_part`]).
///
/// Each part sums the transpose `cols_b · dY_bᵀ` (`[K, C_out/g]` per group) and the total is
/// transposed once at the end: in that orientation the `gemm` crate packs the small `dY_b`
/// instead of transposing the whole column matrix into its panels for every image.
fn weight_gradient(geom: &ConvGeometry, input: &[f32], output_grad: &[f32]) -> Vec<f32> {
    let (k, n) = (geom.col_rows(), geom.out_pixels());
    let per_part = geom.images_per_part();
    let image_len = geom.image_len().max(1);
    let out_len = geom.output_image_len().max(1);
    let parts: Vec<Vec<f32>> = input
        .par_chunks(per_part * image_len)
        .zip(output_grad.par_chunks(per_part * out_len))
        .map(|(images, grads)| {
            let mut part = vec![0.0; geom.weight_len()];
            let mut buffer = vec![0.0; if geom.is_pointwise() { 0 } else { k * n }];
            for (image, grad) in images
                .chunks_exact(image_len)
                .zip(grads.chunks_exact(out_len))
            {
                for g in 0..geom.groups {
                    let cols = columns(geom, group_input(geom, image, g), &mut buffer);
                    let rows = geom.group_out();
                    let dy_t = MatRef::transposed(&grad[g * rows * n..][..rows * n], n);
                    let dw_t = &mut part[g * rows * k..][..rows * k];
                    matmul(k, rows, n, dw_t, true, MatRef::rows(cols, n), dy_t);
                }
            }
            part
        })
        .collect();
    untranspose_groups(geom, &sum_in_order(parts, geom.weight_len()))
}

/// `[K, C_out/g]` per group (the transposed weight gradient) as `[C_out/g, K]` per group.
fn untranspose_groups(geom: &ConvGeometry, transposed: &[f32]) -> Vec<f32> {
    let (k, rows) = (geom.col_rows(), geom.group_out());
    let mut out = vec![0.0; transposed.len()];
    for (dst, src) in out
        .chunks_exact_mut(rows * k)
        .zip(transposed.chunks_exact(rows * k))
    {
        for (r, dst_row) in dst.chunks_exact_mut(k).enumerate() {
            dst_row
                .iter_mut()
                .zip(src[r..].iter().step_by(rows))
                .for_each(|(d, &v)| *d = v);
        }
    }
    out
}

/// `col2im(Wᵀ · dY_b)` per image and group, written into `input_grad` (zeroed).
fn input_gradient(
    geom: &ConvGeometry,
    weight: &[f32],
    output_grad: &[f32],
    input_grad: &mut [f32],
) {
    let (k, n) = (geom.col_rows(), geom.out_pixels());
    let buffer_len = if geom.is_pointwise() { 0 } else { k * n };
    input_grad
        .par_chunks_mut(geom.image_len().max(1))
        .zip(output_grad.par_chunks(geom.output_image_len().max(1)))
        .for_each_init(
            || vec![0.0; buffer_len],
            |dcols, (dx_image, grad)| {
                for g in 0..geom.groups {
                    let rows = geom.group_out();
                    let lhs = MatRef::transposed(&weight[g * rows * k..][..rows * k], k);
                    let dy = MatRef::rows(&grad[g * rows * n..][..rows * n], n);
                    let len = geom.group_in() * geom.height * geom.width;
                    let dx = &mut dx_image[g * len..][..len];
                    if geom.is_pointwise() {
                        matmul(k, n, rows, dx, false, lhs, dy);
                    } else {
                        matmul(k, n, rows, dcols, false, lhs, dy);
                        col2im(geom, dcols, dx);
                    }
                }
            },
        );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The convolution's defining sum, in f64, visiting every (output, kernel tap) pair; calls
    /// `tap(b, c_in, iy, ix, c_out, oy, ox, weight index)` for each tap inside the image.
    fn for_each_tap(geom: &ConvGeometry, mut tap: impl FnMut([usize; 7], usize)) {
        let [oh, ow] = geom.output_size();
        let [kh, kw] = geom.kernel;
        for b in 0..geom.batch {
            for co in 0..geom.channels_out {
                let g = co / geom.group_out();
                for ci in 0..geom.group_in() {
                    for (oy, ox, i, j) in output_taps(oh, ow, kh, kw) {
                        let iy = (oy * geom.stride[0] + i).checked_sub(geom.padding[0]);
                        let ix = (ox * geom.stride[1] + j).checked_sub(geom.padding[1]);
                        let (Some(iy), Some(ix)) = (iy, ix) else {
                            continue;
                        };
                        if iy >= geom.height || ix >= geom.width {
                            continue;
                        }
                        let w_at = ((co * geom.group_in() + ci) * kh + i) * kw + j;
                        tap([b, g * geom.group_in() + ci, iy, ix, co, oy, ox], w_at);
                    }
                }
            }
        }
    }

    fn output_taps(
        oh: usize,
        ow: usize,
        kh: usize,
        kw: usize,
    ) -> Vec<(usize, usize, usize, usize)> {
        let mut all = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                for i in 0..kh {
                    for j in 0..kw {
                        all.push((oy, ox, i, j));
                    }
                }
            }
        }
        all
    }

    /// Output, input gradient and weight gradient by the defining sums.
    fn reference(geom: &ConvGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let [oh, ow] = geom.output_size();
        let mut y = vec![0.0; geom.batch * geom.channels_out * oh * ow];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for_each_tap(geom, |[b, ci, iy, ix, co, oy, ox], w_at| {
            let x_at = ((b * geom.channels_in + ci) * geom.height + iy) * geom.width + ix;
            let y_at = ((b * geom.channels_out + co) * oh + oy) * ow + ox;
            y[y_at] += f64::from(x[x_at]) * f64::from(w[w_at]);
            dx[x_at] += f64::from(dy[y_at]) * f64::from(w[w_at]);
            dw[w_at] += f64::from(dy[y_at]) * f64::from(x[x_at]);
        });
        [y, dx, dw]
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }

    fn geometry() -> impl Strategy<Value = ConvGeometry> {
        (
            (1usize..4, 1usize..4, 1usize..3, 1usize..4, 0usize..3),
            (
                1usize..9,
                1usize..9,
                1usize..6,
                1usize..6,
                1usize..3,
                1usize..3,
            ),
            (any::<bool>(), 0usize..3),
        )
            .prop_map(
                |(
                    (batch, groups, per_in, per_out, pad_h),
                    (h, w, kh, kw, sh, sw),
                    (depthwise, pad_w),
                )| {
                    let per_out = if depthwise { 1 } else { per_out };
                    let per_in = if depthwise { 1 } else { per_in };
                    ConvGeometry {
                        batch,
                        channels_in: groups * per_in,
                        height: h,
                        width: w,
                        channels_out: groups * per_out,
                        kernel: [kh, kw],
                        stride: [sh, sw],
                        padding: [pad_h, pad_w],
                        groups,
                    }
                },
            )
            .prop_filter("a valid convolution", ConvGeometry::is_valid)
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::stream(seed, 0);
        (0..len).map(|_| rng.symmetric(1.0)).collect()
    }

    /// Random operands of a convolution and their defining sums `[y, dx, dw]`.
    struct Checked {
        x: Vec<f32>,
        w: Vec<f32>,
        dy: Vec<f32>,
        sums: [Vec<f64>; 3],
    }

    /// Checks [`conv2d_forward`] and both gradients of [`conv2d_backward`] against the
    /// defining sums on random operands drawn from `seed`, and returns them.
    fn check_convolution(geom: &ConvGeometry, seed: u64) -> Checked {
        let x = values(geom.batch * geom.image_len(), seed);
        let w = values(geom.weight_len(), seed ^ 1);
        let dy = values(geom.batch * geom.output_image_len(), seed ^ 2);
        let sums = reference(geom, &x, &w, &dy);
        assert_close(&conv2d_forward(geom, &x, &w), &sums[0]);
        let all = Wanted {
            input: true,
            weight: true,
        };
        let (dx, dw) = conv2d_backward(geom, &x, &w, &dy, all);
        assert_close(&dx.unwrap(), &sums[1]);
        assert_close(&dw.unwrap(), &sums[2]);
        Checked { x, w, dy, sums }
    }

    proptest! {
        #[test]
        fn gemm_convolution_matches_the_defining_sums(geom in geometry(), seed in any::<u64>()) {
            let Checked { x, w, dy, sums: [_, _, dw_ref] } = check_convolution(&geom, seed);
            let only_weight = Wanted { input: false, weight: true };
            let (none, dw_alone) = conv2d_backward(&geom, &x, &w, &dy, only_weight);
            prop_assert!(none.is_none());
            assert_close(&dw_alone.unwrap(), &dw_ref);
        }
    }

    /// Stride-1 convolutions whose output is as large as their input: the direct path where
    /// the CPU has it.
    fn same_size_geometry() -> impl Strategy<Value = ConvGeometry> {
        (
            1usize..3,
            1usize..7,
            1usize..11,
            1usize..30,
            1usize..30,
            0usize..3,
            0usize..3,
        )
            .prop_map(|(batch, channels_in, channels_out, h, w, pad_h, pad_w)| {
                ConvGeometry {
                    batch,
                    channels_in,
                    height: h,
                    width: w,
                    channels_out,
                    kernel: [2 * pad_h + 1, 2 * pad_w + 1],
                    stride: [1, 1],
                    padding: [pad_h, pad_w],
                    groups: 1,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn same_size_convolutions_match_the_defining_sums(
            geom in same_size_geometry(),
            seed in any::<u64>(),
        ) {
            check_convolution(&geom, seed);
        }
    }

    #[test]
    fn the_weight_gradient_does_not_depend_on_the_thread_count() {
        let geom = ConvGeometry {
            batch: 13,
            channels_in: 4,
            height: 6,
            width: 5,
            channels_out: 3,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            groups: 1,
        };
        let x = values(geom.batch * geom.image_len(), 7);
        let w = values(geom.weight_len(), 8);
        let dy = values(geom.batch * geom.output_image_len(), 9);
        let wanted = Wanted {
            input: true,
            weight: true,
        };
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| conv2d_backward(&geom, &x, &w, &dy, wanted))
        };
        assert_eq!(run(1), run(3));
    }
}
