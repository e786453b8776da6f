//! The search's record: `autoquant.json` (every figure) and `autoquant.md` (the layer
//! table, the trajectory, the chosen widths and the test comparison), both written
//! atomically; the markdown parts also go into the experiment's report.

use std::fmt::Write as _;
use std::path::Path;

use cinder_ptq::mixed::{Move, Target, Width};
use cinder_tensor::io::{write_atomic, write_json_atomic};
use serde::{Deserialize, Serialize};

use super::search::Found;

/// `autoquant.json`'s schema version.
pub const FORMAT_VERSION: u32 = 1;

/// One model measured on the test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRow {
    pub name: String,
    pub accuracy: f64,
    pub model_bytes: u64,
    /// Median time of a test batch of `batch` images.
    pub batch_ms: f64,
    /// Median time of one image.
    pub single_ms: f64,
}

/// Everything `cargo xtask autoquant` found and measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format_version: u32,
    pub budget_pp: f64,
    pub target: Target,
    pub seed: u64,
    pub observer: String,
    pub held_out_images: usize,
    /// Whether the model never trained on the held-out images.
    pub held_out_unseen: bool,
    pub batch: usize,
    pub found: Found,
    /// The float model's test accuracy (burn) and weight file bytes.
    pub fp32_test_accuracy: f64,
    pub fp32_bytes: u64,
    /// The search's model, uniform W8 and uniform W4 on the test split, measured once.
    pub test: Vec<TestRow>,
    /// `uptime`'s load averages while the test rows were timed.
    pub load: Option<String>,
}

pub fn write(report: &Report, dir: &Path) -> anyhow::Result<()> {
    write_json_atomic(&dir.join("autoquant.json"), report)?;
    let mut md = String::new();
    markdown(&mut md, report)?;
    Ok(write_atomic(&dir.join("autoquant.md"), md.as_bytes())?)
}

fn markdown(md: &mut String, r: &Report) -> std::fmt::Result {
    writeln!(
        md,
        "# Autoquant: smallest {} within {} pp of fp32\n",
        r.target, r.budget_pp
    )?;
    writeln!(
        md,
        "Held-out split: {} training images ({}), seed {}; fp32 on it {:.2}%. Calibration: {}. \
         Every decision on the held-out split; the test split only in the last table.\n",
        r.held_out_images,
        if r.held_out_unseen {
            "never seen in training"
        } else {
            "seen in training, not in calibration"
        },
        r.seed,
        100.0 * r.found.fp32_accuracy,
        r.observer
    )?;
    layer_table(md, &r.found, r.target)?;
    trajectory(md, &r.found, r.target)?;
    widths(md, &r.found)?;
    test_table(md, r)
}

/// The predicted drop and cost of every layer at every width.
pub fn layer_table(md: &mut String, found: &Found, target: Target) -> std::fmt::Result {
    let Some(first) = found.table.first() else {
        return Ok(());
    };
    let widths: Vec<Width> = first.cost.keys().copied().collect();
    md.push_str(
        "## Per-layer sensitivity and cost\n\nHeld-out accuracy drop (pp) with one layer's \
         weights alone at each width (the rest float), and the layer's cost at each width.\n\n| layer |",
    );
    for w in &widths {
        write!(md, " drop {w} | cost {w} |")?;
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|---:|".repeat(widths.len()));
    md.push('\n');
    for row in &found.table {
        write!(md, "| {} |", row.name)?;
        for w in &widths {
            let drop = row.drop_pp.get(w).map_or("-".into(), |d| format!("{d:.2}"));
            write!(md, " {drop} | {} |", cost(row.cost[w], target))?;
        }
        md.push('\n');
    }
    md.push('\n');
    Ok(())
}

/// A cost in the target's unit: whole bytes, or milliseconds to three decimals.
fn cost(value: f64, target: Target) -> String {
    match target {
        Target::Size => format!("{value:.0}"),
        Target::Latency => format!("{value:.3}"),
    }
}

/// Every evaluated candidate in order.
pub fn trajectory(md: &mut String, found: &Found, target: Target) -> std::fmt::Result {
    writeln!(
        md,
        "## Trajectory\n\nEach candidate converted and run on the int8 runtime on the held-out \
         split; kept while its measured drop is within the budget. Predicted cost: the layer \
         table's {}.\n",
        match target {
            Target::Size => "bytes",
            Target::Latency => "milliseconds per batch",
        }
    )?;
    md.push_str(
        "| step | move | layer | width | held-out acc % | drop pp | model bytes | batch ms | predicted cost | kept |\n\
         |---:|---|---|---|---:|---:|---:|---:|---:|---|\n",
    );
    for (i, s) in found.search.steps.iter().enumerate() {
        let kind = match s.kind {
            Move::Start => "start",
            Move::ToFloat => "to float",
            Move::Down => "down",
        };
        let width = match (s.from, s.to) {
            (Some(f), Some(t)) => format!("{f} → {t}"),
            _ => "-".into(),
        };
        writeln!(
            md,
            "| {i} | {kind} | {} | {width} | {:.2} | {:.2} | {} | {:.2} | {} | {} |",
            s.layer.as_deref().unwrap_or("-"),
            100.0 * s.measured.accuracy,
            s.drop_pp,
            s.measured.model_bytes,
            s.measured.batch_ms,
            cost(s.predicted_cost, target),
            if s.accepted { "yes" } else { "no" }
        )?;
    }
    md.push('\n');
    Ok(())
}

/// The chosen width of every layer, one line.
pub fn widths(md: &mut String, found: &Found) -> std::fmt::Result {
    let chosen: Vec<String> = found
        .table
        .iter()
        .map(|l| format!("{} {}", l.name, found.search.allocation[&l.name]))
        .collect();
    writeln!(
        md,
        "Chosen widths: {}; held-out drop {:.2} pp.\n",
        chosen.join(", "),
        found.search.drop_pp
    )
}

fn test_table(md: &mut String, r: &Report) -> std::fmt::Result {
    writeln!(
        md,
        "## Test split (measured once)\n\nLatency: medians, the models taking turns (1,024 \
         images, then 25 single images, each) in one run; load {}.\n",
        r.load.as_deref().unwrap_or("unknown")
    )?;
    writeln!(
        md,
        "| model | test acc % | bytes | b{} ms | b1 ms |\n|---|---:|---:|---:|---:|",
        r.batch
    )?;
    writeln!(
        md,
        "| fp32 | {:.2} | {} | - | - |",
        100.0 * r.fp32_test_accuracy,
        r.fp32_bytes
    )?;
    for t in &r.test {
        writeln!(
            md,
            "| {} | {:.2} | {} | {:.2} | {:.3} |",
            t.name,
            100.0 * t.accuracy,
            t.model_bytes,
            t.batch_ms,
            t.single_ms
        )?;
    }
    Ok(())
}

/// One line: the chosen widths and the test figures beside fp32.
pub fn summary(r: &Report) -> String {
    let rows: Vec<String> = r
        .test
        .iter()
        .map(|t| {
            format!(
                "{} {:.2}% {} B b{} {:.2} ms",
                t.name,
                100.0 * t.accuracy,
                t.model_bytes,
                r.batch,
                t.batch_ms
            )
        })
        .collect();
    let mut md = String::new();
    // Writing to a String cannot fail.
    let _ = widths(&mut md, &r.found);
    format!(
        "{}test: fp32 {:.2}% | {}",
        md,
        100.0 * r.fp32_test_accuracy,
        rows.join(" | ")
    )
}
