//! The first half of QDQ import: a QDQ ONNX model split into the float model it computes
//! (each activation's `QuantizeLinear` -> `DequantizeLinear` pair removed, quantized
//! constants replaced by their real values) and the quantization it carries: every
//! quantized activation tensor's parameters and every quantized layer's weight parameters
//! and int32 bias codes.

use std::collections::HashMap;

use cinder_tensor::{QuantParams, TensorQuantParams};

use crate::attrs::Attrs;
use crate::error::OnnxError;
use crate::proto::tensor_proto::DataType;
use crate::proto::{ModelProto, NodeProto, TensorProto};
use crate::tensor;

/// The quantization a QDQ model carries.
#[derive(Debug, Default)]
pub(super) struct Quantization {
    /// Parameters on cinder's signed grid of each quantized activation, by the ONNX name
    /// of the float tensor its `QuantizeLinear` reads, with that node's name.
    pub activations: HashMap<String, (QuantParams, String)>,
    /// Each layer with int8 weights, by its node's name in the float graph.
    pub layers: HashMap<String, LayerQuant>,
}

/// The quantization of one convolution or linear layer.
#[derive(Debug)]
pub(super) struct LayerQuant {
    /// Symmetric int8 parameters, per tensor or per output channel.
    pub weights: TensorQuantParams,
    /// The int32 bias codes and their scales (one, or one per output channel).
    pub bias: Option<(Vec<i32>, Vec<f32>)>,
    pub op_type: String,
}

/// An integer initializer read through a `DequantizeLinear`.
struct QuantizedConstant {
    kind: DataType,
    shape: Vec<usize>,
    codes: Vec<i32>,
    scales: Vec<f32>,
    zero_points: Vec<i32>,
    /// The axis of per-axis parameters; `None` per tensor.
    axis: Option<usize>,
}

/// Splits `model` into its float model and its quantization.
pub(super) fn strip(model: &ModelProto) -> Result<(ModelProto, Quantization), OnnxError> {
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::Model {
        field: "graph",
        message: "missing".into(),
    })?;
    let initializers: HashMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let mut constants = HashMap::new();
    for node in graph
        .node
        .iter()
        .filter(|n| is_dq_of_constant(n, &initializers))
    {
        constants.insert(
            output(node)?.to_owned(),
            quantized_constant(node, &initializers)?,
        );
    }
    let mut q = Quantization::default();
    let mut alias: HashMap<String, String> = HashMap::new();
    let mut quantized: HashMap<String, (String, QuantParams)> = HashMap::new();
    let mut kept = Vec::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            _ if is_dq_of_constant(node, &initializers) => {}
            "QuantizeLinear" if is_default_domain(node) => {
                let (x, params) = activation_quantize(node, &initializers)?;
                let x = alias.get(&x).cloned().unwrap_or(x);
                record(&mut q, &x, params, node_name(node))?;
                quantized.insert(output(node)?.to_owned(), (x, params));
            }
            "DequantizeLinear" if is_default_domain(node) => {
                let (x, params) = activation_dequantize(node, &initializers, &quantized)?;
                if params != quantized[&node.input[0]].1 {
                    return Err(node_error(
                        node,
                        "its scale and zero point differ from the QuantizeLinear it reads".into(),
                    ));
                }
                alias.insert(output(node)?.to_owned(), x);
            }
            _ => kept.push(rename_inputs(node, &alias, &quantized)?),
        }
    }
    for node in &kept {
        if let Some(layer) = layer_quant(node, &constants)? {
            q.layers.insert(node_name(node), layer);
        }
    }
    let mut float = model.clone();
    let g = float.graph.as_mut().expect("checked above");
    g.node = kept;
    for out in &mut g.output {
        if let Some(source) = alias.get(&out.name) {
            out.name.clone_from(source);
        }
    }
    g.initializer.extend(
        constants
            .iter()
            .map(|(name, c)| tensor::from_f32_values(name, &c.shape, &c.dequantized())),
    );
    Ok((float, q))
}

