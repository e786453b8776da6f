//! Calibration observers: they watch float tensors batch after batch and decide the
//! quantization ranges. Written against `cinder_tensor::Tensor` (never burn), so the int8
//! runtime's dynamic mode reuses the same code at run time.
//!
//! - [`min_max`]: the vectorized range scan the runtime calls on every activation.
//! - [`Observer`] and its implementations: [`MinMaxObserver`],
//!   [`MovingAverageMinMaxObserver`], [`PerChannelMinMaxObserver`] and
//!   [`HistogramObserver`] with an entropy, percentile or MSE [`RangeMethod`]; all
//!   serializable and mergeable. [`ObserverSpec`] parses the command-line names into an
//!   [`AnyObserver`].
//! - [`Calibrator`]: one observer per named activation, producing a
//!   [`CalibrationTable`].
//! - [`quantize_weight`]: weight codes per tensor or per output channel.
//! - [`ErrorReport`], [`weight_errors`], [`ActivationErrors`]: per-layer error report.

mod calibrator;
mod entropy;
pub mod error;
mod hist_observer;
mod histogram;
mod minmax;
mod mse;
mod observer;
#[cfg(test)]
mod properties;
mod report;
mod scan;
mod search;
mod spec;
pub mod table;
#[cfg(test)]
mod testutil;
mod weights;

pub use calibrator::Calibrator;
pub use error::{ObserverError, SpecError};
pub use hist_observer::{HistogramObserver, RangeMethod};
pub use histogram::{DEFAULT_BINS, Histogram, MAX_BINS};
pub use minmax::{
    DEFAULT_AVERAGING_CONSTANT, MinMaxObserver, MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
};
pub use observer::Observer;
pub use report::{ActivationErrors, ErrorReport, REPORT_FORMAT_VERSION, weight_errors};
pub use scan::min_max;
pub use spec::{AnyObserver, ObserverSpec};
pub use table::{CalibrationTable, GRAPH_INPUT, TensorRange, quantization_points};
pub use weights::{QuantizedWeight, quantize_weight, weight_params};
