//! Accuracy-driven mixed precision: the greedy allocation of one weight width (or the
//! float fallback) per layer under an accuracy budget, after HAWQ's plan (Dong et al.
//! 2019, "HAWQ: Hessian AWare Quantization") with measured per-layer sensitivity in place
//! of the Hessian trace.
//!
//! The input is a per-layer table: the predicted accuracy drop (percentage points against
//! fp32) with that layer alone at each width, and the layer's cost (bytes, or
//! milliseconds) at each width. The search starts from every layer at the highest width.
//! While the measured drop is over the budget, it moves to float the layer that recovers
//! the most predicted accuracy per unit of added cost. Then it repeatedly takes the move,
//! one layer down to its next cheaper width, with the largest cost saved per predicted
//! accuracy point lost, and keeps it only while the *measured* drop (the caller's
//! evaluation of the candidate) stays within the budget; a layer whose move is refused
//! is not moved again. Every evaluation is a step of the trajectory. No burn, no I/O:
//! the caller measures.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A layer's weight precision: integer codes of some bits, or float weights. Written
/// `W8` or `float` (also as a JSON map key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Width {
    Bits(u8),
    Float,
}

impl fmt::Display for Width {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Width::Bits(b) => write!(f, "W{b}"),
            Width::Float => f.write_str("float"),
        }
    }
}

impl From<Width> for String {
    fn from(w: Width) -> String {
        w.to_string()
    }
}

impl TryFrom<String> for Width {
    type Error = AllocError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "float" {
            return Ok(Width::Float);
        }
        match s.strip_prefix('W').map(str::parse::<u8>) {
            Some(Ok(b)) if (2..=8).contains(&b) => Ok(Width::Bits(b)),
            _ => Err(AllocError::Width(s)),
        }
    }
}

/// What the search minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Model bytes.
    Size,
    /// Inference time.
    Latency,
}

impl std::str::FromStr for Target {
    type Err = AllocError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "size" => Ok(Target::Size),
            "latency" => Ok(Target::Latency),
            _ => Err(AllocError::Target(s.to_owned())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Size => "size",
            Target::Latency => "latency",
        })
    }
}

/// One layer's row of the sensitivity and cost table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerTable {
    pub name: String,
    /// Predicted accuracy drop (pp against fp32) with this layer alone at each width.
    pub drop_pp: BTreeMap<Width, f64>,
    /// The layer's cost at each width (bytes or ms, as the target says).
    pub cost: BTreeMap<Width, f64>,
}

/// The search's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyOptions {
    /// The bit widths a layer may take, highest first; the search starts at the first.
    pub widths: Vec<u8>,
    /// The largest accepted accuracy drop against fp32, in percentage points.
    pub budget_pp: f64,
    /// Whether a layer may fall back to float weights when the highest width alone is
    /// over the budget.
    pub allow_float: bool,
}

/// Each layer's width, by layer name.
pub type Allocation = BTreeMap<String, Width>;

/// Why a step was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Move {
    /// Every layer at the highest width.
    Start,
    /// One layer to float weights: the start was over the budget.
    ToFloat,
    /// One layer down to its next cheaper width.
    Down,
}

/// One evaluated candidate of the trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step<T> {
    pub kind: Move,
    /// The moved layer (none for the start).
    pub layer: Option<String>,
    pub from: Option<Width>,
    pub to: Option<Width>,
    /// The candidate's total cost by the table.
    pub predicted_cost: f64,
    /// The candidate's measured accuracy drop, pp against fp32.
    pub drop_pp: f64,
    /// Whether the search kept the candidate.
    pub accepted: bool,
    /// What the caller's evaluation reported besides the drop.
    pub measured: T,
}

/// The search's result: the chosen allocation and every step that led to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Search<T> {
    pub allocation: Allocation,
    /// The measured drop of the chosen allocation.
    pub drop_pp: f64,
    pub cost: f64,
    pub steps: Vec<Step<T>>,
}

