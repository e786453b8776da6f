//! QDQ export: a cinder [`QuantizedModel`] as the QDQ ONNX model ONNX Runtime's own
//! quantizer writes: `QuantizeLinear` / `DequantizeLinear` pairs around float operators,
//! which ONNX Runtime fuses into its integer kernels.
//!
//! - Activations are uint8: cinder's int8 code plus 128 with the zero point plus 128, the
//!   same real values (`scale * (q - zp)` is unchanged by the shift).
//! - Static layers: int8 weights through a `DequantizeLinear` per tensor or per output
//!   channel (`axis` 0), an int32 bias with scale `s_in * s_w` and zero point 0, the float
//!   `Conv` / `Gemm`, then the `QuantizeLinear` of the output parameters. A fused ReLU or
//!   clip is the range of that `QuantizeLinear` where the uint8 grid already implies it,
//!   else a float `Clip` to the bounds of its codes before it.
//! - Activations, pools and flatten in int8 keep their parameters: `DequantizeLinear`,
//!   the float operator, `QuantizeLinear` with the same parameters. `Add` / `Concat` in
//!   int8 dequantize each input and quantize to their own output parameters.
//! - Float layers and float-domain steps of partially quantized models stay float.
//! - Dynamic layers are written as ONNX Runtime's `quantize_dynamic` writes them: the
//!   input quantized with its own range (`DynamicQuantizeLinear`), `ConvInteger` or
//!   `MatMulInteger` on the int8 weights, the accumulators scaled by `s_in * s_w` in float.

use std::collections::HashMap;
use std::path::Path;

use cinder_runtime::model::INPUT;
use cinder_runtime::{
    Activation, DynamicLayer, Layer, LayerExec, Merge, QuantWeights, QuantizedModel, StaticLayer,
    StepOp, Window,
};
use cinder_tensor::io::write_atomic;
use cinder_tensor::{QuantParams, Tensor, TensorQuantParams};
use prost::Message;

use crate::error::OnnxError;
use crate::export::{int, model_of, value_info, window_attrs};
use crate::proto::tensor_proto::DataType;
use crate::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use crate::tensor;

/// What is added to an int8 activation code (and zero point) to give its uint8 code.
pub const UINT8_SHIFT: i32 = 128;

/// Writes `model` as a QDQ ONNX file (atomically).
pub fn export_qdq_file(model: &QuantizedModel, path: &Path) -> Result<(), OnnxError> {
    Ok(write_atomic(path, &export_qdq_bytes(model)?)?)
}

/// `model` as an encoded QDQ ONNX model.
pub fn export_qdq_bytes(model: &QuantizedModel) -> Result<Vec<u8>, OnnxError> {
    Ok(export_qdq_model(model)?.encode_to_vec())
}

/// `model` as a QDQ ONNX model.
pub fn export_qdq_model(model: &QuantizedModel) -> Result<ModelProto, OnnxError> {
    let mut w = Writer::default();
    w.tensors
        .insert(INPUT.to_owned(), Repr::Float(INPUT.to_owned()));
    for step in model.steps() {
        w.step(&step.name, &step.inputs, &step.op)?;
    }
    let last = model.steps().last().ok_or_else(|| OnnxError::Model {
        field: "steps",
        message: "the model has no steps".into(),
    })?;
    let output = match &w.tensors[&last.name] {
        Repr::Float(name) => name.clone(),
        Repr::Int { .. } => return Err(not_exportable(&last.name, "the model ends in int8")),
    };
    let graph = GraphProto {
        name: "cinder-int8".into(),
        node: w.nodes,
        initializer: w.initializer,
        input: vec![value_info(INPUT, model.input_shape())],
        output: vec![value_info(&output, model.output_shape())],
        ..GraphProto::default()
    };
    Ok(model_of(graph))
}

/// How a model tensor is held in the ONNX graph.
#[derive(Debug, Clone)]
enum Repr {
    /// A float tensor of this name.
    Float(String),
    /// A uint8 tensor of this name with cinder's (signed-grid) parameters.
    Int { name: String, params: QuantParams },
}

/// The ONNX graph being written.
#[derive(Default)]
struct Writer {
    nodes: Vec<NodeProto>,
    initializer: Vec<TensorProto>,
    /// Every model tensor written so far, by step name.
    tensors: HashMap<String, Repr>,
}

