//! Range observers that keep extremes only: running min/max, its exponential moving
//! average (PyTorch's `MovingAverageMinMaxObserver`), and per-channel min/max.

use cinder_tensor::{AxisLayout, Granularity, QuantScheme, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::ObserverError;
use crate::observer::Observer;
use crate::scan::{finite_range, first_non_finite, min_max, union};

/// PyTorch's default averaging constant for the moving average of batch extremes.
pub const DEFAULT_AVERAGING_CONSTANT: f32 = 0.01;

/// The smallest and largest value ever seen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MinMaxObserver {
    range: Option<(f32, f32)>,
}

impl MinMaxObserver {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Observer for MinMaxObserver {
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        let batch = min_max(t.data())?;
        self.range = Some(self.range.map_or(batch, |r| union(r, batch)));
        Ok(())
    }

    fn granularity(&self) -> Granularity {
        Granularity::PerTensor
    }

    fn ranges(&self, _scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError> {
        Ok(vec![checked(self.range.ok_or(ObserverError::NoData)?)?])
    }

    fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        self.range = match (self.range, other.range) {
            (Some(a), Some(b)) => Some(union(a, b)),
            (a, b) => a.or(b),
        };
        Ok(())
    }
}

/// Exponential moving average of each batch's extremes:
/// `min += c * (batch_min - min)`, likewise for `max`; the first batch sets both.
///
/// Merging two observers takes the batch-count-weighted mean of their averages: exact
/// for the plain mean of batch extremes, an approximation of the moving average (which
/// depends on batch order by design).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingAverageMinMaxObserver {
    averaging_constant: f32,
    range: Option<(f32, f32)>,
    batches: u64,
}

impl MovingAverageMinMaxObserver {
    /// `averaging_constant` in `(0, 1]`; 1 keeps only the last batch.
    pub fn new(averaging_constant: f32) -> Result<Self, ObserverError> {
        if !(averaging_constant > 0.0 && averaging_constant <= 1.0) {
            return Err(ObserverError::invalid_config(format!(
                "averaging constant {averaging_constant} is not in (0, 1]"
            )));
        }
        Ok(Self {
            averaging_constant,
            range: None,
            batches: 0,
        })
    }

    pub fn averaging_constant(&self) -> f32 {
        self.averaging_constant
    }
}

impl Observer for MovingAverageMinMaxObserver {
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        let (lo, hi) = min_max(t.data())?;
        let c = self.averaging_constant;
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((min, max)) => (min + c * (lo - min), max + c * (hi - max)),
        });
        self.batches += 1;
        Ok(())
    }

    fn granularity(&self) -> Granularity {
        Granularity::PerTensor
    }

    fn ranges(&self, _scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError> {
        Ok(vec![checked(self.range.ok_or(ObserverError::NoData)?)?])
    }

    fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        if self.averaging_constant != other.averaging_constant {
            return Err(ObserverError::merge_mismatch(format!(
                "averaging constants {} and {}",
                self.averaging_constant, other.averaging_constant
            )));
        }
        self.range = match (self.range, other.range) {
            (Some(a), Some(b)) => Some(weighted_mean(a, self.batches, b, other.batches)),
            (a, b) => a.or(b),
        };
        self.batches += other.batches;
        Ok(())
    }
}

fn weighted_mean(a: (f32, f32), na: u64, b: (f32, f32), nb: u64) -> (f32, f32) {
    let (wa, wb) = (na.max(1) as f64, nb.max(1) as f64);
    let mean = |x: f32, y: f32| ((f64::from(x) * wa + f64::from(y) * wb) / (wa + wb)) as f32;
    (mean(a.0, b.0), mean(a.1, b.1))
}

/// The extremes of every slice along `axis` (weights: axis 0, the output channel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerChannelMinMaxObserver {
    axis: usize,
    ranges: Vec<(f32, f32)>,
}

impl PerChannelMinMaxObserver {
    pub fn new(axis: usize) -> Self {
        Self {
            axis,
            ranges: Vec::new(),
        }
    }

    pub fn axis(&self) -> usize {
        self.axis
    }

    /// The ranges of one batch, or an error without touching the state.
    fn batch_ranges(&self, t: &dyn Tensor<f32>) -> Result<Vec<(f32, f32)>, ObserverError> {
        let data = t.data();
        if data.is_empty() {
            return Err(ObserverError::EmptyTensor);
        }
        let layout = AxisLayout::new(t.shape(), self.axis)?;
        if !self.ranges.is_empty() && self.ranges.len() != layout.channels {
            return Err(ObserverError::ChannelCountChanged {
                axis: self.axis,
                observed: self.ranges.len(),
                found: layout.channels,
            });
        }
        let mut ranges: Vec<Option<(f32, f32)>> = vec![None; layout.channels];
        let mut finite = true;
        layout.for_each_run(data, |c, run| match finite_range(run) {
            Some(r) => ranges[c] = Some(ranges[c].map_or(r, |old| union(old, r))),
            None => finite = false,
        });
        if !finite {
            return Err(first_non_finite(data));
        }
        // A non-empty tensor has at least one run per channel.
        ranges
            .into_iter()
            .map(|r| r.ok_or(ObserverError::EmptyTensor))
            .collect()
    }
}

impl Observer for PerChannelMinMaxObserver {
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError> {
        let batch = self.batch_ranges(t)?;
        if self.ranges.is_empty() {
            self.ranges = batch;
        } else {
            for (r, b) in self.ranges.iter_mut().zip(batch) {
                *r = union(*r, b);
            }
        }
        Ok(())
    }

    fn granularity(&self) -> Granularity {
        Granularity::PerChannel { axis: self.axis }
    }

    fn ranges(&self, _scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError> {
        if self.ranges.is_empty() {
            return Err(ObserverError::NoData);
        }
        self.ranges.iter().map(|&r| checked(r)).collect()
    }

    fn merge(&mut self, other: &Self) -> Result<(), ObserverError> {
        if self.axis != other.axis {
            return Err(ObserverError::merge_mismatch(format!(
                "axes {} and {}",
                self.axis, other.axis
            )));
        }
        if self.ranges.is_empty() {
            self.ranges = other.ranges.clone();
        } else if !other.ranges.is_empty() {
            if self.ranges.len() != other.ranges.len() {
                return Err(ObserverError::ChannelCountChanged {
                    axis: self.axis,
                    observed: self.ranges.len(),
                    found: other.ranges.len(),
                });
            }
            for (r, &o) in self.ranges.iter_mut().zip(&other.ranges) {
                *r = union(*r, o);
            }
        }
        Ok(())
    }
}

/// Rejects a stored range that is not finite and ordered (a hand-edited state).
pub(crate) fn checked(range: (f32, f32)) -> Result<(f32, f32), ObserverError> {
    let (min, max) = range;
    if min.is_finite() && max.is_finite() && min <= max {
        Ok(range)
    } else {
        Err(ObserverError::invalid_state(format!(
            "range [{min}, {max}] is not finite and ordered"
        )))
    }
}
