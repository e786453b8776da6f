//! Cross-layer equalization (Nagel et al. 2019, section 4.1) on a batch-norm-folded graph.
//!
//! A pair is two weighted layers `first -> ... -> second` where every tensor between them
//! has exactly one reader and every operator between them is positively homogeneous per
//! channel: `f(x / s) = f(x) / s` for `s > 0` (ReLU, a clip to `[0, +inf)`, max and
//! average pooling, global average pooling, flatten). Dividing channel `i` of `first`
//! (weights and bias) by `s_i` and multiplying the weights of `second` that read channel
//! `i` by `s_i` then leaves the function unchanged. With `r1_i`, `r2_i` the ranges
//! (`max |w|`) of channel `i` in the two layers, `s_i = sqrt(r1_i * r2_i) / r2_i` makes
//! both ranges `sqrt(r1_i * r2_i)`; pairs that share a layer (conv -> depthwise -> conv)
//! are equalized in turn until no scale moves by more than the tolerance.
//!
//! ReLU6 (`clip(x, 0, 6)`) is not positively homogeneous: `clip(x / s, 0, 6)` differs
//! from `clip(x, 0, 6) / s` wherever the activation exceeds `6 / s`, and a graph cannot
//! hold the per-channel bound `6 / s_i` that would keep it exact. By default
//! ([`ClipPolicy::Refuse`]) pairs through such a clip are left alone, so the float
//! function is unchanged. [`ClipPolicy::AsRelu`] does what Nagel et al. did for
//! MobileNetV2: it replaces those clips by ReLU and equalizes the pair. That changes the
//! float function wherever an activation exceeded the bound; the replaced nodes are
//! reported so the float model can be re-measured.

use std::collections::HashMap;

use cinder_tensor::graph::{FloatGraph, Node, Op};
use serde::{Deserialize, Serialize};

use crate::error::PtqError;
use crate::layer::{InputMap, divide_outputs, input_ranges, multiply_inputs, output_ranges};

/// What to do with a clip that has a finite upper bound (ReLU6) between two layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClipPolicy {
    /// Leave the pair alone (exact).
    #[default]
    Refuse,
    /// Replace the clip by ReLU and equalize (changes the float function).
    AsRelu,
}

/// How equalization runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EqualizeOptions {
    pub clip: ClipPolicy,
    /// Sweeps over all pairs at most.
    pub max_iterations: usize,
    /// Converged when no scale of a sweep differs from 1 by more than this.
    pub tolerance: f32,
}

impl Default for EqualizeOptions {
    fn default() -> Self {
        Self {
            clip: ClipPolicy::Refuse,
            max_iterations: 100,
            tolerance: 1e-4,
        }
    }
}

/// One equalized pair, with how evenly each layer's output channels use its weight
/// range (`mean_i r_i / max_i r_i`: 1 when all channels have the same range) before and
/// after: the share of the grid a per-tensor quantization gives the average channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairReport {
    pub first: String,
    pub second: String,
    /// The operators between the two layers.
    pub through: Vec<String>,
    pub channels: usize,
    pub precision_before: [f32; 2],
    pub precision_after: [f32; 2],
}

/// The equalized graph and what was done.
#[derive(Debug, Clone)]
pub struct Equalization {
    pub graph: FloatGraph,
    pub pairs: Vec<PairReport>,
    /// Sweeps run (the last one moved no scale beyond the tolerance, unless
    /// `converged` is false).
    pub iterations: usize,
    pub converged: bool,
    /// Clips with a finite upper bound replaced by ReLU ([`ClipPolicy::AsRelu`]).
    pub replaced_clips: Vec<String>,
    /// Clips with a finite upper bound that kept a pair from being equalized
    /// ([`ClipPolicy::Refuse`]).
    pub refused_clips: Vec<String>,
}

/// A pair found in the graph, by node index.
#[derive(Debug)]
struct Pair {
    first: usize,
    second: usize,
    map: InputMap,
    through: Vec<String>,
    clips: Vec<usize>,
}

/// What follows a layer's output.
enum Next {
    Pair(Pair),
    /// Blocked by a clip with a finite upper bound (its node index).
    Clip(usize),
    None,
}

/// Equalizes every pair of `graph` (folded: no batch-norm) whose two layers are both
/// `enabled`, under `options`.
pub fn equalize(
    graph: &FloatGraph,
    options: &EqualizeOptions,
    enabled: impl Fn(&str) -> bool,
) -> Result<Equalization, PtqError> {
    if let Some(bn) = graph
        .nodes()
        .iter()
        .find(|n| matches!(n.op, Op::BatchNorm(_)))
    {
        return Err(PtqError::BatchNorm(bn.name.clone()));
    }
    let (pairs, refused) = find_pairs(graph, options.clip, &enabled);
    let mut nodes = graph.nodes().to_vec();
    let before: Vec<[f32; 2]> = pairs.iter().map(|p| precision(&nodes, p)).collect();
    let (iterations, converged) = sweep_until_converged(&mut nodes, &pairs, options);
    let mut replaced_clips = Vec::new();
    for &c in pairs.iter().flat_map(|p| &p.clips) {
        if !matches!(nodes[c].op, Op::Relu) {
            nodes[c].op = Op::Relu;
            replaced_clips.push(nodes[c].name.clone());
        }
    }
    let reports = pairs
        .iter()
        .zip(before)
        .map(|(p, precision_before)| PairReport {
            first: nodes[p.first].name.clone(),
            second: nodes[p.second].name.clone(),
            through: p.through.clone(),
            channels: crate::layer::output_channels(&nodes[p.first].op),
            precision_before,
            precision_after: precision(&nodes, p),
        })
        .collect();
    Ok(Equalization {
        graph: FloatGraph::new(graph.input_shape().to_vec(), nodes)?,
        pairs: reports,
        iterations,
        converged,
        replaced_clips,
        refused_clips: refused
            .into_iter()
            .map(|c| graph.nodes()[c].name.clone())
            .collect(),
    })
}

