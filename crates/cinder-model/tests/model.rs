//! The ConvNet, BatchNorm folding and the float graph hand-off.

mod common;

use burn::module::{Module, Param, RunningState};
use burn::nn::BatchNorm;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::rng::SplitMix64;
use cinder_model::{
    BackendKind, BurnData, ConvNet, ConvNetConfig, INPUT_NAME, ModelError, NODE_NAMES,
};
use cinder_tensor::graph::{FloatGraph, Op};
use cinder_tensor::{Tensor as _, TensorBuf};
use common::{host, max_abs_diff, random_images, tiny_config};

#[test]
fn reference_config_is_the_article_model() {
    let c = ConvNetConfig::reference();
    assert_eq!(
        (c.in_channels, c.channels, c.hidden, c.classes, c.input_size),
        (3, [64, 128], 1024, 10, 32)
    );
    assert_eq!(c.flat_features(), 8192);
    let model = c.init(&Device::flex(), 0).unwrap();
    assert_eq!(model.num_params(), 8_475_530);
    assert_eq!(
        model.fc1.weight.dims(),
        [8192, 1024],
        "burn stores Linear weights [in, out]"
    );
}

#[test]
fn forward_gives_logits_and_bad_configs_are_rejected() {
    let device = Device::flex();
    let config = tiny_config();
    let model = config.init(&device, 1).unwrap();
    let logits = model.forward(random_images(&config, 5, 2, &device));
    assert_eq!(logits.dims(), [5, 4]);
    for bad in [
        ConvNetConfig {
            input_size: 10,
            ..tiny_config()
        },
        ConvNetConfig {
            classes: 0,
            ..tiny_config()
        },
    ] {
        assert!(matches!(bad.init(&device, 0), Err(ModelError::Config(_))));
    }
}

#[test]
fn the_seed_fixes_the_initial_weights_on_every_backend() {
    let config = tiny_config();
    let weights = |device: &Device, seed| host(config.init(device, seed).unwrap().fc1.weight.val());
    let flex = weights(&Device::flex(), 7);
    assert_eq!(flex, weights(&BackendKind::Ndarray.device().unwrap(), 7));
    assert_ne!(flex, weights(&Device::flex(), 8));
    let bound = 1.0 / (config.flat_features() as f32).sqrt();
    assert!(flex.iter().all(|w| w.abs() <= bound));
}

/// Random per-channel values in `[lo, hi)`.
fn channel_values(rng: &mut SplitMix64, n: usize, lo: f32, hi: f32) -> Tensor<1> {
    let values: Vec<f32> = (0..n).map(|_| lo + (hi - lo) * rng.next_unit()).collect();
    Tensor::from_data(TensorData::new(values, [n]), &Device::flex())
}

/// A BatchNorm with non-trivial affine parameters and running statistics.
fn scrambled(bn: &BatchNorm, rng: &mut SplitMix64) -> BatchNorm {
    let [n] = bn.gamma.dims();
    BatchNorm {
        gamma: Param::from_tensor(channel_values(rng, n, 0.5, 2.0)),
        beta: Param::from_tensor(channel_values(rng, n, -1.0, 1.0)),
        running_mean: RunningState::new(channel_values(rng, n, -0.5, 0.5)),
        running_var: RunningState::new(channel_values(rng, n, 0.1, 3.0)),
        ..bn.clone()
    }
}

#[test]
fn folding_batchnorm_keeps_eval_outputs() {
    let device = Device::flex();
    let config = tiny_config().with_batch_norm(true);
    let mut model = config.init(&device, 3).unwrap();
    let mut rng = SplitMix64::new(4);
    model.bn1 = model.bn1.as_ref().map(|bn| scrambled(bn, &mut rng));
    model.bn2 = model.bn2.as_ref().map(|bn| scrambled(bn, &mut rng));
    let model = model.valid();
    let folded = model.fold_batchnorm().unwrap();
    assert!(folded.bn1.is_none() && folded.bn2.is_none() && !folded.config.batch_norm);
    let x = random_images(&config, 6, 5, &device);
    let (a, b) = (host(model.forward(x.clone())), host(folded.forward(x)));
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&a, &b) <= 1e-5 * scale.max(1.0),
        "{} vs scale {scale}",
        max_abs_diff(&a, &b)
    );
}

