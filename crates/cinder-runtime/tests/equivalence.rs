//! The fast path equals the reference interpreter bit for bit on random small models:
//! random convolution / linear sizes, strides and paddings, per-tensor and per-channel,
//! symmetric and asymmetric, 2- to 8-bit weights, static, dynamic and float layers in
//! any mix, batches smaller and larger than the thread count; Winograd convolutions
//! among them where the kernel path prefers it, and on purpose (both algorithms) in
//! [`winograd_convolutions_equal_the_reference`]; and on
//! random graphs ([`common::dag`]): residual adds, depthwise-separable pairs with ReLU6,
//! rectangular strided convolutions, padded max and average pools, concatenations and
//! global average pooling, in every mode; static grouped convolutions (neither dense
//! nor depthwise) in [`grouped_convolutions_equal_the_reference`]; convolutions the
//! direct kernel takes (few channels, or window rows of whole 4-byte groups) in
//! [`direct_convolutions_equal_the_reference`];
//! and linear layers of 4-bit weights, the nibble GEMV's, in
//! [`four_bit_linear_layers_equal_the_reference`].

mod common;

use cinder_runtime::kernels::Isa;
use cinder_runtime::synthetic::{Rng, conv_node, linear_node, node};
use cinder_runtime::{
    ConvAlgorithm, Mode, QuantizedModel, SessionOptions, StageTime, reference_forward,
};
use cinder_tensor::Tensor;
use cinder_tensor::graph::{Conv2d, FloatGraph, Op};
use common::dag::dag_spec;
use common::{
    ConvSpec, LayerChoice, ModelSpec, bits, calibrate_and_convert, config, input, model_spec,
};
use proptest::prelude::*;

/// Convolutions Winograd can take (3×3, stride 1, at least 16 input channels), planned
/// with Winograd and with im2col: odd and even output sizes, padding 0 and 1, static
/// (with and without a fused max-pool) and dynamic, every weight width, symmetric and
/// asymmetric, batches smaller and larger than the thread count.
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
        let Some((graph, mut model)) = spec.model() else {
            continue;
        };
        for (algorithm, winograd_stages) in
            [(ConvAlgorithm::Winograd, 2), (ConvAlgorithm::Im2col, 0)]
        {
            model = model.with_conv_algorithm(algorithm).unwrap();
            let what = format!("{algorithm:?} {spec:?}");
            assert_equals_reference(&graph, &model, case as u64, &what, |profile| {
                let winograd = profile.iter().filter(|s| s.kind.contains("wino"));
                assert_eq!(winograd.count(), winograd_stages, "{what}: {profile:?}");
            });
        }
    }
}

/// Stride-1 convolutions over 1 to 4 channels (windows built as quads) and over 8 to 64
/// (window rows of whole quads, read in place), and over 6 (neither: im2col), planned as
/// the kernel path prefers (the direct kernel on AVX-512 VNNI, for symmetric weights)
/// and with im2col only: pooled and not, odd and even sizes, padding 0 and 1, 2- to
/// 8-bit weights, symmetric and asymmetric, batches smaller and larger than the thread
/// count.
#[test]
fn direct_convolutions_equal_the_reference() {
    for case in 0..18usize {
        let (padding, pool, symmetric) = (case % 2, case % 3 != 1, case % 4 != 3);
        let channels = [1, 2, 3, 4, 8, 12, 64, 6, 16][case % 9];
        let input = [channels, 6 + case % 3, 7 + case % 2];
        let choice = |per_channel| LayerChoice {
            mode: Mode::Static,
            bits: 2 + (case % 7) as u8,
            per_channel,
            symmetric,
        };
        let spec = ModelSpec {
            input,
            convs: vec![ConvSpec {
                out: [5, 16, 64, 33][case % 4],
                kernel: 3,
                stride: 1,
                padding,
                relu: case % 2 == 0,
                pool,
            }],
            linears: vec![(3, false)],
            choices: vec![choice(case % 2 == 0), choice(true)],
            seed: case as u64,
        };
        let Some((graph, mut model)) = spec.model() else {
            continue;
        };
        let [oh, ow] = [input[1], input[2]].map(|side| side + 2 * padding - 2);
        let quads = channels <= 4 || channels.is_multiple_of(4);
        let fits = quads && (pool || (oh.is_multiple_of(2) && ow.is_multiple_of(2)));
        // Asymmetric weights take the direct kernel only where every zero point is 0.
        let direct = Isa::detect().direct_conv_pays() && fits;
        let auto = match (direct, symmetric) {
            (true, true) => 1..=1,
            (true, false) => 0..=1,
            (false, _) => 0..=0,
        };
        for (algorithm, direct_stages) in
            [(ConvAlgorithm::Auto, auto), (ConvAlgorithm::Im2col, 0..=0)]
        {
            model = model.with_conv_algorithm(algorithm).unwrap();
            let what = format!("{algorithm:?} {spec:?}");
            assert_equals_reference(&graph, &model, case as u64, &what, |profile| {
                let stages = profile.iter().filter(|s| s.kind.contains("direct")).count();
                assert!(direct_stages.contains(&stages), "{what}: {profile:?}");
            });
        }
    }
}

