//! Quantize / dequantize / fake-quantize throughput of `cinder-tensor`, in elements per
//! second, per tensor and per channel, on an activation-sized tensor.

use cinder_benches::pseudo_random;
use cinder_tensor::{
    Granularity, QuantScheme, TensorBuf, TensorQuantParams, dequantize, fake_quantize, quantize,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const SHAPE: [usize; 4] = [16, 64, 32, 32];

fn params(granularity: Granularity) -> TensorQuantParams {
    let scheme = QuantScheme::weights_int8(granularity);
    let channels = match granularity {
        Granularity::PerTensor => 1,
        Granularity::PerChannel { axis } => SHAPE[axis],
    };
    TensorQuantParams::from_ranges(&vec![(-3.0, 3.0); channels], &scheme).expect("valid range")
}

fn bench(c: &mut Criterion) {
    let len = SHAPE.iter().product();
    let x = TensorBuf::new(SHAPE.to_vec(), pseudo_random(len, 3.0, 7)).expect("shape");
    let mut group = c.benchmark_group("tensor");
    group.throughput(Throughput::Elements(len as u64));
    for (name, g) in [
        ("per_tensor", Granularity::PerTensor),
        ("per_channel", Granularity::PerChannel { axis: 1 }),
    ] {
        let p = params(g);
        let q: TensorBuf<i8> = quantize(&x, &p).expect("finite input");
        group.bench_function(format!("quantize_{name}"), |b| {
            b.iter(|| quantize::<i8>(black_box(&x), &p))
        });
        group.bench_function(format!("dequantize_{name}"), |b| {
            b.iter(|| dequantize(black_box(&q), &p))
        });
        group.bench_function(format!("fake_quantize_{name}"), |b| {
            b.iter(|| fake_quantize(black_box(&x), &p))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
