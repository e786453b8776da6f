//! Checks of command-line values and output paths, run before any work: clap value
//! parsers that name the flag and the expected range, the runtime thread bound, and
//! the rule that an output never overwrites an input.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// A count of at least 1 (`--limit`, `--epochs`, `--train-images`, ...).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("expected at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!(
            "`{s}` is not a count: expected an integer of at least 1"
        )),
    }
}

fn float(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .map_err(|_| format!("`{s}` is not a number"))
}

/// A finite number above 0 (`--lr`).
pub fn finite_positive(s: &str) -> Result<f64, String> {
    let x = float(s)?;
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err("expected a finite number above 0".into())
    }
}

/// A finite number of at least 0 (`--weight-decay`).
pub fn finite_non_negative(s: &str) -> Result<f64, String> {
    let x = float(s)?;
    if x.is_finite() && x >= 0.0 {
        Ok(x)
    } else {
        Err("expected a finite number of at least 0".into())
    }
}

/// A number in [0, 1) (`--momentum`).
pub fn unit_fraction(s: &str) -> Result<f64, String> {
    let x = float(s)?;
    if (0.0..1.0).contains(&x) {
        Ok(x)
    } else {
        Err("expected a number in [0, 1)".into())
    }
}

/// The most runtime worker threads a command accepts: four per hardware thread
/// (`std::thread::available_parallelism`), at least 8.
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) * 4
}

/// `threads` (named `field`) within 1..=[`max_threads`].
pub fn threads(field: &str, threads: usize) -> anyhow::Result<usize> {
    let max = max_threads().max(8);
    if !(1..=max).contains(&threads) {
        bail!("{field} = {threads}: expected 1..={max} (four per hardware thread of this machine)");
    }
    Ok(threads)
}

/// `path` made absolute with its existing ancestors resolved (symbolic links, `..`), so
/// that two spellings of one file compare equal even before it exists.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    loop {
        if let Ok(real) = base.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                base = parent;
            }
            _ => return absolute,
        }
    }
}

/// Refuses an output (`out_flag` = `out`) that is one of the `inputs` (flag, path),
/// before anything is written.
pub fn output_apart(out_flag: &str, out: &Path, inputs: &[(&str, &Path)]) -> anyhow::Result<()> {
    let target = resolved(out);
    for (flag, input) in inputs {
        if target == resolved(input) {
            bail!(
                "{out_flag} {} would overwrite {flag} {}: choose another output",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// The fields (dotted paths under `prefix`) where `saved` and `given` differ, each with
/// both values, e.g. `training.seed: checkpoint 0, command line 1`.
pub fn differences(
    prefix: &str,
    saved: &serde_json::Value,
    given: &serde_json::Value,
) -> Vec<String> {
    use serde_json::Value;
    match (saved, given) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let (x, y) = (
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                    );
                    differences(&format!("{prefix}.{k}"), x, y)
                })
                .collect()
        }
        _ if saved == given => Vec::new(),
        _ => vec![format!(
            "{prefix}: checkpoint {saved}, command line {given}"
        )],
    }
}

/// The manifest to resume from, or `None` for a fresh run: `manifest` is what the
/// checkpoint directory `dir` holds (a `what`), `resume` whether `--resume` was given. A
/// resume without a checkpoint, or a checkpoint without `--resume`, is an error saying what
/// to do, so that no run continues or overwrites another by accident.
pub fn resumable<M>(
    dir: &Path,
    manifest: Option<M>,
    resume: bool,
    what: &str,
) -> anyhow::Result<Option<M>> {
    match (manifest, resume) {
        (None, false) => Ok(None),
        (None, true) => bail!(
            "--resume: {} holds no {what} (the run finished no epoch): run without --resume to start it",
            dir.display()
        ),
        (Some(_), false) => bail!(
            "{} already holds a {what}: pass --resume to continue it or choose another --out",
            dir.display()
        ),
        (Some(m), true) => Ok(Some(m)),
    }
}

/// Refuses to resume the run saved as `saved` with the settings `given` (both
/// serialized), naming every field that differs.
pub fn same_run(
    what: &str,
    saved: &impl serde::Serialize,
    given: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let (a, b) = (serde_json::to_value(saved)?, serde_json::to_value(given)?);
    let diff = differences(what, &a, &b);
    if !diff.is_empty() {
        bail!(
            "--resume with other settings than the checkpoint's: {}",
            diff.join("; ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_field() {
        let a = serde_json::json!({"dataset": "cifar10", "limit": 100, "seed": 0});
        let b = serde_json::json!({"dataset": "synthetic", "limit": 100, "seed": 0});
        let err = same_run("data", &a, &b).unwrap_err().to_string();
        assert!(
            err.contains("data.dataset: checkpoint \"cifar10\", command line \"synthetic\""),
            "{err}"
        );
        assert!(!err.contains("limit"), "{err}");
        same_run("data", &a, &a).unwrap();
    }

    #[test]
    fn value_parsers_name_the_range() {
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").unwrap_err().contains("at least 1"));
        assert!(positive("-1").is_err());
        assert_eq!(finite_positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(finite_positive(bad).is_err(), "{bad}");
        }
        assert_eq!(unit_fraction("0.9"), Ok(0.9));
        for bad in ["1", "-5", "1e30", "nan"] {
            assert!(unit_fraction(bad).is_err(), "{bad}");
        }
        assert!(finite_non_negative("-0.1").is_err());
        assert_eq!(finite_non_negative("0"), Ok(0.0));
    }

    #[test]
    fn threads_are_bounded() {
        assert_eq!(threads("--threads", 2).unwrap(), 2);
        let err = threads("--threads", 100_000).unwrap_err().to_string();
        assert!(err.contains("--threads = 100000"), "{err}");
        assert!(threads("--threads", 0).is_err());
    }

    #[test]
    fn outputs_never_overwrite_inputs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let weights = dir.path().join("graph.safetensors");
        std::fs::write(&weights, b"w").unwrap();
        let other = dir.path().join("sub/../graph.safetensors");
        let err = output_apart("--out", &other, &[("--weights", &weights)]).unwrap_err();
        assert!(err.to_string().contains("--weights"), "{err}");
        let fresh = dir.path().join("new/int8.cinder");
        output_apart("--out", &fresh, &[("--weights", &weights)]).unwrap();
        let run = dir.path().join("run");
        let same = dir.path().join("sub/../run/");
        assert!(output_apart("--out", &same, &[("--checkpoint", &run)]).is_err());
        output_apart("--out", &run.join("qat"), &[("--checkpoint", &run)]).unwrap();
    }
}
