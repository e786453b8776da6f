//! `cargo xtask infer`: runs an int8 model file on a data set's test split and reports
//! accuracy, latency (median time of a `--batch` batch and of a single image), optionally
//! the argmax agreement with the fake-quant simulation and a per-stage time breakdown.
//!
//! `cargo xtask infer --model runs/fmnist/int8.cinder --dataset fashion-mnist
//!  --summary runs/fmnist/summary.json [--batch 64 --threads 2 --simulate 1000 --profile]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cinder_datasets::{Dataset, Normalization};
use cinder_runtime::{QuantizedModel, Session, SessionOptions, simulate};
use cinder_tensor::io::{read_json, write_json_atomic};
use cinder_tensor::{Tensor, TensorBuf};
use serde::{Deserialize, Serialize};

use crate::checks;
use crate::train::{NormArg, dataset_source, normalization_for};

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
    /// Compare the argmax with the fake-quant simulation on the first N test images (plain
    /// f32, slow).
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
}

#[derive(Deserialize)]
struct TrainSummary {
    normalization: Normalization,
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

pub fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

pub fn median_ms(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times
        .get(times.len() / 2)
        .map_or(0.0, |t| t.as_secs_f64() * 1e3)
}

/// Images `range` of `test`, normalized.
pub fn images(
    test: &Dataset,
    norm: &Normalization,
    range: std::ops::Range<usize>,
) -> anyhow::Result<(TensorBuf<f32>, Vec<u8>)> {
    let subset = test.subset(&range.collect::<Vec<_>>());
    Ok((norm.normalize(subset.images())?, subset.labels().to_vec()))
}

/// The predicted class of every image of the split, and the per-batch times.
pub fn predict(
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    batch: usize,
) -> anyhow::Result<(Vec<usize>, Vec<Duration>)> {
    let (mut predicted, mut times) = (Vec::with_capacity(test.len()), Vec::new());
    for start in (0..test.len()).step_by(batch) {
        let (x, _) = images(test, norm, start..(start + batch).min(test.len()))?;
        let t = Instant::now();
        let logits = session.run(&x)?;
        times.push(t.elapsed());
        let classes = logits.shape()[1];
        predicted.extend(logits.data().chunks_exact(classes).map(argmax));
    }
    Ok((predicted, times))
}

/// How many of `predicted` equal the split's labels.
pub fn correct(predicted: &[usize], test: &Dataset) -> usize {
    predicted
        .iter()
        .zip(test.labels())
        .filter(|(p, label)| **p == usize::from(**label))
        .count()
}

/// The times of single-image runs of the first `n` images.
pub fn single_latencies(
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    (0..n.min(test.len()))
        .map(|i| {
            let (x, _) = images(test, norm, i..i + 1)?;
            let t = Instant::now();
            session.run(&x)?;
            Ok(t.elapsed())
        })
        .collect()
}

/// Share of the first `n` images whose runtime and simulation argmax agree.
fn agreement(
    model: &QuantizedModel,
    session: &mut Session<'_>,
    test: &Dataset,
    norm: &Normalization,
    n: usize,
) -> anyhow::Result<f64> {
    let mut agree = 0;
    for start in (0..n).step_by(64) {
        let (x, _) = images(test, norm, start..(start + 64).min(n))?;
        let sim = simulate(model, &x)?;
        let logits = session.run(&x)?;
        let classes = logits.shape()[1];
        agree += logits
            .data()
            .chunks_exact(classes)
            .zip(sim.data().chunks_exact(classes))
            .filter(|(r, s)| argmax(r) == argmax(s))
            .count();
    }
    Ok(agree as f64 / n.max(1) as f64)
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
    let simulation_agreement = (simulated > 0)
        .then(|| agreement(&model, &mut session, &test, &norm, simulated))
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
        simulation_agreement,
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
}
