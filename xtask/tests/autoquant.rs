//! Accuracy-driven mixed precision end to end on a small ConvNet trained on synthetic
//! images: the experiment's `autoquant` cell (its search in results.json and report.md),
//! then `cargo xtask autoquant` on the same float model (config, models, trajectory
//! within the budget, the test table), and its refusals of bad arguments.

use std::path::Path;
use std::process::{Command, Output};

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .output()
        .expect("xtask starts")
}

fn succeeded(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The quick config's data, model and recipe (half normalization, as a checkpoint's
/// summary states it below) with uniform W8, uniform W4 and an autoquant cell.
fn config(dir: &Path) -> std::path::PathBuf {
    let quick = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments/quick.toml"),
    )
    .unwrap();
    let header = &quick[..quick.find("[[cells]]").unwrap()];
    let header = header.replace(
        "test_images = 500",
        "test_images = 500\nnormalization = \"half\"",
    );
    let cell = |name: &str, extra: &str, bits: u8| {
        format!(
            "[[cells]]\nname = \"{name}\"\n{extra}[cells.quant.default]\nmode = \"static\"\n\
             weight_bits = {bits}\ngranularity = \"per_channel\"\nmapping = \"symmetric\"\n\n"
        )
    };
    let text = format!(
        "{header}{}{}{}",
        cell("w8", "", 8),
        cell("w4", "", 4),
        cell(
            "autoquant",
            "method = \"autoquant\"\nautoquant = { budget_pp = 1.0, held_out_images = 300 }\n",
            8
        )
    );
    let path = dir.join("autoquant.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every step the search kept after its start stays within `budget`, and each lowers
/// the predicted cost.
fn check_trajectory(found: &serde_json::Value, budget: f64) {
    let steps = found["search"]["steps"].as_array().unwrap();
    assert!(!steps.is_empty());
    assert_eq!(steps[0]["kind"], "start");
    let mut cost = f64::INFINITY;
    for s in steps
        .iter()
        .filter(|s| s["kind"] == "down" && s["accepted"] == true)
    {
        assert!(s["drop_pp"].as_f64().unwrap() <= budget, "{s}");
        let c = s["predicted_cost"].as_f64().unwrap();
        assert!(c < cost, "{s}");
        cost = c;
    }
    assert!(found["search"]["drop_pp"].as_f64().unwrap() <= budget);
    let allocation = found["search"]["allocation"].as_object().unwrap();
    assert_eq!(allocation.len(), 4, "{allocation:?}");
}

#[test]
fn autoquant_cell_and_command_choose_widths_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let config = config(dir.path());
    let args = ["experiment", "--config", config.to_str().unwrap(), "--out"];
    succeeded(
        xtask(&[&args[..], &[out.to_str().unwrap()]].concat()),
        "experiment",
    );
    let results = json(&out.join("results.json"));
    let cell = results["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "autoquant")
        .unwrap();
    assert_eq!(cell["outcome"]["status"], "done", "{cell}");
    check_trajectory(&cell["outcome"]["autoquant"], 1.0);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("## Autoquant search of `autoquant`"),
        "{report}"
    );
    assert!(report.contains("(autoquant: conv1 "), "{report}");

    // The experiment's float model as a `cargo xtask train` checkpoint.
    let fp32 = out.join("fp32");
    std::fs::write(
        fp32.join("summary.json"),
        r#"{"dataset": "synthetic", "train_images": 4000,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#,
    )
    .unwrap();
    let aq = dir.path().join("aq");
    let (ckpt, aq_s) = (fp32.to_str().unwrap(), aq.to_str().unwrap());
    let common = ["autoquant", "--checkpoint", ckpt, "--held-out", "300"];
    let fast = [
        "--calibration-images",
        "128",
        "--single",
        "5",
        "--out",
        aq_s,
    ];
    let stdout = succeeded(
        xtask(&[&common[..], &["--budget", "1", "--target", "size"], &fast].concat()),
        "autoquant",
    );
    assert!(stdout.contains("Chosen widths: conv1 "), "{stdout}");
    let report = json(&aq.join("autoquant.json"));
    check_trajectory(&report["found"], 1.0);
    assert_eq!(report["held_out_unseen"], true);
    let names: Vec<&str> = report["test"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["autoquant", "uniform W8", "uniform W4"]);
    let chosen: toml::Value =
        toml::from_str(&std::fs::read_to_string(aq.join("config.toml")).unwrap()).unwrap();
    assert!(chosen.get("layers").is_some(), "{chosen}");
    for file in [
        "model.cinder",
        "uniform-w8.cinder",
        "uniform-w4.cinder",
        "autoquant.md",
    ] {
        assert!(aq.join(file).metadata().unwrap().len() > 0, "{file}");
    }
    assert!(!aq.join("candidate.cinder").exists());

    for (bad, expect) in [
        (["--budget", "-1"], "--budget"),
        (["--target", "speed"], "expected `size` or `latency`"),
        (["--widths", "4,8"], "highest first"),
    ] {
        let output = xtask(&[&common[..], &bad, &fast].concat());
        assert!(!output.status.success(), "{bad:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{bad:?}: {stderr}");
    }
}
