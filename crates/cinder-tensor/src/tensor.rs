//! The common tensor trait and its owned implementation.
//!
//! A tensor here is a shape plus contiguous row-major elements. Observers, the int8
//! runtime and the datasets take anything that implements [`Tensor`]; `cinder-model`
//! implements it for burn's tensor data, so no crate below it needs to know burn.

use serde::{Deserialize, Serialize};

use crate::error::TensorError;

/// The element types cinder moves between crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I8,
    U8,
    I32,
}

/// A scalar that a [`Tensor`] can hold.
pub trait Element: Copy + Default + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    const DTYPE: DType;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
}
impl Element for i8 {
    const DTYPE: DType = DType::I8;
}
impl Element for u8 {
    const DTYPE: DType = DType::U8;
}
impl Element for i32 {
    const DTYPE: DType = DType::I32;
}

/// Read access to a shaped, contiguous, row-major buffer.
pub trait Tensor<T: Element> {
    fn shape(&self) -> &[usize];
    /// All elements in row-major order; `data().len()` equals the product of `shape()`.
    fn data(&self) -> &[T];

    fn rank(&self) -> usize {
        self.shape().len()
    }
    fn len(&self) -> usize {
        self.data().len()
    }
    fn is_empty(&self) -> bool {
        self.data().is_empty()
    }
}

/// An owned tensor: the interchange type between cinder's crates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorBuf<T> {
    shape: Vec<usize>,
    data: Vec<T>,
}

/// Number of elements a shape holds, or an error when it overflows.
pub fn shape_len(shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| TensorError::ShapeOverflow {
            shape: shape.to_vec(),
        })
}

impl<T: Element> TensorBuf<T> {
    pub fn new(shape: Vec<usize>, data: Vec<T>) -> Result<Self, TensorError> {
        let expected = shape_len(&shape)?;
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                shape,
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Result<Self, TensorError> {
        let len = shape_len(&shape)?;
        Ok(Self {
            shape,
            data: vec![T::default(); len],
        })
    }

    /// A rank-1 tensor over `data`.
    pub fn from_vec(data: Vec<T>) -> Self {
        Self {
            shape: vec![data.len()],
            data,
        }
    }

    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, Vec<T>) {
        (self.shape, self.data)
    }

    /// The same elements under another shape with the same element count.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self, TensorError> {
        if shape_len(&shape)? != self.data.len() {
            return Err(TensorError::ReshapeMismatch {
                from: self.shape,
                to: shape,
            });
        }
        Ok(Self {
            shape,
            data: self.data,
        })
    }

    /// Applies `f` to every element, keeping the shape.
    pub fn map<U: Element>(&self, f: impl FnMut(T) -> U) -> TensorBuf<U> {
        TensorBuf {
            shape: self.shape.clone(),
            data: self.data.iter().copied().map(f).collect(),
        }
    }
}

impl<T: Element> Tensor<T> for TensorBuf<T> {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> &[T] {
        &self.data
    }
}

/// A borrowed view: lets callers hand a slice and a shape to anything taking [`Tensor`].
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a, T> {
    shape: &'a [usize],
    data: &'a [T],
}

impl<'a, T: Element> TensorRef<'a, T> {
    pub fn new(shape: &'a [usize], data: &'a [T]) -> Result<Self, TensorError> {
        let expected = shape_len(shape)?;
        if expected != data.len() {
            return Err(TensorError::LengthMismatch {
                shape: shape.to_vec(),
                expected,
                actual: data.len(),
            });
        }
        Ok(Self { shape, data })
    }
}

impl<T: Element> Tensor<T> for TensorRef<'_, T> {
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> &[T] {
        self.data
    }
}

/// How a flat row-major index splits around `axis`: `outer` blocks, each of
/// `channels` runs of `inner` contiguous elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisLayout {
    pub outer: usize,
    pub channels: usize,
    pub inner: usize,
}

impl AxisLayout {
    pub fn new(shape: &[usize], axis: usize) -> Result<Self, TensorError> {
        if axis >= shape.len() {
            return Err(TensorError::AxisOutOfRange {
                axis,
                rank: shape.len(),
            });
        }
        Ok(Self {
            outer: shape_len(&shape[..axis])?,
            channels: shape[axis],
            inner: shape_len(&shape[axis + 1..])?,
        })
    }

    /// The channel that flat index `i` belongs to.
    pub fn channel_of(&self, i: usize) -> usize {
        (i / self.inner.max(1)) % self.channels.max(1)
    }

    /// Calls `f(channel, run)` for every contiguous run of one channel, in memory order.
    pub fn for_each_run<'a, T>(&self, data: &'a [T], mut f: impl FnMut(usize, &'a [T])) {
        if self.inner == 0 {
            return;
        }
        for (run_index, run) in data.chunks_exact(self.inner).enumerate() {
            f(run_index % self.channels, run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(TensorBuf::new(vec![2, 3], vec![0f32; 6]).is_ok());
        assert_eq!(
            TensorBuf::new(vec![2, 3], vec![0f32; 5]),
            Err(TensorError::LengthMismatch {
                shape: vec![2, 3],
                expected: 6,
                actual: 5
            })
        );
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        let r = TensorBuf::<u8>::zeros(vec![usize::MAX, 2]);
        assert!(matches!(r, Err(TensorError::ShapeOverflow { .. })));
    }

    #[test]
    fn reshape_keeps_data() {
        let t = TensorBuf::new(vec![2, 3], (0..6).collect::<Vec<i32>>()).unwrap();
        let r = t.clone().reshape(vec![3, 2]).unwrap();
        assert_eq!(r.data(), t.data());
        assert_eq!(r.shape(), &[3, 2]);
        assert!(t.reshape(vec![4]).is_err());
    }

    #[test]
    fn axis_layout_finds_channels() {
        let l = AxisLayout::new(&[2, 3, 4], 1).unwrap();
        assert_eq!((l.outer, l.channels, l.inner), (2, 3, 4));
        assert_eq!(l.channel_of(0), 0);
        assert_eq!(l.channel_of(4), 1);
        assert_eq!(l.channel_of(12), 0);
        assert!(AxisLayout::new(&[2], 1).is_err());
        let data: Vec<usize> = (0..24).collect();
        let mut seen = vec![];
        l.for_each_run(&data, |c, run| seen.push((c, run[0])));
        assert_eq!(
            seen,
            vec![(0, 0), (1, 4), (2, 8), (0, 12), (1, 16), (2, 20)]
        );
    }
}
