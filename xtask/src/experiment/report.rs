//! `report.md`: the experiment for people. The machine, the data and training, the fp32
//! baseline, the float model's training curve, the finished post-training cells ranked by
//! accuracy with their Pareto front, the fine-tuned cells (QAT beside its control) apart,
//! ONNX Runtime on the same models, cells that failed or did not run, per-layer weight
//! and activation errors, the sensitivity analyses and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use cinder_model::{LrSchedule, OptimizerConfig};
use cinder_runtime::{LayerConfig, LayerOverride, Mode, QuantConfig, WeightGranularity};
use cinder_tensor::graph::{GraphSpec, OpSpec};
use cinder_tensor::io::write_atomic;
use cinder_tensor::{ErrorMetrics, Mapping};

use super::config::{AutoquantCell, Method};
use super::peers::{HOW_TO_ENABLE, PeerRuns, Peers};
use super::plots::TRAINING_PLOT;
use super::results::{CellMetrics, CellResult, Measured, Outcome, Results, columns};
use super::training::TrainingSummary;
use crate::autoquant::search::Found;

const MB: f64 = 1e6;

pub fn write(results: &Results, path: &Path) -> anyhow::Result<()> {
    let mut md = String::new();
    header(&mut md, results)?;
    baseline(&mut md, &results.fp32)?;
    training_curve(&mut md, &results.training)?;
    ranked(&mut md, results)?;
    fine_tuned(&mut md, results)?;
    peers(&mut md, results)?;
    not_done(&mut md, results)?;
    weight_errors(&mut md, results)?;
    activation_errors(&mut md, results)?;
    sensitivity(&mut md, results)?;
    autoquant(&mut md, results)?;
    md.push_str(
        "## Plots\n\n![accuracy vs size](plots/accuracy_vs_size.svg)\n\n\
         ![latency](plots/latency.svg)\n\n![per-layer SQNR](plots/sqnr.svg)\n",
    );
    if !results.training.history.is_empty() {
        writeln!(md, "\n![training](plots/{TRAINING_PLOT})")?;
    }
    Ok(write_atomic(path, md.as_bytes())?)
}

fn header(md: &mut String, r: &Results) -> std::fmt::Result {
    let (m, d, t) = (&r.machine, &r.data, &r.training);
    writeln!(md, "# Experiment `{}`\n", r.experiment)?;
    if !r.config.description.is_empty() {
        writeln!(md, "{}\n", r.config.description)?;
    }
    writeln!(
        md,
        "- Machine: {} ({} cores, {:.1} GiB, {}); runtime threads: {}.",
        m.cpu,
        m.cores,
        m.memory_bytes as f64 / (1u64 << 30) as f64,
        m.flags.join(" "),
        r.config.evaluation.threads
    )?;
    writeln!(
        md,
        "- Data: {}, {} training{} / {} test images, {} classes.",
        d.dataset,
        d.train_images,
        match t.validation_images {
            0 => String::new(),
            n => format!(" (and {n} more held out for validation)"),
        },
        d.test_images,
        d.classes
    )?;
    match &t.imported_from {
        Some(file) => model_imported(md, file, t)?,
        None => model_trained(md, t)?,
    }
    writeln!(
        md,
        "- Calibration: {} training images per observer; activations u8 asymmetric per tensor.",
        r.config.calibration.images
    )?;
    writeln!(
        md,
        "- Latency: median of the batch-{} evaluation batches and of {} single images; \
         peak memory: resident high-water mark of a child process that loads the model and \
         runs two batches of {}, minus its resident set before loading.",
        r.fp32.batch, r.config.evaluation.single, r.fp32.batch
    )?;
    writeln!(md, "- Wall time of this run: {:.0} s.\n", r.wall_seconds)
}

fn model_imported(md: &mut String, file: &str, t: &TrainingSummary) -> std::fmt::Result {
    writeln!(
        md,
        "- Model: the float ONNX model `{file}`, imported (BatchNorm folded); not trained here: {}.",
        model_line(t)
    )
}

