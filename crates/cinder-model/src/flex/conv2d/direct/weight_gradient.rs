//! The weight gradient of a direct convolution: for each output channel, input channel and
//! tap, `Σ_positions dY · x_padded[position + tap]`, with the output gradient in the
//! position-major layout of the forward's result (zero at the dropped positions).
//!
//! A tile holds [`BLOCK`] output channels × [`PAIRS`] (input channel, tap) pairs in vector
//! accumulators and runs down every position of an image: a load of the output gradient and
//! a broadcast per pair for each position. The batch is summed over the same
//! fixed parts as the column-matrix path, so the result does not depend on the thread count.

use rayon::prelude::*;

use super::padded::Padded;
use super::{BLOCK, Kernel};
use crate::flex::conv2d::geometry::ConvGeometry;
use crate::flex::gemm::sum_in_order;

/// (input channel, tap) pairs per tile.
pub(super) const PAIRS: usize = 12;

/// `∂L/∂w [C_out, C_in, kh, kw]` of a convolution where `direct::applies` holds, from its
/// input `[B, C_in, H, W]` and output gradient `[B, C_out, H, W]`.
pub(in crate::flex::conv2d) fn weight_gradient(
    geom: &ConvGeometry,
    input: &[f32],
    output_grad: &[f32],
) -> Vec<f32> {
    let kernel = Kernel::detect().expect("direct convolution: needs AVX2 and FMA or AVX-512");
    let padded = Padded::of(geom);
    let plane_len = geom.height * geom.width;
    let (image_len, grad_len) = (geom.channels_in * plane_len, geom.channels_out * plane_len);
    let pairs = pair_offsets(geom, &padded);
    let blocks = geom.channels_out.div_ceil(BLOCK);
    let sums_len = blocks * pairs.len() * BLOCK;
    let per_part = geom.images_per_part();
    let parts: Vec<Vec<f32>> = input
        .par_chunks((per_part * image_len).max(1))
        .zip(output_grad.par_chunks((per_part * grad_len).max(1)))
        .map(|(images, grads)| {
            let mut sums = vec![0.0; sums_len];
            let mut planes = vec![0.0; geom.channels_in * padded.plane];
            let mut dy = vec![0.0; blocks * padded.positions * BLOCK];
            let images = images.chunks_exact(image_len.max(1));
            for (image, grad) in images.zip(grads.chunks_exact(grad_len.max(1))) {
                padded.fill(image, &mut planes);
                padded.uncrop(grad, &mut dy);
                accumulate_image(kernel, &padded, &planes, &dy, &pairs, &mut sums);
            }
            sums
        })
        .collect();
    unpack(geom, pairs.len(), &sum_in_order(parts, sums_len))
}

/// The plane offset `c·plane + i·W_p + j` of each (input channel, tap) pair in weight order,
/// padded to whole tiles with offset 0 (those sums are dropped).
fn pair_offsets(geom: &ConvGeometry, padded: &Padded) -> Vec<usize> {
    let taps = padded.tap_offsets(geom.kernel);
    let mut pairs: Vec<usize> = (0..geom.channels_in)
        .flat_map(|c| taps.iter().map(move |&t| c * padded.plane + t))
        .collect();
    pairs.resize(pairs.len().div_ceil(PAIRS) * PAIRS, 0);
    pairs
}

/// Adds one image's tiles to `sums`: `[pairs, BLOCK]` per block of output channels.
fn accumulate_image(
    kernel: Kernel,
    padded: &Padded,
    planes: &[f32],
    dy: &[f32],
    pairs: &[usize],
    sums: &mut [f32],
) {
    let block_dy = dy.chunks_exact(padded.positions * BLOCK);
    for (dy, block_sums) in block_dy.zip(sums.chunks_exact_mut(pairs.len() * BLOCK)) {
        let tiles = block_sums.chunks_exact_mut(PAIRS * BLOCK);
        for (offsets, tile_sums) in pairs.chunks_exact(PAIRS).zip(tiles) {
            tile(kernel, dy, planes, offsets, tile_sums);
        }
    }
}

/// `sums[p·BLOCK + n] += Σ_q dy[q·BLOCK + n] · x[offsets[p] + q]` over every position `q` of
/// `dy`, in order, by fused multiply-adds.
pub(super) fn tile(kernel: Kernel, dy: &[f32], x: &[f32], offsets: &[usize], sums: &mut [f32]) {
    let positions = dy.len() / BLOCK;
    assert!(
        offsets.len() == PAIRS && offsets.iter().all(|&o| o + positions <= x.len()),
        "direct weight gradient: tile reads past the padded image"
    );
    assert_eq!(
        sums.len(),
        PAIRS * BLOCK,
        "direct weight gradient: tile sums"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Kernel::supported` checked that the CPU has `kernel`'s instructions; the
    // assertions above keep every read inside `x` and every access inside `sums`.
    unsafe {
        match kernel {
            Kernel::Fma => super::x86_64_fma::weight_tile(dy, x, offsets, sums),
            Kernel::Avx512 => super::x86_64_avx512::weight_tile(dy, x, offsets, sums),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct convolution: no tile kernel off x86-64 ({kernel:?})");
}

/// `[C_out, C_in, kh, kw]` from the tile sums.
fn unpack(geom: &ConvGeometry, pairs: usize, sums: &[f32]) -> Vec<f32> {
    let per_channel = geom.weight_len() / geom.channels_out.max(1);
    (0..geom.weight_len())
        .map(|at| {
            let (co, pair) = (at / per_channel, at % per_channel);
            sums[((co / BLOCK) * pairs + pair) * BLOCK + co % BLOCK]
        })
        .collect()
}