/// Plain f32 reference of the float graph, one sample `[C, H, W]` at a time.
fn reference_forward(graph: &FloatGraph, sample: &[f32]) -> Vec<f32> {
    let mut shape = graph.input_shape().to_vec();
    let mut x = sample.to_vec();
    for node in graph.nodes() {
        x = match &node.op {
            Op::Conv2d(c) => {
                let (o_n, i_n, k, p) = (
                    c.out_channels(),
                    c.in_channels(),
                    c.kernel()[0],
                    c.padding[0] as isize,
                );
                let (h, w) = (shape[1], shape[2]);
                let (wt, b) = (c.weight.data(), c.bias_or_zeros());
                let mut out = vec![0.0f32; o_n * h * w];
                for o in 0..o_n {
                    for y in 0..h {
                        for xx in 0..w {
                            let mut acc = b[o];
                            for i in 0..i_n {
                                for ky in 0..k {
                                    for kx in 0..k {
                                        let (iy, ix) = (
                                            y as isize + ky as isize - p,
                                            xx as isize + kx as isize - p,
                                        );
                                        if (0..h as isize).contains(&iy)
                                            && (0..w as isize).contains(&ix)
                                        {
                                            acc += wt[((o * i_n + i) * k + ky) * k + kx]
                                                * x[(i * h + iy as usize) * w + ix as usize];
                                        }
                                    }
                                }
                            }
                            out[(o * h + y) * w + xx] = acc;
                        }
                    }
                }
                shape = vec![o_n, h, w];
                out
            }
            Op::Relu => x.iter().map(|v| v.max(0.0)).collect(),
            Op::MaxPool2d(pool) => {
                let (kernel, stride) = (&pool.kernel[0], pool.stride[0]);
                let (c, h, w) = (shape[0], shape[1], shape[2]);
                let (oh, ow) = ((h - kernel) / stride + 1, (w - kernel) / stride + 1);
                let mut out = Vec::with_capacity(c * oh * ow);
                for ch in 0..c {
                    for y in 0..oh {
                        for xx in 0..ow {
                            let window =
                                (0..*kernel).flat_map(|ky| (0..*kernel).map(move |kx| (ky, kx)));
                            out.push(window.fold(f32::NEG_INFINITY, |m, (ky, kx)| {
                                m.max(x[(ch * h + y * stride + ky) * w + xx * stride + kx])
                            }));
                        }
                    }
                }
                shape = vec![c, oh, ow];
                out
            }
            Op::Flatten => {
                shape = vec![x.len()];
                x
            }
            Op::Linear(l) => {
                let (o_n, i_n) = (l.out_features(), l.in_features());
                let (wt, b) = (l.weight.data(), l.bias_or_zeros());
                shape = vec![o_n];
                (0..o_n)
                    .map(|o| b[o] + (0..i_n).map(|i| wt[o * i_n + i] * x[i]).sum::<f32>())
                    .collect()
            }
            other => panic!("the reference ConvNet has no {} node", other.kind()),
        };
    }
    x
}

#[test]
fn float_graph_forward_matches_burn() {
    let device = Device::flex();
    let config = tiny_config().with_batch_norm(true);
    let mut model = config.init(&device, 11).unwrap();
    let mut rng = SplitMix64::new(12);
    model.bn2 = model.bn2.as_ref().map(|bn| scrambled(bn, &mut rng));
    let model = model.valid();
    let graph = model.to_float_graph().unwrap();
    let names: Vec<&str> = graph.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, NODE_NAMES);

    let n = 3;
    let images = random_images(&config, n, 13, &device);
    let burn_logits = host(model.forward(images.clone()));
    let flat = host(images);
    let per = flat.len() / n;
    let reference: Vec<f32> = flat
        .chunks(per)
        .flat_map(|s| reference_forward(&graph, s))
        .collect();
    let diff = max_abs_diff(&burn_logits, &reference);
    assert!(diff <= 1e-4, "max abs diff {diff}");
}