fn model_trained(md: &mut String, t: &TrainingSummary) -> std::fmt::Result {
    writeln!(md, "- Model: {}.", model_line(t))?;
    writeln!(
        md,
        "- Training (burn, flex): {}; batch {}, {}, lr {} {}; {:.0} s at a median {:.1} images/s{}.",
        convergence(t),
        t.training.batch_size,
        optimizer(&t.training.optimizer),
        t.training.lr,
        schedule(&t.training.schedule, t.training.epochs),
        t.seconds,
        t.images_per_sec,
        if t.reused { " (checkpoint reused)" } else { "" }
    )?;
    Ok(())
}

fn optimizer(o: &OptimizerConfig) -> String {
    match *o {
        OptimizerConfig::Sgd {
            momentum,
            dampening,
            nesterov,
        } => format!(
            "SGD momentum {momentum}{}{}",
            if dampening > 0.0 {
                format!(" dampening {dampening}")
            } else {
                String::new()
            },
            if nesterov { " (Nesterov)" } else { "" }
        ),
        OptimizerConfig::Adam { beta1, beta2, .. } => format!("Adam β = ({beta1}, {beta2})"),
    }
}

fn schedule(s: &LrSchedule, epochs: usize) -> String {
    match *s {
        LrSchedule::Constant => "constant".to_owned(),
        LrSchedule::Cosine { min_lr } => format!("cosine down to {min_lr} over {epochs} epochs"),
        LrSchedule::Step {
            every_epochs,
            gamma,
        } => format!("times {gamma} every {every_epochs} epochs"),
    }
}

/// How long the float model trained and why it stopped.
fn convergence(t: &TrainingSummary) -> String {
    let cap = t.training.epochs;
    let best = t.best_epoch.and_then(|e| {
        let v = t.history.get(e - 1)?.validation.as_ref()?;
        Some(format!(
            "the accuracy on {} held-out training images best at epoch {e}, {:.2}%",
            t.validation_images,
            100.0 * v.accuracy
        ))
    });
    match (t.training.early_stopping, best) {
        (Some(rule), Some(best)) if t.stopped_early => format!(
            "{} of at most {cap} epochs, stopped early ({best}, and none better by more \
             than {:.1} pp in the {} epochs after)",
            t.epochs,
            100.0 * rule.min_delta,
            rule.patience
        ),
        (Some(_), Some(best)) => format!(
            "{} epochs, the cap; early stopping had not triggered ({best})",
            t.epochs
        ),
        (_, best) => format!(
            "{} epochs{}",
            t.epochs,
            best.map_or(String::new(), |b| format!(" ({b})"))
        ),
    }
}

/// Every epoch of the float model's training: the curve the training plot draws.
fn training_curve(md: &mut String, t: &TrainingSummary) -> std::fmt::Result {
    if t.history.is_empty() {
        return Ok(());
    }
    md.push_str(
        "## Training of the float model

",
    );
    md.push_str(
        "Train accuracy is the running accuracy over the epoch, while the model learned; \
         validation accuracy is that of the model at the end of the epoch on the held-out \
         training images.\n\n",
    );
    md.push_str("| epoch | lr | train loss | train acc % | validation acc % | s |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for m in &t.history {
        let validation = m
            .validation
            .as_ref()
            .map_or("–".to_owned(), |v| format!("{:.2}", 100.0 * v.accuracy));
        let best = if t.best_epoch == Some(m.epoch) {
            " (best)"
        } else {
            ""
        };
        writeln!(
            md,
            "| {}{best} | {:.2e} | {:.4} | {:.2} | {validation} | {:.0} |",
            m.epoch,
            m.lr,
            m.train_loss,
            100.0 * m.train_accuracy,
            m.seconds
        )?;
    }
    md.push('\n');
    Ok(())
}

/// The model in one line: name, layers by kind, parameters.
fn model_line(t: &TrainingSummary) -> String {
    let ops = || t.spec.nodes.iter().map(|n| &n.op);
    let count = |f: &dyn Fn(&OpSpec) -> bool| ops().filter(|op| f(op)).count();
    let convs = count(&|op| matches!(op, OpSpec::Conv2d { .. }));
    let depthwise = count(
        &|op| matches!(*op, OpSpec::Conv2d { groups, in_channels, .. } if groups > 1 && groups == in_channels),
    );
    let linear = count(&|op| matches!(op, OpSpec::Linear { .. }));
    let adds = count(&|op| matches!(op, OpSpec::Add));
    let norms = count(&|op| matches!(op, OpSpec::BatchNorm { .. }));
    format!(
        "{}, input {:?}: {convs} convolutions ({depthwise} depthwise), {linear} linear, \
         {adds} residual adds, {} parameters{}",
        t.model,
        t.spec.input_shape,
        t.parameters,
        if norms > 0 {
            "; BatchNorm folded before quantization"
        } else {
            ""
        }
    )
}

