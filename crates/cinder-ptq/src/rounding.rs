//! The rounding optimizer of AdaRound (Nagel et al. 2020, "Up or Down? Adaptive
//! Rounding for Post-Training Quantization"), for one layer.
//!
//! Each weight `w` with parameters `(s, z)` rounds down to `⌊w/s⌋` or up to `⌊w/s⌋ + 1`
//! (codes clamped to the grid). The choice is relaxed to
//! `S = s · (clamp(⌊w/s⌋ + z + h(V), qmin, qmax) − z)` with the rectified sigmoid
//! `h(V) = clip(σ(V) (ζ − γ) + γ, 0, 1)`, `ζ = 1.1`, `γ = −0.1`, and `V` starts where
//! `h(V)` is the fractional part of `w/s` (so `S = w` inside the grid). Adam minimizes
//! the reconstruction objective plus `λ Σ (1 − |2h − 1|^β)`: after a warm-up without it,
//! `β` falls linearly from 20 to 2, and the term pushes every `h` to 0 or 1. The codes
//! are then `⌊w/s⌋ + z + [h ≥ 0.5]`, clamped.

use cinder_runtime::synthetic::Rng;
use cinder_tensor::TensorQuantParams;
use serde::{Deserialize, Serialize};

use crate::reconstruction::Objective;

/// The stretch of the rectified sigmoid: `ζ` and `γ`.
const ZETA: f32 = 1.1;
const GAMMA: f32 = -0.1;
/// Adam's moment decays and its denominator's guard.
const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
const ADAM_EPSILON: f32 = 1e-8;

/// How AdaRound optimizes each layer (the defaults are the paper's and AIMET's).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaRoundOptions {
    /// Adam steps per layer.
    pub iterations: usize,
    /// Patches per step where the objective is sampled (wide linear layers).
    pub batch: usize,
    pub learning_rate: f32,
    /// `λ`, the weight of the rounding regularizer.
    pub regularization: f32,
    /// `β` at the end of the warm-up and at the last step.
    pub beta: [f32; 2],
    /// The share of the steps before the regularizer starts.
    pub warm_up: f32,
    /// Seed of the mini-batches.
    pub seed: u64,
    /// Reconstruct each layer's float output from the input it sees once the layers
    /// before it are rounded (the paper's asymmetric reconstruction), instead of from
    /// its float input.
    pub asymmetric: bool,
}

impl Default for AdaRoundOptions {
    fn default() -> Self {
        Self {
            iterations: 10_000,
            batch: 32,
            learning_rate: 1e-3,
            regularization: 0.01,
            beta: [20.0, 2.0],
            warm_up: 0.2,
            seed: 0,
            asymmetric: false,
        }
    }
}

impl AdaRoundOptions {
    /// Why the options cannot run, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let [start, end] = self.beta;
        if self.iterations == 0 || self.batch == 0 {
            Some("iterations and batch must be at least 1".into())
        } else if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            Some(format!(
                "learning rate {} is not positive",
                self.learning_rate
            ))
        } else if !(self.regularization.is_finite() && self.regularization >= 0.0) {
            Some(format!(
                "regularization {} is negative",
                self.regularization
            ))
        } else if !(end >= 1.0 && start >= end && start.is_finite()) {
            Some(format!("beta {start} -> {end}: expected start >= end >= 1"))
        } else if !(0.0..1.0).contains(&self.warm_up) {
            Some(format!("warm-up {} is not in [0, 1)", self.warm_up))
        } else {
            None
        }
    }

    /// `β` at step `t`, or none during the warm-up.
    fn beta_at(&self, t: usize) -> Option<f32> {
        let warm = (self.warm_up * self.iterations as f32) as usize;
        let rest = (self.iterations - warm).max(1);
        let progress = t.checked_sub(warm)? as f32 / rest as f32;
        let [start, end] = self.beta;
        Some(end + (start - end) * (1.0 - progress).max(0.0))
    }
}

/// The rounding chosen for one layer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rounding {
    pub(crate) codes: Vec<i8>,
    /// Weights whose `h` ended strictly between 0 and 1.
    pub(crate) undecided: usize,
}

/// Each weight's grid: `⌊w/s⌋ + z`, its scale and zero point, and the grid's bounds.
struct Grid {
    floor: Vec<f32>,
    scale: Vec<f32>,
    zero_point: Vec<f32>,
    bounds: (f32, f32),
}

impl Grid {
    fn new(weight: &[f32], params: &TensorQuantParams) -> Self {
        let rows = params.as_slice().len();
        let per_row = weight.len() / rows;
        let p = |i: usize| params.channel(if rows == 1 { 0 } else { i / per_row });
        let (mut floor, mut scale, mut zero_point) = (vec![], vec![], vec![]);
        for (i, &w) in weight.iter().enumerate() {
            let p = p(i);
            floor.push((w / p.scale).floor() + p.zero_point as f32);
            scale.push(p.scale);
            zero_point.push(p.zero_point as f32);
        }
        let p = params.channel(0);
        Self {
            floor,
            scale,
            zero_point,
            bounds: (p.qmin as f32, p.qmax as f32),
        }
    }

    /// The weight at code `floor + up` (clamped) and whether the clamp let it move.
    fn weight(&self, i: usize, up: f32) -> (f32, bool) {
        let (lo, hi) = self.bounds;
        let q = self.floor[i] + up;
        let inside = (lo..=hi).contains(&q);
        (
            self.scale[i] * (q.clamp(lo, hi) - self.zero_point[i]),
            inside,
        )
    }
}

