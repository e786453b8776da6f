//! Interop with the real client: models cinder exports run in ONNX Runtime with the same
//! logits as cinder's float forward, and a model built with the `onnx` Python helper API
//! (never produced by cinder) imports and computes what ONNX Runtime computes.
//!
//! Needs a Python with `onnxruntime`, `onnx` and `numpy`: `CINDER_ONNX_PYTHON`, or the
//! virtual environment `.ci/run` creates. Where there is none, each test says so and
//! passes without checking. DAG graphs are compared with the direct evaluator of
//! `common` (cinder-runtime's `float_forward` runs chains only); the reference ConvNet,
//! a chain, with `float_forward` itself.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cinder_onnx::{export_file, import_file};
use cinder_runtime::synthetic::{random_input, reference_convnet};
use cinder_tensor::graph::FloatGraph;
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

/// ONNX Runtime's output of the model at `model` on `input`.
fn onnxruntime(python: &Path, model: &Path, input: &TensorBuf<f32>) -> Vec<f32> {
    let dir = model.parent().unwrap();
    let (input_path, output_path) = (dir.join("input.f32"), dir.join("output.f32"));
    let bytes: Vec<u8> = input.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&input_path, bytes).unwrap();
    let shape = input
        .shape()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
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
