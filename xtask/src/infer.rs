//! `cargo xtask infer`: runs an int8 model file on a data set's test split and reports
//! accuracy, latency (median time of a `--batch` batch and of a single image), optionally
//! the argmax agreement with the fake-quant simulation, the share of outputs equal to the
//! reference interpreter's bit for bit, and a per-stage time breakdown.
//!
//! `cargo xtask infer --model runs/fmnist/int8.cinder --dataset fashion-mnist
//!  --summary runs/fmnist/summary.json [--batch 64 --threads 2 --simulate 1000 --profile]`

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cinder_datasets::{Dataset, Normalization};
use cinder_runtime::{QuantizedModel, Session, SessionOptions, reference_forward, simulate};
use cinder_tensor::Tensor;
use cinder_tensor::io::{read_json, write_json_atomic};
use serde::Serialize;

use crate::checks;
use crate::dataset::{NormArg, TrainSummary, dataset_source, normalization_for};
use crate::evaluate::{argmax, correct, images, median_ms, predict, single_latencies};

#[derive(clap::Args, Debug)]
pub struct InferArgs {
    /// The int8 model file.
    #[arg(long)]
    pub model: PathBuf,
    /// synthetic, fashion-mnist, cifar10 or cifar100
    #[arg(long, default_value = "synthetic")]
    pub dataset: String,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A training `summary.json` whose normalization to apply (preferred).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Otherwise: `half`, or `fit` on the training split; default as `train` does.
    #[arg(long, value_enum)]
    pub norm: Option<NormArg>,
    /// Use only the first N test images.
    #[arg(long, value_parser = checks::positive)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 64, value_parser = checks::positive)]
    pub batch: usize,
    /// Runtime worker threads: at most four per hardware thread.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Single images timed for the batch-1 latency.
    #[arg(long, default_value_t = 200)]
    pub single: usize,
    /// On the first N test images, compare the argmax with the fake-quant simulation and
    /// the outputs with the reference interpreter's, bit for bit (both plain, slow).
    #[arg(long, default_value_t = 0)]
    pub simulate: usize,
    /// Print the mean time of every stage.
    #[arg(long)]
    pub profile: bool,
    /// Write the figures as JSON.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    dataset: String,
    images: usize,
    accuracy: f64,
    threads: usize,
    batch: usize,
    batch_median_ms: f64,
    single_median_ms: f64,
    simulation_images: usize,
    simulation_agreement: Option<f64>,
    /// Share of those images whose outputs equal the reference interpreter's bit for bit.
    reference_identical: Option<f64>,
}

fn normalization(args: &InferArgs, train: &Dataset) -> anyhow::Result<Normalization> {
    if let Some(path) = &args.summary {
        return Ok(read_json::<TrainSummary>(path)?.normalization);
    }
    let half = args
        .norm
        .map_or(args.dataset == "fashion-mnist", |n| n == NormArg::Half);
    normalization_for(half, train)
}

/// Refuses a model whose output width is not the data set's class count.
pub fn check_classes(path: &Path, model: &QuantizedModel, classes: usize) -> anyhow::Result<()> {
    let width = model.output_shape().last().copied().unwrap_or(0);
    if width != classes {
        bail!(
            "{}: the model outputs {width} scores per image: expected one per class of the data set ({classes})",
            path.display()
        );
    }
    Ok(())
}

/// The runtime against the interpreters on the first `n` images: the share whose argmax
/// agrees with the fake-quant simulation, and the share whose outputs equal the reference
/// interpreter's bit for bit.
fn interpreter_checks(
    model: &QuantizedModel,
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut agree, mut identical) = (0, 0);
    for start in (0..n).step_by(64) {
        let (x, _) = images(test, norm, start..(start + 64).min(n))?;
        let sim = simulate(model, &x)?;
        let reference = reference_forward(model, &x)?;
        let logits = session.run(&x)?;
        let classes = logits.shape()[1];
        let rows = || logits.data().chunks_exact(classes);
        agree += rows()
            .zip(sim.data().chunks_exact(classes))
            .filter(|(r, s)| argmax(r) == argmax(s))
            .count();
        identical += rows()
            .zip(reference.data().chunks_exact(classes))
            .filter(|(r, s)| {
                r.iter()
                    .map(|v| v.to_bits())
                    .eq(s.iter().map(|v| v.to_bits()))
            })
            .count();
    }
    let share = |count: usize| count as f64 / n.max(1) as f64;
    Ok((share(agree), share(identical)))
}

pub fn run(args: InferArgs) -> anyhow::Result<()> {
    let threads = checks::threads("--threads", args.threads)?;
    let model = QuantizedModel::load(&args.model)?;
    let source = dataset_source(&args.dataset, args.data_dir.as_deref())?;
    let splits =
        cinder_datasets::load(&source).with_context(|| format!("loading {}", source.name()))?;
    let norm = normalization(&args, &splits.train)?;
    let test = splits.test.limit(args.limit.unwrap_or(usize::MAX));
    check_classes(&args.model, &model, test.classes())?;
    let mut session = model.session_with(SessionOptions { threads })?;
    // Warm-up at both batch sizes, so that no timed run allocates.
    for n in [args.batch.min(test.len()), 1] {
        session.run(&images(&test, &norm, 0..n)?.0)?;
    }
    session.set_profiling(args.profile);
    let (predicted, times) = predict(&mut session, &test, &norm, args.batch)?;
    if let Some(stages) = session.profile() {
        println!("per-stage mean per batch of {}:", args.batch);
        for s in stages {
            println!(
                "  {:<12} {:<15} {:>9.3} ms",
                s.name,
                s.kind,
                s.mean.as_secs_f64() * 1e3
            );
        }
    }
    session.set_profiling(false);
    let single = single_latencies(&mut session, &test, &norm, args.single)?;
    let simulated = args.simulate.min(test.len());
    let checks = (simulated > 0)
        .then(|| interpreter_checks(&model, &mut session, &test, &norm, simulated))
        .transpose()?;
    let report = Report {
        model: args.model.display().to_string(),
        dataset: source.name().to_owned(),
        images: test.len(),
        accuracy: correct(&predicted, &test) as f64 / test.len().max(1) as f64,
        threads: session.threads(),
        batch: args.batch,
        batch_median_ms: median_ms(times),
        single_median_ms: median_ms(single),
        simulation_images: simulated,
        simulation_agreement: checks.map(|(agree, _)| agree),
        reference_identical: checks.map(|(_, identical)| identical),
    };
    print_report(&report);
    if let Some(path) = &args.report {
        write_json_atomic(path, &report)?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "{} on {} ({} test images): accuracy {:.2}%; {} threads: batch {} median {:.3} ms, batch 1 median {:.3} ms",
        Path::new(&r.model).display(),
        r.dataset,
        r.images,
        r.accuracy * 100.0,
        r.threads,
        r.batch,
        r.batch_median_ms,
        r.single_median_ms
    );
    if let Some(a) = r.simulation_agreement {
        println!(
            "argmax agreement with the fake-quant simulation: {:.2}% of {} images",
            a * 100.0,
            r.simulation_images
        );
    }
    if let Some(identical) = r.reference_identical {
        println!(
            "outputs equal to the reference interpreter's bit for bit: {:.2}% of {} images",
            identical * 100.0,
            r.simulation_images
        );
    }
}
