//! The model file: round trips, and typed errors for truncated, corrupt and hand-edited
//! files.

mod common;

use std::collections::HashMap;
use std::path::Path;

use cinder_runtime::file::METADATA_KEY;
use cinder_runtime::synthetic::{minmax_table, random_graph, random_input};
use cinder_runtime::{ModelError, QuantConfig, QuantizedModel, SessionOptions, convert};
use cinder_tensor::Tensor;
use cinder_tensor::graph::zoo;
use cinder_tensor::io::FileError;
use common::{LayerChoice, ModelSpec, bits, input, model_spec};
use proptest::prelude::*;
use serde_json::Value;

fn save(model: &QuantizedModel, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("model.cinder");
    model.save(&path).unwrap();
    path
}

/// A model with every kind of layer: static 8-bit per-channel asymmetric conv, a 2-bit
/// dynamic conv, a float linear and a static 4-bit per-tensor linear.
fn mixed_model() -> QuantizedModel {
    let choice = |mode, bits, per_channel, symmetric| LayerChoice {
        mode,
        bits,
        per_channel,
        symmetric,
    };
    use cinder_runtime::Mode::{Dynamic, Float, Static};
    let spec = ModelSpec {
        input: [2, 7, 6],
        convs: vec![
            common::ConvSpec {
                out: 4,
                kernel: 3,
                stride: 1,
                padding: 1,
                relu: true,
                pool: true,
            },
            common::ConvSpec {
                out: 3,
                kernel: 2,
                stride: 1,
                padding: 0,
                relu: false,
                pool: false,
            },
        ],
        linears: vec![(5, true), (3, false)],
        choices: vec![
            choice(Static, 8, true, false),
            choice(Dynamic, 2, true, true),
            choice(Float, 8, false, true),
            choice(Static, 4, false, false),
        ],
        seed: 11,
    };
    spec.model().expect("the fixed model converts").1
}

/// Rewrites the file's metadata JSON through `edit`, keeping every tensor.
fn edit_metadata(path: &Path, edit: impl FnOnce(&mut Value)) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    let mut json: Value = serde_json::from_str(&meta[METADATA_KEY]).unwrap();
    edit(&mut json);
    meta.insert(METADATA_KEY.into(), json.to_string());
    rewrite(path, &bytes, Some(meta), |_| true);
}

/// Rewrites a safetensors file with new metadata, keeping the tensors `keep` accepts.
fn rewrite(
    path: &Path,
    bytes: &[u8],
    meta: Option<HashMap<String, String>>,
    keep: impl Fn(&str) -> bool,
) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let tensors: Vec<_> = st.tensors().into_iter().filter(|(n, _)| keep(n)).collect();
    let out = safetensors::serialize(tensors.iter().map(|(n, v)| (n.as_str(), v)), meta).unwrap();
    std::fs::write(path, out).unwrap();
}

fn load_err(path: &Path) -> ModelError {
    let Err(err) = QuantizedModel::load(path) else {
        panic!("the edited file must not load");
    };
    assert!(
        err.to_string().contains("model.cinder"),
        "error names the file: {err}"
    );
    err
}

/// The index of the first step of `json` whose `op.exec.mode` is `mode`.
fn step_with_mode(json: &Value, mode: &str) -> usize {
    json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["op"]["exec"]["mode"] == mode)
        .unwrap()
}

/// The `op` of the first step of `json` whose `exec.mode` is `mode`.
fn layer_with_mode<'a>(json: &'a mut Value, mode: &str) -> &'a mut Value {
    let i = step_with_mode(json, mode);
    &mut json["steps"][i]["op"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip_keeps_model_and_outputs(spec in model_spec(), seed in any::<u64>()) {
        let Some((graph, model)) = spec.model() else {
            return Ok(());
        };
        let dir = tempfile::tempdir().unwrap();
        let loaded = QuantizedModel::load(&save(&model, dir.path())).unwrap();
        prop_assert_eq!(&loaded, &model);
        let x = input(&graph, 2, seed);
        let opts = SessionOptions { threads: 2 };
        let a = bits(model.session_with(opts).unwrap().run(&x).unwrap().data());
        let b = bits(loaded.session_with(opts).unwrap().run(&x).unwrap().data());
        prop_assert_eq!(a, b);
    }
}

