//! AdaRound's reconstruction objective for one layer: over the calibration patches `x`
//! of the float network and `x̂` of the network the layer sees (the same, or with the
//! preceding layers rounded), the mean over patches of `||S x̂ − W x||²` (summed over
//! output channels) for a candidate weight `S`, and its gradient
//! `2 (S x̂ − W x) x̂ᵀ / N`. The layer is linear in its weights, so both are exact
//! matrix products, in one of two forms:
//!
//! - [`Objective::Gram`], when a weight row is no longer than the patches are many
//!   (convolutions, depthwise ones above all, and small linear layers): the sums
//!   `G = x̂ x̂ᵀ / N`, `T = W x x̂ᵀ / N` and `c = ||W x||² / N` are gathered once, and
//!   every step is exact over all calibration data: loss `tr(S G Sᵀ) − 2 tr(S Tᵀ) + c`,
//!   gradient `2 (S G − T)`. Memory and cost per step do not grow with the data.
//! - [`Objective::Sampled`], when rows are longer than the patches are many (a wide
//!   linear layer over few images, where `G` would outweigh the data): the patches and
//!   the float outputs are kept, and every step uses a seeded mini-batch of them.

use cinder_runtime::synthetic::Rng;
use cinder_tensor::{Tensor, TensorBuf};

use crate::matmul::{View, gemm};
use crate::patches::Patches;

/// Patches gathered for one layer until its objective is built.
#[derive(Debug)]
pub(crate) enum Capture {
    Gram(GramSums),
    Rows(RowStore),
}

/// Per group, `x̂ x̂ᵀ`, and `x x̂ᵀ` and `x xᵀ` when `x̂` differs from `x`.
#[derive(Debug)]
pub(crate) struct GramSums {
    patches: Patches,
    hat_hat: Vec<Vec<f32>>,
    float_hat: Option<Vec<Vec<f32>>>,
    float_float: Option<Vec<Vec<f32>>>,
    count: usize,
}

/// The patches `x̂` (rows) and the float outputs `W x` (rows), one group.
#[derive(Debug)]
pub(crate) struct RowStore {
    patches: Patches,
    hat: Vec<f32>,
    target: Vec<f32>,
}

impl Capture {
    /// The capture of a layer of geometry `patches` over `rows` calibration patches in
    /// all; `separate` when `x̂` is not `x`.
    pub(crate) fn new(patches: Patches, rows: usize, separate: bool) -> Self {
        if patches.depth > rows && patches.groups == 1 {
            return Self::Rows(RowStore {
                patches,
                hat: Vec::new(),
                target: Vec::new(),
            });
        }
        let zeros = || vec![vec![0.0f32; patches.depth * patches.depth]; patches.groups];
        Self::Gram(GramSums {
            patches,
            hat_hat: zeros(),
            float_hat: separate.then(zeros),
            float_float: separate.then(zeros),
            count: 0,
        })
    }

    /// Adds one batch of `samples` samples: the float input `x` and, when separate,
    /// the input `x̂` the layer sees; `weight` is the float weight `W`.
    pub(crate) fn add(&mut self, x: &TensorBuf<f32>, hat: Option<&TensorBuf<f32>>, weight: &[f32]) {
        let samples = x.shape()[0];
        match self {
            Self::Gram(g) => g.add(x.data(), hat.map(|h| h.data()), samples),
            Self::Rows(r) => r.add(x.data(), hat.map(|h| h.data()), samples, weight),
        }
    }

    /// The objective of the layer with float weight `weight`.
    pub(crate) fn finish(self, weight: &[f32], batch: usize) -> Objective {
        match self {
            Self::Gram(g) => g.finish(weight),
            Self::Rows(r) => Objective::Sampled(Sampled {
                rows: r.hat.len() / r.patches.depth.max(1),
                patches: r.patches,
                hat: r.hat,
                target: r.target,
                batch,
            }),
        }
    }
}

