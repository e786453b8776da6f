//! The whole reference ConvNet (random weights of the real shapes, min/max calibrated on
//! random inputs), 2 threads, batch 1 and 64, side by side in one process on the same
//! weights and inputs: burn's flex fp32 forward (the graph loaded with
//! `GraphNet::from_float_graph`) vs cinder's int8 runtime, W8A8 static per-channel (the
//! product configuration), dynamic (per-batch ranges) and partial (conv1 and fc2 left in
//! float, the rest static: the runtime's f32 path between int8 layers).
//!
//! Then the zoo's ResNet-20 and mobilenetv2-tiny (random weights, BatchNorm folded), burn
//! vs W8A8 static.
//!
//! After each model's criterion groups: an alternating run (each round times one forward of every
//! contender in turn, so load on the machine hits all alike) prints medians and the
//! speed-up over burn, and the session's per-stage breakdown of each int8 configuration.

use burn::tensor::{Tensor as BurnTensor, TensorData};
use cinder_model::{BackendKind, GraphNet};
use cinder_runtime::synthetic::{minmax_table, random_graph, random_input, reference_convnet};
use cinder_runtime::{
    LayerConfig, LayerOverride, Mode, QuantConfig, QuantizedModel, SessionOptions, convert,
};
use cinder_tensor::graph::{FloatGraph, zoo as graph_zoo};
use cinder_tensor::{Tensor, TensorBuf};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

const THREADS: usize = 2;
const BATCHES: [usize; 2] = [1, 64];

fn models(graph: &FloatGraph) -> Vec<(&'static str, QuantizedModel)> {
    let table = minmax_table(graph, &random_input(graph, 16, 2)).expect("finite activations");
    let dynamic = QuantConfig::uniform(LayerConfig {
        mode: Mode::Dynamic,
        ..LayerConfig::default()
    });
    let float = LayerOverride {
        mode: Some(Mode::Float),
        ..LayerOverride::default()
    };
    let partial = QuantConfig::default()
        .with_layer("conv1", float)
        .with_layer("fc2", float);
    [
        ("int8_static", QuantConfig::default()),
        ("int8_dynamic", dynamic),
        ("partial", partial),
    ]
    .into_iter()
    .map(|(name, config)| (name, convert(graph, &table, &config).expect("conversion")))
    .collect()
}

/// burn's flex forward of one batch on a pool of [`THREADS`] threads.
struct Burn {
    model: GraphNet,
    pool: rayon::ThreadPool,
}

impl Burn {
    fn new(graph: &FloatGraph) -> Self {
        let device = BackendKind::Flex.device().expect("flex is compiled in");
        Self {
            model: GraphNet::from_float_graph(graph, &device).expect("reference layout"),
            pool: rayon::ThreadPoolBuilder::new()
                .num_threads(THREADS)
                .build()
                .expect("thread pool"),
        }
    }

    /// `x` as a burn tensor on the model's device.
    fn images(&self, x: &TensorBuf<f32>) -> BurnTensor<4> {
        let data = TensorData::new(x.data().to_vec(), x.shape().to_vec());
        BurnTensor::from_data(data, &self.model.device())
    }

    /// The first logit of the forward of `images`.
    fn run(&self, images: &BurnTensor<4>) -> f32 {
        self.pool.install(|| {
            let logits = self.model.forward(images.clone()).into_data();
            logits.as_slice::<f32>().expect("f32 logits")[0]
        })
    }
}

/// A named forward of one fixed batch, returning its first logit.
type Contender<'a> = (&'static str, Box<dyn FnMut() -> f32 + 'a>);

fn bench(c: &mut Criterion) {
    let graph = reference_convnet(1);
    let models = models(&graph);
    compare(c, "convnet", &graph, &models);
    for (name, model) in &models {
        for batch in BATCHES {
            breakdown(name, model, &random_input(&graph, batch, 3));
        }
    }
}

/// The zoo's residual and depthwise networks (random weights, BatchNorm folded, 3×32×32
/// inputs, 10 classes): burn's fp32 forward vs the int8 runtime, W8A8 static.
fn zoo(c: &mut Criterion) {
    let specs = [
        ("resnet20", graph_zoo::resnet20([3, 32, 32], 10)),
        (
            "mobilenetv2-tiny",
            graph_zoo::mobilenetv2_tiny([3, 32, 32], 10),
        ),
    ];
    for (name, spec) in specs {
        let graph = random_graph(spec, 1)
            .and_then(|g| g.fold_batch_norms())
            .expect("a zoo graph");
        let table = minmax_table(&graph, &random_input(&graph, 16, 2)).expect("finite");
        let model = convert(&graph, &table, &QuantConfig::default()).expect("conversion");
        let models = [("int8_static", model)];
        compare(c, name, &graph, &models);
        breakdown(name, &models[0].1, &random_input(&graph, 64, 3));
    }
}

/// Criterion groups `{label}_b{batch}` and an alternating run of burn's fp32 forward of
/// `graph` and each of `models`, at every batch size.
fn compare(
    c: &mut Criterion,
    label: &str,
    graph: &FloatGraph,
    models: &[(&'static str, QuantizedModel)],
) {
    let burn = Burn::new(graph);
    for batch in BATCHES {
        let x = random_input(graph, batch, 3);
        let images = burn.images(&x);
        let mut contenders: Vec<Contender<'_>> =
            vec![("burn_flex_fp32", Box::new(|| burn.run(&images)))];
        for (name, model) in models {
            let mut session = model
                .session_with(SessionOptions { threads: THREADS })
                .expect("thread pool");
            let x = &x;
            contenders.push((
                name,
                Box::new(move || session.run(x).expect("valid input").data()[0]),
            ));
        }
        let mut group = c.benchmark_group(format!("{label}_b{batch}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(if batch == 1 { 3 } else { 6 }));
        for (name, run) in &mut contenders {
            group.bench_function(*name, |b| b.iter(|| black_box(run())));
        }
        group.finish();
        alternate(label, batch, &mut contenders);
    }
}

/// Times the contenders in turn, round after round; prints each one's median and the
/// speed-up over the first (the median of the per-round ratios, and the ratio of medians).
fn alternate(label: &str, batch: usize, contenders: &mut [Contender<'_>]) {
    let rounds = if batch == 1 { 300 } else { 25 };
    let mut times = vec![Vec::with_capacity(rounds); contenders.len()];
    for _ in 0..rounds {
        for ((_, run), t) in contenders.iter_mut().zip(&mut times) {
            let start = Instant::now();
            black_box(run());
            t.push(start.elapsed().as_secs_f64());
        }
    }
    let base = times[0].clone();
    println!("\n{label}, batch {batch}, {THREADS} threads, alternating, {rounds} rounds:");
    for ((name, _), t) in contenders.iter().zip(&times) {
        let ratios: Vec<f64> = base.iter().zip(t).map(|(b, x)| b / x).collect();
        println!(
            "  {name:<15} median {:>9.3} ms   speed-up vs burn: {:>5.2}x per round, {:>5.2}x of medians",
            median(t) * 1e3,
            median(&ratios),
            median(&base) / median(t)
        );
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

criterion_group!(benches, bench, zoo);
criterion_main!(benches);
