//! Throughput of `cinder-datasets`: synthetic images rendered per second on one core
//! (the target is at least 20,000), and one epoch-sized batch normalized and augmented.

use cinder_datasets::{
    Augmentation, BatchOptions, DEFAULT_DIFFICULTY, Generator, IMAGE_LEN, Normalization, Part,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BATCH: usize = 128;

fn bench(c: &mut Criterion) {
    let generator = Generator::new(0, DEFAULT_DIFFICULTY).expect("valid difficulty");
    let mut group = c.benchmark_group("datasets");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out = [0u8; IMAGE_LEN];
    group.bench_function("synthetic_render_128_images_one_core", |b| {
        b.iter(|| {
            for i in 0..BATCH {
                black_box(generator.render(Part::Train, i, &mut out));
            }
        })
    });
    let data = generator.dataset(Part::Train, BATCH).expect("generated");
    let norm = Normalization::fit(&data).expect("non-empty");
    for (name, augment) in [
        ("plain", Augmentation::NONE),
        ("augmented", Augmentation::STANDARD),
    ] {
        let options = BatchOptions {
            batch_size: BATCH,
            augment,
            ..BatchOptions::default()
        };
        group.bench_function(format!("batch_128_{name}"), |b| {
            b.iter(|| {
                data.batches(&options, 0, &norm)
                    .expect("valid options")
                    .next()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
