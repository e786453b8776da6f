//! The observer side of post-training calibration: one observer per named activation
//! tensor, fed batch after batch, summed up as a [`CalibrationTable`].
//!
//! The driver (which runs the float model) calls [`Calibrator::observe`] for every
//! quantization point of every batch and [`Calibrator::add_samples`] once per batch.
//! Calibrators of disjoint batches (one per thread) merge into the calibrator of all.

use std::collections::BTreeMap;

use cinder_tensor::{Granularity, QuantParams, QuantScheme, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ObserverError;
use crate::observer::Observer;
use crate::spec::{AnyObserver, ObserverSpec};
use crate::table::{CalibrationTable, TensorRange};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibrator {
    spec: ObserverSpec,
    scheme: QuantScheme,
    samples: usize,
    observers: BTreeMap<String, AnyObserver>,
}

impl Calibrator {
    /// A calibrator for activations: `scheme` must be per tensor, as the table is.
    pub fn new(spec: ObserverSpec, scheme: QuantScheme) -> Result<Self, ObserverError> {
        if scheme.granularity != Granularity::PerTensor {
            return Err(ObserverError::GranularityMismatch {
                requested: scheme.granularity,
                observed: Granularity::PerTensor,
            });
        }
        spec.build(Granularity::PerTensor)?;
        Ok(Self {
            spec,
            scheme,
            samples: 0,
            observers: BTreeMap::new(),
        })
    }

    pub fn spec(&self) -> ObserverSpec {
        self.spec
    }

    pub fn scheme(&self) -> &QuantScheme {
        &self.scheme
    }

    /// Feeds one batch of tensor `name`; errors name the tensor.
    pub fn observe(&mut self, name: &str, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        let result = match self.observers.get_mut(name) {
            Some(o) => o.observe(t),
            None => self.spec.build(Granularity::PerTensor).and_then(|mut o| {
                o.observe(t)?;
                self.observers.insert(name.to_owned(), o);
                Ok(())
            }),
        };
        result.map_err(|e| e.in_tensor(name))
    }

    /// Counts calibration samples (images), for the table.
    pub fn add_samples(&mut self, samples: usize) {
        self.samples += samples;
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    pub fn observer(&self, name: &str) -> Option<&AnyObserver> {
        self.observers.get(name)
    }

    /// Takes in the batches `other` saw.
    pub fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        if self.spec != other.spec || self.scheme != other.scheme {
            return Err(ObserverError::merge_mismatch(format!(
                "calibrators `{}` {:?} and `{}` {:?}",
                self.spec, self.scheme, other.spec, other.scheme
            )));
        }
        for (name, o) in &other.observers {
            match self.observers.get_mut(name) {
                Some(mine) => mine.merge(o).map_err(|e| e.in_tensor(name))?,
                None => {
                    self.observers.insert(name.clone(), o.clone());
                }
            }
        }
        self.samples += other.samples;
        Ok(())
    }

    /// The chosen range and parameters of every observed tensor.
    pub fn table(&self) -> Result<CalibrationTable, ObserverError> {
        let mut table = CalibrationTable::new(self.spec.to_string(), self.scheme, self.samples);
        for (name, o) in &self.observers {
            let range = self.range(o).map_err(|e| e.in_tensor(name))?;
            table.tensors.insert(name.clone(), range);
        }
        Ok(table)
    }

    fn range(&self, o: &AnyObserver) -> Result<TensorRange, ObserverError> {
        let [(min, max)] = o.ranges(&self.scheme)?[..] else {
            return Err(ObserverError::invalid_state(format!(
                "a {} observer does not give one range per tensor",
                o.kind()
            )));
        };
        Ok(TensorRange {
            min,
            max,
            params: QuantParams::from_range(min, max, &self.scheme)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::GRAPH_INPUT;
    use crate::testutil::Rng;
    use cinder_tensor::TensorBuf;

    fn batch(seed: u64, shape: Vec<usize>) -> TensorBuf<f32> {
        let n = shape.iter().product();
        TensorBuf::new(shape, Rng::new(seed).normals(n)).unwrap()
    }

    fn calibrate(spec: &str, seeds: &[u64]) -> Calibrator {
        let mut c =
            Calibrator::new(spec.parse().unwrap(), QuantScheme::activations_uint8()).unwrap();
        for &seed in seeds {
            let input = batch(seed, vec![2, 3, 4, 4]);
            let relu = input.map(|x| x.max(0.0));
            c.observe(GRAPH_INPUT, &input).unwrap();
            c.observe("relu1", &relu).unwrap();
            c.add_samples(2);
        }
        c
    }

    #[test]
    fn table_holds_every_tensor_and_round_trips() {
        for spec in [
            "minmax",
            "moving-average",
            "entropy",
            "percentile=99.99",
            "mse",
        ] {
            let table = calibrate(spec, &[1, 2, 3]).table().unwrap();
            assert_eq!(table.observer, spec);
            assert_eq!(table.samples, 6);
            assert_eq!(
                table.tensors.keys().collect::<Vec<_>>(),
                vec!["input", "relu1"]
            );
            let relu = table.get("relu1").unwrap();
            assert_eq!(relu.min, 0.0);
            assert_eq!(relu.params.zero_point, 0, "{spec}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("calib.json");
            table.save(&path).unwrap();
            assert_eq!(CalibrationTable::load(&path).unwrap(), table);
        }
    }

    #[test]
    fn per_thread_calibrators_merge_into_one() {
        for spec in ["minmax", "entropy", "mse"] {
            let mut a = calibrate(spec, &[1, 2]);
            a.merge(&calibrate(spec, &[3])).unwrap();
            assert_eq!(a, calibrate(spec, &[1, 2, 3]));
        }
        let mut a = calibrate("minmax", &[1]);
        assert!(matches!(
            a.merge(&calibrate("mse", &[1])),
            Err(ObserverError::MergeMismatch { .. })
        ));
    }

    #[test]
    fn errors_name_the_tensor_and_leave_no_trace() {
        let mut c = calibrate("entropy", &[1]);
        let bad = TensorBuf::from_vec(vec![1.0, f32::INFINITY]);
        let err = c.observe("conv2", &bad).unwrap_err();
        assert!(err.to_string().contains("conv2"), "{err}");
        assert!(c.observer("conv2").is_none());
        assert!(c.table().is_ok());
        let per_channel = QuantScheme::weights_int8(Granularity::PerChannel { axis: 0 });
        assert!(Calibrator::new(ObserverSpec::MinMax, per_channel).is_err());
    }
}
