//! A suite: one config file that names other experiment configs (`experiments/zoo.toml`
//! runs the matrix over every zoo model). Each member runs as its own experiment into
//! `OUT/MEMBER` (resumable, its cells cached as always), then `OUT/report.md` puts the
//! members side by side: per model its fp32 baseline and the best cells at 8 and at 4
//! bits, QAT against its control, and ONNX Runtime's own int8 where it was measured.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use cinder_tensor::io::{read_json, write_atomic};

use super::ExperimentArgs;
use super::config::{SuiteConfig, load_suite};
use super::peers::Peers;
use super::report::describe;
use super::results::{CellMetrics, CellResult, Results};

/// Runs every member of `suite` (read from `path`) with the rest of `args`, then writes
/// the suite's report.
pub fn run(
    suite: &SuiteConfig,
    path: &Path,
    args: &ExperimentArgs,
    run_one: impl Fn(ExperimentArgs) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !args.cells.is_empty() || args.list_cells || args.model_onnx.is_some() {
        anyhow::bail!(
            "{} is a suite of experiments: --cell, --list-cells and --model-onnx take one of \
             its member configs",
            path.display()
        );
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(&suite.name));
    let mut members = Vec::new();
    for member in &suite.experiments {
        let config = dir.join(member);
        if load_suite(&config)?.is_some() {
            anyhow::bail!(
                "{}: member {} is a suite itself: list experiment configs only",
                path.display(),
                config.display()
            );
        }
        let name = config
            .file_stem()
            .with_context(|| format!("{}: no file name", config.display()))?;
        let member_out = out.join(name);
        eprintln!("suite {}: {}", suite.name, config.display());
        run_one(ExperimentArgs {
            config: Some(config.clone()),
            out: Some(member_out.clone()),
            ..args.clone()
        })
        .with_context(|| format!("suite member {}", config.display()))?;
        members.push(read_json::<Results>(&member_out.join("results.json"))?);
    }
    let report = out.join("report.md");
    write_atomic(&report, summary(suite, &members)?.as_bytes())?;
    println!("{} experiments; wrote {}", members.len(), report.display());
    Ok(())
}

/// The suite's report: one row per member.
fn summary(suite: &SuiteConfig, members: &[Results]) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(md, "# Suite `{}`\n", suite.name)?;
    if !suite.description.is_empty() {
        writeln!(md, "{}\n", suite.description)?;
    }
    md.push_str(
        "Each model's own report (`MEMBER/report.md`) has every cell. Here: the fp32 \
         baseline, the most accurate post-training cell at 8 and at 4 weight bits (Δ in \
         percentage points against fp32, the model file against the fp32 weights, the \
         speed-up over fp32 at the evaluation batch), QAT against its control, and ONNX \
         Runtime's own `quantize_static` where it was measured.\n\n\
         | experiment | model | fp32 acc % | best W8 | best W4 | QAT vs control | ONNX Runtime int8 |\n\
         |---|---|---:|---|---|---|---|\n",
    );
    for r in members {
        writeln!(
            md,
            "| {} | {} ({} parameters) | {:.2} | {} | {} | {} | {} |",
            r.experiment,
            r.training.model,
            r.training.parameters,
            100.0 * r.fp32.accuracy,
            best_at_bits(r, 8),
            best_at_bits(r, 4),
            qat_gain(r),
            match &r.peers {
                Peers::Measured(p) => format!(
                    "{:.2}% ({:+.2})",
                    100.0 * p.quantize_static.accuracy,
                    100.0 * (p.quantize_static.accuracy - r.fp32.accuracy)
                ),
                _ => "–".to_owned(),
            }
        )?;
    }
    Ok(md)
}

/// The most accurate post-training cell whose default weights have `bits` bits.
fn best_at_bits(r: &Results, bits: u8) -> String {
    let best = r
        .post_training()
        .filter(|(c, _)| c.quant.default.weight_bits == bits)
        .max_by(|a, b| a.1.measured.accuracy.total_cmp(&b.1.measured.accuracy));
    best.map_or("–".to_owned(), |(c, m)| cell_figures(r, c, m))
}

fn cell_figures(r: &Results, c: &CellResult, m: &CellMetrics) -> String {
    format!(
        "{} ({}): {:.2}% ({:+.2}), {:.1}% size, {:.1}x",
        c.name,
        describe(&c.quant),
        100.0 * m.measured.accuracy,
        m.accuracy_delta_pp,
        100.0 * m.size_ratio,
        r.fp32.batch_ms / m.measured.batch_ms.max(1e-9)
    )
}

/// Each QAT cell's accuracy against its control's (same quantization).
fn qat_gain(r: &Results) -> String {
    let pairs: Vec<String> = r
        .fine_tuned()
        .filter_map(|(c, m)| {
            let (_, control) = r.control_of(c)?;
            Some(format!(
                "{}: {:.2}% vs {:.2}%",
                c.name,
                100.0 * m.measured.accuracy,
                100.0 * control.measured.accuracy
            ))
        })
        .collect();
    if pairs.is_empty() {
        "–".to_owned()
    } else {
        pairs.join("; ")
    }
}
