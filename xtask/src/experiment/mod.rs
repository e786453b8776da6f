//! `cargo xtask experiment`: the train → quantize → evaluate matrix and its report.
//!
//! One command trains the reference ConvNet (or reuses its checkpoint; with
//! `validation_images` and `early_stopping` in the config, until the accuracy on the
//! held-out images stops rising), measures the fp32 baseline, runs every cell of the
//! config's matrix (observers, static vs dynamic, symmetric vs asymmetric, per-tensor vs
//! per-channel, weight bits, mixed precision, partial and sensitivity-chosen float
//! layers, QAT and its control), measures ONNX Runtime on the same models where it is
//! installed ([`peers`]) and writes, under `results/NAME/` (or `--out`):
//!
//! - `report.md`: the machine, the training curve, the fp32 baseline, ranked tables,
//!   ONNX Runtime's rows; `results.json`: all figures (versioned schema, see
//!   [`results`]); `plots/*.svg`;
//! - `fp32/graph.json` + `graph.safetensors`: the float model; `models/CELL.cinder`:
//!   every int8 model; `checkpoint/`: the training checkpoint;
//! - `cells/CELL.json`, `calibration/OBSERVER.json`, `fp32/baseline.json`: each result
//!   saved atomically with the key of its inputs, so a rerun (or a run resumed after a
//!   kill) redoes only what is missing or changed.
//!
//! `cargo xtask experiment` (experiments/default.toml), `cargo xtask experiment --quick`,
//! `cargo xtask experiment --config experiments/fashion-mnist.toml`,
//! `cargo xtask experiment --dataset cifar10 DIR --out results/cifar10`.
//!
//! `cargo xtask experiment --model-onnx model.onnx --dataset fashion-mnist --out DIR` runs
//! the matrix on an outside float model (e.g. from `torch.onnx.export`, input
//! `[batch, 3, 32, 32]` normalized as the config's data) instead of training one.
//!
//! A config that lists other configs (`experiments = [...]`, e.g. experiments/zoo.toml)
//! is a suite: each member runs into `OUT/MEMBER`, then one report sets them side by side
//! ([`suite`]).
//!
//! Fan-out over a scheduler, all processes writing into one directory: `--list-cells`
//! prints the cell names; `--cell NAME` (repeatable) runs only those cells, after the
//! shared stages (training, the fp32 baseline), which the first process does while the
//! others wait for the directory lock and then reuse its results; `--report-only` builds
//! the report from the cells that are there. Cells are deterministic and saved
//! atomically, so a cell that two processes run is simply written twice.

mod calibration;
mod cells;
mod config;
mod context;
mod data;
mod measure;
mod memory;
mod peers;
mod plots;
mod ptq;
mod qat;
mod report;
mod results;
mod store;
mod suite;
mod training;

use std::path::{Path, PathBuf};
use std::time::Instant;

use cinder_tensor::io::{write_atomic, write_json_atomic};
use cinder_tensor::lock::DirLock;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use calibration::Calibrations;
use config::ExperimentConfig;
use context::Context;
use data::ExperimentData;
use peers::Peers;
use results::{
    Baseline, CellResult, DataSummary, Machine, Outcome, RESULTS_FORMAT_VERSION, Results,
};
use store::{Key, read_cached, write_cached};
use training::Trained;

