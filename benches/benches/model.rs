//! fp32 inference latency of the reference ConvNet in burn, batch 1 and batch 64, on the
//! flex and ndarray backends (inference mode, no autodiff). Training throughput is
//! measured by `cargo xtask train` (images/s per epoch in `metrics.jsonl`): a training
//! step takes about half a second, too long for criterion's sampling.

use burn::tensor::{Tensor, TensorData};
use cinder_benches::pseudo_random;
use cinder_model::{BackendKind, ConvNetConfig, GraphNet};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

fn bench(c: &mut Criterion) {
    let config = ConvNetConfig::reference();
    let [ch, h, w] = config.input_shape();
    let mut group = c.benchmark_group("convnet_fp32_forward");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for backend in [BackendKind::Flex, BackendKind::Ndarray] {
        let device = backend.device().expect("CPU backends are compiled in");
        let spec = config.spec().expect("reference config is valid");
        let model = GraphNet::init(&spec, &device, 0).expect("reference config is valid");
        for batch in [1usize, 64] {
            let data =
                TensorData::new(pseudo_random(batch * ch * h * w, 1.0, 3), [batch, ch, h, w]);
            let images = Tensor::<4>::from_data(data, &device);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{backend}/b{batch}"), |b| {
                b.iter(|| model.forward(black_box(images.clone())).into_data())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
