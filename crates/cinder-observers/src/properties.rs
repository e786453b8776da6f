//! Property tests across observers: coverage, monotonicity, optimality, agreement of
//! per-channel and per-tensor parameters, and merge = observing both streams.

use cinder_tensor::{AxisLayout, Granularity, QuantParams, QuantScheme, Tensor, TensorBuf};
use proptest::prelude::*;

use crate::hist_observer::{HistogramObserver, RangeMethod};
use crate::minmax::{MinMaxObserver, MovingAverageMinMaxObserver, PerChannelMinMaxObserver};
use crate::observer::Observer;
use crate::spec::ObserverSpec;
use crate::testutil::{PER_TENSOR_SPECS, Rng, scheme_of};

/// A distribution as the tests draw it: a scaled Gaussian, optionally shifted, with
/// optional outliers, optionally after ReLU.
#[derive(Debug, Clone)]
struct Dist {
    seed: u64,
    len: usize,
    scale: f32,
    shift: f32,
    outliers: usize,
    outlier: f32,
    relu: bool,
}

impl Dist {
    fn sample(&self) -> Vec<f32> {
        let mut rng = Rng::new(self.seed);
        let mut v: Vec<f32> = rng
            .normals_with_outliers(self.len, self.outliers, self.outlier)
            .iter()
            .map(|x| x * self.scale + self.shift)
            .collect();
        if self.relu {
            v.iter_mut().for_each(|x| *x = x.max(0.0));
        }
        v
    }
}

fn dist() -> impl Strategy<Value = Dist> {
    (
        any::<u64>(),
        200usize..4000,
        prop_oneof![Just(1.0f32), 1e-3f32..1e3],
        prop_oneof![3 => Just(0.0f32), 1 => -2f32..2.0],
        0usize..6,
        prop_oneof![-50f32..-5.0, 5f32..50.0],
        any::<bool>(),
    )
        .prop_map(|(seed, len, scale, shift, outliers, outlier, relu)| Dist {
            seed,
            len,
            scale,
            shift,
            outliers,
            outlier: outlier * scale,
            relu,
        })
}

fn scheme() -> impl Strategy<Value = QuantScheme> {
    (2u8..=8, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(bits, signed, symmetric, narrow)| {
            scheme_of(bits, signed, symmetric, narrow, Granularity::PerTensor)
        },
    )
}

fn histogram_methods() -> impl Strategy<Value = RangeMethod> {
    prop_oneof![
        Just(RangeMethod::Entropy),
        Just(RangeMethod::Mse),
        (50f64..=100.0).prop_map(|percent| RangeMethod::Percentile { percent }),
    ]
}

fn observe_all(o: &mut impl Observer, batches: &[Vec<f32>]) {
    for b in batches {
        o.observe(&TensorBuf::from_vec(b.clone())).unwrap();
    }
}

fn one_range(o: &impl Observer, scheme: &QuantScheme) -> (f32, f32) {
    let ranges = o.ranges(scheme).unwrap();
    assert_eq!(ranges.len(), 1);
    ranges[0]
}

fn actual_mse(data: &[f32], range: (f32, f32), scheme: &QuantScheme) -> f64 {
    let p = QuantParams::from_range(range.0, range.1, scheme).unwrap();
    let sum: f64 = data
        .iter()
        .map(|&x| (f64::from(x) - f64::from(p.fake_quantize(x))).powi(2))
        .sum();
    sum / data.len() as f64
}

