//! Observers by name: the spec strings of the command line (`minmax`, `moving-average`,
//! `entropy`, `percentile=99.99`, `mse`) and [`AnyObserver`], one serializable type
//! for all of them.

use std::fmt;
use std::str::FromStr;

use cinder_tensor::{Granularity, QuantScheme, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{ObserverError, SpecError};
use crate::hist_observer::{HistogramObserver, RangeMethod};
use crate::minmax::{
    DEFAULT_AVERAGING_CONSTANT, MinMaxObserver, MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
};
use crate::observer::Observer;

/// Which observer to build, as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ObserverSpec {
    MinMax,
    /// `moving-average` (PyTorch's constant 0.01) or `moving-average=C`.
    MovingAverage {
        averaging_constant: f32,
    },
    Entropy,
    /// `percentile=P`, `P` in `(0, 100]`.
    Percentile {
        percent: f64,
    },
    Mse,
}

impl ObserverSpec {
    /// A fresh observer. Per-channel granularity is supported by `minmax` only (weights).
    pub fn build(&self, granularity: Granularity) -> Result<AnyObserver, ObserverError> {
        if let Granularity::PerChannel { axis } = granularity {
            return match self {
                Self::MinMax => Ok(AnyObserver::PerChannelMinMax(
                    PerChannelMinMaxObserver::new(axis),
                )),
                _ => Err(ObserverError::invalid_config(format!(
                    "observer `{self}` has no per-channel variant; use minmax"
                ))),
            };
        }
        let histogram = |method| HistogramObserver::new(method).map(AnyObserver::Histogram);
        match *self {
            Self::MinMax => Ok(AnyObserver::MinMax(MinMaxObserver::new())),
            Self::MovingAverage { averaging_constant } => {
                MovingAverageMinMaxObserver::new(averaging_constant).map(AnyObserver::MovingAverage)
            }
            Self::Entropy => histogram(RangeMethod::Entropy),
            Self::Percentile { percent } => histogram(RangeMethod::Percentile { percent }),
            Self::Mse => histogram(RangeMethod::Mse),
        }
    }
}

impl FromStr for ObserverSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let (name, value) = match s.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        let no_value = |spec: Self, name: &'static str| match value {
            None => Ok(spec),
            Some(v) => Err(SpecError::UnexpectedValue {
                name,
                value: v.to_owned(),
            }),
        };
        match name {
            "minmax" => no_value(Self::MinMax, "minmax"),
            "entropy" => no_value(Self::Entropy, "entropy"),
            "mse" => no_value(Self::Mse, "mse"),
            "moving-average" => {
                let averaging_constant = match value {
                    None => DEFAULT_AVERAGING_CONSTANT,
                    Some(v) => parse_in(v, "moving-average", "a number in (0, 1]", |c: f32| {
                        c > 0.0 && c <= 1.0
                    })?,
                };
                Ok(Self::MovingAverage { averaging_constant })
            }
            "percentile" => {
                let v = value.ok_or(SpecError::MissingValue { name: "percentile" })?;
                let percent = parse_in(v, "percentile", "a number in (0, 100]", |p: f64| {
                    p > 0.0 && p <= 100.0
                })?;
                Ok(Self::Percentile { percent })
            }
            _ => Err(SpecError::Unknown(s.to_owned())),
        }
    }
}

/// Parses `value` as a number accepted by `valid`.
fn parse_in<T: FromStr + Copy>(
    value: &str,
    name: &'static str,
    expected: &'static str,
    valid: impl Fn(T) -> bool,
) -> Result<T, SpecError> {
    value
        .parse::<T>()
        .ok()
        .filter(|&x| valid(x))
        .ok_or_else(|| SpecError::BadValue {
            name,
            value: value.to_owned(),
            expected,
        })
}

impl fmt::Display for ObserverSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MinMax => f.write_str("minmax"),
            Self::MovingAverage { averaging_constant }
                if *averaging_constant == DEFAULT_AVERAGING_CONSTANT =>
            {
                f.write_str("moving-average")
            }
            Self::MovingAverage { averaging_constant } => {
                write!(f, "moving-average={averaging_constant}")
            }
            Self::Entropy => f.write_str("entropy"),
            Self::Percentile { percent } => write!(f, "percentile={percent}"),
            Self::Mse => f.write_str("mse"),
        }
    }
}

impl TryFrom<String> for ObserverSpec {
    type Error = SpecError;

    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<ObserverSpec> for String {
    fn from(spec: ObserverSpec) -> Self {
        spec.to_string()
    }
}

/// Any observer, serializable with its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AnyObserver {
    MinMax(MinMaxObserver),
    MovingAverage(MovingAverageMinMaxObserver),
    PerChannelMinMax(PerChannelMinMaxObserver),
    Histogram(HistogramObserver),
}

