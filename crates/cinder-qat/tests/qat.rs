//! End-to-end QAT on a tiny ConvNet and a learnable synthetic task: the runtime
//! reproduces the fake-quant forward, fine-tuning at 4 bits holds or beats PTQ, and a
//! resumed run equals the uninterrupted one.

use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::calibrate::calibrate;
use cinder_model::rng::SplitMix64;
use cinder_model::{
    BackendKind, ConvNetConfig, GraphNet, ImageSource, InMemoryImages, ModelError, TrainConfig,
    Trainer,
};
use cinder_observers::{Calibrator, ObserverSpec};
use cinder_qat::{QatConfig, QatError, QatModel, QatTrainer, fine_tune};
use cinder_runtime::{LayerConfig, QuantConfig, QuantizedModel, WeightGranularity, convert};
use cinder_tensor::{QuantScheme, Tensor as _, TensorBuf};

const CLASSES: usize = 3;

fn model_config() -> ConvNetConfig {
    ConvNetConfig {
        in_channels: 1,
        channels: [4, 8],
        hidden: 16,
        classes: CLASSES,
        input_size: 8,
        batch_norm: false,
    }
}

/// Noisy 8x8 images whose class is the bright band (top, middle or bottom rows).
fn images(n: usize, seed: u64) -> InMemoryImages {
    noisy_images(n, seed, 0.7)
}

/// [`images`] with uniform noise of amplitude `noise`.
fn noisy_images(n: usize, seed: u64, noise: f32) -> InMemoryImages {
    let mut rng = SplitMix64::new(seed);
    let mut data = Vec::with_capacity(n * 64);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let class = rng.below(CLASSES);
        for row in 0..8 {
            let band = (row * CLASSES / 8) == class;
            for _ in 0..8 {
                data.push(if band { 0.6 } else { -0.2 } + rng.symmetric(noise));
            }
        }
        labels.push(class as u32);
    }
    InMemoryImages::new([1, 8, 8], data, labels, CLASSES).unwrap()
}

fn trained() -> GraphNet {
    let config = TrainConfig {
        epochs: 2,
        batch_size: 16,
        lr: 0.02,
        ..TrainConfig::default()
    };
    let mut trainer =
        Trainer::new(&model_config().spec().unwrap(), config, BackendKind::Flex).unwrap();
    let train = images(384, 1);
    while !trainer.is_finished() {
        trainer.run_epoch(&train, None, &mut |_| {}).unwrap();
    }
    let graph = trainer.into_model().to_float_graph().unwrap();
    GraphNet::from_float_graph(&graph, &Device::flex()).unwrap()
}

fn qat_config(bits: u8, per_channel: bool, lsq: bool) -> QatConfig {
    let granularity = if per_channel {
        WeightGranularity::PerChannel
    } else {
        WeightGranularity::PerTensor
    };
    let base = QatConfig::default();
    QatConfig {
        quant: QuantConfig::uniform(LayerConfig {
            weight_bits: bits,
            granularity,
            ..LayerConfig::default()
        }),
        lsq,
        freeze_observers_after: lsq.then_some(8),
        training: TrainConfig {
            epochs: 1,
            batch_size: 16,
            lr: 0.01,
            ..base.training.clone()
        },
        ..base
    }
}

fn all_images(data: &InMemoryImages) -> (TensorBuf<f32>, Vec<u32>) {
    let batch = data.gather(&(0..data.len()).collect::<Vec<_>>()).unwrap();
    (batch.images, batch.labels)
}

