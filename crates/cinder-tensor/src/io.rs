//! Files: atomic writes, and typed tensors in safetensors files.
//!
//! Every error names the file, and where it applies the tensor and what was expected,
//! so that a corrupt or hand-edited file is diagnosed without a debugger.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

use crate::tensor::{Element, Tensor, TensorBuf, shape_len};

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    SafeTensors { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has dtype {actual}, expected {expected}")]
    WrongDtype {
        path: PathBuf,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
}

impl FileError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the new one, never a
/// torn one: a temporary file in the same directory, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| FileError::io(dir, e))?;
    let file_name = path
        .file_name()
        .map_or_else(|| "cinder".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        FileError::io(path, e)
    })
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| FileError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Reads and parses a JSON file, naming the file and the position of any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = std::fs::read(path).map_err(|e| FileError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| FileError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// An element type that safetensors can store.
pub trait StoredElement: Element {
    const STORED: Dtype;
    const SIZE: usize;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! impl_stored {
    ($t:ty, $d:expr) => {
        impl StoredElement for $t {
            const STORED: Dtype = $d;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("chunk of SIZE bytes"))
            }
        }
    };
}
impl_stored!(f32, Dtype::F32);
impl_stored!(i8, Dtype::I8);
impl_stored!(u8, Dtype::U8);
impl_stored!(i32, Dtype::I32);

/// A named tensor ready to be written: dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl StoredTensor {
    pub fn from_tensor<T: StoredElement>(t: &impl Tensor<T>) -> Self {
        let mut bytes = Vec::with_capacity(t.len() * T::SIZE);
        for &x in t.data() {
            x.write_le(&mut bytes);
        }
        Self {
            dtype: T::STORED,
            shape: t.shape().to_vec(),
            bytes,
        }
    }
}

impl safetensors::View for &StoredTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes named tensors (and optional string metadata) atomically as safetensors.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, StoredTensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), FileError> {
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| FileError::SafeTensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// A safetensors file read into memory, with typed, checked access by name.
pub struct TensorArchive {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorArchive {
    /// Reads and validates the header (truncation and corrupt headers fail here).
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let bytes = std::fs::read(path).map_err(|e| FileError::io(path, e))?;
        let archive = Self {
            path: path.to_path_buf(),
            bytes,
        };
        archive.parse()?;
        Ok(archive)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parse(&self) -> Result<SafeTensors<'_>, FileError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| FileError::SafeTensors {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    pub fn names(&self) -> Result<Vec<String>, FileError> {
        let st = self.parse()?;
        let mut names: Vec<String> = st.names().into_iter().map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    /// The file's string metadata (`__metadata__`), empty when there is none.
    pub fn metadata(&self) -> Result<HashMap<String, String>, FileError> {
        let (_, metadata) =
            SafeTensors::read_metadata(&self.bytes).map_err(|e| FileError::SafeTensors {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(metadata.metadata().clone().unwrap_or_default())
    }

    /// Tensor `name` as element type `T`, checked against `expected_shape` when given.
    pub fn get<T: StoredElement>(
        &self,
        name: &str,
        expected_shape: Option<&[usize]>,
    ) -> Result<TensorBuf<T>, FileError> {
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|_| FileError::MissingTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })?;
        if view.dtype() != T::STORED {
            return Err(FileError::WrongDtype {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: format!("{:?}", T::STORED),
                actual: format!("{:?}", view.dtype()),
            });
        }
        let shape = view.shape().to_vec();
        let shape_ok = shape_len(&shape).is_ok_and(|n| n * T::SIZE == view.data().len());
        if expected_shape.is_some_and(|e| e != shape.as_slice()) || !shape_ok {
            return Err(FileError::WrongShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: expected_shape.map_or_else(|| shape.clone(), <[usize]>::to_vec),
                actual: shape,
            });
        }
        let data = view.data().chunks_exact(T::SIZE).map(T::read_le).collect();
        Ok(TensorBuf::new(shape, data).expect("length checked above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = TensorBuf::new(vec![2, 2], vec![1.0f32, -2.0, 3.5, 0.0]).unwrap();
        let b = TensorBuf::new(vec![3], vec![-128i8, 0, 127]).unwrap();
        let meta = HashMap::from([("format".to_owned(), "test".to_owned())]);
        save_safetensors(
            &path,
            &[
                ("a".into(), StoredTensor::from_tensor(&a)),
                ("b".into(), StoredTensor::from_tensor(&b)),
            ],
            Some(meta.clone()),
        )
        .unwrap();
        let archive = TensorArchive::open(&path).unwrap();
        assert_eq!(archive.names().unwrap(), vec!["a", "b"]);
        assert_eq!(archive.metadata().unwrap(), meta);
        assert_eq!(archive.get::<f32>("a", Some(&[2, 2])).unwrap(), a);
        assert_eq!(archive.get::<i8>("b", None).unwrap(), b);
        assert!(matches!(
            archive.get::<f32>("c", None),
            Err(FileError::MissingTensor { .. })
        ));
        assert!(matches!(
            archive.get::<i8>("a", None),
            Err(FileError::WrongDtype { .. })
        ));
        assert!(matches!(
            archive.get::<f32>("a", Some(&[4])),
            Err(FileError::WrongShape { .. })
        ));
    }

    #[test]
    fn truncated_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let a = TensorBuf::new(vec![4], vec![1.0f32; 4]).unwrap();
        save_safetensors(&path, &[("a".into(), StoredTensor::from_tensor(&a))], None).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = TensorArchive::open(&path).err().unwrap();
        assert!(matches!(err, FileError::SafeTensors { .. }));
        assert!(err.to_string().contains("t.safetensors"));
        assert!(matches!(
            TensorArchive::open(&dir.path().join("none")),
            Err(FileError::Io { .. })
        ));
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        write_json_atomic(&path, &vec![1, 2, 3]).unwrap();
        write_json_atomic(&path, &vec![4]).unwrap();
        assert_eq!(read_json::<Vec<i32>>(&path).unwrap(), vec![4]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, b"[1,").unwrap();
        assert!(matches!(
            read_json::<Vec<i32>>(&path),
            Err(FileError::Json { .. })
        ));
    }
}