/// The error an evaluation of a candidate returns.
pub type MeasureError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Error)]
pub enum AllocError {
    #[error("accuracy budget {0} pp: expected a finite number >= 0")]
    Budget(f64),
    #[error("target `{0}`: expected `size` or `latency`")]
    Target(String),
    #[error("width `{0}`: expected W2 to W8 or float")]
    Width(String),
    #[error("widths {0:?}: expected distinct bit widths in 2..=8, highest first")]
    Widths(Vec<u8>),
    #[error("no layer to allocate")]
    NoLayers,
    #[error("layer `{layer}`: {field} has no finite value for {width}")]
    Table {
        layer: String,
        field: &'static str,
        width: Width,
    },
    #[error(
        "every layer that may fall back to float does, and the held-out accuracy is still \
         {drop_pp:.2} pp below fp32, over the {budget_pp} pp budget"
    )]
    Unreachable { drop_pp: f64, budget_pp: f64 },
    #[error("evaluating a candidate: {0}")]
    Measure(#[source] MeasureError),
}

/// A predicted accuracy loss below this counts as this much, so that free moves rank by
/// their gain instead of dividing by zero.
const MIN_LOSS_PP: f64 = 1e-3;

/// Runs the greedy search; `measure` returns a candidate's accuracy drop (pp against
/// fp32) and whatever else the trajectory should record.
pub fn greedy<T>(
    layers: &[LayerTable],
    options: &GreedyOptions,
    mut measure: impl FnMut(&Allocation) -> Result<(f64, T), MeasureError>,
) -> Result<Search<T>, AllocError> {
    check(layers, options)?;
    let mut eval = |a: &Allocation| {
        let (drop, t) = measure(a).map_err(AllocError::Measure)?;
        Ok::<_, AllocError>((drop, t))
    };
    let top = Width::Bits(options.widths[0]);
    let mut allocation: Allocation = layers.iter().map(|l| (l.name.clone(), top)).collect();
    let (mut drop_pp, measured) = eval(&allocation)?;
    let mut steps = vec![Step {
        kind: Move::Start,
        layer: None,
        from: None,
        to: None,
        predicted_cost: total_cost(layers, &allocation),
        drop_pp,
        accepted: drop_pp <= options.budget_pp,
        measured,
    }];
    while drop_pp > options.budget_pp {
        let Some(layer) = options
            .allow_float
            .then(|| best_fallback(layers, &allocation))
            .flatten()
        else {
            return Err(AllocError::Unreachable {
                drop_pp,
                budget_pp: options.budget_pp,
            });
        };
        let from = allocation.insert(layer.name.clone(), Width::Float);
        let (drop, measured) = eval(&allocation)?;
        drop_pp = drop;
        steps.push(Step {
            kind: Move::ToFloat,
            layer: Some(layer.name.clone()),
            from,
            to: Some(Width::Float),
            predicted_cost: total_cost(layers, &allocation),
            drop_pp,
            accepted: true,
            measured,
        });
    }
    let mut frozen: Vec<bool> = layers
        .iter()
        .map(|l| allocation[&l.name] == Width::Float)
        .collect();
    while let Some((i, from, to)) = best_descent(layers, &allocation, &frozen, &options.widths) {
        let name = &layers[i].name;
        let mut candidate = allocation.clone();
        candidate.insert(name.clone(), to);
        let (drop, measured) = eval(&candidate)?;
        let accepted = drop <= options.budget_pp;
        steps.push(Step {
            kind: Move::Down,
            layer: Some(name.clone()),
            from: Some(from),
            to: Some(to),
            predicted_cost: total_cost(layers, &candidate),
            drop_pp: drop,
            accepted,
            measured,
        });
        if accepted {
            (allocation, drop_pp) = (candidate, drop);
        } else {
            frozen[i] = true;
        }
    }
    Ok(Search {
        cost: total_cost(layers, &allocation),
        allocation,
        drop_pp,
        steps,
    })
}

