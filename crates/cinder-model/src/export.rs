//! The hand-off to the crates that do not know burn.
//!
//! - [`BurnData`]: burn's `TensorData` (f32) behind the common [`cinder_tensor::Tensor`]
//!   trait, so observers and the runtime read burn outputs without copying or knowing burn.
//! - [`Activations`]: the graph input and every node's output of one forward pass, keyed
//!   by node name, for calibration.
//!
//! The trained model itself leaves as a [`cinder_tensor::graph::FloatGraph`]
//! ([`crate::GraphNet::to_float_graph`]).

use burn::tensor::{Tensor, TensorData};
use cinder_tensor::{Tensor as _, TensorBuf};

use crate::error::ModelError;

/// Name of the graph input in [`Activations`].
pub const INPUT_NAME: &str = cinder_tensor::graph::INPUT;

/// burn tensor data holding f32, readable through the common tensor trait.
#[derive(Debug, Clone)]
pub struct BurnData {
    data: TensorData,
    shape: Vec<usize>,
}

impl BurnData {
    /// Wraps `data`, converting any float or integer dtype to f32 and checking that the
    /// elements are readable on the host (so [`cinder_tensor::Tensor::data`] cannot fail).
    pub fn new(data: TensorData) -> Result<Self, ModelError> {
        let data = data.convert::<f32>();
        data.as_slice::<f32>()
            .map_err(|e| ModelError::Data(format!("f32 elements not readable: {e:?}")))?;
        let shape = data.shape().as_slice().to_vec();
        Ok(Self { data, shape })
    }

    /// Reads a burn tensor back to the host.
    pub fn from_tensor<const D: usize>(tensor: &Tensor<D>) -> Result<Self, ModelError> {
        Self::new(tensor.to_data())
    }

    pub fn tensor_data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_tensor_data(self) -> TensorData {
        self.data
    }

    /// An owned copy as the workspace's interchange buffer.
    pub fn to_buf(&self) -> TensorBuf<f32> {
        TensorBuf::new(self.shape.clone(), self.data().to_vec())
            .expect("shape and data come from one TensorData")
    }
}

impl cinder_tensor::Tensor<f32> for BurnData {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> &[f32] {
        self.data
            .as_slice::<f32>()
            .expect("checked readable as f32 in BurnData::new")
    }
}

/// Activations of one forward pass in graph order: [`INPUT_NAME`], then each node's output.
#[derive(Debug, Clone, Default)]
pub struct Activations {
    entries: Vec<(String, BurnData)>,
    error: Option<String>,
}

impl Activations {
    pub(crate) fn push(&mut self, name: &str, data: TensorData) {
        match BurnData::new(data) {
            Ok(d) => self.entries.push((name.to_owned(), d)),
            Err(e) => self.error = Some(format!("activation `{name}`: {e}")),
        }
    }

    pub(crate) fn finish(&self) -> Result<(), ModelError> {
        self.error
            .clone()
            .map_or(Ok(()), |e| Err(ModelError::Data(e)))
    }

    pub fn get(&self, name: &str) -> Option<&BurnData> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// `(name, activation)` pairs in graph order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BurnData)> {
        self.entries.iter().map(|(n, d)| (n.as_str(), d))
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn into_entries(self) -> Vec<(String, BurnData)> {
        self.entries
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
pub(crate) fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// Reads a tensor back to the host as f32.
pub fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(
            transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3),
            vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }
}