fn baseline(md: &mut String, m: &Measured) -> std::fmt::Result {
    md.push_str("## fp32 baseline (burn, flex backend)\n\n");
    md.push_str("| accuracy % | model MB | b1 ms | b64 ms | images/s | peak memory MB |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    writeln!(
        md,
        "| {:.2} | {:.2} | {:.3} | {:.2} | {:.0} | {:.1} |\n",
        100.0 * m.accuracy,
        m.model_bytes as f64 / MB,
        m.single_ms,
        m.batch_ms,
        m.images_per_sec,
        m.memory.model_bytes() as f64 / MB
    )
}

/// `W8 static per-channel sym` plus the layer overrides.
pub fn describe(q: &QuantConfig) -> String {
    let mut s = describe_layer(&q.default);
    for (name, o) in &q.layers {
        write!(s, "; {name}: {}", describe_override(o)).expect("writing to a String");
    }
    s
}

fn describe_layer(c: &LayerConfig) -> String {
    if c.mode == Mode::Float {
        return "float".into();
    }
    let steps = [
        (c.equalize, " + CLE"),
        (c.bias_correction, " + bias correction"),
    ];
    let steps: String = steps
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect();
    format!(
        "W{} {} {} {}{steps}",
        c.weight_bits,
        mode(c.mode),
        granularity(c.granularity),
        mapping(c.mapping)
    )
}

fn describe_override(o: &LayerOverride) -> String {
    if o.mode == Some(Mode::Float) {
        return "float".into();
    }
    let parts = [
        o.weight_bits.map(|b| format!("W{b}")),
        o.mode.map(|m| mode(m).to_owned()),
        o.granularity.map(|g| granularity(g).to_owned()),
        o.mapping.map(|m| mapping(m).to_owned()),
        o.equalize
            .map(|on| format!("CLE {}", if on { "on" } else { "off" })),
        o.bias_correction
            .map(|on| format!("bias correction {}", if on { "on" } else { "off" })),
    ];
    parts.into_iter().flatten().collect::<Vec<_>>().join(" ")
}

fn mode(m: Mode) -> &'static str {
    match m {
        Mode::Static => "static",
        Mode::Dynamic => "dynamic",
        Mode::Float => "float",
    }
}

fn granularity(g: WeightGranularity) -> &'static str {
    match g {
        WeightGranularity::PerChannel => "per-channel",
        WeightGranularity::PerTensor => "per-tensor",
    }
}

fn mapping(m: Mapping) -> &'static str {
    match m {
        Mapping::Symmetric => "sym",
        Mapping::Asymmetric => "asym",
    }
}

/// `cells`, best accuracy first (smaller model first on ties).
fn ranking<'a>(
    cells: impl Iterator<Item = (&'a CellResult, &'a CellMetrics)>,
) -> Vec<(&'a CellResult, &'a CellMetrics)> {
    let mut done: Vec<_> = cells.collect();
    done.sort_by(|(_, a), (_, b)| {
        b.measured
            .accuracy
            .total_cmp(&a.measured.accuracy)
            .then(a.measured.model_bytes.cmp(&b.measured.model_bytes))
    });
    done
}