impl Writer {
    fn step(&mut self, name: &str, inputs: &[String], op: &StepOp) -> Result<(), OnnxError> {
        let input = self.tensors[&inputs[0]].clone();
        let repr = match op {
            StepOp::Quantize(p) => {
                let x = float_name(name, &input)?;
                self.quantize(name, name, &x, p)
            }
            StepOp::Dequantize => {
                let (q, p) = int_name(name, &input)?;
                self.dequantize(name, name, &q, &p);
                Repr::Float(name.to_owned())
            }
            StepOp::Conv2d {
                stride,
                padding,
                groups,
                layer,
            } => {
                let window = Window {
                    kernel: [layer.weight_shape()[2], layer.weight_shape()[3]],
                    stride: *stride,
                    padding: *padding,
                };
                let mut attrs = window_attrs(window.kernel, window.stride, window.padding);
                attrs.push(int("group", *groups as i64));
                self.layer(name, &input, layer, "Conv", attrs)?
            }
            StepOp::Linear(layer) => {
                self.layer(name, &input, layer, "Gemm", vec![int("transB", 1)])?
            }
            StepOp::Activation(a) => self.keeping_params(name, &input, |w, x, out| {
                w.activation(name, x, out, *a);
            }),
            StepOp::MaxPool2d(window) => self.pool(name, &input, "MaxPool", pool_attrs(window)),
            StepOp::AvgPool2d {
                window,
                count_include_pad,
            } => {
                let mut attrs = pool_attrs(window);
                attrs.push(int("count_include_pad", i64::from(*count_include_pad)));
                self.pool(name, &input, "AveragePool", attrs)
            }
            StepOp::GlobalAvgPool => self.pool(name, &input, "GlobalAveragePool", vec![]),
            StepOp::Flatten => self.pool(name, &input, "Flatten", vec![int("axis", 1)]),
            StepOp::Add(merge) => self.merge(name, inputs, merge, "Add", vec![])?,
            StepOp::Concat(merge) => {
                self.merge(name, inputs, merge, "Concat", vec![int("axis", 1)])?
            }
        };
        self.tensors.insert(name.to_owned(), repr);
        Ok(())
    }

    fn push(&mut self, name: &str, op_type: &str, input: Vec<String>, output: &str) {
        self.push_with(name, op_type, input, output, vec![]);
    }

    fn push_with(
        &mut self,
        name: &str,
        op_type: &str,
        input: Vec<String>,
        output: &str,
        attribute: Vec<AttributeProto>,
    ) {
        self.nodes.push(NodeProto {
            input,
            output: vec![output.to_owned()],
            name: name.to_owned(),
            op_type: op_type.into(),
            attribute,
            ..NodeProto::default()
        });
    }

    /// `QuantizeLinear` of the float tensor `x` with `p` (as uint8) into `out`.
    fn quantize(&mut self, node: &str, out: &str, x: &str, p: &QuantParams) -> Repr {
        let (scale, zero_point) = self.activation_params(out, p);
        self.push(
            &format!("{node}/quantize"),
            "QuantizeLinear",
            vec![x.to_owned(), scale, zero_point],
            out,
        );
        Repr::Int {
            name: out.to_owned(),
            params: *p,
        }
    }

    /// `DequantizeLinear` of the uint8 tensor `q` with `p` into `out`.
    fn dequantize(&mut self, node: &str, out: &str, q: &str, p: &QuantParams) {
        let (scale, zero_point) = self.activation_params(out, p);
        self.push(
            &format!("{node}/dequantize"),
            "DequantizeLinear",
            vec![q.to_owned(), scale, zero_point],
            out,
        );
    }

    /// The scale and uint8 zero point initializers of an activation tensor `of`.
    fn activation_params(&mut self, of: &str, p: &QuantParams) -> (String, String) {
        let (scale, zero_point) = (format!("{of}.scale"), format!("{of}.zero_point"));
        if !self.initializer.iter().any(|t| t.name == scale) {
            self.initializer
                .push(tensor::from_f32_values(&scale, &[], &[p.scale]));
            self.initializer.push(tensor::from_codes(
                &zero_point,
                DataType::Uint8,
                &[],
                &[p.zero_point + UINT8_SHIFT],
            ));
        }
        (scale, zero_point)
    }

    /// The float tensor of `input` for the node `node`: itself, or its dequantization.
    fn float_input(&mut self, node: &str, input: &Repr, i: usize) -> String {
        match input {
            Repr::Float(name) => name.clone(),
            Repr::Int { name, params } => {
                let out = format!("{node}/input{i}");
                self.dequantize(&out, &out, name, params);
                out
            }
        }
    }

