//! Sudden death: `cargo xtask train` SIGKILLed at random moments (during epochs, during
//! checkpoint and result writes), restarted with `--resume` (or afresh when no epoch was
//! checkpointed yet) until it finishes, ends with exactly the files of an uninterrupted
//! run of the same seed: the checkpoint's model and optimizer files and the float graph
//! bit for bit, the manifest and summary equal but for their timing fields.
//!
//! It trains several times over (minutes), so it runs when asked:
//! `cargo test --release -p xtask --test sudden_death -- --ignored --nocapture` (3 kills);
//! `CINDER_KILLS=50` makes it the sweep. It prints kills, resumes and mismatches.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A small synthetic run: 3 epochs of 256 images.
const TRAIN: [&str; 13] = [
    "train",
    "--dataset",
    "synthetic",
    "--limit",
    "256",
    "--test-limit",
    "64",
    "--epochs",
    "3",
    "--batch",
    "32",
    "--seed",
    "5",
];

fn start(out: &Path, resume: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
    command.args(TRAIN).arg("--out").arg(out);
    if resume {
        command.arg("--resume");
    }
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("xtask starts")
}

fn has_checkpoint(out: &Path) -> bool {
    out.join("checkpoint/checkpoint.json").exists()
}

/// Runs to completion (exit status 0 expected).
fn finish(out: &Path) {
    let status = start(out, has_checkpoint(out)).wait().unwrap();
    assert!(status.success(), "xtask train {} failed", out.display());
}

/// JSON without the keys that measure time.
fn untimed(text: &str) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in [
                    "seconds",
                    "images_per_sec",
                    "train_images_per_sec",
                    "train_seconds",
                    "wall_seconds",
                ] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
    strip(&mut v);
    v
}

/// A JSON (or JSON lines) file without its timing fields, one value per line.
fn untimed_file(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    if path.extension().is_some_and(|e| e == "jsonl") {
        text.lines().map(untimed).collect()
    } else {
        vec![untimed(&text)]
    }
}

/// The files where two finished run directories differ (empty: identical results).
fn mismatches(a: &Path, b: &Path) -> Vec<String> {
    let bytes = [
        "checkpoint/model-e0003.bpk",
        "checkpoint/optim-e0003.bpk",
        "graph.safetensors",
        "graph.json",
        "run.json",
    ];
    let json = [
        "checkpoint/checkpoint.json",
        "summary.json",
        "metrics.jsonl",
    ];
    let differs_bytes = |f: &&&str| std::fs::read(a.join(f)).ok() != std::fs::read(b.join(f)).ok();
    let differs_json = |f: &&&str| untimed_file(&a.join(f)) != untimed_file(&b.join(f));
    bytes
        .iter()
        .filter(differs_bytes)
        .chain(json.iter().filter(differs_json))
        .map(|f| (*f).to_owned())
        .collect()
}

/// xorshift64*, for the kill moments.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

#[test]
#[ignore = "trains a dozen times: run explicitly (see the module docs)"]
fn killed_and_resumed_training_equals_the_uninterrupted_run() {
    let kills: usize = std::env::var("CINDER_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let started = Instant::now();
    finish(&reference);
    let span = started.elapsed().as_millis() as u64;
    let mut rng = Rng(0x005e_ed0f_dea7);
    let (mut done_kills, mut resumes, mut runs, mut bad) = (0, 0, 0, Vec::new());
    while done_kills < kills {
        let out = dir.path().join(format!("run{runs}"));
        runs += 1;
        // Kill this run one to three times at random moments, then let it finish.
        for _ in 0..1 + rng.below(3) {
            let resume = has_checkpoint(&out);
            resumes += usize::from(resume);
            let mut child = start(&out, resume);
            std::thread::sleep(Duration::from_millis(rng.below(span)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                done_kills += 1;
            }
            child.wait().unwrap();
        }
        resumes += usize::from(has_checkpoint(&out));
        finish(&out);
        let diff = mismatches(&reference, &out);
        if !diff.is_empty() {
            bad.push(format!("{}: {diff:?}", out.display()));
        }
        let _ = std::fs::remove_dir_all(&out);
    }
    println!(
        "sudden death: {done_kills} kills over {runs} runs, {resumes} resumes, {} mismatches",
        bad.len()
    );
    assert!(bad.is_empty(), "{bad:#?}");
}