fn to_burn(x: &TensorBuf<f32>, device: &Device) -> Tensor<4> {
    let s = x.shape();
    Tensor::from_data(
        TensorData::new(x.data().to_vec(), [s[0], s[1], s[2], s[3]]),
        device,
    )
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

fn accuracy(model: &QuantizedModel, data: &InMemoryImages) -> f64 {
    let (x, labels) = all_images(data);
    let mut session = model.session().unwrap();
    let logits = session.run(&x).unwrap();
    let right = logits
        .data()
        .chunks_exact(CLASSES)
        .zip(&labels)
        .filter(|(row, l)| argmax(row) == **l as usize)
        .count();
    right as f64 / labels.len() as f64
}

fn ptq(net: &GraphNet, calib: &InMemoryImages, quant: &QuantConfig) -> QuantizedModel {
    let mut calibrator =
        Calibrator::new(ObserverSpec::MinMax, QuantScheme::activations_uint8()).unwrap();
    let indices: Vec<usize> = (0..calib.len()).collect();
    let graph = net.to_float_graph().unwrap();
    calibrate(net, calib, &indices, 32, &mut calibrator).unwrap();
    convert(&graph, &calibrator.table().unwrap(), quant).unwrap()
}

/// The fake-quant forward with the deployed requantization gives the runtime's logits
/// bit for bit. The plain fake-quant forward (f32 rescale) predicts the same classes here,
/// and its logits lie within one output quantization step of the runtime's but for the
/// rare value that its f32 rescale and the fixed-point rescale send to neighbouring codes
/// upstream: at most 1% of the logits, never by more than two steps.
fn assert_runtime_matches(model: &QatModel, test: &InMemoryImages) {
    let export = model.export().unwrap();
    let int8 = export.convert().unwrap();
    let (x, _) = all_images(test);
    let device = model.net().device().without_autodiff();
    let logits = |t: Tensor<2>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let fq = logits(model.forward(to_burn(&x, &device)).unwrap());
    let deployed = logits(model.forward_deployed(to_burn(&x, &device), &int8).unwrap());
    let mut session = int8.session().unwrap();
    let rt = session.run(&x).unwrap();
    assert_eq!(deployed, rt.data(), "deployed fake-quant vs runtime");
    let step = export.table.tensors["fc2"].params.scale;
    let mut beyond_one_step = 0;
    for (f, r) in fq
        .chunks_exact(CLASSES)
        .zip(rt.data().chunks_exact(CLASSES))
    {
        assert_eq!(argmax(f), argmax(r), "fake-quant {f:?} vs runtime {r:?}");
        for (a, b) in f.iter().zip(r) {
            let steps = (a - b).abs() / step;
            assert!(steps <= 2.001, "{a} vs {b}: {steps} steps");
            beyond_one_step += usize::from(steps > 1.001);
        }
    }
    assert!(
        beyond_one_step * 100 <= fq.len(),
        "{beyond_one_step} of {} logits",
        fq.len()
    );
}

#[test]
fn runtime_reproduces_the_fake_quant_model() {
    let net = trained();
    let (train, test) = (images(192, 2), images(256, 3));
    for (bits, per_channel, lsq) in [
        (8, true, false),
        (4, true, false),
        (4, false, true),
        (8, true, true),
    ] {
        let config = qat_config(bits, per_channel, lsq);
        let model = fine_tune(&net, &train, &config, BackendKind::Flex, &mut |_| {}).unwrap();
        assert_eq!(model.state().frozen.is_some(), lsq);
        if let Some(frozen) = &model.state().frozen {
            // The learned step sizes moved away from their observer initialization.
            let learned = model.effective_params().unwrap();
            assert_ne!(learned.activations, frozen.activations);
            assert_ne!(learned.weights, frozen.weights);
        }
        assert_runtime_matches(&model, &test);
    }
}

#[test]
fn deployed_forward_needs_a_fake_quant_model_and_matching_static_layers() {
    let net = trained();
    let train = images(64, 2);
    let config = qat_config(8, true, false);
    let model = fine_tune(&net, &train, &config, BackendKind::Flex, &mut |_| {}).unwrap();
    let (x, _) = all_images(&images(4, 3));
    let device = model.net().device().without_autodiff();
    let mut partial = model.export().unwrap();
    partial.quant.layers.insert(
        "fc2".into(),
        cinder_runtime::LayerOverride {
            mode: Some(cinder_runtime::Mode::Float),
            ..Default::default()
        },
    );
    let partial = partial.convert().unwrap();
    let err = model
        .forward_deployed(to_burn(&x, &device), &partial)
        .unwrap_err();
    assert!(err.to_string().contains("no static layer `fc2`"), "{err}");
    let control = fine_tune(
        &net,
        &train,
        &config.control(),
        BackendKind::Flex,
        &mut |_| {},
    )
    .unwrap();
    let wider = ConvNetConfig {
        hidden: 24,
        ..model_config()
    };
    let wider = GraphNet::init(&wider.spec().unwrap(), &device, 5).unwrap();
    let other = ptq(&wider, &train, &config.quant);
    let err = model
        .forward_deployed(to_burn(&x, &device), &other)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("fc1: the deployed layer has 24 output channels, this model 16"),
        "{err}"
    );
    let int8 = model.export().unwrap().convert().unwrap();
    let err = control
        .forward_deployed(to_burn(&x, &device), &int8)
        .unwrap_err();
    assert!(err.to_string().contains("control"), "{err}");
}

#[test]
fn qat_holds_or_beats_ptq_at_4_bits() {
    let net = trained();
    // Noisier images make the task harder: 4-bit per-tensor PTQ loses accuracy here.
    let (train, test) = (noisy_images(384, 4, 1.6), noisy_images(512, 5, 1.6));
    let mut config = qat_config(4, false, false);
    config.training.lr = 0.002;
    let ptq_acc = accuracy(&ptq(&net, &noisy_images(128, 6, 1.6), &config.quant), &test);
    let model = fine_tune(&net, &train, &config, BackendKind::Flex, &mut |_| {}).unwrap();
    let qat_acc = accuracy(&model.export().unwrap().convert().unwrap(), &test);
    assert!(qat_acc >= ptq_acc, "QAT {qat_acc} < PTQ {ptq_acc}");
}