fn ranked(md: &mut String, r: &Results) -> std::fmt::Result {
    let fp32 = &r.fp32;
    md.push_str("## Cells, ranked by accuracy\n\n");
    md.push_str(
        "Post-training cells: the trained model quantized as it is (fine-tuned cells follow \
         in their own table). Δ: accuracy change vs fp32 in percentage points; agree: \
         predictions equal to fp32's; size: model file vs the fp32 weights file; speed-up: \
         fp32 (burn) time / int8 time; memory: the model's share of the peak resident set; \
         calib: observer + float forward time of the calibration.\n\n",
    );
    md.push_str(
        "| # | cell | group | quantization | observer | acc % | Δ pp | agree % | MB | size % | b1 ms | b64 ms | images/s | speed-up b1 / b64 | memory MB | calib s |\n",
    );
    md.push_str("|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (i, (c, m)) in ranking(r.post_training()).into_iter().enumerate() {
        let calib = m.calibration.as_ref().map_or("–".into(), |t| {
            format!("{:.2}", t.forward_seconds + t.observe_seconds)
        });
        let quant = match (c.method, &m.autoquant) {
            (Method::Sensitivity, _) => format!(
                "{} (float: {})",
                describe(&c.quant),
                m.float_layers.join(", ")
            ),
            (Method::Autoquant, Some(found)) => format!(
                "{} (autoquant: {})",
                describe(&c.quant),
                chosen_widths(found)
            ),
            _ if c.relu6_as_relu => format!("{} (ReLU6 as ReLU)", describe(&c.quant)),
            _ => describe(&c.quant),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} | {:+.2} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.0} | {:.2} / {:.2} | {:.1} | {} |",
            i + 1,
            c.name,
            c.group,
            quant,
            observer(c),
            100.0 * m.measured.accuracy,
            m.accuracy_delta_pp,
            100.0 * m.agreement,
            m.measured.model_bytes as f64 / MB,
            100.0 * m.size_ratio,
            m.measured.single_ms,
            m.measured.batch_ms,
            m.measured.images_per_sec,
            fp32.single_ms / m.measured.single_ms.max(1e-9),
            fp32.batch_ms / m.measured.batch_ms.max(1e-9),
            m.measured.memory.model_bytes() as f64 / MB,
            calib
        )?;
    }
    let front = r.pareto_front();
    writeln!(
        md,
        "\nPareto front (accuracy vs model size, smallest first): {}.\n",
        if front.is_empty() {
            "none".into()
        } else {
            front.join(" → ")
        }
    )
}

/// The fine-tuned cells apart from the ranking: each QAT cell beside the control with
/// the same quantization, whose difference is what fake-quant training adds.
fn fine_tuned(md: &mut String, r: &Results) -> std::fmt::Result {
    let cells = ranking(r.fine_tuned());
    if cells.is_empty() {
        return Ok(());
    }
    md.push_str(
        "## Fine-tuned cells: QAT against its control\n\nThese cells train the model \
         further before quantization (QAT with fake-quant; its control the same steps in \
         float, then PTQ), so their Δ against fp32 includes what the extra training adds. \
         What QAT itself adds is its difference from the control.\n\n\
         | cell | method | quantization | acc % | Δ pp vs fp32 | Δ pp vs control | agree % | size % | b64 ms |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (c, m) in &cells {
        let control = r.control_of(c);
        let vs_control = control.map_or("–".into(), |(_, o)| {
            format!(
                "{:+.2}",
                100.0 * (m.measured.accuracy - o.measured.accuracy)
            )
        });
        writeln!(
            md,
            "| {} | {} | {} | {:.2} | {:+.2} | {} | {:.2} | {:.2} | {:.2} |",
            c.name,
            if c.method == Method::Qat {
                "QAT"
            } else {
                "control"
            },
            describe(&c.quant),
            100.0 * m.measured.accuracy,
            m.accuracy_delta_pp,
            vs_control,
            100.0 * m.agreement,
            100.0 * m.size_ratio,
            m.measured.batch_ms,
        )?;
    }
    md.push('\n');
    Ok(())
}

