//! `cargo xtask experiment --quick` end to end: a run cut short after two cells, then
//! resumed, writes every report file (results.json parses, with its schema version,
//! report.md has its tables, the plots are SVG) without redoing the finished cells or
//! retraining; a rerun after one cell's result is deleted and another cell's config is
//! changed redoes exactly those two. Fanned out: two processes running disjoint cells
//! into one directory at once, then `--report-only`, give the whole report. The float
//! model trains with early stopping; ONNX Runtime's rows appear where it is installed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn experiment_command(out: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.arg("experiment").arg("--out").arg(out).args(extra);
    command
}

fn experiment(out: &Path, extra: &[&str]) -> String {
    let output = experiment_command(out, extra)
        .output()
        .expect("xtask starts");
    assert!(
        output.status.success(),
        "xtask experiment {extra:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn quick_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/quick.toml")
}

/// Every cell result file's bytes, by file name.
fn cell_files(out: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(out.join("cells"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn results(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// Names of the cells that finished.
fn done(results: &serde_json::Value) -> Vec<String> {
    results["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["outcome"]["status"] == "done")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn check_report_files(out: &Path, results: &serde_json::Value) {
    assert_eq!(results["format_version"], 2);
    assert_eq!(results["training"]["model"], "convnet");
    let cells = results["cells"].as_array().unwrap();
    let in_config = std::fs::read_to_string(quick_config())
        .unwrap()
        .matches("[[cells]]")
        .count();
    assert_eq!(cells.len(), in_config);
    assert!(results["fp32"]["accuracy"].as_f64().unwrap() > 0.0);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for heading in [
        "## fp32 baseline",
        "## Cells, ranked by accuracy",
        "## Per-layer weight error",
    ] {
        assert!(report.contains(heading), "report.md lacks {heading}");
    }
    // Fine-tuned cells are compared with their controls, never ranked with the others.
    let (ranked, rest) = report
        .split_once("## Fine-tuned cells: QAT against its control")
        .expect("report.md lacks the fine-tuned cells' table");
    assert!(
        !ranked.contains("| qat-w8 |"),
        "qat-w8 ranked with the PTQ cells"
    );
    assert!(
        rest.contains("| qat-w8 | QAT |"),
        "qat-w8 not in its own table"
    );
    check_training(&report, results);
    check_peers(&report, results);
    for plot in ["accuracy_vs_size", "latency", "sqnr", "training"] {
        let svg = std::fs::read_to_string(out.join("plots").join(format!("{plot}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
    }
    for name in done(results) {
        assert!(
            report.contains(&format!("| {name} |")),
            "{name} not in report.md"
        );
        let model = out.join("models").join(format!("{name}.cinder"));
        assert!(model.metadata().unwrap().len() > 0, "{}", model.display());
    }
    assert!(out.join("fp32/graph.safetensors").exists());
}

/// The quick config trains with early stopping on 500 held-out images: the summary has a
/// validation result per epoch and a best epoch, the report its curve.
fn check_training(report: &str, results: &serde_json::Value) {
    let t = &results["training"];
    assert_eq!(t["validation_images"], 500);
    assert_eq!(results["data"]["train_images"], 3500);
    let history = t["history"].as_array().unwrap();
    let epochs = t["epochs"].as_u64().unwrap() as usize;
    assert_eq!(history.len(), epochs);
    assert!((1..=3).contains(&epochs), "{epochs} epochs, the cap is 3");
    assert!(history.iter().all(|m| m["validation"]["samples"] == 500));
    let best = t["best_epoch"].as_u64().unwrap() as usize;
    assert!((1..=epochs).contains(&best));
    // Stopped early exactly when the last epoch did not beat the best (patience 1).
    assert_eq!(t["stopped_early"], best < epochs);
    assert!(report.contains("## Training of the float model"));
    assert!(
        report.contains(&format!("| {best} (best) |")),
        "best epoch not marked"
    );
}

/// The Python with ONNX Runtime that `CINDER_ONNX_PYTHON` names, if any.
fn onnxruntime_here() -> bool {
    std::env::var_os("CINDER_ONNX_PYTHON").is_some_and(|python| {
        Command::new(python)
            .args(["-c", "import onnxruntime, onnx, numpy"])
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// With ONNX Runtime installed, its rows are in the report and it runs each of cinder's
/// static 8-bit models (exported as QDQ ONNX) within one percentage point of cinder's
/// accuracy; without it, the report says how to add them.
fn check_peers(report: &str, results: &serde_json::Value) {
    let peers = &results["peers"];
    if !onnxruntime_here() {
        assert_ne!(peers["status"], "measured");
        assert!(report.contains("To add ONNX Runtime's rows"), "{peers}");
        return;
    }
    assert_eq!(peers["status"], "measured", "{peers}");
    assert!(report.contains("| fp32, ONNX Runtime |"));
    assert!(report.contains("| int8 `quantize_static`, ONNX Runtime |"));
    let fp32 = results["fp32"]["accuracy"].as_f64().unwrap();
    let ort_fp32 = peers["fp32"]["accuracy"].as_f64().unwrap();
    assert!(
        (fp32 - ort_fp32).abs() <= 0.01,
        "burn {fp32}, ONNX Runtime {ort_fp32}"
    );
    for cell in results["cells"].as_array().unwrap() {
        let name = cell["name"].as_str().unwrap();
        let static_w8 = cell["quant"]["default"]["mode"] == "static"
            && cell["quant"]["default"]["weight_bits"] == 8;
        if cell["outcome"]["status"] != "done" || !static_w8 {
            continue;
        }
        let cinder = cell["outcome"]["measured"]["accuracy"].as_f64().unwrap();
        let ort = peers["cells"][name]["accuracy"].as_f64().unwrap();
        assert!(
            (cinder - ort).abs() <= 0.01,
            "{name}: cinder {cinder}, ONNX Runtime {ort}"
        );
    }
}

#[test]
fn quick_experiment_reports_and_resumes_without_redoing_cells() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("quick");

    // A run "killed" before its third cell: two cell results, no report.
    experiment(&out, &["--quick", "--stop-after", "2"]);
    let first = cell_files(&out);
    assert_eq!(first.len(), 2, "{:?}", first.keys());
    assert!(!out.join("results.json").exists());

    // Resumed: complete, the two cells and the training untouched.
    experiment(&out, &["--quick"]);
    let r = results(&out);
    check_report_files(&out, &r);
    assert_eq!(
        r["training"]["reused"], true,
        "the finished checkpoint is reused"
    );
    let second = cell_files(&out);
    for (name, bytes) in &first {
        assert_eq!(&second[name], bytes, "{name} was redone");
    }
    let finished = done(&r);
    assert!(finished.len() >= 4, "{finished:?}");

    // One result deleted, one cell's config changed: exactly those two are redone.
    let (deleted, changed) = (&finished[1], &finished[2]);
    std::fs::remove_file(out.join("cells").join(format!("{deleted}.json"))).unwrap();
    let config = std::fs::read_to_string(quick_config()).unwrap();
    let marker = format!("name = \"{changed}\"\n");
    assert!(config.contains(&marker));
    let edited = dir.path().join("edited.toml");
    std::fs::write(
        &edited,
        config.replace(&marker, &format!("{marker}observer = \"entropy\"\n")),
    )
    .unwrap();
    experiment(&out, &["--config", edited.to_str().unwrap()]);
    let third = cell_files(&out);
    let r = results(&out);
    assert_eq!(r["training"]["reused"], true);
    for name in &finished {
        let file = format!("{name}.json");
        let same = second.get(&file) == third.get(&file);
        assert_eq!(!same, name == deleted || name == changed, "{name}");
    }
}

#[test]
fn fanned_out_cells_fill_one_directory_and_report_only_collects_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fan-out");
    let quick = quick_config();
    let config = ["--config", quick.to_str().unwrap()];
    let listed = experiment(&out, &[config[0], config[1], "--list-cells"]);
    let names: Vec<&str> = listed.lines().collect();
    assert!(names.len() >= 4, "{listed}");
    assert!(!out.exists(), "--list-cells writes nothing");

    let err = experiment_command(&out, &[config[0], config[1], "--report-only"])
        .output()
        .unwrap();
    assert!(
        !err.status.success(),
        "--report-only needs a finished training"
    );
    assert!(String::from_utf8_lossy(&err.stderr).contains("first"));

    // Two tasks of an array job, started together on disjoint halves of the cells.
    let (first, second) = names.split_at(names.len() / 2);
    let tasks: Vec<_> = [first, second]
        .iter()
        .map(|part| {
            let mut args = config.to_vec();
            part.iter().for_each(|name| args.extend(["--cell", name]));
            experiment_command(&out, &args)
                .spawn()
                .expect("xtask starts")
        })
        .collect();
    for mut task in tasks {
        assert!(task.wait().unwrap().success(), "a fan-out task failed");
    }
    let saved = cell_files(&out);
    assert_eq!(saved.len(), names.len(), "{:?}", saved.keys());
    assert!(
        !out.join("results.json").exists(),
        "cell tasks write no report"
    );

    experiment(&out, &[config[0], config[1], "--report-only"]);
    let r = results(&out);
    check_report_files(&out, &r);
    assert_eq!(cell_files(&out), saved, "--report-only reran a cell");
}

#[test]
fn an_outside_onnx_model_goes_through_the_matrix_instead_of_training() {
    let dir = tempfile::tempdir().unwrap();
    let spec = cinder_tensor::graph::zoo::resnet20([3, 32, 32], 10);
    let graph = cinder_runtime::synthetic::random_graph(spec, 5).unwrap();
    let onnx = dir.path().join("outside.onnx");
    cinder_onnx::export_file(&graph, &onnx).unwrap();
    // The quick config's first cells: min-max static and dynamic.
    let quick = std::fs::read_to_string(quick_config()).unwrap();
    let cut = quick.find("[[cells]]\nname = \"w4\"").unwrap();
    let config = dir.path().join("two-cells.toml");
    std::fs::write(&config, &quick[..cut]).unwrap();
    let out = dir.path().join("outside");
    experiment(
        &out,
        &[
            "--config",
            config.to_str().unwrap(),
            "--model-onnx",
            onnx.to_str().unwrap(),
        ],
    );
    let r = results(&out);
    assert_eq!(done(&r), ["w8-minmax", "w8-dynamic"]);
    assert_eq!(r["training"]["epochs"], 0, "nothing was trained");
    assert_eq!(r["training"]["imported_from"], onnx.to_str().unwrap());
    assert!(!out.join("checkpoint").exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("the float ONNX model"), "{report}");
}

/// A suite runs each member config into its own directory and sets them side by side.
#[test]
fn a_suite_runs_each_member_and_reports_them_together() {
    let dir = tempfile::tempdir().unwrap();
    let quick = std::fs::read_to_string(quick_config()).unwrap();
    // The quick config's first two cells, under two names and seeds.
    let cut = quick.find("[[cells]]\nname = \"w4\"").unwrap();
    for (name, seed) in [("small-a", 0), ("small-b", 1)] {
        let member = quick[..cut]
            .replace("name = \"quick\"", &format!("name = \"{name}\""))
            .replacen("seed = 0", &format!("seed = {seed}"), 1);
        std::fs::write(dir.path().join(format!("{name}.toml")), member).unwrap();
    }
    let suite = dir.path().join("suite.toml");
    std::fs::write(
        &suite,
        "name = \"pair\"\nexperiments = [\"small-a.toml\", \"small-b.toml\"]\n",
    )
    .unwrap();
    let out = dir.path().join("pair");
    experiment(&out, &["--config", suite.to_str().unwrap(), "--no-peers"]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in ["small-a", "small-b"] {
        let member = results(&out.join(name));
        assert_eq!(member["experiment"], name);
        let fp32 = 100.0 * member["fp32"]["accuracy"].as_f64().unwrap();
        assert!(
            report.contains(&format!("| {name} | convnet ("))
                && report.contains(&format!("{fp32:.2}")),
            "{name} missing from the suite's report:\n{report}"
        );
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")));
        assert!(row.unwrap().contains("(W8 "), "no best W8 cell:\n{report}");
    }
    // A suite of suites (here: of itself) is refused, not recursed into.
    let looping = dir.path().join("loop.toml");
    std::fs::write(&looping, "name = \"loop\"\nexperiments = [\"loop.toml\"]\n").unwrap();
    let output = experiment_command(&out, &["--config", looping.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is a suite itself"));
    // A cell of a suite is a cell of one of its members.
    let output = experiment_command(
        &out,
        &["--config", suite.to_str().unwrap(), "--cell", "w8-minmax"],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is a suite of experiments"));
}