    /// A step that keeps its input's parameters: in int8 dequantize, compute in float
    /// (`compute(writer, float input, float output)`) and quantize with the same
    /// parameters; in float, compute.
    fn keeping_params(
        &mut self,
        name: &str,
        input: &Repr,
        compute: impl FnOnce(&mut Self, &str, &str),
    ) -> Repr {
        let x = self.float_input(name, input, 0);
        match input {
            Repr::Float(_) => {
                compute(self, &x, name);
                Repr::Float(name.to_owned())
            }
            Repr::Int { params, .. } => {
                let y = format!("{name}/float");
                compute(self, &x, &y);
                self.quantize(name, name, &y, params)
            }
        }
    }

    fn pool(
        &mut self,
        name: &str,
        input: &Repr,
        op_type: &str,
        attrs: Vec<AttributeProto>,
    ) -> Repr {
        self.keeping_params(name, input, |w, x, out| {
            w.push_with(name, op_type, vec![x.to_owned()], out, attrs);
        })
    }

    /// A float activation from `x` into `out` (an identity for [`Activation::None`]).
    fn activation(&mut self, node: &str, x: &str, out: &str, a: Activation) {
        match a {
            Activation::None => self.push(node, "Identity", vec![x.to_owned()], out),
            Activation::Relu => self.push(node, "Relu", vec![x.to_owned()], out),
            Activation::Clip { min, max } => self.clip(node, x, out, min, max),
        }
    }

    fn clip(&mut self, node: &str, x: &str, out: &str, min: f32, max: f32) {
        let (lo, hi) = (format!("{node}.clip_min"), format!("{node}.clip_max"));
        self.initializer
            .push(tensor::from_f32_values(&lo, &[], &[min]));
        self.initializer
            .push(tensor::from_f32_values(&hi, &[], &[max]));
        self.push(
            &format!("{node}/clip"),
            "Clip",
            vec![x.to_owned(), lo, hi],
            out,
        );
    }

    /// Quantizes the float `y` of node `name` to `p` under a fused activation: the
    /// activation is the range of the uint8 grid when that grid implies it, else a float
    /// clip to the real values of its code bounds first.
    fn quantize_activated(
        &mut self,
        name: &str,
        y: String,
        p: &QuantParams,
        activation: Activation,
    ) -> Repr {
        let (lo, hi) = activation.bounds(p);
        let y = if (lo, hi) == (-UINT8_SHIFT, 255 - UINT8_SHIFT) {
            y
        } else {
            let clipped = format!("{name}/clipped");
            self.clip(name, &y, &clipped, p.dequantize(lo), p.dequantize(hi));
            clipped
        };
        self.quantize(name, name, &y, p)
    }

    fn layer(
        &mut self,
        name: &str,
        input: &Repr,
        layer: &Layer,
        op_type: &str,
        attrs: Vec<AttributeProto>,
    ) -> Result<Repr, OnnxError> {
        match &layer.exec {
            LayerExec::Static(s) => {
                let (q, p_in) = int_name(name, input)?;
                let x = format!("{name}/input0");
                self.dequantize(&x, &x, &q, &p_in);
                let (weight, bias) = self.static_weights(name, s, p_in.scale);
                let y = format!("{name}/float");
                self.push_with(name, op_type, vec![x, weight, bias], &y, attrs);
                Ok(self.quantize_activated(name, y, &s.output, layer.activation))
            }
            LayerExec::Float(f) => {
                let x = float_name(name, input)?;
                let (weight, bias) = (format!("{name}.weight"), format!("{name}.bias"));
                self.initializer.push(tensor::from_f32(&weight, &f.weight));
                self.initializer
                    .push(tensor::from_f32_values(&bias, &[f.bias.len()], &f.bias));
                let y = format!("{name}/float");
                self.push_with(name, op_type, vec![x, weight, bias], &y, attrs);
                self.activation(&format!("{name}/activation"), &y, name, layer.activation);
                Ok(Repr::Float(name.to_owned()))
            }
            LayerExec::Dynamic(d) => {
                let x = float_name(name, input)?;
                let integer = match op_type {
                    "Conv" => Some(attrs),
                    _ => None,
                };
                let y = self.dynamic_layer(name, &x, d, integer)?;
                self.activation(&format!("{name}/activation"), &y, name, layer.activation);
                Ok(Repr::Float(name.to_owned()))
            }
        }
    }

