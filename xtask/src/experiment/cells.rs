//! One cell of the matrix: build its int8 model (PTQ with a calibration table, PTQ with
//! the most sensitive layers left float, or QAT), save it, measure it, and compare it
//! with the fp32 model. A cell that cannot be built (weight bits the runtime does not
//! support, say) is recorded as failed and the run goes on.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use cinder_runtime::{Mode, QuantConfig, QuantizedModel, convert, convert_with_weights};
use cinder_tensor::graph::FloatGraph;
use cinder_tensor::{ErrorMetrics, Tensor};
use indicatif::ProgressBar;

use super::calibration::{Calibrated, Calibrations};
use super::config::{CellConfig, Method};
use super::context::Context;
use super::data::ExperimentData;
use super::measure;
use super::ptq;
use super::qat;
use super::results::{CellMetrics, CellResult, LayerSensitivity, Outcome};
use crate::autoquant::search::{self, Found, Inputs, held_out};
use crate::dataset::DatasetImages;
use crate::sensitivity::{Probe, weight_sensitivity};
use cinder_ptq::mixed::GreedyOptions;

/// A built model and what building it found out.
struct Built {
    model: QuantizedModel,
    /// The float model it was quantized from, when not the trained one (fine-tuned).
    float: Option<FloatGraph>,
    calibration: Option<Calibrated>,
    sensitivity: Vec<LayerSensitivity>,
    autoquant: Option<Found>,
}

/// Runs `cell`; failures become a failed result, never an error of the run.
pub fn run(
    ctx: &Context<'_>,
    cell: &CellConfig,
    calibrations: &mut Calibrations<'_>,
    bar: &ProgressBar,
) -> CellResult {
    let start = Instant::now();
    let outcome = match build(ctx, cell, calibrations, bar)
        .and_then(|built| measure_cell(ctx, cell, built, bar))
    {
        Ok(metrics) => Outcome::Done(Box::new(metrics)),
        Err(e) => Outcome::Failed {
            error: format!("{e:#}"),
        },
    };
    CellResult {
        name: cell.name.clone(),
        group: cell.group.clone(),
        method: cell.method,
        observer: cell.observer.to_string(),
        quant: cell.quant.clone(),
        relu6_as_relu: cell.relu6_as_relu,
        seconds: start.elapsed().as_secs_f64(),
        finished_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        outcome,
    }
}

/// The cell's model.
fn build(
    ctx: &Context<'_>,
    cell: &CellConfig,
    calibrations: &mut Calibrations<'_>,
    bar: &ProgressBar,
) -> anyhow::Result<Built> {
    let post_training = ptq::any(ctx.graph, &cell.quant);
    if post_training && cell.method != Method::Ptq {
        bail!("equalize, adaround and bias_correction apply to PTQ cells only");
    }
    if cell.method.fine_tunes() {
        let tuned = qat::fine_tuned(ctx, cell, bar)?;
        return Ok(Built {
            model: tuned.model,
            float: Some(tuned.graph),
            calibration: tuned.calibration,
            sensitivity: Vec::new(),
            autoquant: None,
        });
    }
    bar.set_message(format!("calibrating ({})", cell.observer));
    let calibrated = calibrations.get(cell.observer)?.clone();
    if post_training {
        bar.set_message("equalization / AdaRound / bias correction");
        let p = ptq::prepare(ctx, cell, calibrated)?;
        bar.set_message("converting");
        return Ok(Built {
            model: convert_with_weights(&p.graph, &p.calibrated.table, &cell.quant, &p.weights)?,
            float: Some(p.float),
            calibration: Some(p.calibrated),
            sensitivity: Vec::new(),
            autoquant: None,
        });
    }
    let (quant, sensitivity, autoquant) = match cell.method {
        Method::Sensitivity => {
            bar.set_message("sensitivity analysis");
            let s = sensitivity(ctx, &calibrated, &cell.quant)?;
            (keep_float(&cell.quant, &s, cell.keep_float), s, None)
        }
        Method::Autoquant => {
            bar.set_message("autoquant search");
            let found = autoquant(ctx, cell, &calibrated)?;
            (found.config.clone(), Vec::new(), Some(found))
        }
        _ => (cell.quant.clone(), Vec::new(), None),
    };
    bar.set_message("converting");
    let model = convert(ctx.graph, &calibrated.table, &quant)?;
    Ok(Built {
        model,
        float: None,
        calibration: Some(calibrated),
        sensitivity,
        autoquant,
    })
}

fn measure_cell(
    ctx: &Context<'_>,
    cell: &CellConfig,
    built: Built,
    bar: &ProgressBar,
) -> anyhow::Result<CellMetrics> {
    let path = ctx.model_path(cell);
    built.model.save(&path)?;
    bar.set_message("evaluating");
    let (measured, predicted) = measure::int8(&path, ctx.data, &ctx.config.evaluation)?;
    let fp32 = &ctx.baseline.measured;
    let agree = predicted
        .iter()
        .zip(&ctx.baseline.predictions)
        .filter(|(a, b)| **a == **b as usize)
        .count();
    let static_activations = cell.quant.default.mode == Mode::Static;
    let activation_errors = match (&built.calibration, static_activations) {
        (Some(c), true) => c.activation_errors.clone(),
        _ => BTreeMap::new(),
    };
    Ok(CellMetrics {
        model_file: relative(ctx.out, &path),
        accuracy_delta_pp: 100.0 * (measured.accuracy - fp32.accuracy),
        agreement: agree as f64 / predicted.len().max(1) as f64,
        size_ratio: measured.model_bytes as f64 / fp32.model_bytes.max(1) as f64,
        float_layers: float_layers(&built.model),
        weight_errors: weight_errors(built.float.as_ref().unwrap_or(ctx.graph), &built.model)?,
        activation_errors,
        calibration: built.calibration.map(|c| c.time),
        sensitivity: built.sensitivity,
        autoquant: built.autoquant.map(Box::new),
        measured,
    })
}