/// `sum += aᵀ b` for row-major `a`, `b` of `depth` columns.
fn add_cross(sum: &mut [f32], a: &[f32], b: &[f32], depth: usize) {
    let rows = a.len() / depth;
    gemm(
        1.0,
        View::row_major(a, rows, depth).t(),
        View::row_major(b, rows, depth),
        1.0,
        sum,
    );
}

impl GramSums {
    fn add(&mut self, x: &[f32], hat: Option<&[f32]>, samples: usize) {
        let depth = self.patches.depth;
        for g in 0..self.patches.groups {
            let px = self.patches.rows(x, samples, g);
            match hat {
                None => add_cross(&mut self.hat_hat[g], &px, &px, depth),
                Some(hat) => {
                    let ph = self.patches.rows(hat, samples, g);
                    add_cross(&mut self.hat_hat[g], &ph, &ph, depth);
                    let fh = self.float_hat.as_mut().expect("separate sums");
                    add_cross(&mut fh[g], &px, &ph, depth);
                    let ff = self.float_float.as_mut().expect("separate sums");
                    add_cross(&mut ff[g], &px, &px, depth);
                }
            }
        }
        self.count += samples * self.patches.per_sample();
    }

    fn finish(self, weight: &[f32]) -> Objective {
        let Patches { depth, outputs, .. } = self.patches;
        let n = self.count.max(1) as f32;
        let mut groups = Vec::with_capacity(self.patches.groups);
        for g in 0..self.patches.groups {
            let w = &weight[g * outputs * depth..][..outputs * depth];
            let scaled = |m: &[f32]| m.iter().map(|v| v / n).collect::<Vec<f32>>();
            let gram = scaled(&self.hat_hat[g]);
            let separate = self.float_hat.as_ref().map(|m| scaled(&m[g]));
            let float_hat = separate.as_deref().unwrap_or(&gram);
            let float_float = self.float_float.as_ref().map(|m| scaled(&m[g]));
            let mut target = vec![0.0f32; outputs * depth];
            let wv = View::row_major(w, outputs, depth);
            gemm(
                1.0,
                wv,
                View::row_major(float_hat, depth, depth),
                0.0,
                &mut target,
            );
            let constant = match float_float {
                None => frobenius(w, &target),
                Some(ff) => {
                    let mut wff = vec![0.0f32; outputs * depth];
                    gemm(1.0, wv, View::row_major(&ff, depth, depth), 0.0, &mut wff);
                    frobenius(w, &wff)
                }
            };
            groups.push(GramGroup {
                gram,
                target,
                constant,
            });
        }
        Objective::Gram(Gram {
            patches: self.patches,
            groups,
        })
    }
}

/// `Σ a ∘ b` in f64.
fn frobenius(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum()
}

impl RowStore {
    fn add(&mut self, x: &[f32], hat: Option<&[f32]>, samples: usize, weight: &[f32]) {
        let Patches { depth, outputs, .. } = self.patches;
        let px = self.patches.rows(x, samples, 0);
        let rows = px.len() / depth;
        let start = self.target.len();
        self.target.resize(start + rows * outputs, 0.0);
        gemm(
            1.0,
            View::row_major(&px, rows, depth),
            View::row_major(weight, outputs, depth).t(),
            0.0,
            &mut self.target[start..],
        );
        match hat {
            None => self.hat.extend_from_slice(&px),
            Some(hat) => self.hat.extend(self.patches.rows(hat, samples, 0)),
        }
    }
}

/// A layer's reconstruction objective.
#[derive(Debug)]
pub(crate) enum Objective {
    Gram(Gram),
    Sampled(Sampled),
}

/// The exact form: per group, `G`, `T` and `c`.
#[derive(Debug)]
pub(crate) struct Gram {
    patches: Patches,
    groups: Vec<GramGroup>,
}

#[derive(Debug)]
struct GramGroup {
    gram: Vec<f32>,
    target: Vec<f32>,
    constant: f64,
}

/// The mini-batch form: all patches and float outputs, `batch` rows per step.
#[derive(Debug)]
pub(crate) struct Sampled {
    patches: Patches,
    rows: usize,
    hat: Vec<f32>,
    target: Vec<f32>,
    batch: usize,
}

