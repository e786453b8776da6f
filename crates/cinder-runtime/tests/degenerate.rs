//! Non-finite and degenerate data through every stage that takes data: calibration
//! (every observer), conversion, the float reference forward, the int8 session and the
//! fake-quant simulation.
//!
//! - NaN and infinite images are typed errors at each stage, naming the element.
//! - All-zero and all-constant images calibrate, convert and run to finite outputs (a
//!   zero-width range gets the smallest scale, `MIN_SCALE`, so real 0 maps exactly).
//! - All-zero and constant weights convert and run; non-finite weights are refused when
//!   the graph is built (see cinder-tensor's graph tests).
//! - Finite weights that overflow f32 on the way (1e30 times an activation) are a typed
//!   error naming the node, in the float forward and in the int8 runtime's float layers.

use cinder_observers::{Calibrator, ObserverError, ObserverSpec};
use cinder_runtime::synthetic::{Rng, linear_node, minmax_table, node, random_input};
use cinder_runtime::{
    LayerOverride, Mode, QuantConfig, RunError, SessionOptions, convert, float_forward,
    float_forward_with, simulate,
};
use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{QuantScheme, Tensor, TensorBuf};

/// conv-free chain: fc1(6->5) relu fc2(5->3), weights from `fill` (None: seeded random).
fn graph(fill: Option<f32>) -> FloatGraph {
    let mut rng = Rng::new(3);
    let mut nodes = vec![
        linear_node(&mut rng, "fc1", 6, 5),
        node("relu1", Op::Relu),
        linear_node(&mut rng, "fc2", 5, 3),
    ];
    if let Some(value) = fill {
        for (_, op) in &mut nodes {
            if let Op::Linear(l) = op {
                l.weight.data_mut().fill(value);
                l.bias.as_mut().unwrap().data_mut().fill(value);
            }
        }
    }
    FloatGraph::chain(vec![6], nodes).unwrap()
}

/// 4 images of 6 values, all `value`.
fn filled(value: f32) -> TensorBuf<f32> {
    TensorBuf::new(vec![4, 6], vec![value; 24]).unwrap()
}

/// 4 ordinary images with element 9 set to `value`.
fn with_element(value: f32) -> TensorBuf<f32> {
    let mut t = random_input(&graph(None), 4, 1);
    t.data_mut()[9] = value;
    t
}

fn observers() -> [ObserverSpec; 5] {
    [
        ObserverSpec::MinMax,
        ObserverSpec::MovingAverage {
            averaging_constant: 0.01,
        },
        ObserverSpec::Entropy,
        ObserverSpec::Percentile { percent: 99.9 },
        ObserverSpec::Mse,
    ]
}

/// A calibration table of `graph` over `input` by `spec`.
fn calibrate(
    graph: &FloatGraph,
    input: &TensorBuf<f32>,
    spec: ObserverSpec,
) -> Result<cinder_observers::CalibrationTable, String> {
    let mut calibrator =
        Calibrator::new(spec, QuantScheme::activations_uint8()).map_err(|e| e.to_string())?;
    let mut first = None;
    float_forward_with(graph, input, |name, t| {
        if let Err(e) = calibrator.observe(name, t) {
            first.get_or_insert(e);
        }
    })
    .map_err(|e| e.to_string())?;
    if let Some(e) = first {
        return Err(e.to_string());
    }
    calibrator.add_samples(input.shape()[0]);
    calibrator.table().map_err(|e| e.to_string())
}

fn owned(t: &impl Tensor<f32>) -> TensorBuf<f32> {
    TensorBuf::new(t.shape().to_vec(), t.data().to_vec()).unwrap()
}

fn all_finite(t: &impl Tensor<f32>) -> bool {
    t.data().iter().all(|v| v.is_finite())
}