#[derive(clap::Args, Debug, Clone)]
pub struct ExperimentArgs {
    /// The data set, overriding the config's: synthetic, fashion-mnist (DIR optional), cifar10 DIR
    /// or cifar100 DIR.
    #[arg(long, num_args = 1..=2, value_names = ["NAME", "DIR"])]
    pub dataset: Vec<String>,
    /// The experiment config (TOML); default experiments/default.toml.
    #[arg(long, conflicts_with = "quick")]
    pub config: Option<PathBuf>,
    /// Output directory; default results/NAME (NAME from the config).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// experiments/quick.toml: small data, a small model and a few cells.
    #[arg(long)]
    pub quick: bool,
    /// Print the config's cell names, one per line, and exit.
    #[arg(long, conflicts_with_all = ["cells", "report_only"])]
    pub list_cells: bool,
    /// Run only this cell (repeatable): one task of a fan-out over a scheduler. Waits
    /// for the directory's lock while another process trains or measures the baseline.
    #[arg(long = "cell", value_name = "NAME", conflicts_with = "report_only")]
    pub cells: Vec<String>,
    /// Build the report from the cells already saved in the output directory; run no
    /// cell (the training must be finished; ONNX Runtime's rows are measured when they
    /// are not saved yet).
    #[arg(long)]
    pub report_only: bool,
    /// A float ONNX model (e.g. from `torch.onnx.export`) to quantize instead of the
    /// trained ConvNet: its input must be the data's `[batch, 3, 32, 32]` images,
    /// normalized as the config says, and its output one logit per class.
    #[arg(long, value_name = "FILE")]
    pub model_onnx: Option<PathBuf>,
    /// Leave ONNX Runtime's rows out of the report even where it is installed.
    #[arg(long)]
    pub no_peers: bool,
    /// Stop before running cell N+1, as if killed (resume tests).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
    /// Memory probe (child process): load and run this model file, print peak memory.
    #[arg(long, hide = true)]
    pub measure_memory: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 64)]
    pub memory_batch: usize,
    #[arg(long, hide = true, default_value_t = 2)]
    pub memory_threads: usize,
}

pub fn run(args: ExperimentArgs) -> anyhow::Result<()> {
    if let Some(model) = &args.measure_memory {
        return memory::probe(model, args.memory_batch, args.memory_threads);
    }
    let wall = Instant::now();
    let path = args.config.clone().unwrap_or_else(|| {
        let name = if args.quick { "quick" } else { "default" };
        config::experiments_dir().join(format!("{name}.toml"))
    });
    if let Some(suite) = config::load_suite(&path)? {
        return suite::run(&suite, &path, &args, run);
    }
    let config = config::load(&path)?.with_dataset(&args.dataset)?;
    if args.list_cells {
        config.cells.iter().for_each(|c| println!("{}", c.name));
        return Ok(());
    }
    let selected = select_cells(&config, &args.cells, &path)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(&config.name));
    let lock = if args.cells.is_empty() {
        DirLock::acquire(&out)?
    } else {
        DirLock::wait(&out)?
    };
    write_atomic(
        &out.join("config.toml"),
        toml::to_string(&config)?.as_bytes(),
    )?;
    let bars = MultiProgress::new();
    let total = bars.add(bar(selected.len() + 3, "experiment"));
    let model = match &args.model_onnx {
        Some(path) => ModelSource::Onnx(path),
        None => ModelSource::Train {
            may_train: !args.report_only,
        },
    };
    let shared = shared_stages(&config, &out, &bars, &total, model)?;
    if !args.cells.is_empty() {
        // The shared stages are saved: the other tasks of the fan-out may go on.
        drop(lock);
    }
    let ctx = Context {
        config: &config,
        model: &shared.trained.model,
        data: &shared.data,
        graph: &shared.trained.graph,
        graph_key: &shared.graph_key,
        baseline: &shared.baseline,
        out: &out,
    };
    let run = CellRun {
        selected: &selected,
        stop_after: args.stop_after,
        saved_only: args.report_only,
    };
    let Some(cells) = run_cells(&ctx, &bars, &total, &run)? else {
        return Ok(());
    };
    if !args.cells.is_empty() {
        total.finish_and_clear();
        return check_cells(&cells);
    }
    total.set_message("ONNX Runtime peers");
    let peers = if args.no_peers {
        Peers::Unavailable {
            reason: "left out (--no-peers)".to_owned(),
        }
    } else {
        peers::measure(&ctx, &cells)?
    };
    total.set_message("report");
    let results = shared.results(&config, cells, peers, wall.elapsed().as_secs_f64());
    write_report(&results, &out, &total)?;
    check_cells(&results.cells)
}