#[test]
fn resumed_run_equals_the_uninterrupted_one() {
    let net = trained();
    let train = images(96, 7);
    let mut config = qat_config(4, true, true);
    config.training.epochs = 2;
    config.freeze_observers_after = Some(4);
    let straight = fine_tune(&net, &train, &config, BackendKind::Flex, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut first = QatTrainer::new(&net, config, BackendKind::Flex).unwrap();
    first.run_epoch(&train, None, &mut |_| {}).unwrap();
    first.save_checkpoint(dir.path()).unwrap();
    let mut resumed = QatTrainer::resume(dir.path(), BackendKind::Flex).unwrap();
    resumed
        .run_epoch(&train, Some(&train), &mut |_| {})
        .unwrap();
    resumed.save_checkpoint(dir.path()).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "older epoch files removed: {names:?}");
    assert!(resumed.is_finished());
    let (a, b) = (
        straight.export().unwrap(),
        resumed.into_model().export().unwrap(),
    );
    assert_eq!(a.weights, b.weights);
    assert_eq!(a.table.tensors, b.table.tensors);
    assert_eq!(a.graph, b.graph);
}

/// A fine-tuning run that diverges (learning rate 1e30: the weights overflow after the
/// first steps) stops with the typed `Diverged` error naming the epoch and step, instead
/// of going on to export non-finite weights.
#[test]
fn a_diverging_run_is_a_typed_error() {
    let net = trained();
    let mut config = qat_config(8, true, false);
    config.training.lr = 1e30;
    let err = fine_tune(
        &net,
        &images(96, 3),
        &config,
        BackendKind::Flex,
        &mut |_| {},
    )
    .expect_err("the run diverges");
    assert!(
        matches!(err, QatError::Model(ModelError::Diverged { epoch: 1, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("training diverged"), "{err}");
}

/// Applies `edit` to the `qat.json` of `dir` (a JSON value).
fn edit_manifest(dir: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("qat.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
}

#[test]
fn corrupt_checkpoints_are_refused_naming_the_file_and_key() {
    let net = trained();
    let train = images(48, 7);
    let mut config = qat_config(8, true, false);
    config.training.epochs = 2;
    config.freeze_observers_after = Some(1);
    let mut trainer = QatTrainer::new(&net, config, BackendKind::Flex).unwrap();
    trainer.run_epoch(&train, None, &mut |_| {}).unwrap();
    let good = tempfile::tempdir().unwrap();
    trainer.save_checkpoint(good.path()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 10] = [
        ("`fc2`", |j| {
            j["state"]["observers"]
                .as_object_mut()
                .unwrap()
                .remove("fc2");
        }),
        ("`input`", |j| {
            j["state"]["observers"] = serde_json::json!({})
        }),
        ("state.frozen.activations has no entry `relu2`", |j| {
            j["state"]["frozen"]["activations"]
                .as_object_mut()
                .unwrap()
                .remove("relu2");
        }),
        ("state.frozen.weights has no entry `conv2`", |j| {
            j["state"]["frozen"]["weights"]
                .as_object_mut()
                .unwrap()
                .remove("conv2");
        }),
        ("averaging_constant", |j| {
            j["state"]["observers"]["relu1"]["averaging_constant"] = serde_json::json!(2.0);
        }),
        ("averaging constant", |j| {
            j["config"]["averaging_constant"] = serde_json::json!(-1.0);
        }),
        ("epochs_done", |j| j["epochs_done"] = serde_json::json!(5)),
        ("state.observers has an entry `relu9`", |j| {
            j["state"]["observers"]["relu9"] = j["state"]["observers"]["relu1"].clone();
        }),
        ("state.frozen.weights has an entry `conv9`", |j| {
            j["state"]["frozen"]["weights"]["conv9"] =
                j["state"]["frozen"]["weights"]["conv1"].clone();
        }),
        ("bit width 99", |j| {
            j["config"]["activations"]["bits"] = serde_json::json!(99)
        }),
    ];
    for (want, edit) in cases {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(good.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        edit_manifest(dir.path(), edit);
        let err = QatTrainer::resume(dir.path(), BackendKind::Flex)
            .err()
            .expect("a corrupt checkpoint resumes")
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
        assert!(err.contains("qat.json"), "{want}: {err}");
    }
    // A flipped byte in the model file is caught by its SHA-256.
    let model = std::fs::read_dir(good.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("model-e"))
        .unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&model, bytes).unwrap();
    let err = QatTrainer::resume(good.path(), BackendKind::Flex)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("SHA-256"), "{err}");
}

#[test]
fn bad_configs_are_rejected() {
    let net = trained();
    let device = Device::flex();
    let mut lsq_without_observers = qat_config(8, true, true);
    lsq_without_observers.freeze_observers_after = None;
    let mut dynamic = qat_config(8, true, false);
    dynamic.quant.default.mode = cinder_runtime::Mode::Dynamic;
    let mut wide = qat_config(8, true, false);
    wide.quant.default.weight_bits = 9;
    for config in [lsq_without_observers, dynamic, wide] {
        assert!(QatModel::new(&net, config, &device).is_err());
    }
    let mut unknown = qat_config(8, true, false);
    unknown
        .quant
        .layers
        .insert("conv9".into(), cinder_runtime::LayerOverride::default());
    let err = QatModel::new(&net, unknown, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("quant.layers.conv9"), "{err}");
    let fresh = QatModel::new(&net, qat_config(8, true, false), &device).unwrap();
    let err = fresh.export().unwrap_err().to_string();
    assert!(err.contains("training step"), "{err}");
}