#[test]
fn non_finite_images_are_refused_by_every_stage() {
    let g = graph(None);
    let table = minmax_table(&g, &random_input(&g, 4, 1)).unwrap();
    let model = convert(&g, &table, &QuantConfig::default()).unwrap();
    let mut session = model.session().unwrap();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let input = with_element(bad);
        let refused = |r: Result<TensorBuf<f32>, RunError>| {
            matches!(
                r,
                Err(RunError::Input(ObserverError::NonFiniteValue {
                    index: 9,
                    ..
                }))
            )
        };
        assert!(refused(float_forward(&g, &input)), "float forward, {bad}");
        assert!(refused(simulate(&model, &input)), "simulation, {bad}");
        assert!(
            refused(session.run(&input).map(|t| owned(&t))),
            "session, {bad}"
        );
        // In the last image, which a helper thread quantizes.
        let mut last = random_input(&g, 4, 1);
        let at = last.data().len() - 5;
        last.data_mut()[at] = bad;
        for threads in [1, 2] {
            let mut session = model.session_with(SessionOptions { threads }).unwrap();
            let err = session.run(&last).map(|t| owned(&t));
            assert!(
                matches!(err, Err(RunError::Input(ObserverError::NonFiniteValue { index, .. })) if index == at),
                "session, {threads} threads, {bad}: {err:?}"
            );
        }
        for spec in observers() {
            let mut calibrator = Calibrator::new(spec, QuantScheme::activations_uint8()).unwrap();
            let err = calibrator.observe("input", &input).unwrap_err().to_string();
            assert!(
                err.contains("`input`") && err.contains("non-finite") && err.contains("index 9"),
                "{spec:?}, {bad}: {err}"
            );
        }
    }
}

#[test]
fn constant_and_zero_images_calibrate_convert_and_run_to_finite_outputs() {
    let g = graph(None);
    for value in [0.0, 0.7, -3.0] {
        let input = filled(value);
        for spec in observers() {
            let table = calibrate(&g, &input, spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            for mode in [Mode::Static, Mode::Dynamic] {
                let mut config = QuantConfig::default();
                config.default.mode = mode;
                let model = convert(&g, &table, &config).unwrap();
                let mut session = model.session().unwrap();
                assert!(
                    all_finite(&session.run(&input).unwrap()),
                    "{spec:?} {value}"
                );
                assert!(all_finite(&simulate(&model, &input).unwrap()));
            }
        }
    }
}

#[test]
fn zero_and_constant_weights_convert_and_run() {
    for value in [0.0, 0.25, -1.0] {
        let g = graph(Some(value));
        let input = random_input(&g, 4, 2);
        let table = minmax_table(&g, &input).unwrap();
        let model = convert(&g, &table, &QuantConfig::default()).unwrap();
        let mut session = model.session().unwrap();
        let int8 = owned(&session.run(&input).unwrap());
        let float = float_forward(&g, &input).unwrap();
        assert!(all_finite(&int8));
        if value == 0.0 {
            // Zero weights and bias: exactly zero through every integer step.
            assert!(int8.data().iter().all(|&v| v == 0.0), "{:?}", int8.data());
            assert!(float.data().iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn overflowing_weights_are_a_typed_error_naming_the_node() {
    let big = graph(Some(1e30));
    let input = filled(1.0);
    match float_forward(&big, &input) {
        Err(RunError::NonFiniteOutput { node, .. }) => assert_eq!(node, "fc2"),
        other => panic!("expected NonFiniteOutput, got {other:?}"),
    }
    assert!(minmax_table(&big, &input).is_err());

    // fc2 left in float inside the int8 model: its f32 products overflow at run time.
    let g = graph(None);
    let table = minmax_table(&g, &random_input(&g, 4, 2)).unwrap();
    let float = LayerOverride {
        mode: Some(Mode::Float),
        ..LayerOverride::default()
    };
    let nodes = g
        .nodes()
        .iter()
        .cloned()
        .map(|mut n| {
            if let (true, Op::Linear(l)) = (n.name == "fc2", &mut n.op) {
                l.weight.data_mut().fill(3e38);
            }
            n
        })
        .collect();
    let overflowing = FloatGraph::new(g.input_shape().to_vec(), nodes).unwrap();
    let config = QuantConfig::default().with_layer("fc2", float);
    let model = convert(&overflowing, &table, &config).unwrap();
    for result in [
        model.session().unwrap().run(&input).map(|t| owned(&t)),
        simulate(&model, &input),
    ] {
        match result {
            Err(RunError::NonFiniteOutput { node, .. }) => assert_eq!(node, "fc2"),
            other => panic!("expected NonFiniteOutput, got {other:?}"),
        }
    }
}