#[test]
fn graph_files_round_trip_into_an_equivalent_model() {
    let device = Device::flex();
    let config = tiny_config();
    let model = config.init(&device, 21).unwrap();
    let graph = model.to_float_graph().unwrap();
    let fc1 = graph.node("fc1").unwrap();
    let Op::Linear(l) = &fc1.op else {
        panic!("fc1 is {:?}", fc1.op)
    };
    assert_eq!(
        l.weight.shape(),
        [16, config.flat_features()],
        "exported [out, in]"
    );
    let burn_w = host(model.fc1.weight.val());
    assert_eq!(
        l.weight.data()[1],
        burn_w[16],
        "W[0][1] of [out,in] is burn's [1][0]"
    );

    let dir = tempfile::tempdir().unwrap();
    let (json, weights) = (
        dir.path().join("graph.json"),
        dir.path().join("graph.safetensors"),
    );
    graph.save(&json, &weights).unwrap();
    let loaded = FloatGraph::load(&json, &weights).unwrap();
    assert_eq!(loaded, graph);
    let rebuilt =
        ConvNet::from_float_graph(&loaded, &BackendKind::Ndarray.device().unwrap()).unwrap();
    let x = random_images(&config, 2, 22, &device);
    let x_nd = Tensor::from_data(x.to_data(), &BackendKind::Ndarray.device().unwrap());
    let diff = max_abs_diff(&host(model.forward(x)), &host(rebuilt.forward(x_nd)));
    assert!(diff <= 1e-5, "{diff}");

    let mut ops: Vec<(String, Op)> = graph
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), n.op.clone()))
        .collect();
    let relu = std::mem::replace(&mut ops[1].1, Op::Flatten);
    ops[1].1 = std::mem::replace(&mut ops[2].1, relu);
    let shuffled = FloatGraph::chain(graph.input_shape().to_vec(), ops).unwrap();
    assert!(matches!(
        ConvNet::from_float_graph(&shuffled, &device),
        Err(ModelError::GraphLayout(_))
    ));
}

#[test]
fn activations_cover_every_quantization_point() {
    let device = Device::flex();
    let config = tiny_config();
    let model = config.init(&device, 31).unwrap();
    let images = random_images(&config, 2, 32, &device);
    let (logits, acts) = model.forward_with_activations(images.clone()).unwrap();
    let mut expected = vec![INPUT_NAME];
    expected.extend(NODE_NAMES);
    assert_eq!(acts.names(), expected);
    let graph = model.to_float_graph().unwrap();
    let shapes = graph.output_shapes();
    for (name, shape) in NODE_NAMES.iter().zip(shapes) {
        let a = acts.get(name).unwrap();
        assert_eq!(a.shape()[0], 2);
        assert_eq!(&a.shape()[1..], shape.as_slice(), "{name}");
    }
    assert_eq!(
        acts.get(INPUT_NAME).unwrap().data(),
        host(images).as_slice()
    );
    assert_eq!(acts.get("fc2").unwrap().data(), host(logits).as_slice());
    assert!(acts.get("relu2").unwrap().data().iter().all(|&v| v >= 0.0));
}

#[test]
fn burn_data_implements_the_common_tensor_trait() {
    let t = Tensor::<2>::from_data(
        TensorData::new(vec![1.0f32, -2.0, 3.5, 0.0, 5.0, 6.0], [2, 3]),
        &Device::flex(),
    );
    let d = BurnData::from_tensor(&t).unwrap();
    assert_eq!(d.shape(), [2, 3]);
    assert_eq!(d.data(), [1.0, -2.0, 3.5, 0.0, 5.0, 6.0]);
    assert_eq!(
        d.to_buf(),
        TensorBuf::new(vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 5.0, 6.0]).unwrap()
    );
    let ints = BurnData::new(TensorData::new(vec![1i64, 2], [2])).unwrap();
    assert_eq!(ints.data(), [1.0, 2.0]);
}
