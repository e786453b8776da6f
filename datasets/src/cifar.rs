//! CIFAR-10 and CIFAR-100 in their binary distributions.
//!
//! A record is the label byte(s) then 3,072 pixel bytes: 1,024 red, 1,024 green, 1,024
//! blue, each plane row-major 32x32 — already the CHW layout of [`Dataset`]. CIFAR-10
//! has one label byte (`data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin`);
//! CIFAR-100 has two, coarse then fine (`train.bin`, `test.bin`).

use std::path::{Path, PathBuf};

use cinder_tensor::io::read_bounded;

use crate::dataset::{Dataset, IMAGE_LEN, Splits};
use crate::error::DatasetError;

/// CIFAR-10's classes in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Which of CIFAR-100's two labels becomes the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cifar100Labels {
    /// 20 superclasses.
    Coarse,
    /// 100 classes (the usual choice).
    #[default]
    Fine,
}

/// The byte layout of one record family.
struct Layout {
    /// Label bytes before the pixels, each with its field name and class count.
    labels: &'static [(&'static str, usize)],
    /// Which label byte is the class.
    class_field: usize,
}

impl Layout {
    fn record_size(&self) -> usize {
        self.labels.len() + IMAGE_LEN
    }
}

const CIFAR10: Layout = Layout {
    labels: &[("label", 10)],
    class_field: 0,
};

const CIFAR100_FIELDS: &[(&str, usize)] = &[("coarse label", 20), ("fine label", 100)];

/// Loads CIFAR-10 from the directory of its binary version (`cifar-10-batches-bin`).
pub fn load_cifar10(dir: &Path) -> Result<Splits, DatasetError> {
    let names = CIFAR10_CLASSES.map(String::from).to_vec();
    let train_files: Vec<PathBuf> = (1..=5)
        .map(|i| dir.join(format!("data_batch_{i}.bin")))
        .collect();
    Ok(Splits {
        train: read_files(&train_files, &CIFAR10, "CIFAR-10 training batch", &names)?,
        test: read_files(
            &[dir.join("test_batch.bin")],
            &CIFAR10,
            "CIFAR-10 test batch",
            &names,
        )?,
    })
}

/// Loads CIFAR-100 from the directory of its binary version (`cifar-100-binary`). Class
/// names come from `fine_label_names.txt` / `coarse_label_names.txt` when present.
pub fn load_cifar100(dir: &Path, labels: Cifar100Labels) -> Result<Splits, DatasetError> {
    let (class_field, names_file) = match labels {
        Cifar100Labels::Coarse => (0, "coarse_label_names.txt"),
        Cifar100Labels::Fine => (1, "fine_label_names.txt"),
    };
    let layout = Layout {
        labels: CIFAR100_FIELDS,
        class_field,
    };
    let names = class_names(&dir.join(names_file), CIFAR100_FIELDS[class_field].1)?;
    Ok(Splits {
        train: read_files(
            &[dir.join("train.bin")],
            &layout,
            "CIFAR-100 training file",
            &names,
        )?,
        test: read_files(
            &[dir.join("test.bin")],
            &layout,
            "CIFAR-100 test file",
            &names,
        )?,
    })
}

/// One name per line when `path` exists (exactly `classes` non-empty lines), else
/// `class_0`, `class_1`, ...
fn class_names(path: &Path, classes: usize) -> Result<Vec<String>, DatasetError> {
    if !path.exists() {
        return Ok((0..classes).map(|c| format!("class_{c}")).collect());
    }
    let bytes = read_existing(path, "class name list")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        DatasetError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() != classes {
        return Err(DatasetError::ClassNames {
            path: path.to_path_buf(),
            found: names.len(),
            expected: classes,
        });
    }
    Ok(names)
}

fn read_files(
    files: &[PathBuf],
    layout: &Layout,
    what: &'static str,
    names: &[String],
) -> Result<Dataset, DatasetError> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for path in files {
        let bytes = read_existing(path, what)?;
        parse_records(path, &bytes, layout, &mut images, &mut labels)?;
    }
    Dataset::new(images, labels, names.to_vec())
}

/// The largest CIFAR file (or class-name list) read: 1 GiB, far above CIFAR-100's
/// 154 MB training file; a device or a runaway file is refused there.
pub const MAX_CIFAR_FILE_BYTES: u64 = 1 << 30;

fn read_existing(path: &Path, what: &'static str) -> Result<Vec<u8>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DatasetError::MissingFile {
            path: path.to_path_buf(),
            what,
        },
        _ => DatasetError::io(path, e),
    })?;
    Ok(read_bounded(path, file, MAX_CIFAR_FILE_BYTES, what)?)
}

