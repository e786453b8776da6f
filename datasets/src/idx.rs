//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed, and Fashion-MNIST itself.
//!
//! An IDX file is a 4-byte magic `00 00 08 <rank>` (08: unsigned bytes), `rank`
//! big-endian u32 dimensions, then exactly the product of the dimensions in data bytes.
//! Gzip is recognised by its magic, whatever the file is called. Gray images of at most
//! 32x32 become CIFAR-style 3x32x32: centred with zero padding (2 pixels each side for
//! 28x28), the gray plane replicated to 3 channels.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::dataset::{CHANNELS, Dataset, HEIGHT, IMAGE_LEN, PLANE, Splits, WIDTH};
use crate::error::DatasetError;

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Fashion-MNIST's classes in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const UNSIGNED_BYTE: u8 = 0x08;

/// The contents of an unsigned-byte IDX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    /// Row-major, `dims` multiplied out.
    pub data: Vec<u8>,
}

/// The most data bytes an IDX file may declare (1 GiB; Fashion-MNIST's training images
/// are 47 MB): a larger header is refused before anything is read or allocated.
pub const MAX_IDX_DATA_BYTES: u64 = 1 << 30;

/// Reads an unsigned-byte IDX file of the given rank, raw or gzip-compressed.
///
/// Reads no more than the header justifies: the header first, then at most the data it
/// declares (and one byte to detect a longer file). A gzip stream is decompressed only
/// that far, so a small file that expands to gigabytes costs no more than its header
/// declares, and a header declaring more than `MAX_IDX_DATA_BYTES` (2^30 bytes) is refused.
pub fn read_idx(path: &Path, rank: u8) -> Result<IdxArray, DatasetError> {
    let mut file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DatasetError::MissingFile {
            path: path.to_path_buf(),
            what: "IDX file",
        },
        _ => DatasetError::io(path, e),
    })?;
    let mut magic = [0u8; 2];
    let n = read_full(&mut file, &mut magic).map_err(|e| DatasetError::io(path, e))?;
    let prefix = std::io::Cursor::new(magic[..n].to_vec());
    if magic[..n] == GZIP_MAGIC {
        let gzip = |source| DatasetError::Gzip {
            path: path.to_path_buf(),
            source,
        };
        read_stream(path, MultiGzDecoder::new(prefix.chain(file)), rank, gzip)
    } else {
        read_stream(path, prefix.chain(file), rank, |e| {
            DatasetError::io(path, e)
        })
    }
}

/// Fills `buf` as far as `reader` allows; the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The IDX array of a (decompressed) byte stream: header, then the declared data.
fn read_stream(
    path: &Path,
    mut reader: impl Read,
    rank: u8,
    error: impl Fn(std::io::Error) -> DatasetError,
) -> Result<IdxArray, DatasetError> {
    let header_len = 4 + 4 * usize::from(rank);
    let mut header = vec![0u8; header_len];
    let n = read_full(&mut reader, &mut header).map_err(&error)?;
    header.truncate(n);
    let expected = declared_len(path, &header, rank)?;
    let data_len = expected - header_len as u64;
    let mut bytes = header;
    reader
        .take(data_len + 1)
        .read_to_end(&mut bytes)
        .map_err(&error)?;
    parse_idx(path, &bytes, rank)
}

/// The total length (header and data) an IDX header declares, checked against the
/// magic and [`MAX_IDX_DATA_BYTES`]; a short header is left to [`parse_idx`].
fn declared_len(path: &Path, header: &[u8], rank: u8) -> Result<u64, DatasetError> {
    let header_len = 4 + 4 * u64::from(rank);
    if header.len() as u64 != header_len {
        return Ok(header_len);
    }
    parse_magic(path, header, rank)?;
    let mut data = 1u64;
    for (dim, b) in header[4..].chunks_exact(4).enumerate() {
        let size = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        data = data.saturating_mul(size);
        if data > MAX_IDX_DATA_BYTES {
            return Err(DatasetError::IdxDimension {
                path: path.to_path_buf(),
                offset: 4 + 4 * dim as u64,
                dim,
                found: size,
                expected: "dimensions whose product is at most 2^30 bytes of data",
            });
        }
    }
    Ok(header_len + data)
}

