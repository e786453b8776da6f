//! The model file: one safetensors file whose `__metadata__` entry `cinder` holds the
//! JSON description, written atomically.
//!
//! JSON (`ModelMeta`): `format` (`"cinder-int8"`), `format_version`, `input_shape`,
//! `checksum` (of the tensor data, see below) and `steps` in execution order, each with
//! its `name`, its `inputs` (tensor names) and its `op`, tagged by `type`: `quantize`
//! (with its activation `params`: scale, zero point, grid), `dequantize`, `conv2d`
//! (shapes, `stride`, `padding`, `groups`) / `linear` (shapes), each with its fused
//! `activation` and `exec`: `mode` `static` with `weights` {bits, mapping, per_channel}
//! and `output` params, `dynamic` with `weights`, or `float`; `activation`,
//! `max_pool2d` and `avg_pool2d` (a `window`), `global_avg_pool`, `add` / `concat`
//! (fused `activation`, and `output` params when int8), `flatten`.
//!
//! Tensors of an int8 `add` or `concat` `A`: `A.multiplier`, I32 `[inputs, 2]` (Q0.31
//! mantissa, exponent). Tensors of layer `L` (weights in the float graph's canonical
//! layout):
//!
//! | tensor | static | dynamic | float |
//! |---|---|---|---|
//! | `L.weight` | I8 `[out, in, (k, k)]` for 5–8 bits; U8 `[ceil(n / 2)]` for 3–4 bits (two codes per byte), U8 `[ceil(n / 4)]` for 2 bits (four per byte); packed codes are two's complement, lowest bits first | same | F32 |
//! | `L.weight_scale` | F32 `[channels]` (1 per tensor, `out` per channel) | same | – |
//! | `L.weight_zero_point` | I8 `[channels]`, asymmetric weights only | same | – |
//! | `L.bias` | I32 `[out]` (scale `s_in * s_w`, zero point 0) | F32 | F32 |
//! | `L.multiplier` | I32 `[channels, 2]`: Q0.31 mantissa, exponent | – | – |
//!
//! Loading checks, in order: the safetensors structure (truncation), the format and
//! version, the JSON schema, every tensor's presence, dtype and shape, every rule of
//! [`QuantizedModel::new`] (multipliers against scales, grids, zero points, shapes,
//! domains, accumulator bounds), and last a checksum: a 64-bit hash over every tensor's
//! name and little-endian bytes in the order above (steps in order) and over the
//! description (`input_shape` and `steps`), so an edit that stays consistent, or a
//! flipped byte in the weights, is still caught.

use std::collections::HashMap;
use std::path::Path;

use cinder_tensor::io::{StoredElement, StoredTensor, TensorArchive, save_safetensors};
use cinder_tensor::tensor::shape_len;
use cinder_tensor::{
    Mapping, QuantParams, RequantMultiplier, Tensor, TensorBuf, TensorQuantParams,
};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::model::{
    Activation, DynamicLayer, FloatLayer, IntMerge, Layer, LayerExec, Merge, QuantWeights,
    StaticLayer, Step, StepOp, WEIGHT_BITS, Window, codes_per_byte, weight_grid,
};
use crate::quantized::QuantizedModel;

/// The `format` field of the metadata.
pub const MODEL_FORMAT: &str = "cinder-int8";
/// Bumped on incompatible changes. Version 4: an int8 `Add` rounds the sum of its
/// rescaled operands once ([`crate::model::IntMerge::output_code`]). Version 3 (the same
/// graph, each `Add` operand rounded on its own) loads when it holds no `Add`, which is
/// then the same model; version 2 (a chain) and version 1 (gemmlowp's two roundings) are
/// refused by name.
pub const MODEL_FORMAT_VERSION: u32 = 4;

/// The earlier version whose files load when they hold no `Add`.
const ADD_FREE_VERSION: u32 = 3;
/// The safetensors metadata key holding the JSON description.
pub const METADATA_KEY: &str = "cinder";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelMeta {
    format: String,
    format_version: u32,
    input_shape: Vec<usize>,
    checksum: String,
    steps: Vec<StepMeta>,
}

