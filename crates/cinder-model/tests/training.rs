//! Training, evaluation, determinism, checkpoints and exact resume on tiny models.

mod common;

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::checkpoint::{MANIFEST, read_manifest};
use cinder_model::stopping::best_epoch;
use cinder_model::train::write_metrics_log;
use cinder_model::{
    BackendKind, EarlyStopping, GraphNet, ImageSource, LrSchedule, ModelError, OptimizerConfig,
    TrainConfig, Trainer, evaluate,
};
use cinder_tensor::Tensor as _;
use cinder_tensor::graph::{FloatGraph, Op};
use common::{host, quadrant_images, tiny_config, tiny_spec};

fn quick_config(optimizer: OptimizerConfig, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: match optimizer {
            OptimizerConfig::Sgd { .. } => 0.05,
            OptimizerConfig::Adam { .. } => 0.005,
        },
        optimizer,
        weight_decay: 1e-4,
        schedule: LrSchedule::Cosine { min_lr: 1e-4 },
        seed: 42,
        augment: None,
        early_stopping: None,
    }
}

fn all_weights(model: &GraphNet) -> Vec<Vec<f32>> {
    graph_weights(&model.to_float_graph().unwrap())
}

/// Every weight and bias of `graph`, in node order.
fn graph_weights(graph: &FloatGraph) -> Vec<Vec<f32>> {
    graph
        .nodes()
        .iter()
        .filter_map(|n| n.op.weight_and_bias())
        .flat_map(|(w, b)| std::iter::once(w.data().to_vec()).chain(b.map(|b| b.data().to_vec())))
        .collect()
}

fn train(trainer: &mut Trainer, data: &dyn ImageSource, epochs: usize) {
    for _ in 0..epochs {
        trainer.run_epoch(data, None, &mut |_| {}).unwrap();
    }
}

#[test]
fn default_recipe_is_the_reference_recipe() {
    let c = TrainConfig::default();
    assert_eq!((c.epochs, c.batch_size, c.lr), (10, 32, 0.001));
    assert_eq!(
        c.optimizer,
        OptimizerConfig::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false
        }
    );
}

#[derive(Module, Debug)]
struct Scalar {
    w: Param<Tensor<1>>,
}

/// Two SGD steps on the constant gradient g = 1: PyTorch (dampening 0) moves the weight by
/// lr·g then lr·(0.9·g + g); burn's default dampening 0.1 would give lr·(0.9 + 0.9)·g.
#[test]
fn sgd_momentum_follows_pytorch() {
    let device = BackendKind::Ndarray.device().unwrap().autodiff();
    let mut model = Scalar {
        w: Param::from_data(TensorData::new(vec![0.0f32], [1]), &device),
    };
    let config = TrainConfig::default();
    let mut optim = cinder_model::train::build_optimizer(&config);
    for _ in 0..2 {
        let grads = GradientsParams::from_grads(model.w.val().sum().backward(), &model);
        model = optim.step(0.1, model, grads);
    }
    let w = host(model.w.val())[0];
    assert!((w - -(0.1 + 0.19)).abs() < 1e-6, "{w}");
}

#[test]
fn lr_schedules() {
    let cos = LrSchedule::Cosine { min_lr: 0.0 };
    assert_eq!(cos.lr(1.0, 0, 0, 10, 2), 1.0);
    assert!((cos.lr(1.0, 1, 9, 10, 2)).abs() < 1e-12);
    assert!((cos.lr(1.0, 0, 9, 10, 2) - 0.5).abs() < 0.1);
    let step = LrSchedule::Step {
        every_epochs: 2,
        gamma: 0.1,
    };
    assert_eq!(step.lr(1.0, 1, 5, 10, 6), 1.0);
    assert!((step.lr(1.0, 4, 0, 10, 6) - 0.01).abs() < 1e-12);
}