impl AnyObserver {
    fn inner(&self) -> &dyn Observer {
        match self {
            Self::MinMax(o) => o,
            Self::MovingAverage(o) => o,
            Self::PerChannelMinMax(o) => o,
            Self::Histogram(o) => o,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Observer {
        match self {
            Self::MinMax(o) => o,
            Self::MovingAverage(o) => o,
            Self::PerChannelMinMax(o) => o,
            Self::Histogram(o) => o,
        }
    }
}

impl Observer for AnyObserver {
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        self.inner_mut().observe(t)
    }

    fn granularity(&self) -> Granularity {
        self.inner().granularity()
    }

    fn ranges(&self, scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError> {
        self.inner().ranges(scheme)
    }

    fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        match (self, other) {
            (Self::MinMax(a), Self::MinMax(b)) => a.merge(b),
            (Self::MovingAverage(a), Self::MovingAverage(b)) => a.merge(b),
            (Self::PerChannelMinMax(a), Self::PerChannelMinMax(b)) => a.merge(b),
            (Self::Histogram(a), Self::Histogram(b)) => a.merge(b),
            (a, b) => Err(ObserverError::merge_mismatch(format!(
                "a {} observer and a {} observer",
                a.kind(),
                b.kind()
            ))),
        }
    }
}

impl AnyObserver {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MinMax(_) => "min-max",
            Self::MovingAverage(_) => "moving-average",
            Self::PerChannelMinMax(_) => "per-channel min-max",
            Self::Histogram(_) => "histogram",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cinder_tensor::TensorBuf;

    #[test]
    fn specs_parse_and_print() {
        for (text, spec) in [
            ("minmax", ObserverSpec::MinMax),
            (
                "moving-average",
                ObserverSpec::MovingAverage {
                    averaging_constant: 0.01,
                },
            ),
            (
                "moving-average=0.1",
                ObserverSpec::MovingAverage {
                    averaging_constant: 0.1,
                },
            ),
            ("entropy", ObserverSpec::Entropy),
            (
                "percentile=99.99",
                ObserverSpec::Percentile { percent: 99.99 },
            ),
            ("mse", ObserverSpec::Mse),
        ] {
            assert_eq!(text.parse::<ObserverSpec>(), Ok(spec));
            assert_eq!(spec.to_string(), text);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ObserverSpec>(&json).unwrap(), spec);
        }
    }

    #[test]
    fn bad_specs_are_typed_errors() {
        assert_eq!(
            "kl".parse::<ObserverSpec>(),
            Err(SpecError::Unknown("kl".into()))
        );
        assert_eq!(
            "percentile".parse::<ObserverSpec>(),
            Err(SpecError::MissingValue { name: "percentile" })
        );
        assert!(matches!(
            "percentile=101".parse::<ObserverSpec>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "percentile=abc".parse::<ObserverSpec>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "moving-average=0".parse::<ObserverSpec>(),
            Err(SpecError::BadValue { .. })
        ));
        assert!(matches!(
            "mse=3".parse::<ObserverSpec>(),
            Err(SpecError::UnexpectedValue { .. })
        ));
        assert!(serde_json::from_str::<ObserverSpec>("\"median\"").is_err());
    }

    #[test]
    fn build_honours_granularity() {
        let per_channel = Granularity::PerChannel { axis: 0 };
        assert!(matches!(
            ObserverSpec::MinMax.build(per_channel),
            Ok(AnyObserver::PerChannelMinMax(_))
        ));
        assert!(ObserverSpec::Entropy.build(per_channel).is_err());
        assert!(matches!(
            ObserverSpec::Mse.build(Granularity::PerTensor),
            Ok(AnyObserver::Histogram(_))
        ));
    }

    #[test]
    fn any_observer_round_trips_and_refuses_mixed_merges() {
        let t = TensorBuf::new(vec![2, 3], vec![-1.0, 0.0, 2.0, 3.0, 0.5, -0.25]).unwrap();
        let scheme = QuantScheme::activations_uint8();
        for spec in crate::testutil::PER_TENSOR_SPECS {
            let mut o = spec
                .parse::<ObserverSpec>()
                .unwrap()
                .build(Granularity::PerTensor)
                .unwrap();
            o.observe(&t).unwrap();
            let json = serde_json::to_string(&o).unwrap();
            let back: AnyObserver = serde_json::from_str(&json).unwrap();
            assert_eq!(back, o, "{spec}");
            assert_eq!(back.params(&scheme).unwrap(), o.params(&scheme).unwrap());
        }
        let mut a = ObserverSpec::MinMax.build(Granularity::PerTensor).unwrap();
        let b = ObserverSpec::Mse.build(Granularity::PerTensor).unwrap();
        assert!(matches!(
            a.merge(&b),
            Err(ObserverError::MergeMismatch { .. })
        ));
    }
}
