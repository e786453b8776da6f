//! Training-mode BatchNorm on contiguous NCHW `f32` slices: batch statistics, the
//! normalisation, and its gradients, each in one or two passes over the activation with no
//! layout change; optionally with the ReLU that follows it fused into the same passes.
//!
//! Channels are spread over rayon's pool; a channel's sums add `f32` partial sums of its
//! planes (one `[H, W]` image channel each) in `f64`, in plane order, so a result does not
//! depend on the number of threads. A plane's sum runs in [`LANES`] interleaved partial sums
//! (see [`lane_sum`]).

use rayon::prelude::*;

/// Interleaved partial sums per plane: a single running `f32` sum cannot be vectorized (each
/// add waits for the previous one), sixteen independent ones can.
const LANES: usize = 16;

/// `Σ f(a[i], b[i], c[i])` over three equally long slices, as [`LANES`] partial sums (lane
/// `l` takes every index `≡ l` mod `LANES`) added in lane order, then the tail.
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let (a_chunks, b_chunks, c_chunks) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = (a_chunks.remainder().iter())
        .zip(b_chunks.remainder())
        .zip(c_chunks.remainder())
        .map(|((&x, &y), &z)| f(x, y, z))
        .sum();
    let mut lanes = [0.0f32; LANES];
    for ((xs, ys), zs) in a_chunks.zip(b_chunks).zip(c_chunks) {
        for (((lane, &x), &y), &z) in lanes.iter_mut().zip(xs).zip(ys).zip(zs) {
            *lane += f(x, y, z);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// burn's ReLU: `x` where `x > 0` or NaN (NaN propagates), else 0.
fn relu(x: f32) -> f32 {
    if passes_relu(x) { x } else { 0.0 }
}

/// Whether a ReLU's output `y` passes its gradient (burn's rule: `y > 0` or NaN).
fn passes_relu(y: f32) -> bool {
    y.is_nan() || y > 0.0
}

/// Shape of a BatchNorm input `[B, C, H, W]` seen as `batch` × `channels` planes of `plane`
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormGeometry {
    pub batch: usize,
    pub channels: usize,
    pub plane: usize,
}

impl NormGeometry {
    fn len(&self) -> usize {
        self.batch * self.channels * self.plane
    }

    /// Values per channel.
    fn count(&self) -> f64 {
        (self.batch * self.plane) as f64
    }

    /// `f(plane)` summed over the planes of channel `c`, in plane order.
    fn channel_sum(&self, c: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
        (0..self.batch)
            .map(|b| f((b * self.channels + c) * self.plane))
            .sum()
    }
}

/// Per channel mean and biased variance of `input`.
pub fn batch_stats(geom: &NormGeometry, input: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(input.len(), geom.len(), "batch_stats: input size");
    let count = geom.count().max(1.0);
    (0..geom.channels)
        .into_par_iter()
        .map(|c| {
            let plane = |at: usize| &input[at..at + geom.plane];
            let sum_of = |at| f64::from(lane_sum(plane(at), plane(at), plane(at), |v, _, _| v));
            let mean = geom.channel_sum(c, sum_of) / count;
            let centred = mean as f32;
            let squares = geom.channel_sum(c, |at| {
                let square = |v: f32, _, _| (v - centred) * (v - centred);
                f64::from(lane_sum(plane(at), plane(at), plane(at), square))
            });
            (mean as f32, (squares / count) as f32)
        })
        .unzip()
}

/// `(x − mean) / √(var + ε) · γ + β` per channel, through burn's ReLU (the value where it
/// is positive or NaN, else 0) when `fused_relu`.
pub fn normalize(
    geom: &NormGeometry,
    input: &[f32],
    [mean, var, gamma, beta]: [&[f32]; 4],
    epsilon: f64,
    fused_relu: bool,
) -> Vec<f32> {
    assert_eq!(input.len(), geom.len(), "batch_norm: input size");
    let (scale, shift): (Vec<f32>, Vec<f32>) = (0..geom.channels)
        .map(|c| {
            let scale = f64::from(gamma[c]) / (f64::from(var[c]) + epsilon).sqrt();
            (
                scale as f32,
                (f64::from(beta[c]) - f64::from(mean[c]) * scale) as f32,
            )
        })
        .unzip();
    let mut out = vec![0.0; input.len()];
    per_plane(geom, &mut out, input, |i, dst, src| {
        let (scale, shift) = (scale[i % geom.channels], shift[i % geom.channels]);
        let values = dst.iter_mut().zip(src);
        match fused_relu {
            true => values.for_each(|(d, &x)| *d = relu(x * scale + shift)),
            false => values.for_each(|(d, &x)| *d = x * scale + shift),
        }
    });
    out
}

/// The gradients of [`normalize`] with the batch's own statistics (`mean`, `var` from
/// [`batch_stats`] of `input`) with respect to the input, γ and β, given the output
/// gradient. With `relu_output` (the output of a fused ReLU), the gradient passes the ReLU
/// first: it counts only where that output passes it.
pub fn normalize_backward(
    geom: &NormGeometry,
    input: &[f32],
    output_grad: &[f32],
    relu_output: Option<&[f32]>,
    [mean, var, gamma]: [&[f32]; 3],
    epsilon: f64,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(input.len(), geom.len(), "batch_norm: input size");
    assert_eq!(output_grad.len(), geom.len(), "batch_norm: gradient size");
    // Without a ReLU every gradient passes: the output gradient stands in as a mask of
    // ones (`pass` ignores it then).
    let (mask, fused) = match relu_output {
        Some(output) => {
            assert_eq!(output.len(), geom.len(), "batch_norm: ReLU output size");
            (output, true)
        }
        None => (output_grad, false),
    };
    let pass = move |g: f32, y: f32| if !fused || passes_relu(y) { g } else { 0.0 };
    let inv_std: Vec<f64> = var
        .iter()
        .map(|&v| 1.0 / (f64::from(v) + epsilon).sqrt())
        .collect();
    let (beta_grad, gamma_grad): (Vec<f32>, Vec<f32>) = (0..geom.channels)
        .into_par_iter()
        .map(|c| {
            let m = mean[c];
            let planes = |at: usize| {
                let span = at..at + geom.plane;
                (
                    &input[span.clone()],
                    &output_grad[span.clone()],
                    &mask[span],
                )
            };
            let sum_dy = geom.channel_sum(c, |at| {
                let (x, dy, y) = planes(at);
                f64::from(lane_sum(x, dy, y, |_, g, y| pass(g, y)))
            });
            let sum_dy_centred = geom.channel_sum(c, |at| {
                let (x, dy, y) = planes(at);
                f64::from(lane_sum(x, dy, y, |x, g, y| (x - m) * pass(g, y)))
            });
            (sum_dy as f32, (sum_dy_centred * inv_std[c]) as f32)
        })
        .unzip();
    // dx = γ·s·(dy − Σdy/n − x̂·Σ(dy·x̂)/n) with x̂ = (x − mean)·s, as a·dy + b·x + k.
    let count = geom.count().max(1.0);
    let coefficients: Vec<[f32; 3]> = (0..geom.channels)
        .map(|c| {
            let gs = f64::from(gamma[c]) * inv_std[c];
            let b = -gs * inv_std[c] * f64::from(gamma_grad[c]) / count;
            let k = -gs * f64::from(beta_grad[c]) / count - b * f64::from(mean[c]);
            [gs as f32, b as f32, k as f32]
        })
        .collect();
    let mut input_grad = vec![0.0; input.len()];
    per_plane(geom, &mut input_grad, input, |i, dst, x| {
        let [a, b, k] = coefficients[i % geom.channels];
        let dy = &output_grad[i * geom.plane..][..geom.plane];
        let y = &mask[i * geom.plane..][..geom.plane];
        dst.iter_mut()
            .zip(x)
            .zip(dy.iter().zip(y))
            .for_each(|((d, &x), (&g, &y))| *d = a * pass(g, y) + b * x + k);
    });
    (input_grad, gamma_grad, beta_grad)
}

/// `f(plane index, dst plane, src plane)` over the planes of `dst` and `src` in parallel.
fn per_plane(
    geom: &NormGeometry,
    dst: &mut [f32],
    src: &[f32],
    f: impl Fn(usize, &mut [f32], &[f32]) + Sync,
) {
    if geom.plane == 0 {
        return;
    }
    dst.par_chunks_mut(geom.plane)
        .zip(src.par_chunks(geom.plane))
        .enumerate()
        .for_each(|(i, (d, s))| f(i, d, s));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lane_sums_are_the_sum(
            pairs in proptest::collection::vec((-100.0f32..100.0, -4.0f32..4.0), 0..200),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let product = |x: f32, y: f32| x * y;
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
            let magnitude: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x * y).abs()).sum();
            let got = f64::from(lane_sum(&a, &b, &b, |x, y, _| product(x, y)));
            prop_assert!((got - exact).abs() <= 1e-5 * (1.0 + magnitude), "{got} vs {exact}");
        }
    }
}
