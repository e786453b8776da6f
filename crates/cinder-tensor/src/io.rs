//! Files: atomic writes, and typed tensors in safetensors files.
//!
//! Every error names the file, and where it applies the tensor and what was expected,
//! so that a corrupt or hand-edited file is diagnosed without a debugger.

use std::collections::HashMap;
use std::io::{Read, Write};
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
    /// Well-formed JSON whose content is wrong: a missing or mistyped field, a value out
    /// of range.
    #[error("{path}: {message}")]
    Content { path: PathBuf, message: String },
    #[error("{path}: more than {limit} bytes: expected {expected}")]
    TooLarge {
        path: PathBuf,
        limit: u64,
        expected: &'static str,
    },
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

/// The largest JSON file [`read_json`] reads (manifests, tables, reports and configs are
/// far smaller).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads at most `limit` bytes from `reader` (the file at `path`): more is an error,
/// so a device or a runaway file is never read to the end.
pub fn read_bounded(
    path: &Path,
    reader: impl std::io::Read,
    limit: u64,
    expected: &'static str,
) -> Result<Vec<u8>, FileError> {
    let bytes = read_up_to(path, reader, limit.saturating_add(1))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
            expected,
        });
    }
    Ok(bytes)
}

/// The next (at most) `n` bytes of `reader`; fewer at its end. Memory grows with the
/// bytes actually read, never with `n`.
pub fn read_up_to(path: &Path, reader: impl std::io::Read, n: u64) -> Result<Vec<u8>, FileError> {
    let mut bytes = Vec::new();
    reader
        .take(n)
        .read_to_end(&mut bytes)
        .map_err(|e| FileError::io(path, e))?;
    Ok(bytes)
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_file_bounded(
    path: &Path,
    limit: u64,
    expected: &'static str,
) -> Result<Vec<u8>, FileError> {
    let file = std::fs::File::open(path).map_err(|e| FileError::io(path, e))?;
    read_bounded(path, file, limit, expected)
}

/// Parses JSON `bytes` read from `path`: a syntax error is reported as invalid JSON
/// with its position, a content error (missing field, wrong type, value out of range)
/// as it is.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<T, FileError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let path = path.to_path_buf();
        let message = e.to_string();
        match e.classify() {
            serde_json::error::Category::Data => FileError::Content { path, message },
            _ => FileError::Json { path, message },
        }
    })
}

/// Reads and parses a JSON file of at most [`MAX_JSON_BYTES`], naming the file and the
/// position of any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let bytes = read_file_bounded(path, MAX_JSON_BYTES, "a JSON file")?;
    parse_json(path, &bytes)
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

/// The largest safetensors header [`TensorArchive::open`] reads (safetensors' own
/// limit is 100 MB; cinder's headers are a few kilobytes).
pub const MAX_SAFETENSORS_HEADER: u64 = 16 << 20;

/// The bytes of a safetensors file, read as far as its header justifies: the 8-byte
/// header length, the header, and the data up to the largest end offset it declares.
/// A declared size beyond a regular file's length is refused before anything is
/// allocated for it; safetensors itself then checks the bytes.
fn read_safetensors_bytes(path: &Path) -> Result<Vec<u8>, FileError> {
    let mut file = std::fs::File::open(path).map_err(|e| FileError::io(path, e))?;
    let invalid = |message: String| FileError::SafeTensors {
        path: path.to_path_buf(),
        message,
    };
    let mut bytes = read_up_to(path, &mut file, 8)?;
    let Ok(len) = <[u8; 8]>::try_from(bytes.as_slice()) else {
        return Err(invalid(format!(
            "{} bytes: too short for a header length",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_SAFETENSORS_HEADER {
        return Err(invalid(format!(
            "header length {header_len}: expected at most {MAX_SAFETENSORS_HEADER}"
        )));
    }
    let file_len = file
        .metadata()
        .ok()
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len());
    let declared = |data: u64| 8u64.saturating_add(header_len).saturating_add(data);
    let check_len = |total: u64| match file_len {
        Some(len) if total > len => Err(invalid(format!(
            "declares {total} bytes (header and data) but the file holds {len}"
        ))),
        _ => Ok(()),
    };
    check_len(declared(0))?;
    let mut rest = read_up_to(path, &mut file, header_len)?;
    let data_len = declared_data_len(&rest[..]);
    check_len(declared(data_len))?;
    // One byte more than declared, so that trailing bytes are reported, not ignored.
    rest.extend(read_up_to(path, &mut file, data_len.saturating_add(1))?);
    bytes.extend(rest);
    Ok(bytes)
}

/// The largest end offset a safetensors header declares (0 when the header cannot be
/// read: safetensors reports that precisely).
fn declared_data_len(header: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Entry {
        data_offsets: (u64, u64),
    }
    let Ok(map) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(header) else {
        return 0;
    };
    map.into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .filter_map(|(_, v)| serde_json::from_value::<Entry>(v).ok())
        .map(|e| e.data_offsets.1)
        .max()
        .unwrap_or(0)
}

/// A safetensors file read into memory, with typed, checked access by name.
pub struct TensorArchive {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl TensorArchive {
    /// Reads and validates the header (truncation and corrupt headers fail here). Reads
    /// no more than the header justifies: its length field (at most
    /// [`MAX_SAFETENSORS_HEADER`]), the header, then the data its offsets describe, and
    /// never more than a regular file holds.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let bytes = read_safetensors_bytes(path)?;
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

    /// A safetensors file whose header declares one f32 tensor of `elements` elements
    /// and which holds `data` bytes after the header.
    fn declared(elements: u64, data: usize) -> Vec<u8> {
        let header = format!(
            r#"{{"w":{{"dtype":"F32","shape":[{elements}],"data_offsets":[0,{}]}}}}"#,
            elements * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(vec![0u8; data]);
        bytes
    }

    #[test]
    fn huge_declared_tensors_are_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.safetensors");
        std::fs::write(&path, declared(1 << 40, 16)).unwrap();
        let err = TensorArchive::open(&path).err().unwrap();
        assert!(matches!(err, FileError::SafeTensors { .. }), "{err}");
        assert!(err.to_string().contains("declares"), "{err}");
        std::fs::write(&path, declared(4, 16)).unwrap();
        let archive = TensorArchive::open(&path).unwrap();
        assert_eq!(
            archive.get::<f32>("w", Some(&[4])).unwrap().data(),
            &[0.0; 4]
        );
        let mut header_len = declared(4, 16);
        header_len[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&path, header_len).unwrap();
        let err = TensorArchive::open(&path).err().unwrap();
        assert!(err.to_string().contains("header length"), "{err}");
    }

    #[test]
    fn endless_files_are_read_only_as_far_as_the_header_justifies() {
        let zero = Path::new("/dev/zero");
        if !zero.exists() {
            return;
        }
        // Header length 0: refused after 9 bytes by safetensors, not read for ever.
        assert!(matches!(
            TensorArchive::open(zero),
            Err(FileError::SafeTensors { .. })
        ));
        let err = read_json::<Vec<i32>>(zero).unwrap_err();
        assert!(matches!(err, FileError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn content_errors_are_not_called_invalid_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, br#"{"a": 1}"#).unwrap();
        let err = read_json::<Vec<i32>>(&path).unwrap_err();
        assert!(matches!(err, FileError::Content { .. }), "{err}");
        assert!(!err.to_string().contains("invalid JSON"), "{err}");
        std::fs::write(&path, b"[1,").unwrap();
        let err = read_json::<Vec<i32>>(&path).unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
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