impl Objective {
    /// Which form, for the report.
    pub(crate) fn form(&self) -> &'static str {
        match self {
            Self::Gram(_) => "gram",
            Self::Sampled(_) => "sampled",
        }
    }

    /// The objective at `weight` over all calibration patches.
    pub(crate) fn loss(&self, weight: &[f32]) -> f64 {
        let mut scratch = vec![0.0f32; weight.len()];
        match self {
            Self::Gram(g) => g.loss_and_gradient(weight, &mut scratch),
            Self::Sampled(s) => s.full_loss(weight),
        }
    }

    /// The objective at `weight` (exact, or on a mini-batch drawn from `rng`) and its
    /// gradient, written to `gradient`.
    pub(crate) fn step(&self, weight: &[f32], gradient: &mut [f32], rng: &mut Rng) -> f64 {
        match self {
            Self::Gram(g) => g.loss_and_gradient(weight, gradient),
            Self::Sampled(s) => {
                let rows: Vec<usize> = (0..s.batch)
                    .map(|_| (rng.next_u64() % s.rows.max(1) as u64) as usize)
                    .collect();
                s.loss_and_gradient(weight, &rows, gradient)
            }
        }
    }
}

impl Gram {
    fn loss_and_gradient(&self, weight: &[f32], gradient: &mut [f32]) -> f64 {
        let Patches { depth, outputs, .. } = self.patches;
        let block = outputs * depth;
        let mut loss = 0.0f64;
        for (g, group) in self.groups.iter().enumerate() {
            let s = &weight[g * block..][..block];
            let grad = &mut gradient[g * block..][..block];
            gemm(
                1.0,
                View::row_major(s, outputs, depth),
                View::row_major(&group.gram, depth, depth),
                0.0,
                grad,
            );
            let mut sum = 0.0f64;
            for ((d, &sv), &t) in grad.iter_mut().zip(s).zip(&group.target) {
                sum += f64::from(sv) * (f64::from(*d) - 2.0 * f64::from(t));
                *d = 2.0 * (*d - t);
            }
            loss += sum + group.constant;
        }
        loss
    }
}

impl Sampled {
    /// Loss and gradient over the patches `rows` (indices into the store).
    fn loss_and_gradient(&self, weight: &[f32], rows: &[usize], gradient: &mut [f32]) -> f64 {
        let Patches { depth, outputs, .. } = self.patches;
        let n = rows.len();
        let mut x = Vec::with_capacity(n * depth);
        let mut residual = Vec::with_capacity(n * outputs);
        for &r in rows {
            x.extend_from_slice(&self.hat[r * depth..][..depth]);
            residual.extend(self.target[r * outputs..][..outputs].iter().map(|v| -v));
        }
        let xv = View::row_major(&x, n, depth);
        let sv = View::row_major(weight, outputs, depth);
        gemm(1.0, xv, sv.t(), 1.0, &mut residual);
        let loss = residual
            .iter()
            .map(|&r| f64::from(r) * f64::from(r))
            .sum::<f64>();
        let rv = View::row_major(&residual, n, outputs);
        gemm(2.0 / n as f32, rv.t(), xv, 0.0, gradient);
        loss / n as f64
    }