/// `path` relative to the output directory, for the report.
pub fn relative(out: &Path, path: &Path) -> String {
    path.strip_prefix(out).unwrap_or(path).display().to_string()
}

fn float_layers(model: &QuantizedModel) -> Vec<String> {
    model
        .steps()
        .iter()
        .filter(|s| s.op.layer().is_some_and(|l| l.mode() == Mode::Float))
        .map(|s| s.name.clone())
        .collect()
}

/// Each quantized layer's float weights against the model's dequantized weights.
fn weight_errors(
    graph: &FloatGraph,
    model: &QuantizedModel,
) -> anyhow::Result<BTreeMap<String, ErrorMetrics>> {
    let mut errors = BTreeMap::new();
    for step in model.steps() {
        let Some(q) = step.op.layer().and_then(|l| l.quant_weights()) else {
            continue;
        };
        let (w, _) = graph
            .node(&step.name)
            .and_then(|n| n.op.weight_and_bias())
            .ok_or_else(|| anyhow::anyhow!("layer `{}` is not in the float graph", step.name))?;
        errors.insert(
            step.name.clone(),
            ErrorMetrics::between(w.data(), q.dequantized().data())?,
        );
    }
    Ok(errors)
}

/// The experiment's sensitivity analysis: each layer alone on the first test images.
fn sensitivity(
    ctx: &Context<'_>,
    calibrated: &Calibrated,
    quant: &QuantConfig,
) -> anyhow::Result<Vec<LayerSensitivity>> {
    let eval = &ctx.config.evaluation;
    let subset = ctx.data.test.clone().limit(eval.sensitivity_images);
    let probe = Probe {
        model: ctx.model,
        graph: ctx.graph,
        images: DatasetImages {
            data: &subset,
            norm: ctx.data.norm,
        },
        batch: eval.batch,
    };
    weight_sensitivity(&probe, &calibrated.table, quant)
}

/// The autoquant search of `cell` on held-out training images: those past the ones the
/// model trained on where the data set has them, else ones outside the calibration.
fn autoquant(
    ctx: &Context<'_>,
    cell: &CellConfig,
    calibrated: &Calibrated,
) -> anyhow::Result<Found> {
    let settings = cell.autoquant.clone().unwrap_or_default();
    let (c, eval) = (&ctx.config.calibration, &ctx.config.evaluation);
    let trained = ctx.data.train.len();
    let pool = ExperimentData::with_unseen(&ctx.config.data, trained, settings.held_out_images)?;
    let split = held_out(&pool, trained, c.images, settings.held_out_images, c.seed)?;
    let scratch = ctx
        .out
        .join("models")
        .join(format!("{}-candidate.cinder", cell.name));
    let found = search::run(&Inputs {
        model: ctx.model,
        graph: ctx.graph,
        table: &calibrated.table,
        base: &cell.quant,
        held_out: &split.data,
        norm: ctx.data.norm,
        batch: eval.batch,
        threads: eval.threads,
        target: settings.target,
        options: GreedyOptions {
            widths: settings.widths,
            budget_pp: settings.budget_pp,
            allow_float: settings.allow_float,
        },
        scratch: &scratch,
    });
    std::fs::remove_file(&scratch).ok();
    found
}

/// `quant` with the `n` layers of lowest logit SQNR set to float.
fn keep_float(quant: &QuantConfig, scores: &[LayerSensitivity], n: usize) -> QuantConfig {
    let mut ranked: Vec<&LayerSensitivity> = scores.iter().collect();
    let sqnr = |s: &LayerSensitivity| s.logits_sqnr_db.unwrap_or(f64::INFINITY);
    ranked.sort_by(|a, b| sqnr(a).total_cmp(&sqnr(b)));
    ranked.iter().take(n).fold(quant.clone(), |q, s| {
        let mut o = q.layers.get(&s.layer).copied().unwrap_or_default();
        o.mode = Some(Mode::Float);
        q.with_layer(s.layer.clone(), o)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_runtime::LayerOverride;

    fn score(layer: &str, db: Option<f64>) -> LayerSensitivity {
        LayerSensitivity {
            layer: layer.into(),
            logits_sqnr_db: db,
            accuracy: 0.5,
        }
    }

    /// W8 everywhere but `layer`, W4.
    fn w4_on(layer: &str) -> QuantConfig {
        QuantConfig::default().with_layer(
            layer,
            LayerOverride {
                weight_bits: Some(4),
                ..Default::default()
            },
        )
    }

    #[test]
    fn keep_float_picks_the_lowest_sqnr_layers() {
        let base = w4_on("fc1");
        let scores = [
            score("conv1", Some(30.0)),
            score("conv2", None),
            score("fc1", Some(12.0)),
            score("fc2", Some(25.0)),
        ];
        let q = keep_float(&base, &scores, 2);
        let modes: Vec<Mode> = ["conv1", "conv2", "fc1", "fc2"]
            .iter()
            .map(|l| q.layer(l).mode)
            .collect();
        assert_eq!(
            modes,
            [Mode::Static, Mode::Static, Mode::Float, Mode::Float]
        );
        assert_eq!(q.layer("fc1").weight_bits, 4);
    }
}