fn is_default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

fn is_dq_of_constant(node: &NodeProto, initializers: &HashMap<&str, &TensorProto>) -> bool {
    node.op_type == "DequantizeLinear"
        && is_default_domain(node)
        && node
            .input
            .first()
            .is_some_and(|x| initializers.contains_key(x.as_str()))
}

/// The name the float importer gives the node.
fn node_name(node: &NodeProto) -> String {
    match (&node.name, node.output.first()) {
        (n, _) if !n.is_empty() => n.clone(),
        (_, Some(out)) => out.clone(),
        _ => String::new(),
    }
}

fn node_error(node: &NodeProto, message: String) -> OnnxError {
    OnnxError::Node {
        node: node_name(node),
        op_type: node.op_type.clone(),
        message,
    }
}

fn output(node: &NodeProto) -> Result<&str, OnnxError> {
    match node.output.first() {
        Some(o) if !o.is_empty() => Ok(o),
        _ => Err(node_error(node, "has no output".into())),
    }
}

/// Records the parameters of the activation `x`; a second quantization of the same
/// tensor must use the same ones.
fn record(
    q: &mut Quantization,
    x: &str,
    params: QuantParams,
    node: String,
) -> Result<(), OnnxError> {
    match q.activations.get(x) {
        Some((p, first)) if *p != params => Err(OnnxError::Tensor {
            name: x.to_owned(),
            message: format!(
                "quantized by `{first}` and by `{node}` with different parameters; cinder \
                 keeps one set per tensor"
            ),
        }),
        _ => {
            q.activations.insert(x.to_owned(), (params, node));
            Ok(())
        }
    }
}

/// A compute node's inputs with each activation `DequantizeLinear` output replaced by
/// the float tensor its `QuantizeLinear` read.
fn rename_inputs(
    node: &NodeProto,
    alias: &HashMap<String, String>,
    quantized: &HashMap<String, (String, QuantParams)>,
) -> Result<NodeProto, OnnxError> {
    if let Some(raw) = node.input.iter().find(|i| quantized.contains_key(*i)) {
        return Err(node_error(
            node,
            format!("reads the quantized tensor `{raw}` directly; only DequantizeLinear may"),
        ));
    }
    let mut node = node.clone();
    for input in &mut node.input {
        if let Some(source) = alias.get(input) {
            input.clone_from(source);
        }
    }
    Ok(node)
}

/// The scale and zero point operands of a `QuantizeLinear` / `DequantizeLinear` (inputs
/// 1 and 2): initializers, the zero point's type giving the grid (uint8 if absent).
fn scale_and_zero_point(
    node: &NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
) -> Result<(Vec<f32>, DataType, Vec<i32>), OnnxError> {
    let constant = |i: usize, what: &str| {
        node.input
            .get(i)
            .filter(|n| !n.is_empty())
            .map(|n| {
                initializers.get(n.as_str()).copied().ok_or_else(|| {
                    node_error(node, format!("the {what} `{n}` is not an initializer"))
                })
            })
            .transpose()
    };
    let scale = constant(1, "scale")?.ok_or_else(|| node_error(node, "has no scale".into()))?;
    let scales = tensor::to_f32(scale)?.into_data();
    let (kind, zero_points) = match constant(2, "zero point")? {
        Some(t) => {
            let (kind, _, values) = tensor::to_codes(t)?;
            (kind, values)
        }
        None => (DataType::Uint8, vec![0; scales.len()]),
    };
    if zero_points.len() != scales.len() {
        return Err(node_error(
            node,
            format!(
                "{} scales and {} zero points",
                scales.len(),
                zero_points.len()
            ),
        ));
    }
    Ok((scales, kind, zero_points))
}

