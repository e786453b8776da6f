//! The fake-quant float simulation against the integer runtime: argmax agreement and
//! logit distance in output quantization steps, on a W8A8 static per-channel model, on
//! random static models (any weight width, granularity and mapping) and on random static
//! graphs (residual adds, depthwise convolutions, pools, concatenations).

mod common;

use cinder_runtime::synthetic::{Rng, conv_node, linear_node, minmax_table, node};
use cinder_runtime::{
    LayerExec, Mode, QuantConfig, QuantizedModel, SessionOptions, convert, simulate,
};
use cinder_tensor::graph::{FloatGraph, Op, Pool2d};
use cinder_tensor::{Tensor, TensorBuf};
use common::dag::dag_spec;
use common::{input, model_spec};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

/// Agreement counts between the runtime and the simulation.
#[derive(Debug, Default)]
struct Agreement {
    samples: usize,
    /// Same first argmax.
    strict: usize,
    /// The simulation's argmax is one of the runtime's (tied) maxima.
    tie_aware: usize,
    logits: usize,
    within_one_step: usize,
    max_steps: f32,
}

impl Agreement {
    fn add(&mut self, runtime: &[f32], sim: &[f32], classes: usize, step: f32) {
        for (r, s) in runtime.chunks_exact(classes).zip(sim.chunks_exact(classes)) {
            let argmax =
                |v: &[f32]| (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best });
            let (ar, as_) = (argmax(r), argmax(s));
            self.samples += 1;
            self.strict += usize::from(ar == as_);
            self.tie_aware += usize::from(r[as_] == r[ar]);
            for (a, b) in r.iter().zip(s) {
                let steps = (a - b).abs() / step;
                self.logits += 1;
                self.within_one_step += usize::from(steps <= 1.0 + 1e-3);
                self.max_steps = self.max_steps.max(steps);
            }
        }
    }

    fn rates(&self) -> (f64, f64, f64) {
        let rate = |n: usize, d: usize| n as f64 / d.max(1) as f64;
        (
            rate(self.strict, self.samples),
            rate(self.tie_aware, self.samples),
            rate(self.within_one_step, self.logits),
        )
    }
}

/// The output scale of a model whose last layer is static.
fn output_step(model: &QuantizedModel) -> Option<f32> {
    model
        .steps()
        .iter()
        .rev()
        .find_map(|s| s.op.layer())
        .and_then(|l| match &l.exec {
            LayerExec::Static(s) => Some(s.output.scale),
            _ => None,
        })
}

fn compare(model: &QuantizedModel, x: &TensorBuf<f32>, agreement: &mut Agreement) {
    let mut session = model.session_with(SessionOptions { threads: 2 }).unwrap();
    let runtime = session.run(x).unwrap().data().to_vec();
    let sim = simulate(model, x).unwrap();
    let step = output_step(model).expect("a static last layer");
    agreement.add(&runtime, sim.data(), model.output_shape()[0], step);
}

/// A small CIFAR-like ConvNet: conv 3->8, pool, conv 8->16, pool, fc 256->32, fc 32->10.
fn small_convnet() -> FloatGraph {
    let mut rng = Rng::new(7);
    let pool = || Op::MaxPool2d(Pool2d::square(2, 2));
    FloatGraph::chain(
        vec![3, 16, 16],
        vec![
            conv_node(&mut rng, "conv1", 3, 8, 3, 1, 1),
            node("relu1", Op::Relu),
            node("pool1", pool()),
            conv_node(&mut rng, "conv2", 8, 16, 3, 1, 1),
            node("relu2", Op::Relu),
            node("pool2", pool()),
            node("flatten", Op::Flatten),
            linear_node(&mut rng, "fc1", 256, 32),
            node("relu3", Op::Relu),
            linear_node(&mut rng, "fc2", 32, 10),
        ],
    )
    .unwrap()
}

#[test]
fn w8a8_static_per_channel_agrees_with_the_simulation() {
    let graph = small_convnet();
    let table = minmax_table(&graph, &input(&graph, 64, 1)).unwrap();
    let model = convert(&graph, &table, &QuantConfig::default()).unwrap();
    let mut agreement = Agreement::default();
    for seed in 0..8 {
        compare(&model, &input(&graph, 64, 100 + seed), &mut agreement);
    }
    let (strict, tie_aware, within) = agreement.rates();
    println!(
        "W8A8 static per-channel, {} random inputs: argmax agreement {:.2}% ({:.2}% counting ties), \
         logits within one output step {:.2}%, largest distance {:.2} steps",
        agreement.samples,
        strict * 100.0,
        tie_aware * 100.0,
        within * 100.0,
        agreement.max_steps
    );
    assert!(tie_aware >= 0.99, "{agreement:?}");
    assert!(within >= 0.99, "{agreement:?}");
}

/// Prints and checks the agreement over random models of `what`.
fn check_random(what: &str, agreement: &Agreement) {
    let (strict, tie_aware, within) = agreement.rates();
    println!(
        "{what}, {} samples: argmax agreement {:.2}% ({:.2}% counting ties), \
         logits within one output step {:.2}%, largest distance {:.2} steps",
        agreement.samples,
        strict * 100.0,
        tie_aware * 100.0,
        within * 100.0,
        agreement.max_steps
    );
    // Deterministic samples, measured at 100%, 100% and 0 steps: the margin is for
    // near-ties that other samples could hold.
    assert!(tie_aware >= 0.99, "{agreement:?}");
    assert!(within >= 0.99, "{agreement:?}");
    assert!(agreement.max_steps <= 2.0, "{agreement:?}");
}

#[test]
fn random_static_models_agree_with_the_simulation() {
    let mut runner = TestRunner::deterministic();
    let mut agreement = Agreement::default();
    for case in 0..64 {
        let mut spec = model_spec().new_tree(&mut runner).unwrap().current();
        spec.choices.iter_mut().for_each(|c| c.mode = Mode::Static);
        let Some((graph, model)) = spec.model() else {
            continue;
        };
        compare(&model, &input(&graph, 16, case), &mut agreement);
    }
    check_random("random static models", &agreement);
}

#[test]
fn random_static_graphs_agree_with_the_simulation() {
    let mut runner = TestRunner::deterministic();
    let mut agreement = Agreement::default();
    for case in 0..64 {
        let mut spec = dag_spec().new_tree(&mut runner).unwrap().current();
        spec.choices.iter_mut().for_each(|c| c.mode = Mode::Static);
        let Some((graph, model)) = spec.model() else {
            continue;
        };
        compare(&model, &input(&graph, 16, case), &mut agreement);
    }
    check_random("random static graphs", &agreement);
}