/// Splits `data` into up to `parts` consecutive batches.
fn split(data: &[f32], parts: usize) -> Vec<Vec<f32>> {
    data.chunks(data.len().div_ceil(parts.max(1)))
        .map(<[f32]>::to_vec)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn minmax_covers_every_value(d in dist(), parts in 1usize..5, scheme in scheme()) {
        let data = d.sample();
        let mut o = MinMaxObserver::new();
        observe_all(&mut o, &split(&data, parts));
        let (min, max) = one_range(&o, &scheme);
        let p = QuantParams::from_range(min, max, &scheme).unwrap();
        let tolerance = p.scale * 0.5 + (min.abs() + max.abs()) * 4.0 * f32::EPSILON;
        for &x in &data {
            prop_assert!(min <= x && x <= max);
            prop_assert!((x - p.fake_quantize(x)).abs() <= tolerance, "{x} {p:?}");
        }
    }

    #[test]
    fn percentile_range_is_monotone(d in dist(), a in 50f64..=100.0, b in 50f64..=100.0, scheme in scheme()) {
        let data = d.sample();
        let (lo_p, hi_p) = (a.min(b), a.max(b));
        let range = |percent| {
            let mut o = HistogramObserver::new(RangeMethod::Percentile { percent }).unwrap();
            observe_all(&mut o, std::slice::from_ref(&data));
            one_range(&o, &scheme)
        };
        let (narrow, wide) = (range(lo_p), range(hi_p));
        prop_assert!(wide.0 <= narrow.0 && narrow.1 <= wide.1, "{narrow:?} {wide:?}");
    }

    #[test]
    fn mse_range_beats_minmax_on_the_data(d in dist(), scheme in scheme()) {
        let data = d.sample();
        let mut o = HistogramObserver::new(RangeMethod::Mse).unwrap();
        observe_all(&mut o, std::slice::from_ref(&data));
        let chosen = one_range(&o, &scheme);
        let minmax = o.histogram().unwrap().range();
        let (got, full) = (actual_mse(&data, chosen, &scheme), actual_mse(&data, minmax, &scheme));
        prop_assert!(got <= full, "{chosen:?} {got} vs {minmax:?} {full}");
    }

    #[test]
    fn histogram_ranges_lie_within_minmax(d in dist(), method in histogram_methods(), scheme in scheme()) {
        let data = d.sample();
        let mut h = HistogramObserver::new(method).unwrap();
        let mut m = MinMaxObserver::new();
        observe_all(&mut h, std::slice::from_ref(&data));
        observe_all(&mut m, std::slice::from_ref(&data));
        let (lo, hi) = one_range(&h, &scheme);
        let (min, max) = one_range(&m, &scheme);
        prop_assert!(min <= lo && lo <= hi && hi <= max, "{lo} {hi} vs {min} {max}");
        let p = h.params(&scheme).unwrap();
        prop_assert!(p.as_slice()[0].scale.is_finite() && p.as_slice()[0].scale > 0.0);
    }

    #[test]
    fn per_channel_params_equal_per_tensor_params_of_each_channel(
        dims in prop::collection::vec(1usize..5, 1..4),
        axis_pick in any::<prop::sample::Index>(),
        seed in any::<u64>(),
        scheme in scheme(),
    ) {
        let axis = axis_pick.index(dims.len());
        let len: usize = dims.iter().product();
        let t = TensorBuf::new(dims.clone(), Rng::new(seed).normals(len)).unwrap();
        let mut o = PerChannelMinMaxObserver::new(axis);
        o.observe(&t).unwrap();
        let per_channel = o.params(&scheme.with_granularity(Granularity::PerChannel { axis })).unwrap();
        let layout = AxisLayout::new(&dims, axis).unwrap();
        for c in 0..layout.channels {
            let alone: Vec<f32> = t.data().iter().enumerate()
                .filter(|(i, _)| layout.channel_of(*i) == c)
                .map(|(_, &x)| x)
                .collect();
            let mut m = MinMaxObserver::new();
            m.observe(&TensorBuf::from_vec(alone)).unwrap();
            let want = m.params(&scheme).unwrap();
            prop_assert_eq!(per_channel.channel(c), want.channel(0));
        }
    }

    #[test]
    fn merging_equals_observing_both_streams(
        d in dist(),
        cut in 1usize..4,
        spec in prop_oneof![Just("minmax"), Just("entropy"), Just("mse"), Just("percentile=99.9")],
    ) {
        let data = d.sample();
        let batches = split(&data, cut + 2);
        let spec: ObserverSpec = spec.parse().unwrap();
        let (first, second) = batches.split_at(cut.min(batches.len() - 1));
        let mut both = spec.build(Granularity::PerTensor).unwrap();
        observe_all(&mut both, &batches);
        let mut a = spec.build(Granularity::PerTensor).unwrap();
        let mut b = spec.build(Granularity::PerTensor).unwrap();
        observe_all(&mut a, first);
        observe_all(&mut b, second);
        // Merging in either direction gives the exact state of one observer that saw all.
        let mut ab = a.clone();
        ab.merge(&b).unwrap();
        b.merge(&a).unwrap();
        prop_assert_eq!(&ab, &both);
        prop_assert_eq!(&b, &both);
    }

    #[test]
    fn per_channel_merge_is_exact(seed in any::<u64>(), rows in 1usize..6) {
        let mut rng = Rng::new(seed);
        let t1 = TensorBuf::new(vec![rows, 3, 4], rng.normals(rows * 12)).unwrap();
        let t2 = TensorBuf::new(vec![2, 3, 4], rng.normals(24)).unwrap();
        let mut both = PerChannelMinMaxObserver::new(1);
        both.observe(&t1).unwrap();
        both.observe(&t2).unwrap();
        let mut a = PerChannelMinMaxObserver::new(1);
        let mut b = PerChannelMinMaxObserver::new(1);
        a.observe(&t1).unwrap();
        b.observe(&t2).unwrap();
        a.merge(&b).unwrap();
        prop_assert_eq!(a, both);
    }
}