/// Linear layers of 2- to 8-bit weights, symmetric and not, of depths and widths that are
/// not multiples of the kernels' blocks: those whose codes fit 4 bits take the nibble GEMV
/// at batch 1 where the kernel path has it; every run equals the reference.
#[test]
fn four_bit_linear_layers_equal_the_reference() {
    let mut ran = 0;
    for case in 0..10usize {
        let bits = 2 + (case % 7) as u8;
        let choice = |bits, per_channel| LayerChoice {
            mode: Mode::Static,
            bits,
            per_channel,
            symmetric: case % 3 != 1,
        };
        let spec = ModelSpec {
            input: [3, 5, 5],
            convs: vec![ConvSpec {
                out: 5,
                kernel: 3,
                stride: 1,
                padding: 1,
                relu: true,
                pool: true,
            }],
            linears: vec![(13 + case, true), (10, false)],
            choices: vec![
                choice(8, true),
                choice(bits, case % 2 == 0),
                choice(bits, true),
            ],
            seed: case as u64,
        };
        let Some((graph, model)) = spec.model() else {
            continue;
        };
        let nibble_stages = match Isa::detect().nibble_gemv_pays() && bits <= 4 {
            true => 2,
            false => 0,
        };
        let what = format!("{spec:?}");
        assert_equals_reference(&graph, &model, case as u64, &what, |profile| {
            let stages = profile.iter().filter(|s| s.kind.contains("w4")).count();
            assert_eq!(stages, nibble_stages, "{what}: {profile:?}");
        });
        ran += 1;
    }
    assert!(ran >= 8, "only {ran} of 10 models converted");
}

/// Runs `model` on batches of 1 and 3 with 1 and 2 threads: the output equals the
/// reference interpreter's bit for bit, and `check` passes each run's stage profile.
fn assert_equals_reference(
    graph: &FloatGraph,
    model: &QuantizedModel,
    seed: u64,
    what: &str,
    check: impl Fn(&[StageTime]),
) {
    for batch in [1, 3] {
        let x = input(graph, batch, seed);
        let want = reference_forward(model, &x).unwrap();
        for threads in [1, 2] {
            let mut session = model.session_with(SessionOptions { threads }).unwrap();
            session.set_profiling(true);
            let got = session.run(&x).unwrap();
            assert_eq!(bits(got.data()), bits(want.data()), "{what}");
            check(&session.profile().unwrap());
        }
    }
}

/// `stem(c -> 12, 3×3) -> grouped(12 -> out, groups) -> ReLU -> global pool -> fc`.
fn grouped_graph(
    groups: usize,
    out: usize,
    (kernel, stride, padding): (usize, usize, usize),
    seed: u64,
) -> FloatGraph {
    let mut rng = Rng::new(seed);
    let bound = 1.0 / ((12 / groups * kernel * kernel) as f32).sqrt();
    let grouped = Conv2d {
        weight: rng.tensor(vec![out, 12 / groups, kernel, kernel], bound),
        bias: Some(rng.tensor(vec![out], bound)),
        stride: [stride; 2],
        padding: [padding; 2],
        groups,
    };
    let nodes = [
        conv_node(&mut rng, "stem", 3, 12, 3, 1, 1),
        node("stem_relu", Op::Relu),
        ("grouped".to_owned(), Op::Conv2d(grouped)),
        node("relu", Op::Relu),
        node("gap", Op::GlobalAvgPool),
        node("flatten", Op::Flatten),
        linear_node(&mut rng, "fc", out, 5),
    ];
    FloatGraph::chain(vec![3, 7, 6], nodes.into_iter().collect()).unwrap()
}

/// Grouped convolutions (2, 3 and 4 groups, 1×1 and 3×3, strides 1 and 2, padding 0 and
/// 1), static at every weight width and dynamic at 8 and 4 bits, per-channel and
/// per-tensor, symmetric and asymmetric, equal the reference on their own kernels.
#[test]
fn grouped_convolutions_equal_the_reference() {
    let cases = (2u8..=8).map(|bits| (Mode::Static, bits)).chain([
        (Mode::Dynamic, 8),
        (Mode::Dynamic, 4),
        (Mode::Dynamic, 8),
    ]);
    for (case, (mode, weight_bits)) in cases.enumerate() {
        let groups = [2, 3, 4][case % 3];
        let window = [(3, 1, 1), (1, 1, 0), (3, 2, 0)][case % 3];
        let graph = grouped_graph(groups, groups * (1 + case % 3), window, case as u64);
        let choice = LayerChoice {
            mode,
            bits: weight_bits,
            per_channel: case % 2 == 0,
            symmetric: case % 4 < 2,
        };
        let model = calibrate_and_convert(&graph, &config(&graph, &vec![choice; 3]), case as u64)
            .expect("the grouped models convert");
        let kind = match mode {
            Mode::Static => "int8 grouped conv",
            _ => "dyn. grouped conv",
        };
        assert_equals_reference(
            &graph,
            &model,
            case as u64,
            &format!("case {case}"),
            |profile| assert!(profile.iter().any(|s| s.kind == kind), "{profile:?}"),
        );
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