/// ONNX Runtime's rows: its fp32 and its own int8 quantization of the same float model,
/// then cinder's int8 models run by both runtimes; or how to enable them.
fn peers(md: &mut String, r: &Results) -> std::fmt::Result {
    md.push_str("## ONNX Runtime on the same models, images and machine\n\n");
    let p = match &r.peers {
        Peers::Measured(p) => p,
        Peers::Unavailable { reason } => {
            return writeln!(
                md,
                "Not measured ({reason}). To add ONNX Runtime's rows: `{HOW_TO_ENABLE}`.\n"
            );
        }
        Peers::Failed { error } => {
            return writeln!(md, "ONNX Runtime's measurement failed: {error}\n");
        }
    };
    let (f, n) = (&r.fp32, r.fp32.batch);
    writeln!(
        md,
        "ONNX Runtime {}, {} threads, timed as the cells are (median of the batch-{n} \
         evaluation batches and of {} single images) after them in the same run. Δ, agree \
         and speed-up are against fp32 in burn; `quantize_static`: ONNX Runtime's own \
         post-training quantization of the exported float model (QDQ, u8 activations, s8 \
         weights per channel, MinMax, no reduce_range) on the cells' {} calibration \
         images, which took {:.1} s.\n",
        p.onnxruntime_version,
        r.config.evaluation.threads,
        r.config.evaluation.single,
        r.config.calibration.images,
        p.quantize_seconds
    )?;
    writeln!(
        md,
        "| model | acc % | Δ pp | agree % | MB | b1 ms | b{n} ms | speed-up b1 / b{n} |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|"
    )?;
    writeln!(
        md,
        "| fp32, burn (flex) | {:.2} | – | 100.00 | {:.2} | {:.3} | {:.2} | 1.00 / 1.00 |",
        100.0 * f.accuracy,
        f.model_bytes as f64 / MB,
        f.single_ms,
        f.batch_ms
    )?;
    for (name, run) in [
        ("fp32, ONNX Runtime", &p.fp32),
        ("int8 `quantize_static`, ONNX Runtime", &p.quantize_static),
    ] {
        writeln!(
            md,
            "| {name} | {:.2} | {:+.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} / {:.2} |",
            100.0 * run.accuracy,
            100.0 * (run.accuracy - f.accuracy),
            100.0 * run.agreement,
            run.model_bytes as f64 / MB,
            run.single_ms,
            run.batch_ms,
            f.single_ms / run.single_ms.max(1e-9),
            f.batch_ms / run.batch_ms.max(1e-9)
        )?;
    }
    md.push('\n');
    cells_on_both(md, r, p)
}

/// Each of cinder's int8 models run by cinder's runtime and by ONNX Runtime (its QDQ
/// export): accuracy and latency side by side.
fn cells_on_both(md: &mut String, r: &Results, p: &PeerRuns) -> std::fmt::Result {
    let n = r.fp32.batch;
    writeln!(
        md,
        "cinder's int8 models exported as QDQ ONNX and run by ONNX Runtime (speed-up: \
         ONNX Runtime's time over cinder's on the same model, above 1 where cinder is \
         faster):\n\n\
         | cell | acc % cinder | acc % ONNX Runtime | cinder / ORT b1 ms | cinder / ORT b{n} ms | cinder's speed-up over ORT b1 / b{n} |\n\
         |---|---:|---:|---:|---:|---:|"
    )?;
    for (c, m) in r.done() {
        let Some(o) = p.cells.get(&c.name) else {
            continue;
        };
        let (mine, theirs) = (&m.measured, o);
        writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.3} / {:.3} | {:.2} / {:.2} | {:.2} / {:.2} |",
            c.name,
            100.0 * mine.accuracy,
            100.0 * theirs.accuracy,
            mine.single_ms,
            theirs.single_ms,
            mine.batch_ms,
            theirs.batch_ms,
            theirs.single_ms / mine.single_ms.max(1e-9),
            theirs.batch_ms / mine.batch_ms.max(1e-9)
        )?;
    }
    for (name, reason) in &p.not_exported {
        writeln!(md, "\n- `{name}` not exported: {reason}")?;
    }
    md.push('\n');
    Ok(())
}

fn observer(c: &CellResult) -> &str {
    match (c.method, c.quant.default.mode) {
        (Method::Qat, _) => "learned in QAT",
        (_, Mode::Dynamic) => "per batch",
        _ => &c.observer,
    }
}