    /// The loss over every stored patch, in blocks.
    fn full_loss(&self, weight: &[f32]) -> f64 {
        const BLOCK: usize = 256;
        let mut scratch = vec![0.0f32; weight.len()];
        let indices: Vec<usize> = (0..self.rows).collect();
        let total: f64 = indices
            .chunks(BLOCK)
            .map(|chunk| self.loss_and_gradient(weight, chunk, &mut scratch) * chunk.len() as f64)
            .sum();
        total / self.rows.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::graph::{Conv2d, Linear, Op};

    /// A depthwise and a dense convolution, and a linear layer, with random weights.
    fn layers(rng: &mut Rng) -> Vec<(Op, Vec<usize>)> {
        let conv = |rng: &mut Rng, shape: Vec<usize>, groups| {
            Op::Conv2d(Conv2d {
                weight: rng.tensor(shape, 0.5),
                bias: None,
                stride: [1, 2],
                padding: [1, 0],
                groups,
            })
        };
        vec![
            (conv(rng, vec![3, 1, 3, 3], 3), vec![3, 5, 6]),
            (conv(rng, vec![4, 3, 2, 2], 1), vec![3, 5, 6]),
            (
                Op::Linear(Linear {
                    weight: rng.tensor(vec![3, 20], 0.5),
                    bias: None,
                }),
                vec![20],
            ),
        ]
    }

    fn objective(op: &Op, shape: &[usize], separate: bool, rng: &mut Rng) -> Objective {
        let patches = Patches::of(op, shape).unwrap();
        let mut batch_shape = vec![4];
        batch_shape.extend_from_slice(shape);
        let (w, _) = op.weight_and_bias().unwrap();
        let mut capture = Capture::new(patches, 8 * patches.per_sample(), separate);
        for _ in 0..2 {
            let x = rng.tensor(batch_shape.clone(), 1.0);
            let hat = x.map(|v| v + 0.05 * v * v);
            capture.add(&x, separate.then_some(&hat), w.data());
        }
        capture.finish(w.data(), 4)
    }

    /// The analytic gradient of the exact forms (Gram and the full-batch sampled form,
    /// with `x̂ = x` and with `x̂ ≠ x`) against central finite differences in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let mut rng = Rng::new(11);
        for (op, shape) in layers(&mut rng) {
            for separate in [false, true] {
                let obj = objective(&op, &shape, separate, &mut rng);
                let (w, _) = op.weight_and_bias().unwrap();
                let s: Vec<f32> = w
                    .data()
                    .iter()
                    .map(|v| v + rng.uniform(-0.1, 0.1))
                    .collect();
                let mut grad = vec![0.0f32; s.len()];
                let all: Vec<usize> = match &obj {
                    Objective::Sampled(sm) => (0..sm.rows).collect(),
                    Objective::Gram(_) => Vec::new(),
                };
                let loss = match &obj {
                    Objective::Gram(g) => g.loss_and_gradient(&s, &mut grad),
                    Objective::Sampled(sm) => sm.loss_and_gradient(&s, &all, &mut grad),
                };
                assert!((loss - obj.loss(&s)).abs() <= 1e-4 * loss.abs().max(1e-3));
                for i in (0..s.len()).step_by(3) {
                    let eps = 1e-2f32;
                    let at = |d: f32| {
                        let mut t = s.clone();
                        t[i] += d;
                        obj.loss(&t)
                    };
                    let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
                    let analytic = f64::from(grad[i]);
                    assert!(
                        (numeric - analytic).abs() <= 2e-3 * (1.0 + analytic.abs()),
                        "{} separate {separate} weight {i}: {analytic} vs {numeric}",
                        obj.form()
                    );
                }
            }
        }
    }

    /// The Gram form's loss is the mean squared output error computed directly.
    #[test]
    fn the_gram_loss_is_the_mean_squared_output_error() {
        let mut rng = Rng::new(12);
        let (op, shape) = layers(&mut rng).remove(1);
        let patches = Patches::of(&op, &shape).unwrap();
        let (w, _) = op.weight_and_bias().unwrap();
        let x = rng.tensor(vec![3, 3, 5, 6], 1.0);
        let mut gram = Capture::new(patches, 1 << 20, false);
        gram.add(&x, None, w.data());
        let gram = gram.finish(w.data(), 1);
        // Fewer patches announced than a row is long: the rows are kept.
        let mut rows = Capture::new(patches, 1, false);
        assert!(matches!(rows, Capture::Rows(_)));
        rows.add(&x, None, w.data());
        let direct = rows.finish(w.data(), 1);
        let s: Vec<f32> = w.data().iter().map(|v| v * 0.8 + 0.01).collect();
        let (a, b) = (gram.loss(&s), direct.loss(&s));
        assert!((a - b).abs() <= 1e-4 * b, "{a} vs {b}");
        assert_eq!((gram.form(), direct.form()), ("gram", "sampled"));
    }
}
