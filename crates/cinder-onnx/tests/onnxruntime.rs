//! Interop with the real client: models cinder exports run in ONNX Runtime with the same
//! logits as cinder's float forward, a model built with the `onnx` Python helper API
//! (never produced by cinder) imports and computes what ONNX Runtime computes, and
//! cinder's int8 models exported as QDQ predict in ONNX Runtime what cinder's runtime
//! predicts (ONNX Runtime requantizes in float, so rare one-step differences are expected),
//! and float models quantized by ONNX Runtime's `quantize_static` import into cinder's
//! runtime and predict there what they predict in ONNX Runtime.
//!
//! Needs a Python with `onnxruntime`, `onnx` and `numpy`: `CINDER_ONNX_PYTHON`, or the
//! virtual environment `.ci/run` creates. Where there is none, each test says so and
//! passes without checking. DAG graphs are compared with the direct evaluator of
//! `common` (cinder-runtime's `float_forward` runs chains only); the reference ConvNet,
//! a chain, with `float_forward` itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cinder_onnx::{export_file, export_qdq_file, import_file, import_qdq_file};
use cinder_runtime::synthetic::{minmax_table, random_graph, random_input, reference_convnet};
use cinder_runtime::{
    LayerConfig, LayerExec, LayerOverride, Mode, QuantConfig, QuantizedModel, StepOp,
    WeightGranularity,
};
use cinder_tensor::graph::{FloatGraph, zoo};
use cinder_tensor::{Tensor, TensorBuf};

/// The largest logit difference accepted between cinder and ONNX Runtime.
const TOLERANCE: f32 = 1e-4;

const HELPER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ort_helper.py");

/// A Python that imports onnxruntime, onnx and numpy, or `None` (with the reason printed).
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("CINDER_ONNX_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(Path::new(&home).join(".cache/cinder/onnx-venv/bin/python"))
        })?;
    let ok = Command::new(&candidate)
        .args(["-c", "import onnxruntime, onnx, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: no Python with onnxruntime, onnx and numpy at {} (set \
             CINDER_ONNX_PYTHON or run .ci/run, which creates it); the ONNX Runtime \
             comparison did not run",
            candidate.display()
        );
        return None;
    }
    Some(candidate)
}