/// Per-tensor activation parameters from one scale and zero point, on cinder's signed
/// grid (uint8 codes shifted by -128, int8 codes as they are).
fn activation_params(
    node: &NodeProto,
    (scales, kind, zero_points): (Vec<f32>, DataType, Vec<i32>),
) -> Result<QuantParams, OnnxError> {
    let (&[scale], &[zero_point]) = (scales.as_slice(), zero_points.as_slice()) else {
        return Err(node_error(
            node,
            format!(
                "{} scales: activations must be quantized per tensor",
                scales.len()
            ),
        ));
    };
    let shift = match kind {
        DataType::Uint8 => 128,
        DataType::Int8 => 0,
        other => {
            return Err(node_error(
                node,
                format!("{other:?} activations; supported: uint8 and int8"),
            ));
        }
    };
    QuantParams::new(scale, zero_point - shift, -128, 127)
        .map_err(|e| node_error(node, e.to_string()))
}

/// A `QuantizeLinear` of an activation: the tensor it reads and its parameters.
fn activation_quantize(
    node: &NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
) -> Result<(String, QuantParams), OnnxError> {
    Attrs::new(node, &node_name(node), &["axis", "saturate"])?;
    let x = node.input.first().cloned().unwrap_or_default();
    if initializers.contains_key(x.as_str()) {
        return Err(node_error(
            node,
            format!(
                "quantizes the initializer `{x}`; weights must be stored as integer \
                 initializers read by DequantizeLinear"
            ),
        ));
    }
    let params = activation_params(node, scale_and_zero_point(node, initializers)?)?;
    Ok((x, params))
}

/// A `DequantizeLinear` of an activation, which must read a `QuantizeLinear`'s output:
/// the float tensor that was quantized, and its parameters.
fn activation_dequantize(
    node: &NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
    quantized: &HashMap<String, (String, QuantParams)>,
) -> Result<(String, QuantParams), OnnxError> {
    Attrs::new(node, &node_name(node), &["axis"])?;
    let q = node.input.first().cloned().unwrap_or_default();
    let Some((x, _)) = quantized.get(&q) else {
        return Err(node_error(
            node,
            format!("reads `{q}`, which is neither an initializer nor a QuantizeLinear's output"),
        ));
    };
    let params = activation_params(node, scale_and_zero_point(node, initializers)?)?;
    Ok((x.clone(), params))
}

/// A `DequantizeLinear` of an integer initializer.
fn quantized_constant(
    node: &NodeProto,
    initializers: &HashMap<&str, &TensorProto>,
) -> Result<QuantizedConstant, OnnxError> {
    let name = node_name(node);
    let a = Attrs::new(node, &name, &["axis"])?;
    let (kind, shape, codes) = tensor::to_codes(initializers[node.input[0].as_str()])?;
    let (scales, zp_kind, zero_points) = scale_and_zero_point(node, initializers)?;
    if zp_kind != kind {
        return Err(a.error(format!("zero point of type {zp_kind:?} for {kind:?} codes")));
    }
    if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(a.error(format!("scale {bad} is not positive and finite")));
    }
    let axis = if scales.len() == 1 && a.ints("axis")?.is_none() {
        None
    } else {
        let raw = a.int("axis", 1)?;
        let rank = shape.len() as i64;
        let axis = usize::try_from(if raw < 0 { raw + rank } else { raw })
            .ok()
            .filter(|&ax| ax < shape.len() && shape[ax] == scales.len())
            .ok_or_else(|| {
                a.error(format!(
                    "{} scales along axis {raw} of a tensor of shape {shape:?}",
                    scales.len()
                ))
            })?;
        Some(axis)
    };
    Ok(QuantizedConstant {
        kind,
        shape,
        codes,
        scales,
        zero_points,
        axis,
    })
}