/// What every cell of an experiment builds on.
struct Shared {
    data: ExperimentData,
    trained: Trained,
    graph_key: String,
    baseline: Baseline,
}

/// Where the float model comes from.
enum ModelSource<'a> {
    /// Trained (or its checkpoint reused unless `may_train`) from the config's recipe.
    Train { may_train: bool },
    /// A float ONNX file.
    Onnx(&'a Path),
}

/// Loads the data, trains (or reuses, or imports) the float model and measures its
/// baseline.
fn shared_stages(
    config: &ExperimentConfig,
    out: &Path,
    bars: &MultiProgress,
    total: &ProgressBar,
    model: ModelSource,
) -> anyhow::Result<Shared> {
    total.set_message("loading data");
    let data = ExperimentData::load(&config.data)?;
    total.set_message("training");
    let trained = match model {
        ModelSource::Train { may_train } => {
            training::train_or_reuse(config, &data, out, bars, may_train)?
        }
        ModelSource::Onnx(path) => training::imported(path, config, &data)?,
    };
    total.inc(1);
    total.set_message("fp32 baseline");
    let fp32_dir = out.join("fp32");
    trained.graph.save(
        &fp32_dir.join("graph.json"),
        &fp32_dir.join("graph.safetensors"),
    )?;
    let graph_key = training::graph_key(&trained.graph)?;
    let baseline = baseline(&trained, &graph_key, &data, config, &fp32_dir)?;
    total.inc(1);
    Ok(Shared {
        data,
        trained,
        graph_key,
        baseline,
    })
}

impl Shared {
    fn results(
        self,
        config: &ExperimentConfig,
        cells: Vec<CellResult>,
        peers: Peers,
        wall: f64,
    ) -> Results {
        Results {
            format_version: RESULTS_FORMAT_VERSION,
            experiment: config.name.clone(),
            config: config.clone(),
            machine: Machine::here(),
            data: DataSummary {
                dataset: self.data.name.to_owned(),
                train_images: self.data.train.len(),
                test_images: self.data.test.len(),
                classes: self.data.train.classes(),
            },
            training: self.trained.summary,
            fp32: self.baseline.measured,
            fp32_model_file: self.baseline.model_file,
            cells,
            peers,
            wall_seconds: wall,
        }
    }
}

/// The configured cells named by `names`, or all of them when none is named.
fn select_cells<'a>(
    config: &'a ExperimentConfig,
    names: &[String],
    path: &Path,
) -> anyhow::Result<Vec<&'a config::CellConfig>> {
    if let Some(unknown) = names
        .iter()
        .find(|n| !config.cells.iter().any(|c| &c.name == *n))
    {
        anyhow::bail!(
            "--cell {unknown}: {} has no such cell; its cells: {}",
            path.display(),
            config
                .cells
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(config
        .cells
        .iter()
        .filter(|c| names.is_empty() || names.contains(&c.name))
        .collect())
}

fn write_report(results: &Results, out: &Path, total: &ProgressBar) -> anyhow::Result<()> {
    write_json_atomic(&out.join("results.json"), results)?;
    plots::write_all(results, &out.join("plots"))?;
    report::write(results, &out.join("report.md"))?;
    total.finish_and_clear();
    println!(
        "{} cells in {:.0} s; wrote {}",
        results.cells.len(),
        results.wall_seconds,
        out.join("report.md").display()
    );
    Ok(())
}

/// An error (a failing exit status) when any cell failed.
fn check_cells(cells: &[CellResult]) -> anyhow::Result<()> {
    let failed: Vec<&str> = cells
        .iter()
        .filter(|c| c.metrics().is_none())
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} cells failed (see report.md): {}",
            failed.len(),
            cells.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Which cells a run visits and how.
struct CellRun<'a> {
    selected: &'a [&'a config::CellConfig],
    /// Stop before running cell N+1, as if killed.
    stop_after: Option<usize>,
    /// Only collect the saved results; run nothing.
    saved_only: bool,
}

