//! File sizes on the reference ConvNet's real shapes (random weights): int8 at most
//! 25.1% of the fp32 safetensors, 4-bit conv2 and fc1 at most 13%, 2-bit at most 6.5%
//! (the ideal 2/32 = 6.25% plus the int32 biases, scales and 8-bit conv1 and fc2), and
//! 6-bit stored one code per byte like 8-bit.

use cinder_runtime::synthetic::{minmax_table, random_input, reference_convnet};
use cinder_runtime::{LayerOverride, QuantConfig, convert};

#[test]
fn narrow_weight_files_are_small_enough() {
    let graph = reference_convnet(1);
    let table = minmax_table(&graph, &random_input(&graph, 2, 2)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (json, fp32_path) = (
        dir.path().join("g.json"),
        dir.path().join("fp32.safetensors"),
    );
    graph.save(&json, &fp32_path).unwrap();
    let fp32 = std::fs::metadata(&fp32_path).unwrap().len() as f64;
    // The share of the fp32 file with `bits`-bit conv2 and fc1 (conv1, fc2 at 8 bits).
    let share = |bits: u8| {
        let narrow = LayerOverride {
            weight_bits: Some(bits),
            ..Default::default()
        };
        let config = QuantConfig::default()
            .with_layer("conv2", narrow)
            .with_layer("fc1", narrow);
        let path = dir.path().join(format!("w{bits}.cinder"));
        convert(&graph, &table, &config)
            .unwrap()
            .save(&path)
            .unwrap();
        std::fs::metadata(&path).unwrap().len() as f64 / fp32
    };
    let shares: Vec<(u8, f64)> = [8, 6, 4, 2].into_iter().map(|b| (b, share(b))).collect();
    println!("fp32 {fp32} B; shares (bits, %): {shares:?}");
    let limits = [(8, 0.251), (6, 0.251), (4, 0.13), (2, 0.065)];
    for ((bits, got), (_, limit)) in shares.iter().zip(limits) {
        assert!(
            *got <= limit,
            "{bits}-bit file is {:.3}% of fp32, limit {}%",
            got * 100.0,
            limit * 100.0
        );
    }
    assert_eq!(
        shares[0].1, shares[1].1,
        "6-bit codes are stored one per byte"
    );
}
