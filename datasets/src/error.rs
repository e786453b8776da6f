//! Typed errors of the dataset readers, the generator and the batcher.
//!
//! A reader error names the file, and where it applies the record index, the byte
//! offset and what was expected, so that a corrupt or truncated file is diagnosed from
//! the message alone. Offsets inside gzip files count bytes of the decompressed stream.

use std::path::{Path, PathBuf};

use cinder_tensor::TensorError;
use cinder_tensor::io::FileError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: file not found: expected the {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error(
        "{path}: {len} bytes is not a whole number of {record_size}-byte records: \
         record {record} at byte offset {offset} is truncated"
    )]
    TruncatedRecord {
        path: PathBuf,
        record: usize,
        offset: u64,
        record_size: usize,
        len: u64,
    },
    #[error(
        "{path}: record {record} at byte offset {offset}: {field} {label} is out of range: \
         expected 0..{classes}"
    )]
    LabelOutOfRange {
        path: PathBuf,
        record: usize,
        offset: u64,
        field: &'static str,
        label: u8,
        classes: usize,
    },
    #[error(
        "{path}: byte offset 0: magic {found:02x?} is not an unsigned-byte IDX header of \
         rank {rank}: expected [00, 00, 08, {rank:02x}]"
    )]
    IdxMagic {
        path: PathBuf,
        found: Vec<u8>,
        rank: u8,
    },
    #[error("{path}: byte offset {offset}: dimension {dim} is {found}: expected {expected}")]
    IdxDimension {
        path: PathBuf,
        offset: u64,
        dim: usize,
        found: u64,
        expected: &'static str,
    },
    #[error(
        "{path}: holds {found} bytes but its IDX header promises exactly {expected} \
         (header and data)"
    )]
    IdxLength {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "{images} holds {image_count} images but {labels} holds {label_count} labels: \
         expected equal counts"
    )]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        image_count: usize,
        label_count: usize,
    },
    #[error("{path}: gzip stream is corrupt: {source}")]
    Gzip {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field} = {value}: expected {expected}")]
    InvalidOption {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(
        "a dataset of {labels} labels needs {expected} image bytes (3x32x32 each), got {actual}"
    )]
    ImageBytes {
        labels: usize,
        expected: usize,
        actual: usize,
    },
    #[error("sample {index} has label {label}: expected 0..{classes}")]
    SampleLabel {
        index: usize,
        label: u8,
        classes: usize,
    },
    #[error("{path}: holds {found} class names: expected {expected}, one per line")]
    ClassNames {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("sample index {index} is out of range: expected 0..{len}")]
    SampleIndex { index: usize, len: usize },
    #[error("{path}: PNG encoding failed: {message}")]
    Png { path: PathBuf, message: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl DatasetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn invalid(
        field: &'static str,
        value: impl ToString,
        expected: &'static str,
    ) -> Self {
        Self::InvalidOption {
            field,
            value: value.to_string(),
            expected,
        }
    }
}
