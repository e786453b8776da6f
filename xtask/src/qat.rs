//! `cargo xtask qat`: quantization-aware fine-tuning of a trained model of any
//! architecture (a `cargo xtask train --out` directory: its float graph says which), or
//! its control (`--control`: the same epochs without
//! fake-quant, then PTQ), conversion to the int8 runtime, and the comparison with PTQ of
//! the starting model. Writes under `--out`:
//!
//! - `checkpoint/`: the QAT checkpoint of every epoch (`--resume` continues it),
//! - `graph.json` + `graph.safetensors`, `calibration.json` (the QAT activation params or
//!   the control's min/max table), `weight_params.json` (QAT only), `model.cinder`,
//! - `metrics.jsonl` and `summary.json`: float, PTQ, fake-quant and runtime accuracy on
//!   the test split, and the runtime's agreement with the fake-quant forward.
//!
//! `cargo xtask qat --checkpoint results/fmnist --epochs 1 --lr 0.001 --bits 4 --out results/qat-w4`

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_datasets::{Dataset, Normalization};
use cinder_model::calibrate::calibrate;
use cinder_model::train::write_metrics_log;
use cinder_model::{BackendKind, GraphNet};
use cinder_observers::{Calibrator, ObserverSpec};
use cinder_qat::train::read_qat_manifest;
use cinder_qat::{QatConfig, QatModel, QatTrainer};
use cinder_runtime::{
    LayerConfig, QuantConfig, QuantizedModel, Session, WeightGranularity, convert,
};
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::io::{read_json, write_json_atomic};
use cinder_tensor::lock::DirLock;
use cinder_tensor::{QuantScheme, Tensor as _, TensorBuf};
use indicatif::ProgressBar;
use serde::Serialize;

use crate::checks;
use crate::dataset::{DatasetImages, TrainSummary, calibration_indices, dataset_source};
use crate::evaluate::{argmax, correct, images, predict};
use crate::progress::{epoch_line, show, step_bar};

#[derive(clap::Args, Debug)]
pub struct QatArgs {
    /// A `cargo xtask train --out` directory (graph.json, graph.safetensors, summary.json).
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value_t = 1, value_parser = checks::positive)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.001, value_parser = checks::finite_positive)]
    pub lr: f64,
    #[arg(long, default_value_t = 64, value_parser = checks::positive)]
    pub batch: usize,
    /// Weight bits (2..=8; the runtime runs 8 and narrower).
    #[arg(long, default_value_t = 8)]
    pub bits: u8,
    /// Per-channel weight scales (`--per-channel false`: one per tensor).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub per_channel: bool,
    /// Learned step sizes (LSQ), initialized by the observers over the first
    /// `--freeze-after` steps (default 100).
    #[arg(long)]
    pub lsq: bool,
    /// Freeze the observers after this many steps (default: never; LSQ: 100).
    #[arg(long)]
    pub freeze_after: Option<usize>,
    /// The control: the same fine-tuning without fake-quant, then PTQ.
    #[arg(long)]
    pub control: bool,
    /// Fine-tune on the first N training images (default: as many as the training run).
    #[arg(long, value_parser = checks::positive)]
    pub train_images: Option<usize>,
    /// Use only the first N test images.
    #[arg(long, value_parser = checks::positive)]
    pub test_limit: Option<usize>,
    /// Training images of the min/max calibration of the PTQ models.
    #[arg(long, default_value_t = 1000, value_parser = checks::positive)]
    pub calibration_images: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the data set files (Fashion-MNIST: Debian's location by default).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run checkpointed in `--out`.
    #[arg(long)]
    pub resume: bool,
}

impl QatArgs {
    fn config(&self) -> QatConfig {
        let base = QatConfig::default();
        let granularity = if self.per_channel {
            WeightGranularity::PerChannel
        } else {
            WeightGranularity::PerTensor
        };
        let config = QatConfig {
            quant: QuantConfig::uniform(LayerConfig {
                weight_bits: self.bits,
                granularity,
                ..LayerConfig::default()
            }),
            lsq: self.lsq,
            freeze_observers_after: self.freeze_after.or(self.lsq.then_some(100)),
            training: cinder_model::TrainConfig {
                epochs: self.epochs,
                batch_size: self.batch,
                lr: self.lr,
                seed: self.seed,
                ..base.training.clone()
            },
            ..base
        };
        if self.control {
            config.control()
        } else {
            config
        }
    }
}