/// `σ(v)` and the rectified sigmoid `h(v)` with `dh/dv`.
fn rectified(v: f32) -> (f32, f32) {
    let sigma = 1.0 / (1.0 + (-v).exp());
    let u = sigma * (ZETA - GAMMA) + GAMMA;
    if u <= 0.0 {
        (0.0, 0.0)
    } else if u >= 1.0 {
        (1.0, 0.0)
    } else {
        (u, (ZETA - GAMMA) * sigma * (1.0 - sigma))
    }
}

/// `V` with `h(V) = fraction` (in `[0, 1)`).
fn initial(fraction: f32) -> f32 {
    let p = (fraction - GAMMA) / (ZETA - GAMMA);
    (p / (1.0 - p)).ln()
}

/// `d/dh λ (1 − |2h − 1|^β)`.
fn regularizer_slope(h: f32, beta: f32, lambda: f32) -> f32 {
    let d = 2.0 * h - 1.0;
    -lambda * beta * d.abs().powf(beta - 1.0) * d.signum() * 2.0
}

/// Learns the rounding of `weight` (its parameters `params`) under `objective`.
pub(crate) fn round(
    weight: &[f32],
    params: &TensorQuantParams,
    objective: &Objective,
    options: &AdaRoundOptions,
) -> Rounding {
    let grid = Grid::new(weight, params);
    let mut v: Vec<f32> = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| initial(w / grid.scale[i] + grid.zero_point[i] - grid.floor[i]))
        .collect();
    let n = weight.len();
    let mut adam = Adam::new(n, options.learning_rate);
    let (mut h, mut slope) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut soft, mut grad) = (vec![0.0f32; n], vec![0.0f32; n]);
    let mut rng = Rng::new(options.seed);
    for t in 0..options.iterations {
        for i in 0..n {
            (h[i], slope[i]) = rectified(v[i]);
            soft[i] = grid.weight(i, h[i]).0;
        }
        objective.step(&soft, &mut grad, &mut rng);
        let beta = options.beta_at(t);
        for i in 0..n {
            if slope[i] == 0.0 {
                // Saturated at 0 or 1: no gradient reaches V (and no power is taken).
                grad[i] = 0.0;
                continue;
            }
            let mut dh = if grid.weight(i, h[i]).1 {
                grad[i] * grid.scale[i]
            } else {
                0.0
            };
            if let Some(beta) = beta {
                dh += regularizer_slope(h[i], beta, options.regularization);
            }
            grad[i] = dh * slope[i];
        }
        adam.step(&mut v, &grad);
    }
    let (lo, hi) = grid.bounds;
    let mut undecided = 0;
    let codes = v
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let h = rectified(v).0;
            undecided += usize::from(h > 0.0 && h < 1.0);
            let up = if h >= 0.5 { 1.0 } else { 0.0 };
            (grid.floor[i] + up).clamp(lo, hi) as i8
        })
        .collect();
    Rounding { codes, undecided }
}

/// Adam (Kingma and Ba 2015) with bias-corrected moments.
struct Adam {
    first: Vec<f32>,
    second: Vec<f32>,
    learning_rate: f32,
    steps: i32,
}

impl Adam {
    fn new(n: usize, learning_rate: f32) -> Self {
        Self {
            first: vec![0.0; n],
            second: vec![0.0; n],
            learning_rate,
            steps: 0,
        }
    }

    fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        let (b1, b2) = ADAM_BETAS;
        self.steps = self.steps.saturating_add(1);
        let (c1, c2) = (1.0 - b1.powi(self.steps), 1.0 - b2.powi(self.steps));
        for (((p, &g), m), s) in params
            .iter_mut()
            .zip(grad)
            .zip(&mut self.first)
            .zip(&mut self.second)
        {
            *m = b1 * *m + (1.0 - b1) * g;
            *s = b2 * *s + (1.0 - b2) * g * g;
            *p -= self.learning_rate * (*m / c1) / ((*s / c2).sqrt() + ADAM_EPSILON);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rectified_sigmoid_starts_at_the_fraction_and_saturates() {
        for f in [0.0, 0.1, 0.5, 0.93] {
            assert!((rectified(initial(f)).0 - f).abs() < 1e-5, "{f}");
        }
        assert_eq!(rectified(10.0), (1.0, 0.0));
        assert_eq!(rectified(-10.0), (0.0, 0.0));
    }

    #[test]
    fn beta_waits_for_the_warm_up_then_falls_from_start_to_end() {
        let o = AdaRoundOptions {
            iterations: 100,
            ..AdaRoundOptions::default()
        };
        assert_eq!(o.beta_at(19), None);
        assert_eq!(o.beta_at(20), Some(20.0));
        assert!((o.beta_at(60).unwrap() - 11.0).abs() < 1e-5);
        assert!((o.beta_at(99).unwrap() - 2.225).abs() < 1e-4);
    }

    #[test]
    fn the_regularizer_pushes_away_from_one_half() {
        assert!(regularizer_slope(0.3, 2.0, 0.01) > 0.0);
        assert!(regularizer_slope(0.7, 2.0, 0.01) < 0.0);
        assert_eq!(regularizer_slope(0.5, 2.0, 0.01), 0.0);
    }

    #[test]
    fn bad_options_are_named() {
        let bad = [
            AdaRoundOptions {
                iterations: 0,
                ..Default::default()
            },
            AdaRoundOptions {
                beta: [2.0, 20.0],
                ..Default::default()
            },
            AdaRoundOptions {
                warm_up: 1.0,
                ..Default::default()
            },
            AdaRoundOptions {
                learning_rate: f32::NAN,
                ..Default::default()
            },
        ];
        assert!(bad.iter().all(|o| o.problem().is_some()));
        assert_eq!(AdaRoundOptions::default().problem(), None);
    }
}
