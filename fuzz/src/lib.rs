//! Fuzz targets of every loader of a file a user may hand cinder: the int8 model file,
//! float graphs (description and weights), ONNX models (float and QDQ), IDX and CIFAR data, calibration
//! tables, training and QAT checkpoint manifests, and experiment configs. Each target
//! takes arbitrary bytes, writes them where the loader expects its file (or builds the
//! file from them, see [`structured`]), and loads it: any result is fine, a panic, an
//! abort or an allocation beyond the bound is a bug.
//!
//! The same functions serve libFuzzer (`cargo fuzz run TARGET`, the binaries under
//! `fuzz_targets/`) and the stable replay of `tests/corpus.rs`, which runs every seed of
//! `corpus/TARGET/` and a bounded, seeded mutation pass from `cargo test`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

// The command-line checks of the xtask binary, which its experiment config uses.
#[cfg(feature = "burn")]
mod checkpoints;
#[cfg(feature = "burn")]
#[path = "../../xtask/src/checks.rs"]
#[allow(dead_code)]
mod checks;
#[cfg(feature = "burn")]
pub use checkpoints::{
    checkpoint, experiment_config, qat_checkpoint, write_tiny_checkpoint, write_tiny_qat_checkpoint,
};
pub mod structured;
pub use structured::{graph, model_header};

/// A fuzz target: a name (its corpus directory) and the function it runs.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by corpus name.
pub const TARGETS: &[Target] = &[
    ("model_file", model_file),
    ("model_header", model_header),
    ("graph", graph),
    ("onnx", onnx),
    ("idx", idx),
    ("cifar", cifar),
    ("calibration_table", calibration_table),
    ("normalization", normalization),
    #[cfg(feature = "burn")]
    ("checkpoint", checkpoint),
    #[cfg(feature = "burn")]
    ("qat_checkpoint", qat_checkpoint),
    #[cfg(feature = "burn")]
    ("experiment_config", experiment_config),
];

/// A scratch directory of this process, created once.
pub(crate) fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cinder-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Writes `data` to `name` in the scratch directory `sub`.
pub(crate) fn put(sub: &str, name: &str, data: &[u8]) -> PathBuf {
    let dir = scratch().join(sub);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let path = dir.join(name);
    std::fs::write(&path, data).expect("scratch file");
    path
}

/// The int8 model file (safetensors with cinder's JSON header); a loaded model also
/// runs one image.
pub fn model_file(data: &[u8]) {
    let path = put("model", "model.cinder", data);
    if let Ok(model) = cinder_runtime::QuantizedModel::load(&path) {
        run_one_image(&model);
    }
}

/// Runs `model` on one image of 0.25s, unless its input is larger than 2^16 values.
fn run_one_image(model: &cinder_runtime::QuantizedModel) {
    let mut shape = vec![1];
    shape.extend_from_slice(model.input_shape());
    let elements: usize = shape.iter().product();
    if elements > 1 << 16 {
        return;
    }
    let input = cinder_tensor::TensorBuf::new(shape, vec![0.25f32; elements]).expect("shape");
    if let Ok(mut session) = model.session() {
        let _ = session.run(&input);
    }
}

/// An ONNX file, float or QDQ (`cinder_onnx::import_any_file`): an imported int8 model
/// runs one image, an imported float graph small enough the float forward on one image.
pub fn onnx(data: &[u8]) {
    let path = put("onnx", "model.onnx", data);
    match cinder_onnx::import_any_file(&path) {
        Ok(cinder_onnx::Imported::Int8(model)) => run_one_image(&model),
        Ok(cinder_onnx::Imported::Float(graph)) => {
            let small = |shape: &[usize]| elements(shape) <= 1 << 16;
            if small(graph.input_shape()) && graph.output_shapes().iter().all(|s| small(s)) {
                let input = cinder_runtime::synthetic::random_input(&graph, 1, 1);
                let _ = cinder_runtime::float_forward(&graph, &input);
            }
        }
        Err(_) => {}
    }
}

/// The element count of `shape`, saturating (a fuzzed shape may overflow).
pub(crate) fn elements(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
}

/// IDX files of rank 1 and 3, raw or gzip.
pub fn idx(data: &[u8]) {
    let path = put("idx", "data-idx", data);
    let _ = cinder_datasets::read_idx(&path, 1);
    let _ = cinder_datasets::read_idx(&path, 3);
}

/// A CIFAR-100 binary file (as both splits), coarse or fine labels by the first byte.
pub fn cifar(data: &[u8]) {
    put("cifar", "train.bin", data);
    let path = put("cifar", "test.bin", data);
    let labels = if data.first().is_some_and(|b| b % 2 == 0) {
        cinder_datasets::Cifar100Labels::Fine
    } else {
        cinder_datasets::Cifar100Labels::Coarse
    };
    let dir = path.parent().expect("scratch file has a directory");
    let _ = cinder_datasets::load_cifar100(dir, labels);
}

/// A calibration table (JSON).
pub fn calibration_table(data: &[u8]) {
    let path = put("table", "calibration.json", data);
    let _ = cinder_observers::CalibrationTable::load(&path);
}

/// A training summary's normalization (`summary.json`), as `infer` and `qat` read it.
pub fn normalization(data: &[u8]) {
    #[derive(serde::Deserialize)]
    struct Summary {
        #[allow(dead_code)]
        normalization: cinder_datasets::Normalization,
    }
    let path = put("summary", "summary.json", data);
    let _ = cinder_tensor::io::read_json::<Summary>(&path);
}
