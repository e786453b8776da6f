//! File sizes on the reference ConvNet's real shapes (random weights): int8 at most
//! 25.1% of the fp32 safetensors, 4-bit conv2 and fc1 at most 13%.

use cinder_runtime::synthetic::{minmax_table, random_input, reference_convnet};
use cinder_runtime::{LayerOverride, QuantConfig, convert};

#[test]
fn int8_and_int4_files_are_small_enough() {
    let graph = reference_convnet(1);
    let table = minmax_table(&graph, &random_input(&graph, 2, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let size = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().len() as f64;
    graph
        .save(
            &dir.path().join("g.json"),
            &dir.path().join("fp32.safetensors"),
        )
        .unwrap();

    convert(&graph, &table, &QuantConfig::default())
        .unwrap()
        .save(&dir.path().join("int8.cinder"))
        .unwrap();
    let four = LayerOverride {
        weight_bits: Some(4),
        ..Default::default()
    };
    let config = QuantConfig::default()
        .with_layer("conv2", four)
        .with_layer("fc1", four);
    convert(&graph, &table, &config)
        .unwrap()
        .save(&dir.path().join("int4.cinder"))
        .unwrap();

    let fp32 = size("fp32.safetensors");
    let (int8, int4) = (size("int8.cinder") / fp32, size("int4.cinder") / fp32);
    println!(
        "fp32 {fp32} B; int8 {:.3}%; 4-bit conv2+fc1 {:.3}%",
        int8 * 100.0,
        int4 * 100.0
    );
    assert!(int8 <= 0.251, "int8 file is {:.3}% of fp32", int8 * 100.0);
    assert!(int4 <= 0.13, "4-bit file is {:.3}% of fp32", int4 * 100.0);
}
