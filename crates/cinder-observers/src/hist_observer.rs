//! The histogram observer: one order-independent [`Histogram`] per tensor and a range
//! chooser applied when parameters are asked for (entropy, percentile or MSE).

use cinder_tensor::{Granularity, Mapping, QuantScheme, Tensor};
use serde::{Deserialize, Serialize};

use crate::entropy::entropy_range;
use crate::error::ObserverError;
use crate::histogram::{DEFAULT_BINS, Histogram, check_bins};
use crate::mse::mse_range;
use crate::observer::Observer;

/// How a histogram observer picks its clipping range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum RangeMethod {
    /// Minimum KL divergence between the clipped and the quantized distribution.
    Entropy,
    /// Symmetric schemes: the `percent` percentile of `|x|`. Asymmetric: the
    /// `100 - percent` and `percent` percentiles of `x` (each tail loses at most
    /// `100 - percent` percent of the values).
    Percentile { percent: f64 },
    /// Minimum expected quantization MSE.
    Mse,
}

impl RangeMethod {
    fn validate(&self) -> Result<(), ObserverError> {
        match *self {
            Self::Percentile { percent } if !(percent > 0.0 && percent <= 100.0) => Err(
                ObserverError::invalid_config(format!("percentile {percent} is not in (0, 100]")),
            ),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramObserver {
    method: RangeMethod,
    bins: usize,
    histogram: Option<Histogram>,
}

impl HistogramObserver {
    /// An observer with TensorRT's 2048 bins.
    pub fn new(method: RangeMethod) -> Result<Self, ObserverError> {
        Self::with_bins(method, DEFAULT_BINS)
    }

    pub fn with_bins(method: RangeMethod, bins: usize) -> Result<Self, ObserverError> {
        method.validate()?;
        check_bins(bins)?;
        Ok(Self {
            method,
            bins,
            histogram: None,
        })
    }

    pub fn method(&self) -> RangeMethod {
        self.method
    }

    /// The histogram so far (`None` before the first batch).
    pub fn histogram(&self) -> Option<&Histogram> {
        self.histogram.as_ref()
    }
}

impl Observer for HistogramObserver {
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        match &mut self.histogram {
            Some(h) => h.add(t.data()),
            None => {
                self.histogram = Some(Histogram::of_batch(t.data(), self.bins)?);
                Ok(())
            }
        }
    }

    fn granularity(&self) -> Granularity {
        Granularity::PerTensor
    }

    fn ranges(&self, scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError> {
        self.method.validate()?;
        let h = self.histogram.as_ref().ok_or(ObserverError::NoData)?;
        if h.bins() != self.bins {
            return Err(ObserverError::invalid_state(format!(
                "observer has {} bins, its histogram {}",
                self.bins,
                h.bins()
            )));
        }
        let range = match self.method {
            RangeMethod::Entropy => entropy_range(h, scheme)?,
            RangeMethod::Percentile { percent } => percentile_range(h, percent, scheme.mapping),
            RangeMethod::Mse => mse_range(h, scheme)?,
        };
        Ok(vec![range])
    }

    fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        if self.method != other.method || self.bins != other.bins {
            return Err(ObserverError::merge_mismatch(format!(
                "{:?} with {} bins and {:?} with {} bins",
                self.method, self.bins, other.method, other.bins
            )));
        }
        match (&mut self.histogram, &other.histogram) {
            (Some(a), Some(b)) => a.merge(b)?,
            (a @ None, b) => a.clone_from(b),
            (Some(_), None) => {}
        }
        Ok(())
    }
}

/// The percentile range (see [`RangeMethod::Percentile`]), monotone in `percent`.
fn percentile_range(h: &Histogram, percent: f64, mapping: Mapping) -> (f32, f32) {
    let q = percent / 100.0;
    let (min, max) = h.range();
    let (lo, hi) = match mapping {
        Mapping::Symmetric => {
            let t = h.magnitudes().quantile(q);
            (-t, t)
        }
        Mapping::Asymmetric => {
            let b = h.signed();
            (b.quantile(1.0 - q).min(0.0), b.quantile(q).max(0.0))
        }
    };
    (lo.clamp(min, max), hi.clamp(min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use cinder_tensor::TensorBuf;

    fn observer(method: RangeMethod, data: Vec<f32>) -> HistogramObserver {
        let mut o = HistogramObserver::new(method).unwrap();
        o.observe(&TensorBuf::from_vec(data)).unwrap();
        o
    }

    #[test]
    fn percentile_clips_gaussian_outliers() {
        let data = Rng::new(9).normals_with_outliers(100_000, 5, 40.0);
        let o = observer(RangeMethod::Percentile { percent: 99.99 }, data);
        let [(lo, hi)] = o.ranges(&QuantScheme::activations_uint8()).unwrap()[..] else {
            panic!("one range expected")
        };
        // The 0.01% tails of a unit Gaussian start at 3.72.
        assert!(
            (3.3..4.2).contains(&hi) && (-4.2..-3.3).contains(&lo),
            "{lo} {hi}"
        );
        let s8 = QuantScheme::weights_int8(Granularity::PerTensor);
        let [(lo, hi)] = o.ranges(&s8).unwrap()[..] else {
            panic!("one range expected")
        };
        // |x| beyond 3.89 has probability 1e-4.
        assert!((3.5..4.3).contains(&hi) && lo == -hi, "{lo} {hi}");
        let all = observer(
            RangeMethod::Percentile { percent: 100.0 },
            vec![-2.0, 1.0, 7.0],
        );
        assert_eq!(all.ranges(&s8).unwrap(), vec![(-2.0, 7.0)]);
    }

    #[test]
    fn bad_configurations_and_states_are_errors() {
        for percent in [0.0, -1.0, 100.5, f64::NAN] {
            assert!(HistogramObserver::new(RangeMethod::Percentile { percent }).is_err());
        }
        assert!(HistogramObserver::with_bins(RangeMethod::Mse, 1).is_err());
        let empty = HistogramObserver::new(RangeMethod::Mse).unwrap();
        assert_eq!(
            empty.ranges(&QuantScheme::activations_uint8()),
            Err(ObserverError::NoData)
        );
        let mut a = observer(RangeMethod::Mse, vec![1.0]);
        let b = observer(RangeMethod::Entropy, vec![1.0]);
        assert!(matches!(
            a.merge(&b),
            Err(ObserverError::MergeMismatch { .. })
        ));
        let mut json = serde_json::to_value(&a).unwrap();
        json["bins"] = 4096.into();
        let edited: HistogramObserver = serde_json::from_value(json).unwrap();
        assert!(matches!(
            edited.ranges(&QuantScheme::activations_uint8()),
            Err(ObserverError::InvalidState { .. })
        ));
    }
}
