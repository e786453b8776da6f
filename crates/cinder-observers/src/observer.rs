//! The observer contract: fed float tensors batch after batch, an observer chooses a
//! range per tensor (or per channel) and turns it into quantization parameters.

use cinder_tensor::{Granularity, QuantScheme, Tensor, TensorQuantParams};

use crate::error::ObserverError;

/// A calibration observer.
///
/// `observe` either takes the whole batch or leaves the state untouched and returns an
/// error (empty tensor, non-finite value, changed channel count). Ranges depend on the
/// scheme for range choosers that weigh rounding against clipping (entropy, MSE).
pub trait Observer {
    /// Feeds one batch.
    fn observe(&mut self, t: &dyn Tensor<f32>) -> Result<(), ObserverError>;

    /// The granularity of the statistics this observer keeps.
    fn granularity(&self) -> Granularity;

    /// The chosen range, one `(min, max)` per channel (one in all for per-tensor
    /// observers). Always finite and ordered, and inside the observed extremes.
    fn ranges(&self, scheme: &QuantScheme) -> Result<Vec<(f32, f32)>, ObserverError>;

    /// Quantization parameters for `scheme`.
    ///
    /// A per-tensor scheme over a per-channel observer uses the union of the channel
    /// ranges; a per-channel scheme needs a per-channel observer on the same axis.
    fn params(&self, scheme: &QuantScheme) -> Result<TensorQuantParams, ObserverError> {
        if scheme.granularity != Granularity::PerTensor && scheme.granularity != self.granularity()
        {
            return Err(ObserverError::GranularityMismatch {
                requested: scheme.granularity,
                observed: self.granularity(),
            });
        }
        let ranges = self.ranges(scheme)?;
        Ok(TensorQuantParams::from_ranges(&ranges, scheme)?)
    }

    /// Folds in the statistics of `other`, as if this observer had also seen its batches.
    fn merge(&mut self, other: &Self) -> Result<(), ObserverError>
    where
        Self: Sized;
}