#[test]
fn gaussian_with_outliers_known_answers() {
    // 100k unit normals and 5 outliers at +-40: every histogram chooser clips them.
    let mut data = Rng::new(2024).normals_with_outliers(100_000, 3, 40.0);
    data.extend([-40.0, -40.0]);
    let s8 = QuantScheme::weights_int8(Granularity::PerTensor);
    let u8 = QuantScheme::activations_uint8();
    let s4 = s8.with_bits(4).unwrap();
    let mut minmax = MinMaxObserver::new();
    observe_all(&mut minmax, std::slice::from_ref(&data));
    assert_eq!(one_range(&minmax, &u8), (-40.0, 40.0));
    for (method, scheme) in [
        (RangeMethod::Entropy, s8),
        (RangeMethod::Entropy, u8),
        (RangeMethod::Percentile { percent: 99.99 }, s8),
        (RangeMethod::Percentile { percent: 99.99 }, u8),
        (RangeMethod::Mse, s4),
    ] {
        let mut o = HistogramObserver::new(method).unwrap();
        observe_all(&mut o, std::slice::from_ref(&data));
        let (lo, hi) = one_range(&o, &scheme);
        assert!(
            (-12.0..-2.0).contains(&lo) && (2.0..12.0).contains(&hi),
            "{method:?} {scheme:?}: [{lo}, {hi}]"
        );
    }
}

#[test]
fn no_data_and_bad_input_are_typed_errors() {
    use crate::error::ObserverError;
    let u8 = QuantScheme::activations_uint8();
    for spec in PER_TENSOR_SPECS {
        let mut o = spec
            .parse::<ObserverSpec>()
            .unwrap()
            .build(Granularity::PerTensor)
            .unwrap();
        assert_eq!(o.params(&u8), Err(ObserverError::NoData), "{spec}");
        assert_eq!(
            o.observe(&TensorBuf::<f32>::from_vec(vec![])),
            Err(ObserverError::EmptyTensor)
        );
        let bad = TensorBuf::from_vec(vec![1.0, f32::NAN]);
        assert!(matches!(
            o.observe(&bad),
            Err(ObserverError::NonFiniteValue { index: 1, .. })
        ));
        // A rejected batch leaves the observer untouched.
        assert_eq!(o.params(&u8), Err(ObserverError::NoData), "{spec}");
        o.observe(&TensorBuf::from_vec(vec![0.0; 4])).unwrap();
        let p = o.params(&u8).unwrap();
        assert!(p.as_slice()[0].scale > 0.0 && p.as_slice()[0].scale.is_finite());
        let per_channel = u8.with_granularity(Granularity::PerChannel { axis: 0 });
        assert!(matches!(
            o.params(&per_channel),
            Err(ObserverError::GranularityMismatch { .. })
        ));
    }
    let mut pc = PerChannelMinMaxObserver::new(1);
    pc.observe(&TensorBuf::new(vec![2, 3], vec![0.0; 6]).unwrap())
        .unwrap();
    assert!(matches!(
        pc.observe(&TensorBuf::new(vec![3, 2], vec![0.0; 6]).unwrap()),
        Err(ObserverError::ChannelCountChanged { .. })
    ));
    assert!(matches!(
        pc.observe(&TensorBuf::from_vec(vec![0.0])),
        Err(ObserverError::Tensor(_))
    ));
    assert!(MovingAverageMinMaxObserver::new(0.0).is_err());
}

#[test]
fn moving_average_follows_pytorch() {
    let mut o = MovingAverageMinMaxObserver::new(0.5).unwrap();
    observe_all(&mut o, &[vec![-1.0, 1.0], vec![-3.0, 5.0], vec![0.0, 1.0]]);
    // min: -1 -> -2 -> -1; max: 1 -> 3 -> 2.
    assert_eq!(
        one_range(&o, &QuantScheme::activations_uint8()),
        (-1.0, 2.0)
    );
    let mut a = MovingAverageMinMaxObserver::new(0.5).unwrap();
    let mut b = MovingAverageMinMaxObserver::new(0.5).unwrap();
    observe_all(&mut a, &[vec![0.0, 2.0]]);
    observe_all(&mut b, &[vec![0.0, 4.0], vec![0.0, 4.0], vec![0.0, 4.0]]);
    a.merge(&b).unwrap();
    assert_eq!(one_range(&a, &QuantScheme::activations_uint8()), (0.0, 3.5));
    let c = MovingAverageMinMaxObserver::new(0.1).unwrap();
    assert!(a.merge(&c).is_err());
}
