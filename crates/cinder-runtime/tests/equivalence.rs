//! The fast path equals the reference interpreter bit for bit on random small models:
//! random convolution / linear sizes, strides and paddings, per-tensor and per-channel,
//! symmetric and asymmetric, 2- to 8-bit weights, static, dynamic and float layers in
//! any mix, batches smaller and larger than the thread count.

mod common;

use cinder_runtime::{Mode, SessionOptions, reference_forward};
use cinder_tensor::Tensor;
use common::{bits, input, model_spec};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn fast_path_equals_the_reference(spec in model_spec(), batch in 1usize..=5, seed in any::<u64>()) {
        let (graph, model) = spec.model();
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
        let (graph, model) = spec.model();
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
}