/// The selected cells, reusing the finished ones; `None` when `stop_after` cut the run
/// short. With `saved_only`, the saved cells alone, the others named on stderr.
fn run_cells(
    ctx: &Context<'_>,
    bars: &MultiProgress,
    total: &ProgressBar,
    run: &CellRun<'_>,
) -> anyhow::Result<Option<Vec<CellResult>>> {
    let config = ctx.config;
    let mut calibrations = Calibrations::new(
        ctx.model,
        ctx.graph_key,
        ctx.data,
        &config.calibration,
        ctx.out.join("calibration"),
    )?;
    let (mut results, mut ran, mut missing) = (Vec::new(), 0, Vec::new());
    for &cell in run.selected {
        total.set_message(format!("cell {}", cell.name));
        let key = ctx.cell_key(cell)?;
        let path = ctx.out.join("cells").join(format!("{}.json", cell.name));
        let saved = read_cached::<CellResult>(&path, &key).filter(|r| r.metrics().is_some());
        let result = match saved {
            Some(done) => done,
            None if run.saved_only => {
                missing.push(cell.name.as_str());
                continue;
            }
            None if run.stop_after.is_some_and(|n| ran >= n) => {
                say(bars, &format!("stopped after {ran} cells (--stop-after)"));
                return Ok(None);
            }
            None => {
                let cell_bar = bars.add(bar(0, &cell.name));
                let r = cells::run(ctx, cell, &mut calibrations, &cell_bar);
                cell_bar.finish_and_clear();
                write_cached(&path, &key, &r)?;
                ran += 1;
                say(bars, &summary_line(&r));
                r
            }
        };
        results.push(result);
        total.inc(1);
    }
    if !missing.is_empty() {
        say(
            bars,
            &format!(
                "{} of {} cells not run yet, left out of the report: {}",
                missing.len(),
                run.selected.len(),
                missing.join(", ")
            ),
        );
    }
    Ok(Some(results))
}

/// The fp32 baseline, measured once per model, data and evaluation settings.
fn baseline(
    trained: &Trained,
    graph_key: &str,
    data: &ExperimentData,
    config: &ExperimentConfig,
    dir: &Path,
) -> anyhow::Result<Baseline> {
    let key = Key::new("baseline")
        .bytes(graph_key.as_bytes())
        .bytes(data.key.as_bytes())
        .json(&config.evaluation)?
        .hex();
    let path = dir.join("baseline.json");
    if let Some(b) = read_cached(&path, &key) {
        return Ok(b);
    }
    let json = dir.join("graph.json");
    let (measured, predicted) = measure::fp32(&trained.model, &json, data, &config.evaluation)?;
    let b = Baseline {
        measured,
        model_file: "fp32/graph.safetensors".to_owned(),
        predictions: predicted.iter().map(|&p| p as u32).collect(),
    };
    write_cached(&path, &key, &b)?;
    Ok(b)
}

fn summary_line(r: &CellResult) -> String {
    match &r.outcome {
        Outcome::Done(m) => format!(
            "{:<28} acc {:6.2}% ({:+.2} pp) size {:5.1}% b{} {:.2} ms ({:.0} s)",
            r.name,
            100.0 * m.measured.accuracy,
            m.accuracy_delta_pp,
            100.0 * m.size_ratio,
            m.measured.batch,
            m.measured.batch_ms,
            r.seconds
        ),
        Outcome::Failed { error } => format!("{:<28} failed: {error}", r.name),
    }
}

/// A line above the bars, or on stderr when they are hidden (not a terminal).
pub fn say(bars: &MultiProgress, line: &str) {
    if bars.is_hidden() {
        eprintln!("{line}");
    } else {
        bars.suspend(|| eprintln!("{line}"));
    }
}

/// A progress bar of `len` steps (a spinner when 0).
fn bar(len: usize, prefix: &str) -> ProgressBar {
    let bar = if len == 0 {
        ProgressBar::new_spinner()
    } else {
        ProgressBar::new(len as u64)
    };
    let template = if len == 0 {
        "{spinner} {prefix} {elapsed_precise} {msg}"
    } else {
        "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}"
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}