#[test]
fn training_learns_the_quadrant_task_with_sgd_and_adam() {
    let (train_set, test_set) = (quadrant_images(256, 1), quadrant_images(128, 2));
    for optimizer in [OptimizerConfig::sgd(), OptimizerConfig::adam()] {
        let mut trainer =
            Trainer::new(&tiny_spec(), quick_config(optimizer, 4), BackendKind::Flex).unwrap();
        let before = evaluate(trainer.model(), &test_set, 64).unwrap();
        let mut steps = 0;
        for _ in 0..4 {
            trainer
                .run_epoch(&train_set, Some(&test_set), &mut |p| steps = p.step)
                .unwrap();
        }
        assert_eq!(steps, 16);
        let last = trainer.history().last().unwrap().clone();
        let after = last.test.clone().unwrap();
        assert!(
            after.accuracy >= 0.9,
            "{optimizer:?}: accuracy {} (before {})",
            after.accuracy,
            before.accuracy
        );
        assert!(after.loss < before.loss);
        assert!(trainer.history()[0].train_loss > last.train_loss);
        assert_eq!(after.confusion.iter().flatten().sum::<u64>(), 128);
        assert!(trainer.is_finished());
        assert!(trainer.run_epoch(&train_set, None, &mut |_| {}).is_err());
    }
}

#[test]
fn batchnorm_variant_trains_and_updates_running_statistics() {
    let data = quadrant_images(64, 3);
    let config = tiny_config().with_batch_norm(true);
    let mut trainer = Trainer::new(
        &config.spec().unwrap(),
        quick_config(OptimizerConfig::sgd(), 1),
        BackendKind::Flex,
    )
    .unwrap();
    train(&mut trainer, &data, 1);
    let graph = trainer.model().to_float_graph().unwrap();
    let Op::BatchNorm(bn) = &graph.node("bn1").unwrap().op else {
        panic!("bn1 is a BatchNorm")
    };
    assert!(bn.mean.data().iter().any(|&m| m != 0.0));
    let folded = trainer.model().valid().to_inference_graph().unwrap();
    assert!(!folded.has_batch_norm());
    let folded = GraphNet::from_float_graph(&folded, &Device::flex()).unwrap();
    let (a, b) = (
        evaluate(trainer.model(), &data, 64).unwrap(),
        evaluate(&folded, &data, 64).unwrap(),
    );
    assert!((a.loss - b.loss).abs() < 1e-4, "{} vs {}", a.loss, b.loss);
}

#[test]
fn a_checkpoint_holds_the_batchnorm_statistics_of_its_last_step() {
    let data = quadrant_images(64, 3);
    let spec = tiny_config().with_batch_norm(true).spec().unwrap();
    let config = quick_config(OptimizerConfig::sgd(), 2);
    let mut trainer = Trainer::new(&spec, config, BackendKind::Flex).unwrap();
    train(&mut trainer, &data, 1);
    let dir = tempfile::tempdir().unwrap();
    trainer.save_checkpoint(dir.path()).unwrap();
    let resumed = Trainer::resume(dir.path(), BackendKind::Flex).unwrap();
    // Folded, so the running statistics are in the weights.
    let folded = |t: &Trainer| graph_weights(&t.model().valid().to_inference_graph().unwrap());
    assert_eq!(folded(&resumed), folded(&trainer));
}

#[test]
fn ndarray_runs_are_deterministic_for_a_seed() {
    let data = quadrant_images(64, 4);
    let run = || {
        let mut t = Trainer::new(
            &tiny_spec(),
            quick_config(OptimizerConfig::sgd(), 2),
            BackendKind::Ndarray,
        )
        .unwrap();
        train(&mut t, &data, 2);
        all_weights(t.model())
    };
    assert_eq!(run(), run());
}

#[test]
fn early_stopping_ends_the_run_once_the_validation_accuracy_stalls() {
    let (train_set, validation) = (quadrant_images(256, 1), quadrant_images(64, 3));
    let config = TrainConfig {
        early_stopping: Some(EarlyStopping {
            patience: 2,
            min_delta: 0.0,
        }),
        ..quick_config(OptimizerConfig::sgd(), 40)
    };
    let mut trainer = Trainer::new(&tiny_spec(), config, BackendKind::Flex).unwrap();
    let err = trainer
        .run_epoch(&train_set, None, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("validation"), "{err}");
    while !trainer.is_finished() {
        trainer
            .run_epoch_validated(&train_set, &validation, None, &mut |_| {})
            .unwrap();
    }
    let history = trainer.history();
    assert!(
        trainer.stopped_early() && history.len() < 40,
        "{} epochs",
        history.len()
    );
    let best = best_epoch(history, 0.0).unwrap();
    assert_eq!(best + 2, history.len(), "stops two epochs after its best");
    let accuracy = |e: usize| history[e - 1].validation.as_ref().unwrap().accuracy;
    assert!((best + 1..=history.len()).all(|e| accuracy(e) <= accuracy(best)));
    // The decision is in the history: a restored run is finished too.
    let dir = tempfile::tempdir().unwrap();
    trainer.save_checkpoint(dir.path()).unwrap();
    let resumed = Trainer::resume(dir.path(), BackendKind::Flex).unwrap();
    assert!(resumed.is_finished() && resumed.stopped_early());
}