/// Test-split accuracies (fractions) and the runtime's agreement with the simulation.
#[derive(Serialize)]
struct Summary {
    config: QatConfig,
    train_images: usize,
    test_images: usize,
    calibration_images: usize,
    /// The starting float model.
    float_accuracy: f64,
    /// PTQ of the starting model (min/max calibration) under the same weight config.
    ptq_accuracy: f64,
    /// The fine-tuned model's own forward: fake-quant, or float for the control.
    finetuned_accuracy: f64,
    /// The int8 runtime: QAT conversion, or PTQ of the fine-tuned control.
    runtime_accuracy: f64,
    /// Share of test images whose runtime and fake-quant argmax agree (QAT only).
    agreement: Option<f64>,
    /// Largest |runtime − fake-quant| logit difference in output quantization steps.
    max_logit_diff_steps: Option<f64>,
    /// The same with the fake-quant forward requantizing as deployed
    /// (`QatModel::forward_deployed`): argmax agreement, and the share of images whose
    /// logits equal the runtime's bit for bit.
    deployed_agreement: Option<f64>,
    deployed_identical: Option<f64>,
    fine_tune_seconds: f64,
    images_per_sec: f64,
}

pub fn run(args: QatArgs) -> anyhow::Result<()> {
    let dir = &args.checkpoint;
    checks::output_apart("--out", &args.out, &[("--checkpoint", dir)])?;
    let _lock = DirLock::acquire(&args.out)?;
    let summary: TrainSummary = read_json(&dir.join("summary.json"))?;
    let graph = FloatGraph::load(&dir.join("graph.json"), &dir.join("graph.safetensors"))?;
    let device = BackendKind::Flex.device()?;
    let start_net = GraphNet::from_float_graph(&graph, &device)?;
    let source = dataset_source(&summary.dataset, args.data_dir.as_deref())?;
    let splits = cinder_datasets::load(&source)?;
    let train = splits
        .train
        .limit(args.train_images.unwrap_or(summary.train_images));
    let test = splits.test.limit(args.test_limit.unwrap_or(usize::MAX));
    let norm = summary.normalization;
    let (train_src, test_src) = (
        DatasetImages { data: &train, norm },
        DatasetImages { data: &test, norm },
    );
    let mut trainer = start_or_resume(&args, &start_net)?;
    fine_tune_all(&mut trainer, &train_src, &args.out)?;
    let history = trainer.history().to_vec();
    let model = trainer.into_model();
    let calib = calibration_indices(train.len(), args.calibration_images, args.seed);
    let quant = &model.config().quant;
    eprintln!("PTQ of the starting model ...");
    let ptq_accuracy =
        runtime_accuracy(&ptq(&start_net, &train_src, &calib, quant)?, &test, &norm)?;
    let float_accuracy = cinder_model::evaluate(&start_net, &test_src, 256)?.accuracy;
    eprintln!("evaluating the fine-tuned model ...");
    let (int8, comparison) = deploy(&model, &args.out, (&train_src, &calib), &test_src)?;
    int8.save(&args.out.join("model.cinder"))?;
    let out = Summary {
        config: model.config().clone(),
        train_images: train.len(),
        test_images: test.len(),
        calibration_images: calib.len(),
        float_accuracy,
        ptq_accuracy,
        finetuned_accuracy: comparison.finetuned,
        runtime_accuracy: comparison.runtime,
        agreement: comparison.agreement,
        max_logit_diff_steps: comparison.max_steps,
        deployed_agreement: comparison.deployed_agreement,
        deployed_identical: comparison.deployed_identical,
        fine_tune_seconds: history.iter().map(|m| m.seconds).sum(),
        images_per_sec: history.last().map_or(0.0, |m| m.images_per_sec),
    };
    write_json_atomic(&args.out.join("summary.json"), &out)?;
    print_summary(&out);
    println!("wrote {}", args.out.display());
    Ok(())
}

