//! The zero-padded layout of the direct convolution: the padded image planes a tile reads,
//! and the position-major result it writes, with the copies between them and `[C, H, W]`.

use std::mem::MaybeUninit;

use super::{BLOCK, PANEL};
use crate::flex::conv2d::geometry::ConvGeometry;

/// The padded plane of one image channel and the positions a tile covers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Padded {
    height: usize,
    width: usize,
    padding: [usize; 2],
    /// `W_p`.
    pub(super) stride: usize,
    /// Output positions `(H − 1)·W_p + W`, rounded up to whole panels.
    pub(super) positions: usize,
    /// Values per padded channel: `H_p·W_p` and the zeros the last panel reads past them.
    pub(super) plane: usize,
}

impl Padded {
    /// The layout for a same-size convolution (where `direct::applies` holds, so that the
    /// image has at least one row and column).
    pub(super) fn of(geom: &ConvGeometry) -> Self {
        let [ph, pw] = geom.padding;
        let (h, w) = (geom.height, geom.width);
        let stride = w + 2 * pw;
        let needed = (h - 1) * stride + w;
        let positions = needed.div_ceil(PANEL) * PANEL;
        Self {
            height: h,
            width: w,
            padding: geom.padding,
            stride,
            positions,
            plane: (h + 2 * ph) * stride + positions - needed,
        }
    }

    /// Copies the channels `[C, H, W]` into the interiors of `padded` (`C` planes), whose
    /// borders are zero: nothing writes them, so a scratch buffer zeroed once stays valid for
    /// every image.
    pub(super) fn fill(&self, image: &[f32], padded: &mut [f32]) {
        let [ph, pw] = self.padding;
        let channels = image.chunks_exact(self.height * self.width);
        for (channel, plane) in channels.zip(padded.chunks_exact_mut(self.plane)) {
            let rows = plane[ph * self.stride..].chunks_mut(self.stride);
            for (src, dst) in channel.chunks_exact(self.width).zip(rows) {
                dst[pw..pw + self.width].copy_from_slice(src);
            }
        }
    }

    /// Copies the padded-width result, `[positions, BLOCK]` per block of channels, into
    /// `out [C, H, W]`, writing every value of `out`: a transpose, a row of positions at a
    /// time (in L1) into a row of each channel.
    pub(super) fn crop(&self, result: &[f32], out: &mut [MaybeUninit<f32>]) {
        let channel_len = self.height * self.width;
        let blocks = result.chunks_exact(self.positions * BLOCK);
        for (block, planes) in blocks.zip(out.chunks_mut(BLOCK * channel_len)) {
            for y in 0..self.height {
                let row = &block[y * self.stride * BLOCK..][..self.width * BLOCK];
                for (n, plane) in planes.chunks_exact_mut(channel_len).enumerate() {
                    let dst = &mut plane[y * self.width..][..self.width];
                    let values = row[n..].iter().step_by(BLOCK);
                    dst.iter_mut().zip(values).for_each(|(d, &v)| {
                        d.write(v);
                    });
                }
            }
        }
    }

    /// The offset of each kernel tap `(i, j)` from a position, in tap order: `i·W_p + j`.
    pub(super) fn tap_offsets(&self, [kh, kw]: [usize; 2]) -> Vec<usize> {
        (0..kh)
            .flat_map(|i| (0..kw).map(move |j| i * self.stride + j))
            .collect()
    }

    /// The inverse of [`crop`](Self::crop): `grad [C, H, W]` into `[positions, BLOCK]` per
    /// block of channels. Positions past a row's end and channels past `C` are not written,
    /// so they keep the zeros of a scratch buffer zeroed once.
    pub(super) fn uncrop(&self, grad: &[f32], result: &mut [f32]) {
        let channel_len = self.height * self.width;
        let blocks = result.chunks_exact_mut(self.positions * BLOCK);
        for (block, planes) in blocks.zip(grad.chunks(BLOCK * channel_len)) {
            for y in 0..self.height {
                let row = &mut block[y * self.stride * BLOCK..][..self.width * BLOCK];
                for (n, plane) in planes.chunks_exact(channel_len).enumerate() {
                    let src = &plane[y * self.width..][..self.width];
                    let values = row[n..].iter_mut().step_by(BLOCK);
                    values.zip(src).for_each(|(d, &v)| *d = v);
                }
            }
        }
    }
}
