//! The whole reference ConvNet (random weights of the real shapes, min/max calibrated on
//! random inputs) on cinder's int8 runtime, 2 threads, batch 1 and 64: W8A8 static
//! per-channel (the product configuration) and dynamic (per-batch ranges).
//!
//! After the criterion groups, a per-stage breakdown (the session's timing mode, mean of
//! repeated runs) is printed for each configuration and batch size.

use cinder_runtime::synthetic::{minmax_table, random_input, reference_convnet};
use cinder_runtime::{LayerConfig, Mode, QuantConfig, QuantizedModel, SessionOptions, convert};
use cinder_tensor::Tensor;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const THREADS: usize = 2;
const BATCHES: [usize; 2] = [1, 64];

fn models() -> Vec<(&'static str, QuantizedModel)> {
    let graph = reference_convnet(1);
    let table = minmax_table(&graph, &random_input(&graph, 16, 2)).expect("finite activations");
    let dynamic = QuantConfig::uniform(LayerConfig {
        mode: Mode::Dynamic,
        ..LayerConfig::default()
    });
    [
        ("int8_static", QuantConfig::default()),
        ("int8_dynamic", dynamic),
    ]
    .into_iter()
    .map(|(name, config)| (name, convert(&graph, &table, &config).expect("conversion")))
    .collect()
}

fn bench(c: &mut Criterion) {
    let graph = reference_convnet(1);
    let models = models();
    let mut group = c.benchmark_group("runtime");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    for (name, model) in &models {
        let mut session = model
            .session_with(SessionOptions { threads: THREADS })
            .expect("thread pool");
        for batch in BATCHES {
            let x = random_input(&graph, batch, 3);
            group.bench_function(format!("{name}_b{batch}"), |b| {
                b.iter(|| black_box(session.run(black_box(&x)).expect("valid input").data()[0]))
            });
        }
    }
    group.finish();
    for (name, model) in &models {
        for batch in BATCHES {
            breakdown(name, model, &random_input(&graph, batch, 3));
        }
    }
}

/// Prints the mean time of every stage over repeated runs.
fn breakdown(name: &str, model: &QuantizedModel, x: &impl Tensor<f32>) {
    let mut session = model
        .session_with(SessionOptions { threads: THREADS })
        .expect("thread pool");
    session.run(x).expect("valid input");
    session.set_profiling(true);
    let runs = if x.shape()[0] == 1 { 400 } else { 20 };
    for _ in 0..runs {
        session.run(x).expect("valid input");
    }
    let stages = session.profile().expect("profiling is on");
    let total: Duration = stages.iter().map(|s| s.mean).sum();
    println!(
        "\n{name}, batch {}, {THREADS} threads: per-stage mean of {runs} runs",
        x.shape()[0]
    );
    for s in &stages {
        let share = s.mean.as_secs_f64() / total.as_secs_f64() * 100.0;
        println!(
            "  {:<12} {:<15} {:>9.3} ms {:>5.1}%",
            s.name,
            s.kind,
            s.mean.as_secs_f64() * 1e3,
            share
        );
    }
    println!("  {:<28} {:>9.3} ms", "total", total.as_secs_f64() * 1e3);
}

criterion_group!(benches, bench);
criterion_main!(benches);
