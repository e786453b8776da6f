//! The fast path equals the reference interpreter bit for bit on random small models:
//! random convolution / linear sizes, strides and paddings, per-tensor and per-channel,
//! symmetric and asymmetric, 2- to 8-bit weights, static, dynamic and float layers in
//! any mix, batches smaller and larger than the thread count; Winograd convolutions
//! among them, and on purpose in [`winograd_convolutions_equal_the_reference`]; and on
//! random graphs ([`common::dag`]): residual adds, depthwise-separable pairs with ReLU6,
//! rectangular strided convolutions, padded max and average pools, concatenations and
//! global average pooling, in every mode.

mod common;

use cinder_runtime::{Mode, SessionOptions, reference_forward};
use cinder_tensor::Tensor;
use common::dag::dag_spec;
use common::{ConvSpec, LayerChoice, ModelSpec, bits, input, model_spec};
use proptest::prelude::*;

/// Convolutions that take Winograd (3×3, stride 1, at least 16 input channels): odd and
/// even output sizes, padding 0 and 1, static (with and without a fused max-pool) and
/// dynamic, every weight width, symmetric and asymmetric, batches smaller and larger than
/// the thread count.
#[test]
fn winograd_convolutions_equal_the_reference() {
    let conv = |out, padding, pool| ConvSpec {
        out,
        kernel: 3,
        stride: 1,
        padding,
        relu: true,
        pool,
    };
    for (case, weight_bits) in (2u8..=8).enumerate() {
        let mode = if case % 3 == 2 {
            Mode::Dynamic
        } else {
            Mode::Static
        };
        let choice = |per_channel| LayerChoice {
            mode,
            bits: weight_bits,
            per_channel,
            symmetric: case % 2 == 0,
        };
        let spec = ModelSpec {
            input: [17, 7 + case % 2, 6],
            convs: vec![
                conv(20, case % 2, case % 4 < 2),
                conv(5, 1 - case % 2, false),
            ],
            linears: vec![(3, false)],
            choices: vec![choice(true), choice(false), choice(true), choice(true)],
            seed: case as u64,
        };
        let Some((graph, model)) = spec.model() else {
            continue;
        };
        for batch in [1, 3] {
            let x = input(&graph, batch, case as u64);
            let want = reference_forward(&model, &x).unwrap();
            for threads in [1, 2] {
                let mut session = model.session_with(SessionOptions { threads }).unwrap();
                session.set_profiling(true);
                let got = session.run(&x).unwrap();
                assert_eq!(bits(got.data()), bits(want.data()), "{spec:?}");
                let profile = session.profile().unwrap();
                let winograd = profile.iter().filter(|s| s.kind.contains("wino"));
                assert_eq!(winograd.count(), 2, "17 and 20 input channels: {profile:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn fast_path_equals_the_reference(spec in model_spec(), batch in 1usize..=5, seed in any::<u64>()) {
        let Some((graph, model)) = spec.model() else {
            return Ok(());
        };
        let x = input(&graph, batch, seed);
        let want = reference_forward(&model, &x).unwrap();
        for threads in [1, 2] {
            let mut session = model.session_with(SessionOptions { threads }).unwrap();
            // Twice: the second run reuses the buffers of the first.
            for _ in 0..2 {
                let got = session.run(&x).unwrap();
                prop_assert_eq!(got.shape(), want.shape());
                prop_assert_eq!(bits(got.data()), bits(want.data()), "threads {}, model {:?}", threads, model);
            }
        }
    }

    #[test]
    fn one_batch_or_many_singles_agree_in_static_mode(spec in model_spec(), seed in any::<u64>()) {
        // Static and float layers do not depend on the rest of the batch.
        let mut spec = spec;
        spec.choices.iter_mut().filter(|c| c.mode == Mode::Dynamic).for_each(|c| c.mode = Mode::Static);
        let Some((graph, model)) = spec.model() else {
            return Ok(());
        };
        let x = input(&graph, 3, seed);
        let mut session = model.session_with(SessionOptions { threads: 2 }).unwrap();
        let whole = session.run(&x).unwrap().data().to_vec();
        let per = whole.len() / 3;
        for b in 0..3 {
            let mut shape = x.shape().to_vec();
            shape[0] = 1;
            let one = cinder_tensor::TensorRef::new(&shape, &x.data()[b * x.len() / 3..][..x.len() / 3]).unwrap();
            let got = session.run(&one).unwrap();
            prop_assert_eq!(bits(got.data()), bits(&whole[b * per..][..per]));
        }
    }

    #[test]
    fn fast_path_equals_the_reference_on_graphs(spec in dag_spec(), batch in 1usize..=3, seed in any::<u64>()) {
        let Some((graph, model)) = spec.model() else {
            return Ok(());
        };
        let x = input(&graph, batch, seed);
        let want = reference_forward(&model, &x).unwrap();
        for threads in [1, 2] {
            let mut session = model.session_with(SessionOptions { threads }).unwrap();
            for _ in 0..2 {
                let got = session.run(&x).unwrap();
                prop_assert_eq!(got.shape(), want.shape());
                prop_assert_eq!(bits(got.data()), bits(want.data()), "threads {}, spec {:?}", threads, spec);
            }
        }
    }
}