fn parse_records(
    path: &Path,
    bytes: &[u8],
    layout: &Layout,
    images: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> Result<(), DatasetError> {
    let size = layout.record_size();
    if bytes.is_empty() || !bytes.len().is_multiple_of(size) {
        let record = bytes.len() / size;
        return Err(DatasetError::TruncatedRecord {
            path: path.to_path_buf(),
            record,
            offset: (record * size) as u64,
            record_size: size,
            len: bytes.len() as u64,
        });
    }
    images.reserve(bytes.len() / size * IMAGE_LEN);
    for (record, chunk) in bytes.chunks_exact(size).enumerate() {
        let offset = (record * size) as u64;
        for (i, &(field, classes)) in layout.labels.iter().enumerate() {
            if usize::from(chunk[i]) >= classes {
                return Err(DatasetError::LabelOutOfRange {
                    path: path.to_path_buf(),
                    record,
                    offset: offset + i as u64,
                    field,
                    label: chunk[i],
                    classes,
                });
            }
        }
        labels.push(chunk[layout.class_field]);
        images.extend_from_slice(&chunk[layout.labels.len()..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose pixels are all `fill`, with the given label bytes.
    fn record(label_bytes: &[u8], fill: u8) -> Vec<u8> {
        let mut r = label_bytes.to_vec();
        r.extend(std::iter::repeat_n(fill, IMAGE_LEN));
        r
    }

    fn write(path: &Path, records: &[Vec<u8>]) {
        std::fs::write(path, records.concat()).unwrap();
    }

    fn cifar10_dir(records_per_file: u8) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for i in 1..=5u8 {
            let recs: Vec<_> = (0..records_per_file)
                .map(|r| record(&[(i + r) % 10], i * 10 + r))
                .collect();
            write(&dir.path().join(format!("data_batch_{i}.bin")), &recs);
        }
        write(&dir.path().join("test_batch.bin"), &[record(&[9], 200)]);
        dir
    }

    #[test]
    fn cifar10_round_trips() {
        let dir = cifar10_dir(3);
        let s = load_cifar10(dir.path()).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (15, 1));
        assert_eq!(s.train.labels()[..4], [1, 2, 3, 2]);
        assert!(s.train.image(4).iter().all(|&p| p == 21));
        assert_eq!(s.test.labels(), &[9]);
        assert!(s.test.image(0).iter().all(|&p| p == 200));
        assert_eq!(s.train.class_names()[0], "airplane");
    }

    #[test]
    fn cifar10_missing_file() {
        let dir = cifar10_dir(1);
        std::fs::remove_file(dir.path().join("data_batch_4.bin")).unwrap();
        let err = load_cifar10(dir.path()).unwrap_err();
        assert!(
            matches!(&err, DatasetError::MissingFile { path, .. } if path.ends_with("data_batch_4.bin")),
            "{err}"
        );
    }

    #[test]
    fn cifar10_truncated_record() {
        let dir = cifar10_dir(2);
        let path = dir.path().join("data_batch_2.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&path, bytes).unwrap();
        match load_cifar10(dir.path()).unwrap_err() {
            DatasetError::TruncatedRecord {
                path: p,
                record,
                offset,
                record_size,
                len,
            } => {
                assert_eq!(p, path);
                assert_eq!((record, offset, record_size), (1, 3073, 3073));
                assert_eq!(len, 2 * 3073 - 10);
            }
            e => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn cifar10_label_out_of_range() {
        let dir = cifar10_dir(1);
        write(
            &dir.path().join("test_batch.bin"),
            &[record(&[3], 0), record(&[10], 0)],
        );
        let err = load_cifar10(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::LabelOutOfRange {
                    record: 1,
                    offset: 3073,
                    label: 10,
                    classes: 10,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("test_batch.bin: record 1 at byte offset 3073")
        );
    }

    fn cifar100_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("train.bin"),
            &[record(&[19, 99], 1), record(&[0, 5], 2)],
        );
        write(&dir.path().join("test.bin"), &[record(&[7, 42], 3)]);
        dir
    }

    #[test]
    fn cifar100_fine_and_coarse() {
        let dir = cifar100_dir();
        let fine = load_cifar100(dir.path(), Cifar100Labels::default()).unwrap();
        assert_eq!(fine.train.labels(), &[99, 5]);
        assert_eq!(fine.test.labels(), &[42]);
        assert_eq!(fine.train.classes(), 100);
        assert!(fine.train.image(1).iter().all(|&p| p == 2));
        let coarse = load_cifar100(dir.path(), Cifar100Labels::Coarse).unwrap();
        assert_eq!(coarse.train.labels(), &[19, 0]);
        assert_eq!(coarse.train.classes(), 20);
    }

    #[test]
    fn cifar100_names_file() {
        let dir = cifar100_dir();
        let names: String = (0..20).map(|i| format!("super{i}\n")).collect();
        std::fs::write(dir.path().join("coarse_label_names.txt"), names).unwrap();
        let s = load_cifar100(dir.path(), Cifar100Labels::Coarse).unwrap();
        assert_eq!(s.train.class_names()[19], "super19");
        std::fs::write(dir.path().join("coarse_label_names.txt"), "a\nb\n").unwrap();
        assert!(matches!(
            load_cifar100(dir.path(), Cifar100Labels::Coarse),
            Err(DatasetError::ClassNames {
                found: 2,
                expected: 20,
                ..
            })
        ));
    }

    #[test]
    fn cifar100_bad_coarse_label_even_when_fine_is_used() {
        let dir = cifar100_dir();
        write(&dir.path().join("test.bin"), &[record(&[20, 1], 0)]);
        let err = load_cifar100(dir.path(), Cifar100Labels::Fine).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::LabelOutOfRange {
                    field: "coarse label",
                    offset: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn empty_file_is_truncated() {
        let dir = cifar100_dir();
        write(&dir.path().join("train.bin"), &[]);
        assert!(matches!(
            load_cifar100(dir.path(), Cifar100Labels::Fine),
            Err(DatasetError::TruncatedRecord {
                record: 0,
                len: 0,
                ..
            })
        ));
    }
}
