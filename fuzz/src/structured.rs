//! Structure-aware targets: the fuzzer's bytes drive an [`arbitrary::Unstructured`] that
//! builds well-formed containers with hostile contents, so that inputs get past the
//! framing (safetensors lengths, JSON syntax) into the loaders' semantic checks and on
//! into conversion and both runtimes.
//!
//! - [`model_header`]: a real model file whose JSON (the safetensors header and the
//!   `cinder` description inside it) is edited node by node: numbers replaced by
//!   extreme values, keys removed or added, array entries dropped or repeated.
//! - [`graph`]: a graph description (`graph.json`) of random nodes and wiring with its
//!   weights (safetensors), holding NaN, infinities, constants and wrong shapes; a graph
//!   that loads runs the float forward, min/max calibration, conversion, the int8
//!   session and the fake-quant simulation.

use arbitrary::{Result, Unstructured};
use cinder_runtime::synthetic::random_input;
use cinder_runtime::{LayerConfig, Mode, QuantConfig, WeightGranularity};
use cinder_tensor::graph::{FloatGraph, GraphError, GraphSpec, NodeSpec, Op, OpSpec};
use cinder_tensor::io::{StoredTensor, save_safetensors};
use cinder_tensor::{Mapping, Tensor, TensorBuf};
use serde_json::Value;

use crate::{elements, put};

/// Real model files the header target edits (the `model_file` seeds).
const BASE_MODELS: [&[u8]; 2] = [
    include_bytes!("../corpus/model_file/tiny-w8a8"),
    include_bytes!("../corpus/model_file/residual-mixed"),
];

/// Values that break size, count and range fields.
const EXTREME_NUMBERS: [f64; 14] = [
    0.0,
    -1.0,
    1.0,
    2.0,
    255.0,
    256.0,
    2_147_483_647.0,
    4_294_967_296.0,
    1_099_511_627_776.0,
    1.8e19,
    3e38,
    -3e38,
    1e-45,
    0.5,
];

/// The model file target's input: which base model, then a list of edits.
pub fn model_header(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(base) = u.choose(&BASE_MODELS) else {
        return;
    };
    let Ok(bytes) = edited_model(&mut u, base) else {
        return;
    };
    crate::model_file(&bytes);
}

/// `base` with its safetensors header and `cinder` description edited by `u`.
fn edited_model(u: &mut Unstructured, base: &[u8]) -> Result<Vec<u8>> {
    let header_len = u64::from_le_bytes(base[..8].try_into().expect("8 bytes")) as usize;
    let (header, payload) = base[8..].split_at(header_len);
    let mut outer: Value = serde_json::from_slice(header).expect("a base model's header");
    let description = outer["__metadata__"]["cinder"]
        .as_str()
        .expect("a base model's description")
        .to_owned();
    let mut inner: Value = serde_json::from_str(&description).expect("description JSON");
    for _ in 0..u.int_in_range(1..=4)? {
        if u.ratio(3, 4)? {
            edit(u, &mut inner)?;
        } else {
            edit(u, &mut outer)?;
        }
    }
    if let Some(meta) = outer.get_mut("__metadata__").and_then(Value::as_object_mut)
        && meta.contains_key("cinder")
    {
        meta.insert("cinder".into(), Value::String(inner.to_string()));
    }
    let header = outer.to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    let keep = if u.ratio(1, 8)? {
        u.int_in_range(0..=payload.len())?
    } else {
        payload.len()
    };
    out.extend_from_slice(&payload[..keep]);
    Ok(out)
}