fn helper(python: &Path, args: &[&str]) {
    let output = Command::new(python)
        .arg(HELPER)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "ort_helper.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes `values` as little-endian float32 to `path`; returns their shape as the
/// helper reads it (comma separated).
fn write_f32(path: &Path, values: &TensorBuf<f32>) -> String {
    let bytes: Vec<u8> = values.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
    values
        .shape()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// ONNX Runtime's output of the model at `model` on `input`.
fn onnxruntime(python: &Path, model: &Path, input: &TensorBuf<f32>) -> Vec<f32> {
    let dir = model.parent().unwrap();
    let (input_path, output_path) = (dir.join("input.f32"), dir.join("output.f32"));
    let shape = write_f32(&input_path, input);
    helper(
        python,
        &[
            "run",
            path_str(model),
            path_str(&input_path),
            &shape,
            path_str(&output_path),
        ],
    );
    std::fs::read(&output_path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Exports `graph`, runs it in ONNX Runtime and compares with `expected`.
fn check_export(
    python: &Path,
    what: &str,
    graph: &FloatGraph,
    input: &TensorBuf<f32>,
    expected: &TensorBuf<f32>,
) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    export_file(graph, &model).unwrap();
    let got = onnxruntime(python, &model, input);
    let diff = common::max_abs_diff(&got, expected.data());
    eprintln!(
        "{what}: max |ONNX Runtime - cinder| = {diff:e} over {} logits",
        got.len()
    );
    assert!(diff <= TOLERANCE, "{what}: {diff} > {TOLERANCE}");
}

#[test]
fn the_exported_reference_convnet_runs_in_onnxruntime_with_the_same_logits() {
    let Some(python) = python() else { return };
    let graph = reference_convnet(11);
    let input = random_input(&graph, 8, 12);
    let expected = cinder_runtime::float_forward(&graph, &input).unwrap();
    check_export(&python, "reference ConvNet", &graph, &input, &expected);
}

#[test]
fn exported_dag_graphs_run_in_onnxruntime_with_the_same_logits() {
    let Some(python) = python() else { return };
    for (what, graph) in [
        ("residual/depthwise DAG", common::residual_depthwise(21)),
        ("batch-norm chain", common::small_chain(22)),
    ] {
        let input = random_input(&graph, 8, 23);
        let expected = common::evaluate(&graph, &input);
        check_export(&python, what, &graph, &input, &expected);
    }
}

#[test]
fn a_model_built_with_the_onnx_helper_imports_and_matches_onnxruntime() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("outside.onnx");
    helper(&python, &["make", path_str(&model), "31"]);
    let graph = import_file(&model).unwrap();
    assert_eq!(graph.input_shape(), [3, 12, 12]);
    assert!(!graph.is_chain(), "the residual add makes a DAG");
    let input = random_input(&graph, 8, 32);
    let expected = onnxruntime(&python, &model, &input);
    let got = common::evaluate(&graph, &input);
    let diff = common::max_abs_diff(got.data(), &expected);
    eprintln!(
        "onnx-helper CNN imported: max |cinder - ONNX Runtime| = {diff:e} over {} logits",
        got.len()
    );
    assert!(diff <= TOLERANCE, "{diff} > {TOLERANCE}");
}

/// Predictions compared over this many inputs: enough to tell 99.9% agreement.
const SAMPLES: usize = 1000;
/// The least share of inputs on which ONNX Runtime's and cinder's argmax agree.
const MIN_AGREEMENT: f64 = 0.999;
/// The largest logit difference, in steps of the output's scale: one-step differences
/// inside a deep network (ResNet-20) reach the logits as a few steps. The count is a
/// float quotient (difference over scale), so a whole number of steps may come out a few
/// ulps above itself: the bound allows that much.
const MAX_STEPS: f32 = 4.0 + 1e-3;

/// `graph` (batch norms folded) calibrated by min/max on random inputs and converted
/// under `config`.
fn int8_model(graph: &FloatGraph, config: &QuantConfig, seed: u64) -> QuantizedModel {
    let graph = graph.fold_batch_norms().unwrap();
    let calibration = random_input(&graph, 64, seed);
    let table = minmax_table(&graph, &calibration).unwrap();
    cinder_runtime::convert(&graph, &table, config).unwrap()
}

/// The scale of the int8 tensor the model's final dequantization reads, if any.
fn output_scale(model: &QuantizedModel) -> Option<f32> {
    let last = model.steps().last()?;
    if last.op != StepOp::Dequantize {
        return None;
    }
    let source = model.steps().iter().find(|s| s.name == last.inputs[0])?;
    match &source.op {
        StepOp::Quantize(p) => Some(p.scale),
        StepOp::Conv2d { layer, .. } | StepOp::Linear(layer) => match &layer.exec {
            LayerExec::Static(s) => Some(s.output.scale),
            _ => None,
        },
        StepOp::Add(m) | StepOp::Concat(m) => m.int.as_ref().map(|i| i.output.scale),
        _ => None,
    }
}

/// Argmax agreement and the largest logit difference of two `[batch, classes]` outputs.
fn compare(a: &[f32], b: &[f32], classes: usize) -> (f64, f32) {
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0
    };
    let rows = a.len() / classes;
    let agree = a
        .chunks(classes)
        .zip(b.chunks(classes))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count();
    (agree as f64 / rows as f64, common::max_abs_diff(a, b))
}

/// Exports `model` as QDQ, runs it in ONNX Runtime on `input` and compares predictions
/// with cinder's runtime.
fn check_qdq_export(python: &Path, what: &str, model: &QuantizedModel, input: &TensorBuf<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.qdq.onnx");
    export_qdq_file(model, &path).unwrap();
    check_predictions(python, what, &path, model, input);
}

/// Runs the QDQ model at `path` in ONNX Runtime and `model` (the same model in cinder)
/// in cinder's runtime on `input`, and compares their predictions.
fn check_predictions(
    python: &Path,
    what: &str,
    path: &Path,
    model: &QuantizedModel,
    input: &TensorBuf<f32>,
) {
    let got = onnxruntime(python, path, input);
    let mut session = model.session().unwrap();
    let expected = session.run(input).unwrap();
    let classes = model.output_shape().iter().product();
    let (agreement, diff) = compare(&got, expected.data(), classes);
    let steps = output_scale(model).map(|s| diff / s);
    eprintln!(
        "{what} QDQ: argmax agreement {:.2}% over {} inputs, max |ONNX Runtime - cinder| = \
         {diff:e} ({} output steps)",
        agreement * 100.0,
        input.shape()[0],
        steps.map_or_else(|| "float output, no".into(), |s| format!("{s:.2}")),
    );
    assert!(agreement >= MIN_AGREEMENT, "{what}: agreement {agreement}");
    if let Some(steps) = steps {
        assert!(steps <= MAX_STEPS, "{what}: {steps} output steps");
    }
}

#[test]
fn int8_reference_convnets_exported_as_qdq_predict_in_onnxruntime_as_in_cinder() {
    let Some(python) = python() else { return };
    let graph = reference_convnet(41);
    let per_tensor = QuantConfig::uniform(LayerConfig {
        granularity: WeightGranularity::PerTensor,
        ..LayerConfig::default()
    });
    let partial = QuantConfig::default().with_layer(
        "fc2",
        LayerOverride {
            mode: Some(Mode::Float),
            ..LayerOverride::default()
        },
    );
    let dynamic = LayerOverride {
        mode: Some(Mode::Dynamic),
        ..LayerOverride::default()
    };
    let dynamic = QuantConfig::default()
        .with_layer("conv2", dynamic)
        .with_layer("fc1", dynamic);
    let input = random_input(&graph, SAMPLES, 42);
    for (what, config) in [
        ("reference ConvNet, per-channel", QuantConfig::default()),
        ("reference ConvNet, per-tensor", per_tensor),
        ("reference ConvNet, fc2 float", partial),
        ("reference ConvNet, conv2 and fc1 dynamic", dynamic),
    ] {
        let model = int8_model(&graph, &config, 43);
        check_qdq_export(&python, what, &model, &input);
    }
}

#[test]
fn int8_zoo_models_exported_as_qdq_predict_in_onnxruntime_as_in_cinder() {
    let Some(python) = python() else { return };
    for (what, spec) in [
        (
            "zoo convnet+BN",
            zoo::convnet([3, 16, 16], [8, 16], 32, 10, true),
        ),
        ("zoo resnet20", zoo::resnet20([3, 16, 16], 10)),
        (
            "zoo mobilenetv2_tiny",
            zoo::mobilenetv2_tiny([3, 16, 16], 10),
        ),
    ] {
        let graph = random_graph(spec, 51).unwrap();
        let model = int8_model(&graph, &QuantConfig::default(), 52);
        let input = random_input(&graph, SAMPLES, 53);
        check_qdq_export(&python, what, &model, &input);
    }
}

/// Quantizes `graph`'s float ONNX export with ONNX Runtime's `quantize_static`
/// (calibrated on 64 seeded inputs), imports the QDQ model into cinder and compares
/// predictions with ONNX Runtime's run of it.
fn check_ort_quantized(python: &Path, what: &str, graph: &FloatGraph, options: [&str; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let (float, qdq) = (dir.path().join("float.onnx"), dir.path().join("qdq.onnx"));
    export_file(graph, &float).unwrap();
    let calibration_path = dir.path().join("calibration.f32");
    let shape = write_f32(&calibration_path, &random_input(graph, 64, 61));
    let [granularity, activations] = options;
    helper(
        python,
        &[
            "quantize",
            path_str(&float),
            path_str(&calibration_path),
            &shape,
            path_str(&qdq),
            granularity,
            activations,
        ],
    );
    let model = import_qdq_file(&qdq).unwrap_or_else(|e| panic!("{what}: {e}"));
    let input = random_input(graph, SAMPLES, 62);
    let what = format!("{what} ({granularity}, {activations} activations) by quantize_static");
    check_predictions(python, &what, &qdq, &model, &input);
}

#[test]
fn models_quantized_by_onnxruntime_import_and_predict_as_in_onnxruntime() {
    let Some(python) = python() else { return };
    let convnet = reference_convnet(71);
    for options in [
        ["per_channel", "uint8"],
        ["per_tensor", "uint8"],
        ["per_channel", "int8"],
    ] {
        check_ort_quantized(&python, "reference ConvNet", &convnet, options);
    }
    for (what, spec) in [
        ("zoo resnet20", zoo::resnet20([3, 16, 16], 10)),
        (
            "zoo mobilenetv2_tiny",
            zoo::mobilenetv2_tiny([3, 16, 16], 10),
        ),
    ] {
        let graph = random_graph(spec, 72).unwrap().fold_batch_norms().unwrap();
        check_ort_quantized(&python, what, &graph, ["per_channel", "uint8"]);
    }
}