    /// A dynamic layer as ONNX Runtime's `quantize_dynamic` writes one: the input
    /// quantized with its own range (`DynamicQuantizeLinear`, uint8), `ConvInteger` (with
    /// the convolution's attributes `conv`) or `MatMulInteger` (with the transposed
    /// weights) on the int8 weights, the accumulators scaled by `s_in * s_w` in float,
    /// then the float bias. Returns the output tensor.
    fn dynamic_layer(
        &mut self,
        name: &str,
        x: &str,
        d: &DynamicLayer,
        conv: Option<Vec<AttributeProto>>,
    ) -> Result<String, OnnxError> {
        let [q, s_in, zp_in] = ["input_quantized", "input_scale", "input_zero_point"]
            .map(|what| format!("{name}/{what}"));
        self.nodes.push(NodeProto {
            input: vec![x.to_owned()],
            output: vec![q.clone(), s_in.clone(), zp_in.clone()],
            name: format!("{name}/quantize"),
            op_type: "DynamicQuantizeLinear".into(),
            ..NodeProto::default()
        });
        let names = [
            "weight_quantized",
            "weight_zero_point",
            "weight_scale",
            "bias",
        ]
        .map(|what| format!("{name}.{what}"));
        self.dynamic_weights(name, &names, d, conv.is_some())?;
        let [acc, acc_f, scale, scaled, y] = ["acc", "acc_float", "acc_scale", "scaled", "float"]
            .map(|what| format!("{name}/{what}"));
        let [weight, w_zero_point, w_scale, bias] = names;
        let inputs = vec![q, weight, zp_in, w_zero_point];
        match conv {
            Some(attrs) => self.push_with(&acc, "ConvInteger", inputs, &acc, attrs),
            None => self.push(&acc, "MatMulInteger", inputs, &acc),
        }
        let to_float = int("to", DataType::Float as i64);
        self.push_with(&acc_f, "Cast", vec![acc], &acc_f, vec![to_float]);
        self.push(&scale, "Mul", vec![s_in, w_scale], &scale);
        self.push(&scaled, "Mul", vec![acc_f, scale], &scaled);
        self.push(&y, "Add", vec![scaled, bias], &y);
        Ok(y)
    }

    /// The initializers `names` (weight codes, weight zero points, weight scales, bias)
    /// of a dynamic layer: a convolution's weights as they are with per-channel values
    /// shaped `[C, 1, 1]` to broadcast over `[N, C, H, W]`, a linear layer's weights
    /// transposed to `[in, out]` with values of shape `[out]`. ONNX Runtime's
    /// `ConvInteger` takes one weight zero point: per-channel zero points that differ are
    /// refused.
    fn dynamic_weights(
        &mut self,
        name: &str,
        names: &[String; 4],
        d: &DynamicLayer,
        conv: bool,
    ) -> Result<(), OnnxError> {
        let w = &d.weights;
        let outputs = w.codes.shape()[0];
        let depth = w.codes.len() / outputs;
        let (weight_shape, codes): (Vec<usize>, Vec<i32>) = if conv {
            let codes = w.codes.data().iter().map(|&q| i32::from(q)).collect();
            (w.codes.shape().to_vec(), codes)
        } else {
            let transposed = (0..depth * outputs)
                .map(|k| i32::from(w.codes.data()[(k % outputs) * depth + k / outputs]))
                .collect();
            (vec![depth, outputs], transposed)
        };
        let params = w.params.as_slice();
        let per_channel: &[usize] = match (per_channel_axis(&w.params), conv) {
            (None, _) => &[],
            (Some(_), true) => &[params.len(), 1, 1],
            (Some(_), false) => &[params.len()],
        };
        let bias_shape: &[usize] = if conv { &[outputs, 1, 1] } else { &[outputs] };
        let mut zero_points: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
        let mut zero_point_shape = &per_channel[..per_channel.len().min(1)];
        if conv {
            if zero_points.windows(2).any(|z| z[0] != z[1]) {
                return Err(not_exportable(
                    name,
                    "a dynamic convolution with per-channel weight zero points: ONNX \
                     Runtime's ConvInteger takes one; use symmetric weights",
                ));
            }
            zero_points.truncate(1);
            zero_point_shape = &[];
        }
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        self.initializer.extend([
            tensor::from_codes(&names[0], DataType::Int8, &weight_shape, &codes),
            tensor::from_codes(&names[1], DataType::Int8, zero_point_shape, &zero_points),
            tensor::from_f32_values(&names[2], per_channel, &scales),
            tensor::from_f32_values(&names[3], bias_shape, &d.bias),
        ]);
        Ok(())
    }