/// Valid widths and budget, and a finite drop and cost for every layer at every width.
fn check(layers: &[LayerTable], options: &GreedyOptions) -> Result<(), AllocError> {
    if !(options.budget_pp.is_finite() && options.budget_pp >= 0.0) {
        return Err(AllocError::Budget(options.budget_pp));
    }
    let w = &options.widths;
    let descending = w.windows(2).all(|p| p[0] > p[1]);
    if w.is_empty() || !descending || w.iter().any(|b| !(2..=8).contains(b)) {
        return Err(AllocError::Widths(w.clone()));
    }
    if layers.is_empty() {
        return Err(AllocError::NoLayers);
    }
    let widths = w.iter().map(|&b| Width::Bits(b));
    let all: Vec<Width> = widths
        .chain(options.allow_float.then_some(Width::Float))
        .collect();
    for layer in layers {
        for &width in &all {
            let fields = [("drop_pp", &layer.drop_pp), ("cost", &layer.cost)];
            for (field, table) in fields {
                // A float layer's drop is zero by definition; it need not be given.
                let optional = field == "drop_pp" && width == Width::Float;
                match table.get(&width) {
                    Some(v) if v.is_finite() => {}
                    None if optional => {}
                    _ => {
                        return Err(AllocError::Table {
                            layer: layer.name.clone(),
                            field,
                            width,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn total_cost(layers: &[LayerTable], allocation: &Allocation) -> f64 {
    layers.iter().map(|l| l.cost[&allocation[&l.name]]).sum()
}

fn drop_at(layer: &LayerTable, width: Width) -> f64 {
    layer.drop_pp.get(&width).copied().unwrap_or(0.0)
}

/// The integer layer whose fallback to float recovers the most predicted accuracy per
/// unit of added cost (the first such layer on a tie).
fn best_fallback<'a>(layers: &'a [LayerTable], allocation: &Allocation) -> Option<&'a LayerTable> {
    let mut best: Option<(f64, &LayerTable)> = None;
    for layer in layers {
        let now = allocation[&layer.name];
        if now == Width::Float {
            continue;
        }
        let recovered = (drop_at(layer, now) - drop_at(layer, Width::Float)).max(0.0);
        let added = (layer.cost[&Width::Float] - layer.cost[&now]).max(f64::MIN_POSITIVE);
        let score = recovered / added;
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, layer));
        }
    }
    best.map(|(_, l)| l)
}

/// The move (layer index, from, to) with the largest cost saved per predicted accuracy
/// point lost, among the layers not frozen; each layer's move goes to its next width
/// that costs less (widths that save nothing are skipped over).
fn best_descent(
    layers: &[LayerTable],
    allocation: &Allocation,
    frozen: &[bool],
    widths: &[u8],
) -> Option<(usize, Width, Width)> {
    let mut best: Option<(f64, usize, Width, Width)> = None;
    for (i, layer) in layers.iter().enumerate().filter(|(i, _)| !frozen[*i]) {
        let from = allocation[&layer.name];
        let Width::Bits(bits) = from else { continue };
        let cost = layer.cost[&from];
        let Some(to) = widths
            .iter()
            .filter(|&&b| b < bits)
            .map(|&b| Width::Bits(b))
            .find(|w| layer.cost[w] < cost)
        else {
            continue;
        };
        let loss = (drop_at(layer, to) - drop_at(layer, from)).max(MIN_LOSS_PP);
        let score = (cost - layer.cost[&to]) / loss;
        if best.is_none_or(|(s, ..)| score > s) {
            best = Some((score, i, from, to));
        }
    }
    best.map(|(_, i, from, to)| (i, from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WIDTHS: [u8; 4] = [8, 6, 4, 2];

    /// A layer of `weights` weights whose drop at W6, W4 and W2 is `drops`; W8 costs
    /// nothing in accuracy, and the size cost follows the runtime's packing (W6 as
    /// large as W8).
    fn layer(name: &str, weights: f64, drops: [f64; 3]) -> LayerTable {
        let bytes = [1.0, 1.0, 0.5, 0.25];
        let mut drop_pp: BTreeMap<Width, f64> = WIDTHS
            .iter()
            .skip(1)
            .map(|&b| Width::Bits(b))
            .zip(drops)
            .collect();
        drop_pp.insert(Width::Bits(8), 0.0);
        let mut cost: BTreeMap<Width, f64> = WIDTHS
            .iter()
            .zip(bytes)
            .map(|(&b, per)| (Width::Bits(b), weights * per))
            .collect();
        cost.insert(Width::Float, 4.0 * weights);
        LayerTable {
            name: name.into(),
            drop_pp,
            cost,
        }
    }

    fn options(budget_pp: f64) -> GreedyOptions {
        GreedyOptions {
            widths: WIDTHS.to_vec(),
            budget_pp,
            allow_float: true,
        }
    }

    /// The measured drop as the sum of the table's per-layer drops plus `base`.
    fn additive(
        layers: &[LayerTable],
        base: f64,
    ) -> impl FnMut(&Allocation) -> Result<(f64, ()), MeasureError> + '_ {
        move |a| {
            let sum: f64 = layers.iter().map(|l| drop_at(l, a[&l.name])).sum();
            Ok((base + sum, ()))
        }
    }

    #[test]
    fn the_largest_layer_goes_down_first_and_w6_is_skipped() {
        let layers = [
            layer("conv", 100.0, [0.0, 0.3, 2.0]),
            layer("fc", 10_000.0, [0.0, 0.1, 0.3]),
        ];
        let s = greedy(&layers, &options(0.5), additive(&layers, 0.0)).unwrap();
        let moves: Vec<(String, Width, bool)> = s.steps[1..]
            .iter()
            .map(|st| (st.layer.clone().unwrap(), st.to.unwrap(), st.accepted))
            .collect();
        assert_eq!(
            moves,
            [
                ("fc".into(), Width::Bits(4), true),
                ("fc".into(), Width::Bits(2), true),
                ("conv".into(), Width::Bits(4), false),
            ]
        );
        assert_eq!(s.allocation["fc"], Width::Bits(2));
        assert_eq!(s.allocation["conv"], Width::Bits(8));
        assert!((s.drop_pp - 0.3).abs() < 1e-12);
        assert_eq!(s.cost, 100.0 + 2_500.0);
    }

    #[test]
    fn over_budget_at_the_start_the_most_sensitive_layer_per_byte_goes_float() {
        let mut conv = layer("conv", 100.0, [0.0, 0.5, 3.0]);
        conv.drop_pp.insert(Width::Bits(8), 0.8);
        let fc = layer("fc", 10_000.0, [0.0, 0.1, 0.2]);
        let layers = [conv, fc];
        let s = greedy(&layers, &options(0.5), additive(&layers, 0.0)).unwrap();
        assert!(!s.steps[0].accepted);
        assert_eq!(s.steps[1].kind, Move::ToFloat);
        assert_eq!(s.steps[1].layer.as_deref(), Some("conv"));
        assert_eq!(s.allocation["conv"], Width::Float);
        assert_eq!(s.allocation["fc"], Width::Bits(2));
    }

    #[test]
    fn widths_are_written_as_strings_also_as_map_keys() {
        let table = layer("fc", 10.0, [0.0, 0.1, 0.2]);
        let json = serde_json::to_string(&table).unwrap();
        assert!(json.contains("\"W4\":0.1"), "{json}");
        assert!(json.contains("\"float\":40.0"), "{json}");
        assert_eq!(serde_json::from_str::<LayerTable>(&json).unwrap(), table);
        for bad in ["W9", "W1", "8", "half"] {
            let e = Width::try_from(bad.to_owned()).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let layers = [layer("fc", 10.0, [0.0, 0.1, 0.2])];
        let none = |_: &Allocation| -> Result<(f64, ()), MeasureError> { Ok((0.0, ())) };
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let e = greedy(&layers, &options(bad), none).unwrap_err();
            assert!(matches!(e, AllocError::Budget(_)), "{e}");
        }
        let e = greedy(&[], &options(0.5), none).unwrap_err();
        assert!(matches!(e, AllocError::NoLayers), "{e}");
        let mut o = options(0.5);
        o.widths = vec![4, 8];
        let e = greedy(&layers, &o, none).unwrap_err();
        assert!(matches!(e, AllocError::Widths(_)), "{e}");
        let mut holed = layers[0].clone();
        holed.cost.remove(&Width::Bits(4));
        let e = greedy(&[holed], &options(0.5), none).unwrap_err();
        assert!(
            e.to_string()
                .contains("`fc`: cost has no finite value for W4"),
            "{e}"
        );
        let e = "speed".parse::<Target>().unwrap_err();
        assert!(e.to_string().contains("`speed`"), "{e}");
        let always_bad = |_: &Allocation| -> Result<(f64, ()), MeasureError> { Ok((1.0, ())) };
        let e = greedy(&layers, &options(0.5), always_bad).unwrap_err();
        assert!(matches!(e, AllocError::Unreachable { .. }), "{e}");
        let failing = |_: &Allocation| -> Result<(f64, ()), MeasureError> { Err("boom".into()) };
        let e = greedy(&layers, &options(0.5), failing).unwrap_err();
        assert!(e.to_string().contains("boom"), "{e}");
    }

    /// A random table of `n` layers from `seed` (a small linear congruential generator:
    /// the test's own reproducible source).
    fn random_table(seed: u64, n: usize) -> Vec<LayerTable> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|i| {
                let d6 = next() * 0.3;
                let d4 = d6 + next() * 1.0;
                let d2 = d4 + next() * 5.0;
                let weights = (1.0 + next() * 1000.0).round();
                let mut l = layer(&format!("l{i}"), weights, [d6, d4, d2]);
                l.drop_pp.insert(Width::Bits(8), next() * 0.2);
                l
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_search_keeps_the_budget_lowers_the_cost_and_repeats_itself(
            seed in any::<u64>(),
            n in 1usize..12,
            budget in 0.5f64..3.0,
            noise in 0.0f64..0.5,
        ) {
            let layers = random_table(seed, n);
            // A non-additive measurement: the sum plus a noise fixed per candidate.
            let measure = |a: &Allocation| -> Result<(f64, ()), MeasureError> {
                let sum: f64 = layers.iter().map(|l| drop_at(l, a[&l.name])).sum();
                let h = a.values().fold(seed, |h, w| h.wrapping_mul(31).wrapping_add(match w {
                    Width::Bits(b) => u64::from(*b),
                    Width::Float => 99,
                }));
                Ok((sum + noise * (h % 1000) as f64 / 1000.0, ()))
            };
            let first = greedy(&layers, &options(budget), measure).unwrap();
            let again = greedy(&layers, &options(budget), measure).unwrap();
            prop_assert_eq!(&first, &again);
            prop_assert!(first.drop_pp <= budget);
            let descent: Vec<&Step<()>> = first
                .steps
                .iter()
                .filter(|s| s.kind != Move::ToFloat && s.accepted)
                .collect();
            for pair in descent.windows(2) {
                prop_assert!(pair[1].predicted_cost < pair[0].predicted_cost);
            }
            for s in first.steps.iter().filter(|s| s.kind == Move::Down && s.accepted) {
                prop_assert!(s.drop_pp <= budget);
            }
            prop_assert_eq!(first.cost, total_cost(&layers, &first.allocation));
        }
    }
}