/// One edit somewhere in `value`: descends through objects and arrays at random, then
/// replaces, removes, adds or repeats what it stopped at.
fn edit(u: &mut Unstructured, value: &mut Value) -> Result<()> {
    let descend = u.ratio(4, 5)?;
    match value {
        Value::Object(map) if descend && !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = u.choose(&keys)?;
            match u.int_in_range(0..=9)? {
                0 => {
                    map.remove(key);
                }
                1 => {
                    map.insert(format!("{key}_extra"), Value::from(1));
                }
                _ => edit(u, map.get_mut(key).expect("a listed key"))?,
            }
        }
        Value::Array(items) if descend && !items.is_empty() => {
            let at = u.choose_index(items.len())?;
            match u.int_in_range(0..=9)? {
                0 => {
                    items.remove(at);
                }
                1 => {
                    let copy = items[at].clone();
                    items.insert(at, copy);
                }
                _ => edit(u, &mut items[at])?,
            }
        }
        _ => *value = replacement(u, value)?,
    }
    Ok(())
}

/// A value to put in place of `old`: mostly of the same kind (numbers, strings), often
/// extreme.
fn replacement(u: &mut Unstructured, old: &Value) -> Result<Value> {
    Ok(match (old, u.int_in_range(0..=7)?) {
        (Value::Number(_), 0..=3) => number(*u.choose(&EXTREME_NUMBERS)?),
        (Value::Number(n), 4) => {
            number(n.as_f64().unwrap_or(0.0) + f64::from(u.int_in_range(-2i8..=2)?))
        }
        (Value::Number(_), 5) => number(f64::from(u.arbitrary::<i32>()?)),
        (Value::String(s), 0..=3) => Value::String(
            u.choose(&[
                "",
                "F32",
                "I8",
                "U8",
                "I32",
                "static",
                "dynamic",
                "float",
                "asymmetric",
                "input",
                s.as_str(),
            ])?
            .to_string(),
        ),
        (Value::Bool(b), _) => Value::Bool(!b),
        (_, 6) => Value::Null,
        (_, 7) => Value::Array(vec![]),
        _ => Value::String(u.arbitrary::<String>()?),
    })
}

/// `x` as a JSON number: an integer when it is one (so that integer fields parse).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1.8e19 {
        if x >= 0.0 {
            Value::from(x as u64)
        } else {
            Value::from(x as i64)
        }
    } else {
        serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
    }
}

/// Most elements a fuzzed graph's input or any node's output may have before the target
/// skips running it, and most multiply-adds per layer.
const RUN_ELEMENTS: usize = 1 << 14;
const RUN_MACS: usize = 1 << 18;

/// The graph target's input: a description and its weights.
pub fn graph(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((spec, tensors)) = graph_files(&mut u) else {
        return;
    };
    let json = put("graph", "graph.json", spec.as_bytes());
    let weights = crate::scratch().join("graph").join("graph.safetensors");
    if save_safetensors(&weights, &tensors, None).is_err() {
        return;
    }
    if let Ok(graph) = FloatGraph::load(&json, &weights) {
        let quant = u.arbitrary::<u8>().unwrap_or(0);
        run_graph(&graph, quant);
    }
}