fn parse_magic(path: &Path, bytes: &[u8], rank: u8) -> Result<(), DatasetError> {
    let magic = &bytes[..bytes.len().min(4)];
    if magic != [0, 0, UNSIGNED_BYTE, rank] {
        return Err(DatasetError::IdxMagic {
            path: path.to_path_buf(),
            found: magic.to_vec(),
            rank,
        });
    }
    Ok(())
}

fn parse_idx(path: &Path, bytes: &[u8], rank: u8) -> Result<IdxArray, DatasetError> {
    parse_magic(path, bytes, rank)?;
    let header = 4 + 4 * usize::from(rank);
    let length_error = |expected: u64| DatasetError::IdxLength {
        path: path.to_path_buf(),
        expected,
        found: bytes.len() as u64,
    };
    let Some(dim_bytes) = bytes.get(4..header) else {
        return Err(length_error(header as u64));
    };
    let dims: Vec<usize> = dim_bytes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    // An overflowing product cannot match any real file length, so it saturates.
    let expected = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .and_then(|n| n.checked_add(header as u64))
        .unwrap_or(u64::MAX);
    if bytes.len() as u64 != expected {
        return Err(length_error(expected));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Loads gray images (an IDX rank-3 file `[n, rows, cols]`, rows and cols at most 32)
/// and their labels (rank 1, `[n]`, each below `class_names.len()`) as a CIFAR-style
/// dataset.
pub fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    class_names: Vec<String>,
) -> Result<Dataset, DatasetError> {
    let images = read_idx(images_path, 3)?;
    for (dim, &size) in images.dims.iter().enumerate().skip(1) {
        if !(1..=HEIGHT.min(WIDTH)).contains(&size) {
            return Err(DatasetError::IdxDimension {
                path: images_path.to_path_buf(),
                offset: 4 + 4 * dim as u64,
                dim,
                found: size as u64,
                expected: "an image side of 1..=32 pixels",
            });
        }
    }
    let labels = read_idx(labels_path, 1)?;
    if labels.dims[0] != images.dims[0] {
        return Err(DatasetError::CountMismatch {
            images: images_path.to_path_buf(),
            labels: labels_path.to_path_buf(),
            image_count: images.dims[0],
            label_count: labels.dims[0],
        });
    }
    check_labels(labels_path, &labels.data, class_names.len())?;
    let pixels = gray_to_cifar(&images.data, images.dims[1], images.dims[2]);
    Dataset::new(pixels, labels.data, class_names)
}

fn check_labels(path: &Path, labels: &[u8], classes: usize) -> Result<(), DatasetError> {
    const LABEL_HEADER: u64 = 8;
    match labels.iter().position(|&l| usize::from(l) >= classes) {
        None => Ok(()),
        Some(record) => Err(DatasetError::LabelOutOfRange {
            path: path.to_path_buf(),
            record,
            offset: LABEL_HEADER + record as u64,
            field: "label",
            label: labels[record],
            classes,
        }),
    }
}

/// Centres each `rows x cols` gray image in a zeroed 32x32 plane and copies that plane
/// to all three channels.
fn gray_to_cifar(gray: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let (top, left) = ((HEIGHT - rows) / 2, (WIDTH - cols) / 2);
    let count = gray.len() / (rows * cols);
    let mut out = vec![0u8; count * IMAGE_LEN];
    for (src, dst) in gray
        .chunks_exact(rows * cols)
        .zip(out.chunks_exact_mut(IMAGE_LEN))
    {
        let (plane, rest) = dst.split_at_mut(PLANE);
        for (r, row) in src.chunks_exact(cols).enumerate() {
            let start = (top + r) * WIDTH + left;
            plane[start..start + cols].copy_from_slice(row);
        }
        for channel in rest.chunks_exact_mut(PLANE).take(CHANNELS - 1) {
            channel.copy_from_slice(plane);
        }
    }
    out
}

/// The path of IDX file `base` in `dir`: `base.gz` if present, else `base`.
fn idx_file(dir: &Path, base: &str) -> PathBuf {
    let gz = dir.join(format!("{base}.gz"));
    if gz.exists() { gz } else { dir.join(base) }
}

/// Loads Fashion-MNIST (60,000 training and 10,000 test images) from `dir`, which holds
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
/// `t10k-labels-idx1-ubyte`, each raw or with a `.gz` suffix.
pub fn load_fashion_mnist(dir: &Path) -> Result<Splits, DatasetError> {
    let names = || FASHION_MNIST_CLASSES.map(String::from).to_vec();
    let part = |prefix: &str| {
        load_idx_pair(
            &idx_file(dir, &format!("{prefix}-images-idx3-ubyte")),
            &idx_file(dir, &format!("{prefix}-labels-idx1-ubyte")),
            names(),
        )
    };
    Ok(Splits {
        train: part("train")?,
        test: part("t10k")?,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, UNSIGNED_BYTE, dims.len() as u8];
        for d in dims {
            b.extend(d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Writes a 3-image 28x28 set where image i is filled with 10 * (i + 1).
    fn write_pair(dir: &Path, prefix: &str, compress: bool) {
        let images: Vec<u8> = (0..3u8).flat_map(|i| [10 * (i + 1); 784]).collect();
        let files = [
            (
                format!("{prefix}-images-idx3-ubyte"),
                idx_bytes(&[3, 28, 28], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte"),
                idx_bytes(&[3], &[4, 0, 9]),
            ),
        ];
        for (name, bytes) in files {
            let (name, bytes) = if compress {
                (format!("{name}.gz"), gzip(&bytes))
            } else {
                (name, bytes)
            };
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn check_loaded(s: &Splits) {
        assert_eq!((s.train.len(), s.test.len()), (3, 3));
        assert_eq!(s.train.labels(), &[4, 0, 9]);
        let img = s.train.image(1);
        for c in 0..CHANNELS {
            let plane = &img[c * PLANE..(c + 1) * PLANE];
            for (i, &p) in plane.iter().enumerate() {
                let (y, x) = (i / WIDTH, i % WIDTH);
                let inside = (2..30).contains(&y) && (2..30).contains(&x);
                assert_eq!(p, if inside { 20 } else { 0 }, "c{c} y{y} x{x}");
            }
        }
    }

    #[test]
    fn raw_and_gzip_round_trip() {
        for compress in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write_pair(dir.path(), "train", compress);
            write_pair(dir.path(), "t10k", compress);
            check_loaded(&load_fashion_mnist(dir.path()).unwrap());
        }
    }

    #[test]
    fn wrong_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        let mut bytes = idx_bytes(&[2], &[1, 2]);
        bytes[2] = 0x0d; // float data
        std::fs::write(&path, bytes).unwrap();
        let err = read_idx(&path, 1).unwrap_err();
        assert!(
            matches!(&err, DatasetError::IdxMagic { found, rank: 1, .. } if found == &[0, 0, 0x0d, 1])
        );
        // A rank-3 file where rank 1 is expected is also a magic mismatch.
        std::fs::write(&path, gzip(&idx_bytes(&[1, 1, 1], &[0]))).unwrap();
        assert!(matches!(
            read_idx(&path, 1),
            Err(DatasetError::IdxMagic { .. })
        ));
        std::fs::write(&path, [0u8, 0]).unwrap();
        assert!(matches!(
            read_idx(&path, 1),
            Err(DatasetError::IdxMagic { .. })
        ));
    }

    #[test]
    fn truncated_and_overlong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        let full = idx_bytes(&[2, 3, 3], &[7; 18]);
        std::fs::write(&path, gzip(&full[..full.len() - 1])).unwrap();
        assert!(matches!(
            read_idx(&path, 3),
            Err(DatasetError::IdxLength {
                expected: 34,
                found: 33,
                ..
            })
        ));
        std::fs::write(&path, &full[..10]).unwrap();
        assert!(matches!(
            read_idx(&path, 3),
            Err(DatasetError::IdxLength {
                expected: 16,
                found: 10,
                ..
            })
        ));
        let mut long = full.clone();
        long.push(0);
        std::fs::write(&path, long).unwrap();
        assert!(matches!(
            read_idx(&path, 3),
            Err(DatasetError::IdxLength { .. })
        ));
        std::fs::write(&path, &full).unwrap();
        assert_eq!(read_idx(&path, 3).unwrap().dims, vec![2, 3, 3]);
    }

    #[test]
    fn gzip_bomb_is_decompressed_only_as_far_as_the_header_declares() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.gz");
        // 10 images of 28x28 declared, 64 MiB of zeros behind the header.
        let mut raw = idx_bytes(&[10, 28, 28], &[0; 10 * 784]);
        raw.resize(64 << 20, 0);
        std::fs::write(&path, gzip(&raw)).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 1 << 20);
        match read_idx(&path, 3) {
            Err(DatasetError::IdxLength {
                expected, found, ..
            }) => {
                assert_eq!(expected, 16 + 7840);
                assert_eq!(found, expected + 1, "read past the declared length");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn huge_headers_are_refused_before_allocation() {
        let dir = tempfile::tempdir().unwrap();
        for (name, compress) in [("raw", false), ("gz", true)] {
            let path = dir.path().join(name);
            let mut header = vec![0, 0, 8, 3];
            for d in [u32::MAX, 28, 28] {
                header.extend(d.to_be_bytes());
            }
            header.extend([0u8; 100]);
            std::fs::write(&path, if compress { gzip(&header) } else { header }).unwrap();
            let err = read_idx(&path, 3).unwrap_err();
            assert!(
                matches!(err, DatasetError::IdxDimension { dim: 0, .. }),
                "{name}: {err}"
            );
            assert!(err.to_string().contains("2^30"), "{err}");
        }
    }

    #[test]
    fn endless_input_is_read_only_as_far_as_the_header_declares() {
        let zero = Path::new("/dev/zero");
        if zero.exists() {
            // Magic 00 00 00 00: refused after the header, not read for ever.
            assert!(matches!(
                read_idx(zero, 1),
                Err(DatasetError::IdxMagic { .. })
            ));
        }
    }

    #[test]
    fn corrupt_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gz");
        let mut gz = gzip(&idx_bytes(&[4], &[1, 2, 3, 4]));
        gz.truncate(gz.len() / 2);
        std::fs::write(&path, gz).unwrap();
        assert!(matches!(read_idx(&path, 1), Err(DatasetError::Gzip { .. })));
    }

    #[test]
    fn pair_checks() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lab) = (dir.path().join("i"), dir.path().join("l"));
        let names: Vec<String> = (0..10).map(|c| c.to_string()).collect();
        std::fs::write(&img, idx_bytes(&[2, 2, 2], &[0; 8])).unwrap();
        std::fs::write(&lab, idx_bytes(&[3], &[0; 3])).unwrap();
        assert!(matches!(
            load_idx_pair(&img, &lab, names.clone()),
            Err(DatasetError::CountMismatch {
                image_count: 2,
                label_count: 3,
                ..
            })
        ));
        std::fs::write(&lab, idx_bytes(&[2], &[1, 10])).unwrap();
        let err = load_idx_pair(&img, &lab, names.clone()).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::LabelOutOfRange {
                    record: 1,
                    offset: 9,
                    label: 10,
                    ..
                }
            ),
            "{err}"
        );
        std::fs::write(&img, idx_bytes(&[1, 33, 1], &[0; 33])).unwrap();
        assert!(matches!(
            load_idx_pair(&img, &lab, names),
            Err(DatasetError::IdxDimension {
                dim: 1,
                offset: 8,
                found: 33,
                ..
            })
        ));
    }

    #[test]
    fn missing_fashion_mnist_file() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "train", true);
        let err = load_fashion_mnist(dir.path()).unwrap_err();
        assert!(
            matches!(&err, DatasetError::MissingFile { path, .. } if path.ends_with("t10k-images-idx3-ubyte")),
            "{err}"
        );
    }

    /// Runs on the real data when Debian's `dataset-fashion-mnist` is installed.
    #[test]
    fn real_fashion_mnist_when_installed() {
        let dir = Path::new(FASHION_MNIST_DIR);
        if !dir.join("train-images-idx3-ubyte.gz").exists() {
            eprintln!("skipped: Fashion-MNIST is not installed in {FASHION_MNIST_DIR}");
            return;
        }
        let s = load_fashion_mnist(dir).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (60_000, 10_000));
        assert_eq!(s.train.class_histogram(), vec![6_000; 10]);
        assert_eq!(s.test.class_histogram(), vec![1_000; 10]);
        let img = s.train.image(0);
        assert!(img[..2 * WIDTH].iter().all(|&p| p == 0), "top padding");
        assert_eq!(img[..PLANE], img[PLANE..2 * PLANE]);
        assert!(img.iter().any(|&p| p > 100));
    }
}