#[test]
fn truncated_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(&mixed_model(), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    for cut in [0, 4, 8, 20, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = load_err(&path);
        assert!(
            matches!(err, ModelError::File(FileError::SafeTensors { .. })),
            "cut {cut}: {err}"
        );
    }
}

/// Flipping any byte gives a typed error, or (a decimal digit beyond what an f32 holds)
/// the very same model.
#[test]
fn every_corrupted_byte_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = mixed_model();
    let path = save(&model, dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..bytes.len() {
        let mut corrupt = bytes.clone();
        corrupt[i] ^= 0x01;
        std::fs::write(&path, &corrupt).unwrap();
        let kind = match QuantizedModel::load(&path) {
            Ok(loaded) => {
                assert!(loaded == model, "byte {i} flipped loads a different model");
                "same model".to_owned()
            }
            Err(err) => format!("{err:?}")
                .split(['(', ' ', '{'])
                .next()
                .unwrap()
                .to_owned(),
        };
        *kinds.entry(kind).or_default() += 1;
    }
    println!(
        "{} single-byte corruptions, errors by kind: {kinds:?}",
        bytes.len()
    );
    assert!(kinds.contains_key("Checksum"));
}

/// Version 3 holds the same graph with each `Add` operand rounded on its own: its files
/// load when they hold no `Add` (then the same model) and are refused by version when
/// they do.
#[test]
fn version_3_loads_without_an_add() {
    let dir = tempfile::tempdir().unwrap();
    let chain = mixed_model();
    let path = save(&chain, dir.path());
    edit_metadata(&path, |j| j["format_version"] = 3.into());
    assert_eq!(QuantizedModel::load(&path).unwrap(), chain);

    let graph = random_graph(zoo::resnet20([3, 8, 8], 4), 5)
        .and_then(|g| g.fold_batch_norms())
        .unwrap();
    let table = minmax_table(&graph, &random_input(&graph, 4, 6)).unwrap();
    let residual = convert(&graph, &table, &QuantConfig::default()).unwrap();
    let path = save(&residual, dir.path());
    edit_metadata(&path, |j| j["format_version"] = 3.into());
    let err = load_err(&path);
    assert!(
        matches!(
            err,
            ModelError::Version {
                version: 3,
                expected_version: 4,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn hand_edited_metadata_gives_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let model = mixed_model();
    let path = save(&model, dir.path());
    let fresh = |edit: &dyn Fn(&mut Value)| {
        save(&model, dir.path());
        edit_metadata(&path, edit);
        load_err(&path)
    };

    let err = fresh(&|j| j["format_version"] = 1.into());
    assert!(
        matches!(err, ModelError::Version { version: 1, .. }),
        "{err}"
    );

    // The chain format of version 2 is refused by name.
    let err = fresh(&|j| j["format_version"] = 2.into());
    assert!(
        matches!(err, ModelError::Version { version: 2, .. })
            && err.to_string().contains("version 2"),
        "{err}"
    );

    let err = fresh(&|j| j["format"] = "onnx".into());
    assert!(matches!(err, ModelError::Version { .. }), "{err}");

    let err = fresh(&|j| j["steps"][0]["surprise"] = 1.into());
    assert!(matches!(err, ModelError::Metadata { .. }), "{err}");

    // An output scale that no longer matches the stored multipliers.
    let err = fresh(&|j| {
        let out = &mut layer_with_mode(j, "static")["exec"]["output"]["scale"];
        *out = (out.as_f64().unwrap() * 1.5).into();
    });
    assert!(
        matches!(&err, ModelError::Invalid { source, .. } if source.field.contains("multiplier[0]")),
        "{err}"
    );

    // A zero point off the grid.
    let err = fresh(&|j| j["steps"][0]["op"]["params"]["zero_point"] = 300.into());
    assert!(
        matches!(&err, ModelError::Invalid { source, .. } if source.message.contains("zero point 300")),
        "{err}"
    );

    // A consistent edit (a zero point moved within the grid) is caught by the checksum.
    let err = fresh(&|j| {
        let zp = &mut j["steps"][0]["op"]["params"]["zero_point"];
        *zp = (zp.as_i64().unwrap() + 1).into();
    });
    assert!(matches!(err, ModelError::Checksum { .. }), "{err}");

    // A shape that disagrees with the stored tensor.
    let err = fresh(&|j| {
        let step = layer_with_mode(j, "static");
        step["out_channels"] = (step["out_channels"].as_u64().unwrap() + 1).into();
    });
    assert!(
        matches!(err, ModelError::File(FileError::WrongShape { .. })),
        "{err}"
    );

    // 8-bit weights declared as 4-bit: the packed tensor is missing (dtype / shape).
    let err = fresh(&|j| layer_with_mode(j, "static")["exec"]["weights"]["bits"] = 4.into());
    assert!(
        matches!(
            err,
            ModelError::File(FileError::WrongDtype { .. } | FileError::WrongShape { .. })
        ),
        "{err}"
    );

    // 2-bit weights declared as 3-bit: two codes per byte instead of four (shape).
    let err = fresh(&|j| layer_with_mode(j, "dynamic")["exec"]["weights"]["bits"] = 3.into());
    assert!(
        matches!(err, ModelError::File(FileError::WrongShape { .. })),
        "{err}"
    );

    // 8-bit weights declared as 6-bit: same storage, codes off the 6-bit grid.
    let err = fresh(&|j| layer_with_mode(j, "static")["exec"]["weights"]["bits"] = 6.into());
    assert!(
        matches!(&err, ModelError::Invalid { source, .. } if source.message.contains("outside [-31, 31]")),
        "{err}"
    );

    // Unsupported bit widths.
    for bits in [1, 9] {
        let err =
            fresh(&|j| layer_with_mode(j, "dynamic")["exec"]["weights"]["bits"] = bits.into());
        let expected = format!("{bits} bits: expected 2..=8");
        assert!(
            matches!(&err, ModelError::Invalid { source, .. } if source.message.contains(&expected)),
            "{err}"
        );
    }

    // A step reading a tensor that no step before it writes.
    let err = fresh(&|j| {
        let i = step_with_mode(j, "static");
        j["steps"][i]["inputs"] = serde_json::json!(["nowhere"]);
    });
    assert!(
        matches!(&err, ModelError::Invalid { source, .. } if source.message.contains("`nowhere` is not the input or an earlier step")),
        "{err}"
    );

    // A static layer moved out of the int8 domain (reading the float input).
    let err = fresh(&|j| {
        let i = step_with_mode(j, "static");
        j["steps"][i]["inputs"] = serde_json::json!(["input"]);
    });
    assert!(
        matches!(&err, ModelError::Invalid { source, .. } if source.message.contains("needs an int8 input")),
        "{err}"
    );
}

#[test]
fn missing_tensors_and_metadata_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = save(&mixed_model(), dir.path());
    let bytes = std::fs::read(&path).unwrap();
    let meta = safetensors::SafeTensors::read_metadata(&bytes)
        .unwrap()
        .1
        .metadata()
        .clone();
    rewrite(&path, &bytes, meta, |n| !n.ends_with(".multiplier"));
    let err = load_err(&path);
    assert!(
        matches!(&err, ModelError::File(FileError::MissingTensor { name, .. }) if name.ends_with(".multiplier")),
        "{err}"
    );
    rewrite(&path, &bytes, None, |_| true);
    assert!(matches!(load_err(&path), ModelError::NotAModel { .. }));
    assert!(matches!(
        QuantizedModel::load(&dir.path().join("absent.cinder")),
        Err(ModelError::File(FileError::Io { .. }))
    ));
}

#[test]
fn reads_stop_where_the_header_stops_justifying_them() {
    // An endless device: refused after its 8-byte header length, not read to the end.
    if Path::new("/dev/zero").exists() {
        assert!(matches!(
            QuantizedModel::load(Path::new("/dev/zero")),
            Err(ModelError::File(FileError::SafeTensors { .. }))
        ));
    }
    // A header declaring a 2^40-element tensor in a small file: refused before reading.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.cinder");
    let header = format!(
        r#"{{"__metadata__":{{"{METADATA_KEY}":"{{}}"}},"w":{{"dtype":"I8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#,
        n = 1u64 << 40
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 64]);
    std::fs::write(&path, bytes).unwrap();
    let err = QuantizedModel::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("declares") && err.contains("huge.cinder"),
        "{err}"
    );
}