    /// The dequantized weight and bias tensors of a static layer whose input scale is
    /// `s_in`: int8 weight codes and int32 bias codes (scale `s_in * s_w`, zero point 0).
    fn static_weights(&mut self, name: &str, s: &StaticLayer, s_in: f32) -> (String, String) {
        let weight = self.weights(name, &s.weights);
        let params = s.weights.params.as_slice();
        let bias_scales: Vec<f32> = params.iter().map(|p| s_in * p.scale).collect();
        let bias_zero_points = vec![0; params.len()];
        let axis = per_channel_axis(&s.weights.params);
        let bias = format!("{name}.bias");
        self.dequantize_constant(
            &bias,
            DataType::Int32,
            (&[s.bias.len()], &s.bias),
            (&bias_scales, &bias_zero_points),
            axis,
        );
        (weight, bias)
    }

    fn weights(&mut self, name: &str, w: &QuantWeights) -> String {
        let codes: Vec<i32> = w.codes.data().iter().map(|&q| i32::from(q)).collect();
        let params = w.params.as_slice();
        let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
        let zero_points: Vec<i32> = params.iter().map(|p| p.zero_point).collect();
        let weight = format!("{name}.weight");
        self.dequantize_constant(
            &weight,
            DataType::Int8,
            (w.codes.shape(), &codes),
            (&scales, &zero_points),
            per_channel_axis(&w.params),
        );
        weight
    }

    /// `out = DequantizeLinear(codes)`: integer codes of `kind` with one scale and zero
    /// point (scalars) or one per channel along `axis`.
    fn dequantize_constant(
        &mut self,
        out: &str,
        kind: DataType,
        (shape, codes): (&[usize], &[i32]),
        (scales, zero_points): (&[f32], &[i32]),
        axis: Option<usize>,
    ) {
        let param_shape: &[usize] = if axis.is_some() { &[scales.len()] } else { &[] };
        let names = [
            format!("{out}_quantized"),
            format!("{out}_scale"),
            format!("{out}_zero_point"),
        ];
        self.initializer
            .push(tensor::from_codes(&names[0], kind, shape, codes));
        self.initializer
            .push(tensor::from_f32_values(&names[1], param_shape, scales));
        self.initializer.push(tensor::from_codes(
            &names[2],
            kind,
            param_shape,
            zero_points,
        ));
        let attrs = axis
            .map(|a| vec![int("axis", a as i64)])
            .unwrap_or_default();
        self.push_with(
            &format!("{out}/dequantize"),
            "DequantizeLinear",
            names.to_vec(),
            out,
            attrs,
        );
    }

    fn merge(
        &mut self,
        name: &str,
        inputs: &[String],
        merge: &Merge,
        op_type: &str,
        attrs: Vec<AttributeProto>,
    ) -> Result<Repr, OnnxError> {
        let xs: Vec<String> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let repr = self.tensors[t].clone();
                self.float_input(name, &repr, i)
            })
            .collect();
        let y = format!("{name}/float");
        self.push_with(name, op_type, xs, &y, attrs);
        Ok(match &merge.int {
            Some(int) => self.quantize_activated(name, y, &int.output, merge.activation),
            None => {
                self.activation(&format!("{name}/activation"), &y, name, merge.activation);
                Repr::Float(name.to_owned())
            }
        })
    }
}

fn pool_attrs(window: &Window) -> Vec<AttributeProto> {
    window_attrs(window.kernel, window.stride, window.padding)
}

/// The axis of per-channel parameters (always the output channel, 0), `None` per tensor.
fn per_channel_axis(params: &TensorQuantParams) -> Option<usize> {
    match params {
        TensorQuantParams::PerTensor(_) => None,
        TensorQuantParams::PerChannel { axis, .. } => Some(*axis),
    }
}

fn float_name(step: &str, input: &Repr) -> Result<String, OnnxError> {
    match input {
        Repr::Float(name) => Ok(name.clone()),
        Repr::Int { .. } => Err(not_exportable(step, "reads int8 where float is expected")),
    }
}

fn int_name(step: &str, input: &Repr) -> Result<(String, QuantParams), OnnxError> {
    match input {
        Repr::Int { name, params } => Ok((name.clone(), *params)),
        Repr::Float(_) => Err(not_exportable(step, "reads float where int8 is expected")),
    }
}

fn not_exportable(step: &str, message: &str) -> OnnxError {
    OnnxError::NotExportable {
        step: step.to_owned(),
        message: message.to_owned(),
    }
}