fn not_done(md: &mut String, r: &Results) -> std::fmt::Result {
    let rows: Vec<_> = r
        .cells
        .iter()
        .filter_map(|c| match &c.outcome {
            Outcome::Done(_) => None,
            Outcome::Failed { error } => Some((c, error)),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("## Failed cells\n\n| cell | quantization | error |\n|---|---|---|\n");
    for (c, error) in rows {
        let error = error.replace('|', "\\|").replace('\n', " ");
        writeln!(md, "| {} | {} | {error} |", c.name, describe(&c.quant))?;
    }
    md.push('\n');
    Ok(())
}

fn sqnr(m: Option<&ErrorMetrics>) -> String {
    match m {
        None => "–".into(),
        Some(m) => m.sqnr_db.map_or("exact".into(), |db| {
            format!("{db:.1} ({:.1e})", m.mean_abs_error)
        }),
    }
}

fn weight_errors(md: &mut String, r: &Results) -> std::fmt::Result {
    md.push_str("## Per-layer weight error\n\nSQNR dB (mean absolute error) of each layer's weights in the int8 model against the float weights; – : layer kept float.\n\n");
    let rows = r.done().map(|(c, m)| (c.name.clone(), &m.weight_errors));
    error_table(md, &r.training.spec, "cell", rows.collect())
}

fn activation_errors(md: &mut String, r: &Results) -> std::fmt::Result {
    let rows = r.activation_errors_by_observer();
    if rows.is_empty() {
        return Ok(());
    }
    md.push_str("## Activation error per observer\n\nSQNR dB (mean absolute error) of each calibrated activation fake-quantized with the observer's range, over the calibration images.\n\n");
    error_table(md, &r.training.spec, "observer", rows)
}

/// One row per `(name, errors)`, one column per tensor.
fn error_table(
    md: &mut String,
    spec: &GraphSpec,
    first: &str,
    rows: Vec<(String, &BTreeMap<String, ErrorMetrics>)>,
) -> std::fmt::Result {
    let tensors = columns(spec, rows.iter().map(|(_, m)| *m));
    writeln!(md, "| {first} | {} |", tensors.join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(tensors.len()))?;
    for (name, errors) in rows {
        let cols: Vec<String> = tensors.iter().map(|t| sqnr(errors.get(t))).collect();
        writeln!(md, "| {name} | {} |", cols.join(" | "))?;
    }
    md.push('\n');
    Ok(())
}

fn sensitivity(md: &mut String, r: &Results) -> std::fmt::Result {
    for (c, m) in r.done().filter(|(_, m)| !m.sensitivity.is_empty()) {
        writeln!(
            md,
            "## Sensitivity analysis of `{}`\n\nEach layer's weights quantized alone ({}) in the float model (activations float), on the first {} test images with burn's forward; the least SQNR of the logits against the fp32 logits marks the most sensitive layer. Kept float: {}.\n",
            c.name,
            describe_layer(&c.quant.default),
            r.config.evaluation.sensitivity_images,
            m.float_layers.join(", ")
        )?;
        md.push_str("| layer | logits SQNR dB | accuracy % |\n|---|---:|---:|\n");
        for s in &m.sensitivity {
            let db = s
                .logits_sqnr_db
                .map_or("exact".into(), |d| format!("{d:.1}"));
            writeln!(md, "| {} | {db} | {:.2} |", s.layer, 100.0 * s.accuracy)?;
        }
        md.push('\n');
    }
    Ok(())
}

/// `layer width` of every layer an autoquant search allocated.
fn chosen_widths(found: &Found) -> String {
    let widths = found
        .search
        .allocation
        .iter()
        .map(|(l, w)| format!("{l} {w}"));
    widths.collect::<Vec<_>>().join(", ")
}

fn autoquant(md: &mut String, r: &Results) -> std::fmt::Result {
    for (c, m) in r.done() {
        let Some(found) = &m.autoquant else { continue };
        let settings = autoquant_settings(r, &c.name);
        writeln!(
            md,
            "## Autoquant search of `{}`\n\nThe smallest {} within {} pp of fp32 on {} held-out \
             training images (fp32 on them {:.2}%), weights of each layer at {} or float; \
             the cell's test figures are in the ranking above.\n",
            c.name,
            settings.target,
            settings.budget_pp,
            settings.held_out_images,
            100.0 * found.fp32_accuracy,
            settings
                .widths
                .iter()
                .map(|b| format!("W{b}"))
                .collect::<Vec<_>>()
                .join(" / ")
        )?;
        crate::autoquant::report::layer_table(md, found, settings.target)?;
        crate::autoquant::report::trajectory(md, found, settings.target)?;
        crate::autoquant::report::widths(md, found)?;
    }
    Ok(())
}

/// The autoquant settings of cell `name` (their defaults when the cell has none).
fn autoquant_settings(r: &Results, name: &str) -> AutoquantCell {
    r.config
        .cells
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.autoquant.clone())
        .unwrap_or_default()
}