/// Read before the full description, so that another version is reported as such.
#[derive(Deserialize)]
struct Header {
    format: String,
    format_version: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepMeta {
    name: String,
    inputs: Vec<String>,
    op: OpMeta,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum OpMeta {
    Quantize {
        params: QuantParams,
    },
    Dequantize,
    Conv2d {
        out_channels: usize,
        /// Input channels per group.
        group_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        groups: usize,
        activation: Activation,
        exec: ExecMeta,
    },
    Linear {
        in_features: usize,
        out_features: usize,
        activation: Activation,
        exec: ExecMeta,
    },
    Activation {
        activation: Activation,
    },
    MaxPool2d {
        window: Window,
    },
    AvgPool2d {
        window: Window,
        count_include_pad: bool,
    },
    GlobalAvgPool,
    Add {
        activation: Activation,
        output: Option<QuantParams>,
    },
    Concat {
        activation: Activation,
        output: Option<QuantParams>,
    },
    Flatten,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
enum ExecMeta {
    Static {
        weights: WeightMeta,
        output: QuantParams,
    },
    Dynamic {
        weights: WeightMeta,
    },
    Float,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightMeta {
    bits: u8,
    mapping: Mapping,
    per_channel: bool,
}

/// A tensor to write.
enum Payload {
    I8(TensorBuf<i8>),
    U8(TensorBuf<u8>),
    I32(TensorBuf<i32>),
    F32(TensorBuf<f32>),
}

impl Payload {
    fn stored(&self) -> StoredTensor {
        match self {
            Payload::I8(t) => StoredTensor::from_tensor(t),
            Payload::U8(t) => StoredTensor::from_tensor(t),
            Payload::I32(t) => StoredTensor::from_tensor(t),
            Payload::F32(t) => StoredTensor::from_tensor(t),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::I8(t) => le_bytes(t.data()),
            Payload::U8(t) => le_bytes(t.data()),
            Payload::I32(t) => le_bytes(t.data()),
            Payload::F32(t) => le_bytes(t.data()),
        }
    }
}

fn le_bytes<T: StoredElement>(data: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * T::SIZE);
    for &x in data {
        x.write_le(&mut out);
    }
    out
}

/// FNV-1a style over 64-bit words with a xor-shift per word; not cryptographic, only a
/// guard against corruption.
struct Checksum(u64);

impl Checksum {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn mix(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x0000_0100_0000_01b3);
        self.0 ^= self.0 >> 29;
    }

    fn add(&mut self, name: &str, bytes: &[u8]) {
        for part in [name.as_bytes(), bytes] {
            let mut words = part.chunks_exact(8);
            for w in &mut words {
                self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
            }
            for &b in words.remainder() {
                self.mix(u64::from(b));
            }
            self.mix(part.len() as u64);
        }
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Codes packed `per_byte` (1, 2 or 4) to a byte, each in a two's-complement field of
/// `8 / per_byte` bits, the first code in the lowest bits; a last partial byte is padded
/// with zero fields. The codes must fit their fields.
pub(crate) fn pack_codes(codes: &[i8], per_byte: usize) -> Vec<u8> {
    let width = 8 / per_byte;
    let mask = u8::MAX >> (8 - width);
    codes
        .chunks(per_byte)
        .map(|group| {
            group
                .iter()
                .enumerate()
                .fold(0u8, |b, (i, &q)| b | ((q as u8) & mask) << (i * width))
        })
        .collect()
}

/// The first `len` codes of [`pack_codes`]'s bytes, sign-extended.
pub(crate) fn unpack_codes(bytes: &[u8], per_byte: usize, len: usize) -> Vec<i8> {
    let width = 8 / per_byte;
    bytes
        .iter()
        .flat_map(|&b| {
            (0..per_byte).map(move |i| ((b << (8 - width * (i + 1))) as i8) >> (8 - width))
        })
        .take(len)
        .collect()
}

impl QuantizedModel {
    /// Writes the model file atomically.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let mut tensors = Vec::new();
        let steps: Vec<StepMeta> = self
            .steps()
            .iter()
            .map(|s| step_meta(s, &mut tensors))
            .collect();
        let mut checksum = Checksum::new();
        for (name, t) in &tensors {
            checksum.add(name, &t.bytes());
        }
        checksum.add(
            METADATA_KEY,
            description(self.input_shape(), &steps).as_bytes(),
        );
        let meta = ModelMeta {
            format: MODEL_FORMAT.to_owned(),
            format_version: MODEL_FORMAT_VERSION,
            input_shape: self.input_shape().to_vec(),
            checksum: checksum.hex(),
            steps,
        };
        let json = serde_json::to_string(&meta).map_err(|e| ModelError::Metadata {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let stored: Vec<(String, StoredTensor)> = tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.stored()))
            .collect();
        save_safetensors(
            path,
            &stored,
            Some(HashMap::from([(METADATA_KEY.to_owned(), json)])),
        )?;
        Ok(())
    }

    /// Reads and checks a model file: format and version, every tensor's presence, dtype
    /// and shape, the data checksum, then every rule of [`QuantizedModel::new`].
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let archive = TensorArchive::open(path)?;
        let metadata = archive.metadata()?;
        let json = metadata
            .get(METADATA_KEY)
            .ok_or_else(|| ModelError::NotAModel {
                path: path.to_path_buf(),
                key: METADATA_KEY,
            })?;
        let bad_json = |e: serde_json::Error| ModelError::Metadata {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let header: Header = serde_json::from_str(json).map_err(bad_json)?;
        let version_error = || ModelError::Version {
            path: path.to_path_buf(),
            format: header.format.clone(),
            version: header.format_version,
            expected_format: MODEL_FORMAT,
            expected_version: MODEL_FORMAT_VERSION,
        };
        let known = [MODEL_FORMAT_VERSION, ADD_FREE_VERSION].contains(&header.format_version);
        if header.format != MODEL_FORMAT || !known {
            return Err(version_error());
        }
        let meta: ModelMeta = serde_json::from_str(json).map_err(bad_json)?;
        let has_add = meta
            .steps
            .iter()
            .any(|s| matches!(s.op, OpMeta::Add { .. }));
        if header.format_version == ADD_FREE_VERSION && has_add {
            return Err(version_error());
        }
        let described = description(&meta.input_shape, &meta.steps);
        let mut reader = Reader {
            archive: &archive,
            checksum: Checksum::new(),
        };
        let steps = meta
            .steps
            .into_iter()
            .map(|s| reader.step(s))
            .collect::<Result<Vec<_>, _>>()?;
        let model =
            QuantizedModel::new(meta.input_shape, steps).map_err(|source| ModelError::Invalid {
                path: path.to_path_buf(),
                source,
            })?;
        // Last, so that inconsistent edits are named precisely above.
        reader.checksum.add(METADATA_KEY, described.as_bytes());
        if reader.checksum.hex() != meta.checksum {
            return Err(ModelError::Checksum {
                path: path.to_path_buf(),
                expected: meta.checksum,
                actual: reader.checksum.hex(),
            });
        }
        Ok(model)
    }
}

/// The part of the metadata the checksum covers (all but format, version and checksum).
fn description(input_shape: &[usize], steps: &[StepMeta]) -> String {
    serde_json::to_string(&(input_shape, steps)).expect("plain data serializes")
}

fn step_meta(step: &Step, tensors: &mut Vec<(String, Payload)>) -> StepMeta {
    let name = &step.name;
    let op = match &step.op {
        StepOp::Quantize(params) => OpMeta::Quantize { params: *params },
        StepOp::Dequantize => OpMeta::Dequantize,
        StepOp::Activation(activation) => OpMeta::Activation {
            activation: *activation,
        },
        StepOp::Flatten => OpMeta::Flatten,
        StepOp::MaxPool2d(window) => OpMeta::MaxPool2d { window: *window },
        StepOp::AvgPool2d {
            window,
            count_include_pad,
        } => OpMeta::AvgPool2d {
            window: *window,
            count_include_pad: *count_include_pad,
        },
        StepOp::GlobalAvgPool => OpMeta::GlobalAvgPool,
        StepOp::Add(merge) => OpMeta::Add {
            activation: merge.activation,
            output: merge_tensors(name, merge, tensors),
        },
        StepOp::Concat(merge) => OpMeta::Concat {
            activation: merge.activation,
            output: merge_tensors(name, merge, tensors),
        },
        StepOp::Conv2d {
            stride,
            padding,
            groups,
            layer,
        } => {
            let w = layer.weight_shape();
            OpMeta::Conv2d {
                exec: layer_tensors(name, layer, tensors),
                out_channels: w[0],
                group_channels: w[1],
                kernel: [w[2], w[3]],
                stride: *stride,
                padding: *padding,
                groups: *groups,
                activation: layer.activation,
            }
        }
        StepOp::Linear(layer) => {
            let w = layer.weight_shape();
            OpMeta::Linear {
                exec: layer_tensors(name, layer, tensors),
                in_features: w[1],
                out_features: w[0],
                activation: layer.activation,
            }
        }
    };
    StepMeta {
        name: name.clone(),
        inputs: step.inputs.clone(),
        op,
    }
}

/// Multipliers as I32 `[n, 2]` (mantissa, exponent).
fn multiplier_payload(multipliers: &[RequantMultiplier]) -> Payload {
    let m = multipliers
        .iter()
        .flat_map(|m| [m.multiplier, m.exponent])
        .collect();
    Payload::I32(TensorBuf::new(vec![multipliers.len(), 2], m).expect("two per multiplier"))
}

/// The tensors of an int8 merge; its output parameters.
fn merge_tensors(
    name: &str,
    merge: &Merge,
    out: &mut Vec<(String, Payload)>,
) -> Option<QuantParams> {
    let int = merge.int.as_ref()?;
    out.push((
        format!("{name}.multiplier"),
        multiplier_payload(&int.multipliers),
    ));
    Some(int.output)
}

fn layer_tensors(name: &str, layer: &Layer, out: &mut Vec<(String, Payload)>) -> ExecMeta {
    let mut push = |suffix: &str, t: Payload| out.push((format!("{name}.{suffix}"), t));
    match &layer.exec {
        LayerExec::Static(s) => {
            let weights = weight_tensors(&s.weights, &mut push);
            push("bias", Payload::I32(TensorBuf::from_vec(s.bias.clone())));
            push("multiplier", multiplier_payload(&s.multipliers));
            ExecMeta::Static {
                weights,
                output: s.output,
            }
        }
        LayerExec::Dynamic(d) => {
            let weights = weight_tensors(&d.weights, &mut push);
            push("bias", Payload::F32(TensorBuf::from_vec(d.bias.clone())));
            ExecMeta::Dynamic { weights }
        }
        LayerExec::Float(f) => {
            push("weight", Payload::F32(f.weight.clone()));
            push("bias", Payload::F32(TensorBuf::from_vec(f.bias.clone())));
            ExecMeta::Float
        }
    }
}

fn weight_tensors(w: &QuantWeights, push: &mut impl FnMut(&str, Payload)) -> WeightMeta {
    let codes = match codes_per_byte(w.bits) {
        1 => Payload::I8(w.codes.clone()),
        per_byte => Payload::U8(TensorBuf::from_vec(pack_codes(w.codes.data(), per_byte))),
    };
    push("weight", codes);
    let params = w.params.as_slice();
    push(
        "weight_scale",
        Payload::F32(TensorBuf::from_vec(
            params.iter().map(|p| p.scale).collect(),
        )),
    );
    if w.mapping == Mapping::Asymmetric {
        let zps = params.iter().map(|p| p.zero_point as i8).collect();
        push("weight_zero_point", Payload::I8(TensorBuf::from_vec(zps)));
    }
    WeightMeta {
        bits: w.bits,
        mapping: w.mapping,
        per_channel: matches!(w.params, TensorQuantParams::PerChannel { .. }),
    }
}

/// Reads tensors in the order they were written, hashing them as it goes.
struct Reader<'a> {
    archive: &'a TensorArchive,
    checksum: Checksum,
}

impl Reader<'_> {
    fn get<T: StoredElement>(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<TensorBuf<T>, ModelError> {
        let t = self.archive.get::<T>(name, Some(shape))?;
        self.checksum.add(name, &le_bytes(t.data()));
        Ok(t)
    }

    fn invalid(&self, field: String, message: String) -> ModelError {
        ModelError::Invalid {
            path: self.archive.path().to_path_buf(),
            source: crate::error::Invalid::new(field, message),
        }
    }

    fn step(&mut self, meta: StepMeta) -> Result<Step, ModelError> {
        let StepMeta { name, inputs, op } = meta;
        let merge = |reader: &mut Self, activation, output: Option<QuantParams>| {
            let int = match output {
                Some(output) => Some(IntMerge {
                    multipliers: reader.multipliers(&name, inputs.len())?,
                    output,
                }),
                None => None,
            };
            Ok::<_, ModelError>(Merge { int, activation })
        };
        let op = match op {
            OpMeta::Quantize { params } => StepOp::Quantize(params),
            OpMeta::Dequantize => StepOp::Dequantize,
            OpMeta::Activation { activation } => StepOp::Activation(activation),
            OpMeta::Flatten => StepOp::Flatten,
            OpMeta::MaxPool2d { window } => StepOp::MaxPool2d(window),
            OpMeta::AvgPool2d {
                window,
                count_include_pad,
            } => StepOp::AvgPool2d {
                window,
                count_include_pad,
            },
            OpMeta::GlobalAvgPool => StepOp::GlobalAvgPool,
            OpMeta::Add { activation, output } => StepOp::Add(merge(self, activation, output)?),
            OpMeta::Concat { activation, output } => {
                StepOp::Concat(merge(self, activation, output)?)
            }
            OpMeta::Conv2d {
                out_channels,
                group_channels,
                kernel: [kh, kw],
                stride,
                padding,
                groups,
                activation,
                exec,
            } => {
                let shape = [out_channels, group_channels, kh, kw];
                let exec = self.layer(&name, &shape, exec)?;
                StepOp::Conv2d {
                    stride,
                    padding,
                    groups,
                    layer: Layer { activation, exec },
                }
            }
            OpMeta::Linear {
                in_features,
                out_features,
                activation,
                exec,
            } => {
                let exec = self.layer(&name, &[out_features, in_features], exec)?;
                StepOp::Linear(Layer { activation, exec })
            }
        };
        Ok(Step { name, inputs, op })
    }

    /// `n` multipliers stored as I32 `[n, 2]` in `{name}.multiplier`.
    fn multipliers(&mut self, name: &str, n: usize) -> Result<Vec<RequantMultiplier>, ModelError> {
        let m = self.get::<i32>(&format!("{name}.multiplier"), &[n, 2])?;
        Ok(m.data()
            .chunks_exact(2)
            .map(|p| RequantMultiplier {
                multiplier: p[0],
                exponent: p[1],
            })
            .collect())
    }

    fn layer(
        &mut self,
        name: &str,
        shape: &[usize],
        exec: ExecMeta,
    ) -> Result<LayerExec, ModelError> {
        let out = shape[0];
        Ok(match exec {
            ExecMeta::Static { weights, output } => {
                let weights = self.weights(name, shape, weights)?;
                let bias = self
                    .get::<i32>(&format!("{name}.bias"), &[out])?
                    .into_data();
                let channels = weights.params.as_slice().len();
                let multipliers = self.multipliers(name, channels)?;
                LayerExec::Static(StaticLayer {
                    weights,
                    bias,
                    multipliers,
                    output,
                })
            }
            ExecMeta::Dynamic { weights } => {
                let weights = self.weights(name, shape, weights)?;
                let bias = self
                    .get::<f32>(&format!("{name}.bias"), &[out])?
                    .into_data();
                LayerExec::Dynamic(DynamicLayer { weights, bias })
            }
            ExecMeta::Float => LayerExec::Float(FloatLayer {
                weight: self.get::<f32>(&format!("{name}.weight"), shape)?,
                bias: self
                    .get::<f32>(&format!("{name}.bias"), &[out])?
                    .into_data(),
            }),
        })
    }

    fn weights(
        &mut self,
        name: &str,
        shape: &[usize],
        meta: WeightMeta,
    ) -> Result<QuantWeights, ModelError> {
        let field = format!("{name}.weight");
        let len = shape_len(shape).map_err(|e| self.invalid(field.clone(), e.to_string()))?;
        if !WEIGHT_BITS.contains(&meta.bits) {
            let message = format!("{} bits: expected {WEIGHT_BITS:?}", meta.bits);
            return Err(self.invalid(field, message));
        }
        let codes = match codes_per_byte(meta.bits) {
            1 => self.get::<i8>(&field, shape)?,
            per_byte => {
                let packed = self.get::<u8>(&field, &[len.div_ceil(per_byte)])?;
                let codes = unpack_codes(packed.data(), per_byte, len);
                TensorBuf::new(shape.to_vec(), codes).expect("len codes")
            }
        };
        let channels = if meta.per_channel { shape[0] } else { 1 };
        let scales = self.get::<f32>(&format!("{name}.weight_scale"), &[channels])?;
        let zero_points = match meta.mapping {
            Mapping::Asymmetric => self
                .get::<i8>(&format!("{name}.weight_zero_point"), &[channels])?
                .into_data(),
            Mapping::Symmetric => vec![0; channels],
        };
        let (qmin, qmax) = weight_grid(meta.bits);
        let params: Vec<QuantParams> = scales
            .data()
            .iter()
            .zip(&zero_points)
            .map(|(&scale, &zp)| QuantParams {
                scale,
                zero_point: i32::from(zp),
                qmin,
                qmax,
            })
            .collect();
        let params = if meta.per_channel {
            TensorQuantParams::PerChannel {
                axis: 0,
                channels: params,
            }
        } else {
            TensorQuantParams::PerTensor(params[0])
        };
        Ok(QuantWeights {
            bits: meta.bits,
            mapping: meta.mapping,
            codes,
            params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_layouts() {
        let codes: Vec<i8> = vec![-7, 7, 0, -1, 3];
        let packed = pack_codes(&codes, 2);
        assert_eq!(packed, vec![0x79, 0xf0, 0x03]);
        assert_eq!(unpack_codes(&packed, 2, 5), codes);
        let codes: Vec<i8> = vec![-1, 1, 0, -1, 1];
        let packed = pack_codes(&codes, 4);
        assert_eq!(packed, vec![0b1100_0111, 0b01]);
        assert_eq!(unpack_codes(&packed, 4, 5), codes);
    }

    proptest::proptest! {
        #[test]
        fn packing_round_trips_every_width(
            bits in 2u8..=8,
            raw in proptest::collection::vec(proptest::num::i8::ANY, 0..40),
        ) {
            let (lo, hi) = weight_grid(bits);
            let codes: Vec<i8> = raw.iter().map(|&q| i32::from(q).clamp(lo, hi) as i8).collect();
            let per_byte = codes_per_byte(bits);
            let packed = pack_codes(&codes, per_byte);
            proptest::prop_assert_eq!(packed.len(), codes.len().div_ceil(per_byte));
            proptest::prop_assert_eq!(unpack_codes(&packed, per_byte, codes.len()), codes);
        }
    }

    #[test]
    fn checksum_sees_single_bit_flips() {
        let data: Vec<u8> = (0..100).collect();
        let mut base = Checksum::new();
        base.add("t", &data);
        for i in [0, 7, 8, 63, 99] {
            let mut flipped = data.clone();
            flipped[i] ^= 0x80;
            let mut c = Checksum::new();
            c.add("t", &flipped);
            assert_ne!(c.hex(), base.hex(), "byte {i}");
        }
    }
}