#[test]
fn resume_after_an_interruption_reproduces_the_uninterrupted_run() {
    let data = quadrant_images(80, 5);
    for optimizer in [OptimizerConfig::sgd(), OptimizerConfig::adam()] {
        let config = quick_config(optimizer, 3);
        let mut straight =
            Trainer::new(&tiny_spec(), config.clone(), BackendKind::Ndarray).unwrap();
        train(&mut straight, &data, 3);

        let dir = tempfile::tempdir().unwrap();
        let mut first = Trainer::new(&tiny_spec(), config.clone(), BackendKind::Ndarray).unwrap();
        train(&mut first, &data, 1);
        first.save_checkpoint(dir.path()).unwrap();
        train(&mut first, &data, 1); // progress after the checkpoint, lost in the "kill"
        drop(first);

        let mut resumed = Trainer::resume(dir.path(), BackendKind::Ndarray).unwrap();
        assert_eq!(resumed.epochs_done(), 1);
        train(&mut resumed, &data, 1);
        resumed.save_checkpoint(dir.path()).unwrap();
        let mut resumed = Trainer::resume(dir.path(), BackendKind::Ndarray).unwrap();
        train(&mut resumed, &data, 1);
        assert_eq!(
            all_weights(resumed.model()),
            all_weights(straight.model()),
            "{optimizer:?}"
        );
        assert_eq!(resumed.history().len(), 3);

        let files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            files.len(),
            3,
            "manifest + one model + one optimizer file: {files:?}"
        );
    }
}

#[test]
fn corrupt_or_missing_checkpoints_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(read_manifest(dir.path()).unwrap().is_none());
    assert!(Trainer::resume(dir.path(), BackendKind::Flex).is_err());
    let data = quadrant_images(16, 6);
    let mut t = Trainer::new(
        &tiny_spec(),
        quick_config(OptimizerConfig::sgd(), 2),
        BackendKind::Flex,
    )
    .unwrap();
    train(&mut t, &data, 1);
    t.save_checkpoint(dir.path()).unwrap();
    write_metrics_log(&dir.path().join("metrics.jsonl"), t.history()).unwrap();
    let log = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1);
    assert!(log.contains("\"epoch\":1"));

    let manifest = read_manifest(dir.path()).unwrap().unwrap();
    let model_file = dir.path().join(&manifest.model_file);
    let bytes = std::fs::read(&model_file).unwrap();
    // Any changed byte (NaN written into a weight, say) is refused by the SHA-256.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x7f;
    std::fs::write(&model_file, &flipped).unwrap();
    let err = Trainer::resume(dir.path(), BackendKind::Flex)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("SHA-256") && err.contains("model-e0001.bpk"),
        "{err}"
    );
    std::fs::write(&model_file, &bytes[..bytes.len() / 2]).unwrap();
    let err = Trainer::resume(dir.path(), BackendKind::Flex)
        .err()
        .unwrap();
    assert!(
        matches!(err, ModelError::Checkpoint { .. }) && err.to_string().contains("model-e0001.bpk"),
        "{err}"
    );

    let text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
    for (from, to, want) in [
        (
            "\"epochs_done\": 1",
            "\"epochs_done\": 9",
            "epochs_done = 9",
        ),
        (
            "\"model-e0001.bpk\"",
            "\"../model-e0001.bpk\"",
            "plain file name",
        ),
    ] {
        std::fs::write(dir.path().join(MANIFEST), text.replace(from, to)).unwrap();
        let err = Trainer::resume(dir.path(), BackendKind::Flex)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
    std::fs::write(
        dir.path().join(MANIFEST),
        text.replacen("\"format_version\": 3", "\"format_version\": 7", 1),
    )
    .unwrap();
    let err = Trainer::resume(dir.path(), BackendKind::Flex)
        .err()
        .unwrap();
    assert!(err.to_string().contains("format version 7"), "{err}");
}