/// Fine-tunes the remaining epochs, checkpointing and logging each.
fn fine_tune_all(
    trainer: &mut QatTrainer,
    train: &DatasetImages<'_>,
    out: &Path,
) -> anyhow::Result<()> {
    let (ckpt, log) = (out.join("checkpoint"), out.join("metrics.jsonl"));
    while !trainer.is_finished() {
        let bar = epoch_bar(trainer, train.data.len());
        let m = trainer.run_epoch(train, None, &mut |p| show(&bar, p))?;
        bar.finish_and_clear();
        eprintln!("{}", epoch_line(m));
        trainer.save_checkpoint(&ckpt)?;
        write_metrics_log(&log, trainer.history())?;
    }
    // Again from the checkpoint's history: a run killed between its last checkpoint and
    // this log's update resumes with nothing left to train.
    write_metrics_log(&log, trainer.history())?;
    Ok(())
}

/// The fine-tuned model in int8, written to `out`, and how it compares: QAT's export
/// (its float graph and table saved) against the fake-quant forward, or for a control
/// the PTQ of its fine-tuned float model (the graph saved) on the `calibration` images.
fn deploy(
    model: &QatModel,
    out: &Path,
    (train, calib): (&DatasetImages<'_>, &[usize]),
    test: &DatasetImages<'_>,
) -> anyhow::Result<(QuantizedModel, Comparison)> {
    if model.config().fake_quant {
        let export = model.export()?;
        export.save(out)?;
        let int8 = export.convert()?;
        let output = model
            .plan()
            .output_point()
            .and_then(|p| export.table.get(p))
            .context("the QAT model does not end in int8: no logit step to compare in")?;
        let c = compare(model, &int8, test.data, &test.norm, output.params.scale)?;
        return Ok((int8, c));
    }
    let device = model.net().device().without_autodiff();
    let tuned = GraphNet::from_float_graph(&model.net().valid().to_float_graph()?, &device)?;
    let int8 = ptq(&tuned, train, calib, &model.config().quant)?;
    tuned
        .to_float_graph()?
        .save(&out.join("graph.json"), &out.join("graph.safetensors"))?;
    let comparison = Comparison {
        finetuned: cinder_model::evaluate(&tuned, test, 256)?.accuracy,
        runtime: runtime_accuracy(&int8, test.data, &test.norm)?,
        agreement: None,
        max_steps: None,
        deployed_agreement: None,
        deployed_identical: None,
    };
    Ok((int8, comparison))
}

fn print_summary(out: &Summary) {
    println!(
        "float {:.2}% | PTQ {:.2}% | {} {:.2}% | runtime {:.2}%{}",
        100.0 * out.float_accuracy,
        100.0 * out.ptq_accuracy,
        if out.config.fake_quant {
            "fake-quant"
        } else {
            "fine-tuned float"
        },
        100.0 * out.finetuned_accuracy,
        100.0 * out.runtime_accuracy,
        out.agreement.map_or(String::new(), |a| format!(
            " | agreement {:.2}%, max logit diff {:.2} steps | deployed requantization: \
             agreement {:.2}%, identical logits {:.2}%",
            100.0 * a,
            out.max_logit_diff_steps.unwrap_or(0.0),
            100.0 * out.deployed_agreement.unwrap_or(0.0),
            100.0 * out.deployed_identical.unwrap_or(0.0),
        ))
    );
}

fn start_or_resume(args: &QatArgs, start: &GraphNet) -> anyhow::Result<QatTrainer> {
    let ckpt = args.out.join("checkpoint");
    let config = args.config();
    match checks::resumable(
        &ckpt,
        read_qat_manifest(&ckpt)?,
        args.resume,
        "QAT checkpoint",
    )? {
        None => Ok(QatTrainer::new(start, config, BackendKind::Flex)?),
        Some(m) => {
            checks::same_run("config", &m.config, &config)?;
            Ok(QatTrainer::resume(&ckpt, BackendKind::Flex)?)
        }
    }
}

fn epoch_bar(trainer: &QatTrainer, images: usize) -> ProgressBar {
    let training = &trainer.config().training;
    let kind = if trainer.config().fake_quant {
        "qat"
    } else {
        "control"
    };
    step_bar(
        images.div_ceil(training.batch_size),
        format!(
            "{kind} epoch {}/{}",
            trainer.epochs_done() + 1,
            training.epochs
        ),
    )
}

/// Min/max PTQ (u8 asymmetric activations) of `net` under `quant`.
fn ptq(
    net: &GraphNet,
    train: &DatasetImages<'_>,
    indices: &[usize],
    quant: &QuantConfig,
) -> anyhow::Result<QuantizedModel> {
    let spec: ObserverSpec = "minmax".parse()?;
    let mut calibrator = Calibrator::new(spec, QuantScheme::activations_uint8())?;
    calibrate(net, train, indices, 64, &mut calibrator)?;
    Ok(convert(
        &net.to_float_graph()?,
        &calibrator.table()?,
        quant,
    )?)
}

fn runtime_accuracy(
    model: &QuantizedModel,
    test: &Dataset,
    norm: &Normalization,
) -> anyhow::Result<f64> {
    let mut session = model.session()?;
    let (predicted, _) = predict(&mut session, test, norm, 64)?;
    Ok(correct(&predicted, test) as f64 / test.len().max(1) as f64)
}

struct Comparison {
    finetuned: f64,
    runtime: f64,
    agreement: Option<f64>,
    max_steps: Option<f64>,
    deployed_agreement: Option<f64>,
    deployed_identical: Option<f64>,
}

/// Runs the fake-quant forward and the runtime on the same test batches.
fn compare(
    model: &QatModel,
    int8: &QuantizedModel,
    test: &Dataset,
    norm: &Normalization,
    output_step: f32,
) -> anyhow::Result<Comparison> {
    let device = model.net().device().without_autodiff();
    let mut session: Session<'_> = int8.session()?;
    let (mut fq_right, mut rt_right, mut agree, mut max_diff) = (0usize, 0usize, 0usize, 0.0f32);
    let (mut deployed_agree, mut identical) = (0usize, 0usize);
    for start in (0..test.len()).step_by(64) {
        let (x, labels) = images(test, norm, start..(start + 64).min(test.len()))?;
        let fq = host_logits(model.forward(to_burn(&x, &device))?)?;
        let dp = host_logits(model.forward_deployed(to_burn(&x, &device), int8)?)?;
        let rt = session.run(&x)?;
        let classes = rt.shape()[1];
        for (((f, d), r), &label) in fq
            .chunks_exact(classes)
            .zip(dp.chunks_exact(classes))
            .zip(rt.data().chunks_exact(classes))
            .zip(&labels)
        {
            let (pf, pr) = (argmax(f), argmax(r));
            fq_right += usize::from(pf == usize::from(label));
            rt_right += usize::from(pr == usize::from(label));
            agree += usize::from(pf == pr);
            deployed_agree += usize::from(argmax(d) == pr);
            identical += usize::from(d == r);
            max_diff = f
                .iter()
                .zip(r)
                .fold(max_diff, |m, (a, b)| m.max((a - b).abs()));
        }
    }
    let n = test.len().max(1) as f64;
    Ok(Comparison {
        finetuned: fq_right as f64 / n,
        runtime: rt_right as f64 / n,
        agreement: Some(agree as f64 / n),
        max_steps: Some(f64::from(max_diff / output_step)),
        deployed_agreement: Some(deployed_agree as f64 / n),
        deployed_identical: Some(identical as f64 / n),
    })
}

fn to_burn(x: &TensorBuf<f32>, device: &Device) -> Tensor<4> {
    let s = x.shape();
    Tensor::from_data(
        TensorData::new(x.data().to_vec(), [s[0], s[1], s[2], s[3]]),
        device,
    )
}

fn host_logits(t: Tensor<2>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("logits: {e:?}"))
        .context("reading the fake-quant logits")
}
