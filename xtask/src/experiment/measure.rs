//! Measuring a model on the test split: accuracy and every prediction from one pass in
//! evaluation batches (whose median time is the batch latency), then the median time of
//! single images, then the peak memory in a child process. The int8 models run on the
//! runtime, the fp32 baseline on burn's flex backend.

use std::path::Path;
use std::time::{Duration, Instant};

use cinder_model::{GraphNet, ImageSource};
use cinder_runtime::{QuantizedModel, SessionOptions};

use super::config::EvaluationConfig;
use super::data::ExperimentData;
use super::memory;
use super::results::Measured;
use crate::evaluate::{argmax, correct, images, median_ms, predict, single_latencies};
use crate::sensitivity::float_logits;

fn file_bytes(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .len())
}

fn measured(
    data: &ExperimentData,
    eval: &EvaluationConfig,
    predicted: &[usize],
    batch_times: Vec<Duration>,
    single_times: Vec<Duration>,
    model_file: &Path,
    memory_probe: &Path,
) -> anyhow::Result<Measured> {
    let batch_ms = median_ms(batch_times);
    let batch = eval.batch.min(data.test.len());
    Ok(Measured {
        accuracy: correct(predicted, &data.test) as f64 / data.test.len().max(1) as f64,
        model_bytes: file_bytes(model_file)?,
        batch_ms,
        batch,
        single_ms: median_ms(single_times),
        images_per_sec: batch as f64 / (batch_ms / 1e3).max(1e-12),
        memory: memory::measure(memory_probe, batch, eval.threads)?,
    })
}

/// An int8 model file on the runtime: its figures and its predictions.
pub fn int8(
    path: &Path,
    data: &ExperimentData,
    eval: &EvaluationConfig,
) -> anyhow::Result<(Measured, Vec<usize>)> {
    let model = QuantizedModel::load(path)?;
    let mut session = model.session_with(SessionOptions {
        threads: eval.threads,
    })?;
    let (test, norm) = (&data.test, &data.norm);
    // Warm-up at both batch sizes, so that no timed run allocates.
    for n in [eval.batch.min(test.len()), 1] {
        session.run(&images(test, norm, 0..n)?.0)?;
    }
    let (predicted, batch_times) = predict(&mut session, test, norm, eval.batch)?;
    let single = single_latencies(&mut session, test, norm, eval.single)?;
    let m = measured(data, eval, &predicted, batch_times, single, path, path)?;
    Ok((m, predicted))
}

/// The float model on burn (flex); `graph_json` is its saved graph (size and memory).
pub fn fp32(
    model: &GraphNet,
    graph_json: &Path,
    data: &ExperimentData,
    eval: &EvaluationConfig,
) -> anyhow::Result<(Measured, Vec<usize>)> {
    let test = data.test_images();
    let all: Vec<usize> = (0..test.len()).collect();
    let run = |indices: &[usize]| -> anyhow::Result<(Vec<usize>, Duration)> {
        let batch = test.gather(indices)?;
        let start = Instant::now();
        let logits = float_logits(model, &batch)?;
        let elapsed = start.elapsed();
        let classes = logits.len() / indices.len().max(1);
        Ok((logits.chunks_exact(classes).map(argmax).collect(), elapsed))
    };
    run(&all[..eval.batch.min(all.len())])?;
    let (mut predicted, mut batch_times) = (Vec::with_capacity(all.len()), Vec::new());
    for chunk in all.chunks(eval.batch) {
        let (p, t) = run(chunk)?;
        predicted.extend(p);
        batch_times.push(t);
    }
    let single = all
        .iter()
        .take(eval.single)
        .map(|&i| Ok(run(&[i])?.1))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let weights = graph_json.with_file_name("graph.safetensors");
    let m = measured(
        data,
        eval,
        &predicted,
        batch_times,
        single,
        &weights,
        graph_json,
    )?;
    Ok((m, predicted))
}