impl QuantizedConstant {
    /// The channel (index along the axis) of each element.
    fn channels(&self) -> impl Iterator<Item = usize> + '_ {
        let (period, inner) = match self.axis {
            None => (1, 1),
            Some(axis) => (self.shape[axis], self.shape[axis + 1..].iter().product()),
        };
        (0..self.codes.len()).map(move |i| (i / inner) % period)
    }

    /// The real values, `(q - zp) * scale` of each element's channel.
    fn dequantized(&self) -> Vec<f32> {
        self.codes
            .iter()
            .zip(self.channels())
            .map(|(&q, c)| (q - self.zero_points[c]) as f32 * self.scales[c])
            .collect()
    }
}

/// The quantization of a `Conv`, `Gemm` or `MatMul` whose weight is a dequantized int8
/// initializer; `None` for any other node and for float weights.
fn layer_quant(
    node: &NodeProto,
    constants: &HashMap<String, QuantizedConstant>,
) -> Result<Option<LayerQuant>, OnnxError> {
    let out_axis = match node.op_type.as_str() {
        "Conv" => 0,
        "Gemm" => {
            let name = node_name(node);
            let a = Attrs::new(node, &name, &["alpha", "beta", "transA", "transB"])?;
            if a.int("transB", 0)? == 1 { 0 } else { 1 }
        }
        "MatMul" => 1,
        _ => return Ok(None),
    };
    let Some(w) = node.input.get(1).and_then(|i| constants.get(i)) else {
        return Ok(None);
    };
    let weights = weight_params(node, w, out_axis)?;
    let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
        None => None,
        Some(b) => Some(bias_codes(node, b, constants.get(b))?),
    };
    Ok(Some(LayerQuant {
        weights,
        bias,
        op_type: node.op_type.clone(),
    }))
}

/// Symmetric int8 weight parameters on cinder's narrow grid, per tensor or per output
/// channel (`out_axis` of the ONNX weight).
fn weight_params(
    node: &NodeProto,
    w: &QuantizedConstant,
    out_axis: usize,
) -> Result<TensorQuantParams, OnnxError> {
    if w.kind != DataType::Int8 {
        return Err(node_error(
            node,
            format!(
                "{:?} weights; cinder runs int8 weights (quantize with weight_type=QInt8)",
                w.kind
            ),
        ));
    }
    if let Some(zp) = w.zero_points.iter().find(|&&z| z != 0) {
        return Err(node_error(
            node,
            format!("weight zero point {zp}; cinder's int8 weights are symmetric (zero point 0)"),
        ));
    }
    if let Some(q) = w.codes.iter().find(|&&q| q == -128) {
        return Err(node_error(
            node,
            format!("weight code {q}; cinder's int8 weights are in [-127, 127]"),
        ));
    }
    let params =
        |s: f32| QuantParams::new(s, 0, -127, 127).map_err(|e| node_error(node, e.to_string()));
    match w.axis {
        None => Ok(TensorQuantParams::PerTensor(params(w.scales[0])?)),
        Some(axis) if axis == out_axis => Ok(TensorQuantParams::PerChannel {
            axis: 0,
            channels: w
                .scales
                .iter()
                .map(|&s| params(s))
                .collect::<Result<_, _>>()?,
        }),
        Some(axis) => Err(node_error(
            node,
            format!(
                "weights quantized per channel along axis {axis}; only the output channels' axis {out_axis} is supported"
            ),
        )),
    }
}

/// A layer's bias: int32 codes with zero point 0 read through a `DequantizeLinear`.
fn bias_codes(
    node: &NodeProto,
    name: &str,
    constant: Option<&QuantizedConstant>,
) -> Result<(Vec<i32>, Vec<f32>), OnnxError> {
    match constant {
        Some(b) if b.kind == DataType::Int32 && b.zero_points.iter().all(|&z| z == 0) => {
            Ok((b.codes.clone(), b.scales.clone()))
        }
        _ => Err(node_error(
            node,
            format!(
                "the bias `{name}` of a layer with int8 weights must be int32 codes with zero \
                 point 0 read by DequantizeLinear"
            ),
        )),
    }
}