/// A graph description (JSON text) and the tensors of its weights file.
fn graph_files(u: &mut Unstructured) -> Result<(String, Vec<(String, StoredTensor)>)> {
    let rank = u.int_in_range(1..=3)?;
    let input_shape = (0..rank).map(|_| size(u)).collect::<Result<Vec<_>>>()?;
    let mut names = vec!["input".to_owned()];
    let mut nodes = Vec::new();
    for i in 0..u.int_in_range(0..=6)? {
        let name = if u.ratio(1, 16)? {
            u.choose(&names)?.clone()
        } else {
            format!("n{i}")
        };
        let op = op_spec(u)?;
        let arity = if matches!(op, OpSpec::Add | OpSpec::Concat) {
            u.int_in_range(1..=3)?
        } else {
            1
        };
        let inputs = (0..arity)
            .map(|_| {
                if u.ratio(1, 32)? {
                    Ok("missing".to_owned())
                } else {
                    // Mostly the latest tensor, so that chains form.
                    let back = u.int_in_range(0..=names.len().min(3) - 1)?;
                    Ok(names[names.len() - 1 - back].clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        names.push(name.clone());
        nodes.push(NodeSpec { name, inputs, op });
    }
    let spec = GraphSpec {
        format_version: if u.ratio(1, 32)? {
            u.int_in_range(0..=3)?
        } else {
            2
        },
        input_shape,
        nodes,
    };
    let tensors = weights(u, &spec)?;
    let json = serde_json::to_string(&spec).expect("a spec serializes");
    Ok((json, tensors))
}

/// A dimension: mostly small, sometimes zero or huge.
fn size(u: &mut Unstructured) -> Result<usize> {
    Ok(match u.int_in_range(0..=31)? {
        0 => 0,
        1 => *u.choose(&[1 << 31, 1 << 40, usize::MAX / 2, usize::MAX])?,
        _ => u.int_in_range(1..=8)?,
    })
}

fn pair(u: &mut Unstructured, lo: usize) -> Result<[usize; 2]> {
    let a = size(u)?.max(lo);
    Ok(if u.ratio(3, 4)? {
        [a, a]
    } else {
        [a, size(u)?.max(lo)]
    })
}

fn small(u: &mut Unstructured) -> Result<usize> {
    Ok(if u.ratio(1, 16)? {
        size(u)?
    } else {
        u.int_in_range(0..=2)?
    })
}

fn float(u: &mut Unstructured) -> Result<f32> {
    Ok(*u.choose(&[0.0, 1e-5, -1.0, 1.0, 6.0, f32::MAX, f32::MIN_POSITIVE, -0.0])?)
}

fn op_spec(u: &mut Unstructured) -> Result<OpSpec> {
    Ok(match u.int_in_range(0..=10)? {
        0 => OpSpec::Conv2d {
            in_channels: size(u)?,
            out_channels: size(u)?,
            kernel: pair(u, 0)?,
            stride: pair(u, 0)?,
            padding: [small(u)?, small(u)?],
            groups: if u.ratio(3, 4)? { 1 } else { size(u)? },
            bias: u.arbitrary()?,
        },
        1 => OpSpec::BatchNorm {
            channels: size(u)?,
            eps: float(u)?,
        },
        2 => OpSpec::Relu,
        3 => OpSpec::Clip {
            min: float(u)?,
            max: float(u)?,
        },
        4 => OpSpec::MaxPool2d {
            kernel: pair(u, 0)?,
            stride: pair(u, 0)?,
            padding: [small(u)?, small(u)?],
        },
        5 => OpSpec::AvgPool2d {
            kernel: pair(u, 0)?,
            stride: pair(u, 0)?,
            padding: [small(u)?, small(u)?],
            count_include_pad: u.arbitrary()?,
        },
        6 => OpSpec::GlobalAvgPool,
        7 => OpSpec::Add,
        8 => OpSpec::Concat,
        9 => OpSpec::Flatten,
        _ => OpSpec::Linear {
            in_features: size(u)?,
            out_features: size(u)?,
            bias: u.arbitrary()?,
        },
    })
}

/// The tensors `spec` asks for, under their names, with mostly the shape it implies and
/// values that are ordinary, constant, zero or not finite; sometimes a tensor is left out,
/// reshaped or stored as another type.
fn weights(u: &mut Unstructured, spec: &GraphSpec) -> Result<Vec<(String, StoredTensor)>> {
    let mut wanted = Vec::new();
    // The loader asks for each tensor in turn; a refusal (here: too large to store) ends
    // the list, as it ends the load.
    let _ = FloatGraph::from_spec(spec.clone(), |name, shape| {
        let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        match len {
            Some(len) if len <= RUN_ELEMENTS => {
                wanted.push((name.to_owned(), shape.to_vec()));
                Ok(TensorBuf::new(shape.to_vec(), vec![0.5; len]).expect("length matches"))
            }
            _ => Err(GraphError::DuplicateName(name.to_owned())),
        }
    });
    let mut tensors = Vec::new();
    for (name, mut shape) in wanted {
        match u.int_in_range(0..=31)? {
            0 => continue,
            1 => shape.push(1),
            // Saturating: an empty tensor may declare a dimension of usize::MAX.
            2 if !shape.is_empty() => shape[0] = shape[0].saturating_add(1),
            3 => {
                let len: usize = shape.iter().product();
                let t = TensorBuf::new(shape, vec![1i32; len]).expect("length matches");
                tensors.push((name, StoredTensor::from_tensor(&t)));
                continue;
            }
            _ => {}
        }
        // Growing a dimension of an empty tensor ([0, 2^30] -> [1, 2^30]) may make it huge.
        let Some(len) = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
            continue;
        };
        if len > RUN_ELEMENTS {
            continue;
        }
        let data = values(u, len)?;
        let t = TensorBuf::new(shape, data).expect("length matches");
        tensors.push((name, StoredTensor::from_tensor(&t)));
    }
    Ok(tensors)
}

/// `len` weights: one of a few patterns, or the fuzzer's own bits.
fn values(u: &mut Unstructured, len: usize) -> Result<Vec<f32>> {
    let pattern = u.int_in_range(0..=7)?;
    let special = *u.choose(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, 3e38, 1e-40])?;
    let at = u.choose_index(len.max(1))?;
    (0..len)
        .map(|i| {
            Ok(match pattern {
                0 => special,
                1 if i == at => special,
                2 => f32::from_bits(u.arbitrary()?),
                3 => 0.25,
                _ => ((i * 7919) % 13) as f32 / 13.0 - 0.5,
            })
        })
        .collect()
}

/// A layer config chosen by `choice`: static, dynamic or float; 8 or 4 bits; per tensor
/// or per channel.
fn layer_config(choice: u8) -> LayerConfig {
    let mut layer = QuantConfig::default().default;
    layer.mode = [Mode::Static, Mode::Dynamic, Mode::Float][usize::from(choice % 3)];
    layer.weight_bits = if choice & 4 == 0 { 8 } else { 4 };
    if choice & 8 != 0 {
        layer.granularity = WeightGranularity::PerTensor;
    }
    if choice & 16 != 0 {
        layer.mapping = Mapping::Asymmetric;
    }
    layer
}

/// Whether `graph` is small enough to run in a fuzz iteration.
fn small_enough(graph: &FloatGraph) -> bool {
    let input = elements(graph.input_shape());
    let outputs_small = graph
        .output_shapes()
        .iter()
        .all(|s| elements(s) <= RUN_ELEMENTS);
    let macs_small = graph
        .nodes()
        .iter()
        .zip(graph.output_shapes())
        .all(|(node, out)| {
            let per_output = match &node.op {
                Op::Conv2d(c) => c.weight.len() / c.weight.shape()[0].max(1),
                Op::Linear(l) => l.weight.shape().get(1).copied().unwrap_or(1),
                _ => 1,
            };
            elements(out).saturating_mul(per_output) <= RUN_MACS
        });
    input <= RUN_ELEMENTS && outputs_small && macs_small
}

/// The float forward, a min/max calibration, conversion under the config `quant`
/// chooses, the int8 session and the fake-quant simulation, on two images.
fn run_graph(graph: &FloatGraph, quant: u8) {
    if !small_enough(graph) {
        return;
    }
    let input = random_input(graph, 2, 1);
    if cinder_runtime::float_forward(graph, &input).is_err() {
        return;
    }
    let Ok(table) = cinder_runtime::synthetic::minmax_table(graph, &input) else {
        return;
    };
    let config = QuantConfig::uniform(layer_config(quant));
    let Ok(model) = cinder_runtime::convert(graph, &table, &config) else {
        return;
    };
    if let Ok(mut session) = model.session() {
        let _ = session.run(&input);
    }
    let _ = cinder_runtime::simulate(&model, &input);
}
