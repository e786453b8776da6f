//! Writes the seed corpus from files the project itself writes, small ones:
//! `cargo test -p cinder-fuzz --test seeds -- --ignored` (then commit `corpus/`).

use std::io::Write;
use std::path::{Path, PathBuf};

use cinder_runtime::synthetic::{Rng, conv_node, linear_node, minmax_table, node, random_input};
use cinder_runtime::{LayerOverride, Mode, QuantConfig, convert};
use cinder_tensor::graph::{AvgPool2d, FloatGraph, Node, Op, Pool2d};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).unwrap();
}

fn copy(target: &str, name: &str, from: &Path) {
    put(target, name, &std::fs::read(from).unwrap());
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

/// A tiny graph: conv(1->2, k3) relu pool flatten linear(8->3).
fn tiny_graph() -> FloatGraph {
    let mut rng = Rng::new(3);
    FloatGraph::chain(
        vec![1, 4, 4],
        vec![
            conv_node(&mut rng, "conv1", 1, 2, 3, 1, 1),
            node("relu1", Op::Relu),
            node("pool1", Op::MaxPool2d(Pool2d::square(2, 2))),
            node("flatten", Op::Flatten),
            linear_node(&mut rng, "fc1", 8, 3),
        ],
    )
    .unwrap()
}

/// A small residual graph with every merge and pool: conv a, depthwise conv b, add,
/// concat, average pool, global pool, flatten, linear.
fn residual_graph() -> FloatGraph {
    let mut rng = Rng::new(4);
    let (_, conv_a) = conv_node(&mut rng, "a", 2, 2, 3, 1, 1);
    let depthwise = cinder_tensor::graph::Conv2d {
        groups: 2,
        ..match conv_node(&mut rng, "b", 1, 2, 3, 1, 1).1 {
            Op::Conv2d(c) => c,
            _ => unreachable!("conv_node makes a convolution"),
        }
    };
    let (_, fc) = linear_node(&mut rng, "fc", 4, 3);
    let nodes = vec![
        Node::new("a", &["input"], conv_a),
        Node::new("relu", &["a"], Op::Relu),
        Node::new("b", &["relu"], Op::Conv2d(depthwise)),
        Node::new("sum", &["a", "b"], Op::Add),
        Node::new("cat", &["sum", "relu"], Op::Concat),
        Node::new(
            "avg",
            &["cat"],
            Op::AvgPool2d(AvgPool2d {
                window: Pool2d::square(2, 2),
                count_include_pad: false,
            }),
        ),
        Node::new("gap", &["avg"], Op::GlobalAvgPool),
        Node::new("flatten", &["gap"], Op::Flatten),
        Node::new("fc", &["flatten"], fc),
    ];
    FloatGraph::new(vec![2, 4, 4], nodes).unwrap()
}

/// Static 8-bit layers, but `b` dynamic with 4-bit weights and `fc` left in float.
fn mixed_config() -> QuantConfig {
    let dynamic4 = LayerOverride {
        mode: Some(Mode::Dynamic),
        weight_bits: Some(4),
        ..LayerOverride::default()
    };
    let float = LayerOverride {
        mode: Some(Mode::Float),
        ..LayerOverride::default()
    };
    QuantConfig::default()
        .with_layer("b", dynamic4)
        .with_layer("fc", float)
}

/// The model files, float graphs and ONNX exports of the tiny and the residual graph.
fn write_graph_seeds(dir: &Path) {
    for (name, graph, config) in [
        ("tiny", tiny_graph(), QuantConfig::default()),
        ("residual", residual_graph(), mixed_config()),
    ] {
        let table = minmax_table(&graph, &random_input(&graph, 4, 1)).unwrap();
        let model = convert(&graph, &table, &config).unwrap();
        let model_path = dir.join("model.cinder");
        model.save(&model_path).unwrap();
        let model_name = if name == "tiny" {
            "tiny-w8a8"
        } else {
            "residual-mixed"
        };
        copy("model_file", model_name, &model_path);
        put("onnx", name, &cinder_onnx::export_bytes(&graph));
        let qdq = cinder_onnx::export_qdq_bytes(&model).unwrap();
        put("onnx", &format!("{name}-qdq"), &qdq);
    }
    // The structure-aware targets read their bytes as choices; a few fixed patterns
    // start them off (libFuzzer grows the rest).
    for (name, bytes) in [
        ("zeros", vec![0u8; 64]),
        ("ones", vec![1u8; 64]),
        ("ramp", (0..=255u8).collect()),
        ("sevens", vec![7u8; 256]),
    ] {
        put("model_header", name, &bytes);
        put("graph", name, &bytes);
    }
}

#[test]
#[ignore = "writes the committed seed corpus"]
fn write_seed_corpus() {
    let dir = tempfile::tempdir().unwrap();
    write_graph_seeds(dir.path());
    let graph = tiny_graph();
    let table = minmax_table(&graph, &random_input(&graph, 4, 1)).unwrap();
    let table_path = dir.path().join("calibration.json");
    table.save(&table_path).unwrap();
    copy("calibration_table", "tiny-minmax", &table_path);

    let images: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 13) as u8).collect();
    put("idx", "images-raw", &idx(&[2, 3, 3], &images));
    put("idx", "images-gz", &gzip(&idx(&[2, 3, 3], &images)));
    put("idx", "labels-raw", &idx(&[3], &[0, 1, 2]));
    let mut record = vec![3u8, 17];
    record.extend((0..3072).map(|i| (i % 251) as u8));
    put("cifar", "two-records", &[record.clone(), record].concat());

    #[cfg(feature = "burn")]
    write_checkpoint_seeds(dir.path());
    let experiments = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    copy(
        "experiment_config",
        "quick",
        &experiments.join("quick.toml"),
    );
    put(
        "normalization",
        "half",
        br#"{"dataset": "fashion-mnist", "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#,
    );
}

/// The manifests of the tiny checkpoints the checkpoint targets load beside.
#[cfg(feature = "burn")]
fn write_checkpoint_seeds(dir: &Path) {
    cinder_fuzz::write_tiny_checkpoint(dir);
    copy("checkpoint", "epoch0", &dir.join("checkpoint.json"));
    cinder_fuzz::write_tiny_qat_checkpoint(dir);
    copy("qat_checkpoint", "epoch1", &dir.join("qat.json"));
}
