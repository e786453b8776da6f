//! Coarse-to-fine minimization over pairs of bin edges, shared by the entropy and MSE
//! range choosers: a grid first, then each coordinate refined around the grid's best.
//!
//! With `n` edges per axis and `g` grid values, a 1-D search costs about `g + 2n/g`
//! evaluations instead of `n` (g = 64: ~130 instead of 2048), a 2-D search about
//! `g^2 + 4n/g` instead of `n^2`. The result is the exact minimum when the cost is
//! unimodal along each axis near the grid's best, and within one grid step otherwise.

use std::ops::RangeInclusive;

/// The pair of `xs × ys` with the smallest `cost` (`None` marks an invalid candidate),
/// or `None` when no candidate is valid. The grid always holds each axis' largest
/// value, so the widest window is among the candidates.
pub(crate) fn minimize(
    xs: RangeInclusive<usize>,
    ys: RangeInclusive<usize>,
    per_axis: usize,
    mut cost: impl FnMut(usize, usize) -> Option<f64>,
) -> Option<(usize, usize)> {
    let (grid_x, stride_x) = grid(&xs, per_axis);
    let (grid_y, stride_y) = grid(&ys, per_axis);
    let mut best: Option<((usize, usize), f64)> = None;
    let mut consider = |x: usize, y: usize, best: &mut Option<((usize, usize), f64)>| {
        if let Some(c) = cost(x, y)
            && best.is_none_or(|(_, b)| c < b)
        {
            *best = Some(((x, y), c));
        }
    };
    for &x in &grid_x {
        for &y in &grid_y {
            consider(x, y, &mut best);
        }
    }
    let ((x, y), _) = best?;
    for x in around(x, stride_x, &xs) {
        consider(x, y, &mut best);
    }
    let ((x, y), _) = best?;
    for y in around(y, stride_y, &ys) {
        consider(x, y, &mut best);
    }
    best.map(|(pair, _)| pair)
}

/// Up to `per_axis` values of `r`, evenly strided down from its end, and the stride.
fn grid(r: &RangeInclusive<usize>, per_axis: usize) -> (Vec<usize>, usize) {
    if r.is_empty() {
        return (Vec::new(), 1);
    }
    let len = r.end() - r.start() + 1;
    let stride = len.div_ceil(per_axis.max(1));
    (r.clone().rev().step_by(stride).collect(), stride)
}

/// The values of `r` less than one stride from `center`.
fn around(center: usize, stride: usize, r: &RangeInclusive<usize>) -> RangeInclusive<usize> {
    let lo = center.saturating_sub(stride - 1).max(*r.start());
    let hi = (center + stride - 1).min(*r.end());
    lo..=hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_minimum_of_a_separable_bowl() {
        let cost =
            |x: usize, y: usize| Some((x as f64 - 37.0).powi(2) + (y as f64 - 801.0).powi(2));
        assert_eq!(minimize(1..=100, 1..=2000, 16, cost), Some((37, 801)));
        assert_eq!(minimize(0..=0, 5..=2000, 64, cost), Some((0, 801)));
    }

    #[test]
    fn skips_invalid_candidates_and_handles_empty_axes() {
        let cost = |x: usize, y: usize| (x + y >= 50).then_some((x + y) as f64);
        assert_eq!(
            minimize(0..=0, 1..=100, 8, cost).map(|(x, y)| x + y),
            Some(50)
        );
        // An empty axis: more codes than bins.
        let (codes, bins) = (10, 5);
        assert_eq!(minimize(0..=0, codes..=bins, 8, cost), None);
        assert_eq!(minimize(0..=0, 1..=10, 8, |_, _| None), None);
    }

    #[test]
    fn the_grid_ends_at_the_widest_window() {
        assert_eq!(grid(&(3..=10), 3), (vec![10, 7, 4], 3));
        assert_eq!(grid(&(0..=0), 64), (vec![0], 1));
    }
}
