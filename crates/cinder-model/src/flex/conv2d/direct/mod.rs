//! A stride-1 convolution whose output is as large as its input (every 3×3 convolution of
//! ResNet-20 but the downsampling ones), computed directly from a zero-padded copy of each
//! image: no column matrix, weights packed once per call.
//!
//! The padded image has `W_p = W + 2·pad_w` columns and `H_p = H + 2·pad_h` rows. The
//! output is computed at padded-width positions `q = y·W_p + x` (the `2·pad_w` positions
//! past each row's end are computed and dropped), so that kernel tap `(i, j)` reads the
//! padded plane at `q + i·W_p + j`: a constant offset per tap, the same for every pixel.
//! A tile of [`BLOCK`] output channels × [`PANEL`] consecutive positions then accumulates
//! over input channels and taps with two vector loads of packed weights and a broadcast of
//! each position's input value per tap (the micro-kernel's only work). Tiles store
//! position-major (`[positions, BLOCK]` per block of channels); cropping the padded-width
//! result into the `[C, H, W]` output transposes it back.
//!
//! The input gradient is the same convolution of the output gradient with the kernel
//! turned 180° and its channel axes swapped ([`PackedWeight::adjoint`]).
//!
//! The tile kernels (this one and the weight gradient's, `weight_gradient`) come per
//! instruction set, chosen once by [`Kernel::detect`]: AVX-512 (`x86_64_avx512`, a tile in
//! twelve 16-lane accumulators) or AVX2 + FMA (`x86_64_fma`, the tile as two halves of
//! twelve 8-lane accumulators each, since AVX2 has 16 vector registers). `generic` holds
//! their scalar references, equal bit for bit (each step one fused multiply-add, in the same
//! order).

#[cfg(test)]
mod generic;
mod padded;
mod weight_gradient;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_64_fma;

use std::sync::OnceLock;

use rayon::prelude::*;

use super::geometry::ConvGeometry;
use padded::Padded;

pub(super) use weight_gradient::weight_gradient;

/// Consecutive output positions per tile.
pub(super) const PANEL: usize = 12;
/// Output channels per tile: one AVX-512 vector, two AVX2 vectors.
pub(super) const BLOCK: usize = 16;

/// The tile kernels of one instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kernel {
    /// AVX2 and FMA: 8-lane vectors.
    Fma,
    /// AVX-512 (F): 16-lane vectors, 32 registers.
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs, if any; detected once per process.
    pub(super) fn detect() -> Option<Self> {
        static DETECTED: OnceLock<Option<Kernel>> = OnceLock::new();
        *DETECTED.get_or_init(|| Self::supported().last().copied())
    }

    /// Every kernel this CPU runs, slowest first.
    pub(super) fn supported() -> Vec<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let avx512 = is_x86_feature_detected!("avx512f");
            [(Self::Fma, fma), (Self::Avx512, avx512)]
                .into_iter()
                .filter_map(|(kernel, runs)| runs.then_some(kernel))
                .collect()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vec::new()
        }
    }
}

/// Whether the direct path computes this convolution: one group, at least one input and one
/// output channel, stride 1, an output as large as the input, a kernel larger than 1×1, on a
/// CPU with a tile kernel.
pub(super) fn applies(geom: &ConvGeometry) -> bool {
    geom.groups == 1
        && geom.channels_in > 0
        && geom.channels_out > 0
        && geom.stride == [1, 1]
        && geom.kernel != [1, 1]
        && geom.output_size() == [geom.height, geom.width]
        && Kernel::detect().is_some()
}

/// The kernel as tiles read it: `[C_out / BLOCK (rounded up)][C_in][taps][BLOCK]`, the
/// channels past `C_out` zero.
pub(super) struct PackedWeight {
    values: Vec<f32>,
    channels_in: usize,
    channels_out: usize,
    kernel: [usize; 2],
}

impl PackedWeight {
    /// The convolution's kernel `[C_out, C_in, kh, kw]`.
    pub(super) fn forward(geom: &ConvGeometry, weight: &[f32]) -> Self {
        let [kh, kw] = geom.kernel;
        let (c_in, taps) = (geom.channels_in, kh * kw);
        Self::pack(geom.channels_out, c_in, geom.kernel, |co, ci, t| {
            weight[(co * c_in + ci) * taps + t]
        })
    }

    /// The kernel of the input gradient: `w'[ci, co, i, j] = w[co, ci, kh−1−i, kw−1−j]`.
    pub(super) fn adjoint(geom: &ConvGeometry, weight: &[f32]) -> Self {
        let [kh, kw] = geom.kernel;
        let (c_in, taps) = (geom.channels_in, kh * kw);
        Self::pack(c_in, geom.channels_out, geom.kernel, |ci, co, t| {
            weight[(co * c_in + ci) * taps + taps - 1 - t]
        })
    }

