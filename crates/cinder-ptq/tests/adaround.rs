//! AdaRound does no worse than nearest rounding on its own objective (and better on
//! most layers), ends with every rounding decided and every code on the grid, repeats
//! itself for a seed, and its codes are exactly the converted model's.

mod common;

use std::collections::BTreeMap;

use cinder_observers::weight_params;
use cinder_ptq::{AdaRoundOptions, AdaRounded, RoundedLayer, adaround, correct_biases_rounded};
use cinder_runtime::model::weight_scheme;
use cinder_runtime::synthetic::{Rng, minmax_table, random_input};
use cinder_runtime::{
    LayerConfig, QuantConfig, WeightGranularity, convert_with_weights, float_forward,
};
use cinder_tensor::graph::{FloatGraph, Linear, Op};
use cinder_tensor::{Mapping, Tensor, TensorBuf};
use common::zoo_graphs;
use proptest::prelude::*;

fn config(bits: u8, per_channel: bool, mapping: Mapping) -> QuantConfig {
    QuantConfig::uniform(LayerConfig {
        weight_bits: bits,
        granularity: if per_channel {
            WeightGranularity::PerChannel
        } else {
            WeightGranularity::PerTensor
        },
        mapping,
        adaround: true,
        ..LayerConfig::default()
    })
}

fn options(iterations: usize, seed: u64) -> AdaRoundOptions {
    AdaRoundOptions {
        iterations,
        learning_rate: 1e-2,
        seed,
        ..AdaRoundOptions::default()
    }
}

/// One linear layer `[outputs, inputs]` with random weights.
fn linear(rng: &mut Rng, outputs: usize, inputs: usize) -> FloatGraph {
    let op = Op::Linear(Linear {
        weight: rng.tensor(vec![outputs, inputs], 1.0),
        bias: None,
    });
    FloatGraph::chain(vec![inputs], vec![("fc".into(), op)]).unwrap()
}

/// Correlated inputs (a random mixing of uniform noise, of variance about 1/9): where
/// rounding matters.
fn inputs(rng: &mut Rng, batches: usize, rows: usize, width: usize) -> Vec<TensorBuf<f32>> {
    let mix = rng.tensor(vec![width, width], 1.0 / (width as f32).sqrt());
    (0..batches)
        .map(|_| {
            let noise = rng.tensor(vec![rows, width], 1.0);
            let mut data = vec![0.0f32; rows * width];
            for r in 0..rows {
                for (j, out) in data[r * width..][..width].iter_mut().enumerate() {
                    *out = (0..width)
                        .map(|i| noise.data()[r * width + i] * mix.data()[i * width + j])
                        .sum();
                }
            }
            TensorBuf::new(vec![rows, width], data).unwrap()
        })
        .collect()
}