#[test]
fn out_of_range_optimizer_settings_are_rejected() {
    let sgd = |momentum, dampening| OptimizerConfig::Sgd {
        momentum,
        dampening,
        nesterov: false,
    };
    let adam = |beta1, epsilon| OptimizerConfig::Adam {
        beta1,
        beta2: 0.999,
        epsilon,
    };
    let cases = [
        (sgd(f64::NAN, 0.0), LrSchedule::Constant, "momentum = NaN"),
        (sgd(-5.0, 0.0), LrSchedule::Constant, "momentum = -5"),
        (sgd(1e30, 0.0), LrSchedule::Constant, "momentum"),
        (sgd(0.9, 2.0), LrSchedule::Constant, "dampening"),
        (adam(1.5, 1e-8), LrSchedule::Constant, "beta1"),
        (adam(0.9, 0.0), LrSchedule::Constant, "epsilon"),
        (
            OptimizerConfig::sgd(),
            LrSchedule::Step {
                every_epochs: 1,
                gamma: f64::INFINITY,
            },
            "gamma",
        ),
        (
            OptimizerConfig::sgd(),
            LrSchedule::Cosine { min_lr: -1.0 },
            "min_lr",
        ),
    ];
    for (optimizer, schedule, want) in cases {
        let config = TrainConfig {
            optimizer,
            schedule,
            ..TrainConfig::default()
        };
        let err = Trainer::new(&tiny_spec(), config, BackendKind::Flex)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[test]
fn a_diverged_run_stops_with_a_typed_error_and_saves_nothing() {
    let data = quadrant_images(32, 3);
    let config = TrainConfig {
        lr: 1e30,
        ..quick_config(OptimizerConfig::sgd(), 2)
    };
    let mut t = Trainer::new(&tiny_spec(), config, BackendKind::Flex).unwrap();
    let err = t.run_epoch(&data, None, &mut |_| {}).err().unwrap();
    assert!(
        matches!(err, ModelError::Diverged { epoch: 1, .. }),
        "{err}"
    );
    assert!(t.history().is_empty());
}

#[test]
fn mismatched_data_is_rejected() {
    let data = quadrant_images(16, 7);
    let config = cinder_model::ConvNetConfig {
        input_size: 12,
        ..tiny_config()
    };
    let mut t = Trainer::new(
        &config.spec().unwrap(),
        quick_config(OptimizerConfig::sgd(), 1),
        BackendKind::Flex,
    )
    .unwrap();
    assert!(matches!(
        t.run_epoch(&data, None, &mut |_| {}),
        Err(ModelError::Batch(_))
    ));
    let bad = TrainConfig {
        lr: f64::NAN,
        ..TrainConfig::default()
    };
    assert!(matches!(
        Trainer::new(&tiny_spec(), bad, BackendKind::Flex),
        Err(ModelError::Training(_))
    ));
}

#[test]
fn degenerate_images_train_finitely_and_non_finite_ones_are_refused() {
    let shape = [3, 8, 8];
    let per: usize = shape.iter().product();
    let labels: Vec<u32> = (0..16).map(|i| i % 4).collect();
    for value in [0.0f32, 0.5, -2.0] {
        let data =
            cinder_model::InMemoryImages::new(shape, vec![value; per * 16], labels.clone(), 4)
                .unwrap();
        let mut t = Trainer::new(
            &tiny_spec(),
            quick_config(OptimizerConfig::sgd(), 1),
            BackendKind::Flex,
        )
        .unwrap();
        let metrics = t.run_epoch(&data, Some(&data), &mut |_| {}).unwrap();
        assert!(metrics.train_loss.is_finite(), "{value}: {metrics:?}");
    }
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut pixels = vec![0.5; per * 16];
        pixels[per * 2 + 5] = bad;
        let err = cinder_model::InMemoryImages::new(shape, pixels, labels.clone(), 4).unwrap_err();
        assert!(err.to_string().contains("image 2"), "{err}");
    }
}