    /// `at(output channel, input channel, tap)` in tile order.
    fn pack(
        channels_out: usize,
        channels_in: usize,
        kernel: [usize; 2],
        at: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let taps = kernel[0] * kernel[1];
        let blocks = channels_out.div_ceil(BLOCK);
        let mut values = Vec::with_capacity(blocks * channels_in * taps * BLOCK);
        for block in 0..blocks {
            for ci in 0..channels_in {
                for t in 0..taps {
                    values.extend((block * BLOCK..(block + 1) * BLOCK).map(|co| match co {
                        co if co < channels_out => at(co, ci, t),
                        _ => 0.0,
                    }));
                }
            }
        }
        Self {
            values,
            channels_in,
            channels_out,
            kernel,
        }
    }

    fn block(&self, block: usize) -> &[f32] {
        let len = self.channels_in * self.kernel[0] * self.kernel[1] * BLOCK;
        &self.values[block * len..][..len]
    }
}

/// The convolution of `input [B, C_in, H, W]` with a packed kernel, for a geometry where
/// [`applies`] holds: `[B, C_out, H, W]`. The channel counts are the packed kernel's (the
/// geometry's swapped for [`PackedWeight::adjoint`]).
pub(super) fn convolve(geom: &ConvGeometry, input: &[f32], weight: &PackedWeight) -> Vec<f32> {
    let kernel = Kernel::detect().expect("direct convolution: needs AVX2 and FMA or AVX-512");
    let padded = Padded::of(geom);
    let (c_in, c_out) = (weight.channels_in, weight.channels_out);
    let (image_len, out_len) = (
        c_in * geom.height * geom.width,
        c_out * geom.height * geom.width,
    );
    assert_eq!(
        input.len(),
        geom.batch * image_len,
        "direct convolution: input size"
    );
    let len = geom.batch * out_len;
    if len == 0 {
        return Vec::new();
    }
    // Uninitialised: `crop` writes every value, so zeroing first would be a pass of its own
    // (8 MiB per ResNet-20 stage-1 layer at batch 128).
    let mut output = Vec::with_capacity(len);
    let scratch = || {
        let result_rows = c_out.div_ceil(BLOCK) * BLOCK;
        (
            vec![0.0; c_in * padded.plane],
            vec![0.0; result_rows * padded.positions],
        )
    };
    output.spare_capacity_mut()[..len]
        .par_chunks_mut(out_len)
        .zip(input.par_chunks(image_len))
        .for_each_init(scratch, |(planes, result), (out, image)| {
            padded.fill(image, planes);
            convolve_image(kernel, &padded, planes, weight, result);
            padded.crop(result, out);
        });
    // SAFETY: the loop ran `crop` on every image's `out_len` values, which writes them all.
    unsafe { output.set_len(len) };
    output
}

/// Every tile of one padded image into `result`: `[positions, BLOCK]` per block of output
/// channels.
fn convolve_image(
    kernel: Kernel,
    padded: &Padded,
    planes: &[f32],
    weight: &PackedWeight,
    result: &mut [f32],
) {
    let taps = padded.tap_offsets(weight.kernel);
    let block_len = padded.positions * BLOCK;
    for (block, block_result) in result.chunks_exact_mut(block_len).enumerate() {
        let block_weight = weight.block(block);
        let tiles = block_result.chunks_exact_mut(PANEL * BLOCK);
        for (q, out) in (0..padded.positions).step_by(PANEL).zip(tiles) {
            tile(kernel, &planes[q..], padded.plane, &taps, block_weight, out);
        }
    }
}

/// One tile: `out[r·BLOCK + n] = Σ_c Σ_t w[(c·T + t)·BLOCK + n] · x[c·plane + taps[t] + r]`
/// for `r < PANEL`, `n < BLOCK`, each sum in `(c, t)` order by fused multiply-adds.
fn tile(kernel: Kernel, x: &[f32], plane: usize, taps: &[usize], w: &[f32], out: &mut [f32]) {
    let channels = w.len() / (taps.len() * BLOCK).max(1);
    let reach = taps.iter().max().map_or(0, |&t| t + PANEL);
    assert!(
        channels == 0 || (channels - 1) * plane + reach <= x.len(),
        "direct convolution: tile reads past the padded image"
    );
    assert!(
        out.len() >= PANEL * BLOCK,
        "direct convolution: tile writes past the result"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `Kernel::supported` checked that the CPU has `kernel`'s instructions; the
    // assertions above keep every read inside `x` and `w` and every write inside `out`.
    unsafe {
        match kernel {
            Kernel::Fma => x86_64_fma::tile(x, plane, taps, w, out),
            Kernel::Avx512 => x86_64_avx512::tile(x, plane, taps, w, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("direct convolution: no tile kernel off x86-64 ({kernel:?})");
}

#[cfg(test)]
mod tests;