fn mapping(symmetric: bool) -> Mapping {
    if symmetric {
        Mapping::Symmetric
    } else {
        Mapping::Asymmetric
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// On a random linear layer, the learned rounding's objective is at most nearest
    /// rounding's, every relaxed rounding ends at 0 or 1, and every code is on the grid.
    #[test]
    fn never_worse_than_nearest_decided_and_on_the_grid(
        seed: u64, outputs in 1usize..6, width in 2usize..20, bits in 2u8..=8,
        per_channel: bool, symmetric: bool,
    ) {
        let mut rng = Rng::new(seed);
        let graph = linear(&mut rng, outputs, width);
        let batches = inputs(&mut rng, 2, 16, width);
        let quant = config(bits, per_channel, mapping(symmetric));
        // A regularizer strong enough, against this layer's output scale, to finish
        // the annealing within the steps.
        let opts = AdaRoundOptions { regularization: 1.0, learning_rate: 5e-2, ..options(1000, seed) };
        let rounded = adaround(&graph, &batches, &quant, &opts).unwrap();
        let report = &rounded.report[0];
        let kept = if report.kept_nearest { report.nearest_error } else { report.learned_error };
        prop_assert!(kept <= report.nearest_error, "{report:?}");
        prop_assert_eq!(report.undecided, 0);
        let layer = &rounded.layers["fc"];
        for (i, &q) in layer.codes.data().iter().enumerate() {
            let p = layer.params.channel(if per_channel { i / width } else { 0 });
            prop_assert!((p.qmin..=p.qmax).contains(&i32::from(q)), "{q} outside [{}, {}]", p.qmin, p.qmax);
        }
    }

    /// Any codes on any 2-8-bit grid, handed to conversion through
    /// `AdaRounded::apply`, are the converted model's codes.
    #[test]
    fn conversion_takes_the_codes_exactly(
        seed: u64, outputs in 1usize..5, width in 1usize..12, bits in 2u8..=8,
        per_channel: bool, symmetric: bool, magnitude in -12i32..6,
    ) {
        let mut rng = Rng::new(seed);
        let bound = 2f32.powi(magnitude);
        let op = Op::Linear(Linear { weight: rng.tensor(vec![outputs, width], bound), bias: None });
        let graph = FloatGraph::chain(vec![width], vec![("fc".into(), op)]).unwrap();
        let (w, _) = graph.node("fc").unwrap().op.weight_and_bias().unwrap();
        let scheme = weight_scheme(bits, mapping(symmetric), per_channel).unwrap();
        let params = weight_params(w, &scheme).unwrap();
        let codes: Vec<i8> = (0..w.len())
            .map(|i| {
                let p = params.channel(if per_channel { i / width } else { 0 });
                (p.qmin + (rng.next_u64() % (p.qmax - p.qmin + 1) as u64) as i32) as i8
            })
            .collect();
        let codes = TensorBuf::new(w.shape().to_vec(), codes).unwrap();
        let rounded = AdaRounded {
            layers: BTreeMap::from([("fc".to_owned(), RoundedLayer { params, codes: codes.clone() })]),
            report: Vec::new(),
        };
        let (on_grid, given) = rounded.apply(&graph).unwrap();
        let table = minmax_table(&on_grid, &random_input(&on_grid, 4, seed)).unwrap();
        let quant = config(bits, per_channel, mapping(symmetric));
        let model = convert_with_weights(&on_grid, &table, &quant, &given).unwrap();
        let step = model.steps().iter().find(|s| s.name == "fc").unwrap();
        let converted = step.op.layer().unwrap().quant_weights().unwrap();
        prop_assert_eq!(converted.codes.data(), codes.data());
        prop_assert_eq!(&converted.params, &given["fc"]);
    }
}

/// Strictly better than nearest on most random layers, not only never worse.
#[test]
fn strictly_better_than_nearest_on_most_layers() {
    let mut better = 0;
    for seed in 0..12 {
        let mut rng = Rng::new(seed);
        let graph = linear(&mut rng, 4, 16);
        let batches = inputs(&mut rng, 2, 32, 16);
        let quant = config(3, true, Mapping::Symmetric);
        let rounded = adaround(&graph, &batches, &quant, &options(600, seed)).unwrap();
        let r = &rounded.report[0];
        better += usize::from(r.learned_error < r.nearest_error);
    }
    assert!(better >= 10, "strictly better on {better} of 12 layers");
}

/// The same seed gives the same codes, also where the objective is sampled (a layer
/// wider than the calibration set is tall).
#[test]
fn a_seed_fixes_the_result() {
    let mut rng = Rng::new(3);
    let graph = linear(&mut rng, 3, 48);
    let batches = inputs(&mut rng, 1, 20, 48);
    let quant = config(4, true, Mapping::Symmetric);
    let run = |seed| adaround(&graph, &batches, &quant, &options(200, seed)).unwrap();
    let first = run(7);
    assert_eq!(first.report[0].objective, "sampled");
    assert_eq!(first.layers, run(7).layers);
}

/// On the zoo's graphs (dense, depthwise and residual layers), with the asymmetric
/// reconstruction too, every layer is rounded and conversion keeps its codes.
#[test]
fn zoo_models_convert_with_exactly_the_learned_codes() {
    for (name, graph) in zoo_graphs(4) {
        let batches: Vec<TensorBuf<f32>> = (0..2).map(|s| random_input(&graph, 4, s)).collect();
        for (per_channel, asymmetric) in [(true, false), (false, true)] {
            let quant = config(4, per_channel, Mapping::Symmetric);
            let opts = AdaRoundOptions {
                asymmetric,
                ..options(20, 1)
            };
            let rounded = adaround(&graph, &batches, &quant, &opts).unwrap();
            let weighted = graph.nodes().iter().filter(|n| n.op.is_weighted()).count();
            assert_eq!(rounded.layers.len(), weighted, "{name}");
            let (on_grid, given) = rounded.apply(&graph).unwrap();
            let table = minmax_table(&on_grid, &batches[0]).unwrap();
            let model = convert_with_weights(&on_grid, &table, &quant, &given).unwrap();
            let mut checked = 0;
            for step in model.steps() {
                if let Some(w) = step.op.layer().and_then(|l| l.quant_weights()) {
                    assert_eq!(w.codes.data(), rounded.layers[&step.name].codes.data());
                    checked += 1;
                }
            }
            assert_eq!(checked, weighted, "{name}");
        }
    }
}

#[test]
fn bad_options_and_no_images_are_errors() {
    let graph = linear(&mut Rng::new(1), 2, 4);
    let quant = config(4, true, Mapping::Symmetric);
    let none: Vec<TensorBuf<f32>> = Vec::new();
    let err = adaround(&graph, &none, &quant, &AdaRoundOptions::default()).unwrap_err();
    assert!(matches!(err, cinder_ptq::PtqError::NoImages), "{err}");
    let bad = AdaRoundOptions {
        beta: [2.0, 20.0],
        ..AdaRoundOptions::default()
    };
    let err = adaround(&graph, &none, &quant, &bad).unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");
}

/// Per output channel, the mean over `batches` of `a(x) - b(x)` for one-layer graphs.
fn mean_error(a: &FloatGraph, b: &FloatGraph, batches: &[TensorBuf<f32>]) -> Vec<f64> {
    let channels = a.output_shapes()[0][0];
    let (mut sum, mut rows) = (vec![0.0f64; channels], 0usize);
    for x in batches {
        let (ya, yb) = (float_forward(a, x).unwrap(), float_forward(b, x).unwrap());
        for (i, (p, q)) in ya.data().iter().zip(yb.data()).enumerate() {
            sum[i % channels] += f64::from(p - q);
        }
        rows += x.shape()[0];
    }
    sum.iter().map(|s| s / rows as f64).collect()
}

/// Bias correction after AdaRound removes the mean output error of the learned
/// weights (not of nearest rounding's).
#[test]
fn bias_correction_after_adaround_centres_the_learned_layer() {
    let mut rng = Rng::new(9);
    let graph = linear(&mut rng, 4, 12);
    let batches: Vec<TensorBuf<f32>> = inputs(&mut rng, 2, 32, 12)
        .iter()
        .map(|x| x.map(|v| v + 0.5))
        .collect();
    let mut quant = config(3, false, Mapping::Symmetric);
    quant.default.bias_correction = true;
    let rounded = adaround(&graph, &batches, &quant, &options(300, 0)).unwrap();
    let before = mean_error(&graph, &rounded.apply(&graph).unwrap().0, &batches);
    let corrected = correct_biases_rounded(&graph, &batches, &quant, &rounded).unwrap();
    let after = mean_error(
        &graph,
        &rounded.apply(&corrected.graph).unwrap().0,
        &batches,
    );
    let largest = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    assert!(
        largest(&before) > 1e-3,
        "no mean error to correct: {before:?}"
    );
    assert!(
        largest(&after) <= 1e-3 * largest(&before) + 1e-6,
        "{after:?} vs {before:?}"
    );
}
