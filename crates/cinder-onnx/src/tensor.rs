//! ONNX tensors (`TensorProto`) to and from cinder's tensors: float32 weights, the
//! int64 / float scalars some operators take as inputs, and the integer codes (int8, uint8,
//! int32) of quantized weights, biases and zero points.
//!
//! Nothing is allocated before the element count implied by the dimensions has been
//! checked against the bytes actually present in the file, so a hostile header cannot
//! make the importer allocate more than the file holds.

use cinder_tensor::{Tensor, TensorBuf};

use crate::error::OnnxError;
use crate::proto::TensorProto;
use crate::proto::tensor_proto::{DataLocation, DataType};

/// A float32 tensor's values and shape.
pub fn to_f32(t: &TensorProto) -> Result<TensorBuf<f32>, OnnxError> {
    let (shape, data) = values(t, DataType::Float, &t.float_data, f32::from_le_bytes)?;
    TensorBuf::new(shape, data).map_err(|e| bad(t, e.to_string()))
}

/// An int64 tensor's values (a shape operand), whatever its shape.
pub fn to_i64(t: &TensorProto) -> Result<Vec<i64>, OnnxError> {
    Ok(values(t, DataType::Int64, &t.int64_data, i64::from_le_bytes)?.1)
}

/// Shape and values of a tensor of type `expected`, stored either in its typed field
/// (`typed`) or as little-endian `raw_data` of `N` bytes per value.
fn values<T: Copy, const N: usize>(
    t: &TensorProto,
    expected: DataType,
    typed: &[T],
    from_le: fn([u8; N]) -> T,
) -> Result<(Vec<usize>, Vec<T>), OnnxError> {
    let shape = dims(t)?;
    let len = element_count(t, &shape)?;
    expect_type(t, expected)?;
    if t.raw_data.is_empty() {
        check_len(t, typed.len(), len)?;
        return Ok((shape, typed.to_vec()));
    }
    if !t.raw_data.len().is_multiple_of(N) {
        return Err(bad(t, format!("raw_data of {} bytes", t.raw_data.len())));
    }
    check_len(t, t.raw_data.len() / N, len)?;
    let data = t
        .raw_data
        .chunks_exact(N)
        .map(|b| from_le(b.try_into().expect("chunks of N bytes")))
        .collect();
    Ok((shape, data))
}

/// An integer tensor's element type (int8, uint8 or int32), shape and values.
pub fn to_codes(t: &TensorProto) -> Result<(DataType, Vec<usize>, Vec<i32>), OnnxError> {
    let kind = DataType::try_from(t.data_type).ok();
    let (shape, values) = match kind {
        Some(DataType::Int8) => values(t, DataType::Int8, &t.int32_data, |[b]: [u8; 1]| {
            i32::from(b as i8)
        })?,
        Some(DataType::Uint8) => values(t, DataType::Uint8, &t.int32_data, |[b]: [u8; 1]| {
            i32::from(b)
        })?,
        Some(DataType::Int32) => values(t, DataType::Int32, &t.int32_data, i32::from_le_bytes)?,
        _ => {
            return Err(bad(
                t,
                format!("data type {}, expected int8, uint8 or int32", t.data_type),
            ));
        }
    };
    Ok((kind.expect("matched above"), shape, values))
}

/// The one value of a float32 scalar (shape `[]` or `[1]`).
pub fn to_scalar(t: &TensorProto) -> Result<f32, OnnxError> {
    let values = to_f32(t)?;
    match values.data() {
        [v] => Ok(*v),
        _ => Err(bad(
            t,
            format!("shape {:?}, expected a scalar", values.shape()),
        )),
    }
}

/// A float32 initializer named `name` holding `values`.
pub fn from_f32(name: &str, values: &impl Tensor<f32>) -> TensorProto {
    from_f32_values(name, values.shape(), values.data())
}

/// An integer initializer of element type `kind` (int8, uint8 or int32) holding
/// `values`, which must fit that type.
pub fn from_codes(name: &str, kind: DataType, shape: &[usize], values: &[i32]) -> TensorProto {
    let raw_data = match kind {
        DataType::Int8 => values.iter().map(|&v| v as i8 as u8).collect(),
        DataType::Uint8 => values.iter().map(|&v| v as u8).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    TensorProto {
        name: name.to_owned(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: kind as i32,
        raw_data,
        ..TensorProto::default()
    }
}

/// A float32 initializer of `shape` holding `values`.
pub fn from_f32_values(name: &str, shape: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..TensorProto::default()
    }
}

fn dims(t: &TensorProto) -> Result<Vec<usize>, OnnxError> {
    if t.data_location == DataLocation::External as i32 || !t.external_data.is_empty() {
        return Err(bad(
            t,
            "data stored outside the file is not supported; save the model with all \
             tensors inside it"
                .into(),
        ));
    }
    if t.segment.is_some() {
        return Err(bad(t, "segmented tensors are not supported".into()));
    }
    t.dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(t, format!("dimension {d} is negative"))))
        .collect()
}

fn element_count(t: &TensorProto, shape: &[usize]) -> Result<usize, OnnxError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(t, format!("dimensions {shape:?} overflow")))
}

fn expect_type(t: &TensorProto, expected: DataType) -> Result<(), OnnxError> {
    if t.data_type == expected as i32 {
        return Ok(());
    }
    let found = DataType::try_from(t.data_type).map_or_else(
        |_| format!("unknown ({})", t.data_type),
        |d| format!("{d:?}"),
    );
    Err(bad(t, format!("data type {found}, expected {expected:?}")))
}

fn check_len(t: &TensorProto, present: usize, expected: usize) -> Result<(), OnnxError> {
    if present == expected {
        return Ok(());
    }
    Err(bad(
        t,
        format!(
            "holds {present} values, its dimensions {:?} need {expected}",
            t.dims
        ),
    ))
}

fn bad(t: &TensorProto, message: String) -> OnnxError {
    OnnxError::Tensor {
        name: t.name.clone(),
        message,
    }
}