/// Sweeps over the pairs until the scales settle; returns the sweeps run and whether
/// they converged.
fn sweep_until_converged(
    nodes: &mut [Node],
    pairs: &[Pair],
    options: &EqualizeOptions,
) -> (usize, bool) {
    if pairs.is_empty() {
        return (0, true);
    }
    for iteration in 1..=options.max_iterations {
        let mut largest_move = 0.0f32;
        for p in pairs {
            let scale = pair_scales(nodes, p);
            largest_move = scale
                .iter()
                .fold(largest_move, |m, s| m.max((s - 1.0).abs()));
            divide_outputs(&mut nodes[p.first].op, &scale);
            multiply_inputs(&mut nodes[p.second].op, p.map, &scale);
        }
        if largest_move <= options.tolerance {
            return (iteration, true);
        }
    }
    (options.max_iterations, false)
}

/// `s_i = sqrt(r1_i * r2_i) / r2_i`, or 1 where either range is 0 (a dead channel).
fn pair_scales(nodes: &[Node], p: &Pair) -> Vec<f32> {
    let r1 = output_ranges(&nodes[p.first].op);
    let r2 = input_ranges(&nodes[p.second].op, p.map, r1.len());
    r1.iter()
        .zip(&r2)
        .map(|(&a, &b)| {
            if a > 0.0 && b > 0.0 {
                (a * b).sqrt() / b
            } else {
                1.0
            }
        })
        .collect()
}

fn precision(nodes: &[Node], p: &Pair) -> [f32; 2] {
    let of = |op: &Op| {
        let r = output_ranges(op);
        let max = r.iter().fold(0.0f32, |m, &v| m.max(v));
        let mean = r.iter().sum::<f32>() / r.len() as f32;
        if max > 0.0 { mean / max } else { 1.0 }
    };
    [of(&nodes[p.first].op), of(&nodes[p.second].op)]
}

/// Every pair of enabled layers, and the bounded clips that blocked one.
fn find_pairs(
    graph: &FloatGraph,
    clip: ClipPolicy,
    enabled: &impl Fn(&str) -> bool,
) -> (Vec<Pair>, Vec<usize>) {
    let index: HashMap<&str, usize> = graph
        .nodes()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let (mut pairs, mut refused) = (Vec::new(), Vec::new());
    for (i, node) in graph.nodes().iter().enumerate() {
        if !node.op.is_weighted() || !enabled(&node.name) {
            continue;
        }
        match follow(graph, &index, i, clip) {
            Next::Pair(p) if enabled(&graph.nodes()[p.second].name) => pairs.push(p),
            Next::Clip(c) => refused.push(c),
            Next::Pair(_) | Next::None => {}
        }
    }
    (pairs, refused)
}

/// Walks from layer `first` through single-reader, channel-wise homogeneous operators
/// to the next weighted layer.
fn follow(
    graph: &FloatGraph,
    index: &HashMap<&str, usize>,
    first: usize,
    clip: ClipPolicy,
) -> Next {
    let nodes = graph.nodes();
    let channels = crate::layer::output_channels(&nodes[first].op);
    let (mut tensor, mut through, mut clips) = (nodes[first].name.as_str(), Vec::new(), Vec::new());
    loop {
        let readers = graph.consumers(tensor);
        let &[reader] = readers.as_slice() else {
            return Next::None;
        };
        let at = index[reader.name.as_str()];
        match &reader.op {
            Op::Conv2d(_) | Op::Linear(_) => {
                return match InputMap::of(&reader.op, channels) {
                    Some(map) => Next::Pair(Pair {
                        first,
                        second: at,
                        map,
                        through,
                        clips,
                    }),
                    None => Next::None,
                };
            }
            Op::Relu | Op::MaxPool2d(_) | Op::AvgPool2d(_) | Op::GlobalAvgPool | Op::Flatten => {}
            &Op::Clip { min, max } if is_homogeneous(min) && is_homogeneous(max) => {}
            &Op::Clip { min, max } if min == 0.0 && max > 0.0 && max.is_finite() => {
                if clip == ClipPolicy::Refuse {
                    return Next::Clip(at);
                }
                clips.push(at);
            }
            _ => return Next::None,
        }
        through.push(reader.name.clone());
        tensor = reader.name.as_str();
    }
}

/// A clip bound that commutes with positive scaling: 0 or infinite.
fn is_homogeneous(bound: f32) -> bool {
    bound == 0.0 || bound.is_infinite()
}
