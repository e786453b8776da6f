//! Weighted layers in the fake-quant forward: fake-quantized weights, the bias on the
//! int32 grid, the exact integer sums, and the rescale to the output point (in f32 while
//! training, or with the deployed layer's requantization).

use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use cinder_model::export::host;
use cinder_model::net::Value;
use cinder_runtime::model::rules::bias_bound;
use cinder_runtime::{Activation, Layer, LayerExec, QuantizedModel, StaticLayer};
use cinder_tensor::params::MIN_SCALE;

use super::{Codes, Pass, Sums, activate, constant, no_scale};
use crate::error::QatError;
use crate::fake_quant::{FakeQuantGrid, lsq_gradient_scale, quantize_centred, scaled_gradient};
use crate::model::{current_weight_params, no_layer};

impl Pass<'_> {
    /// Weighted layer `index` of the plan on `x`, with `activation` fused, quantized at
    /// `point`.
    pub(super) fn layer(
        &mut self,
        index: usize,
        x: Codes,
        activation: Activation,
        point: usize,
    ) -> Result<Codes, QatError> {
        let name = self.plan.layers()[index].as_str();
        if let Some(conv) = self.net.conv(name) {
            let sums = self.conv(index, conv, x.x.map(), x.scale)?;
            return self.rescale(index, sums, activation, point, Value::Map);
        }
        let layer = self.net.linear(name).ok_or_else(|| no_layer(name))?;
        let sums = self.linear(index, layer, x.x.vector(), x.scale)?;
        self.rescale(index, sums, activation, point, Value::Vector)
    }

    /// Layer `index`'s output (after its fused activation) as the next point's codes:
    /// `(sums + bias)·s_in·s_w` fake-quantized, or requantized on the host by the
    /// deployed layer.
    fn rescale<const D: usize>(
        &mut self,
        index: usize,
        sums: Sums<D>,
        activation: Activation,
        point: usize,
        wrap: fn(Tensor<D>) -> Value,
    ) -> Result<Codes, QatError> {
        let Some(deployed) = self.deployed else {
            let bias = channel_shape::<D>(sums.bias.dims()[0]);
            let scale = channel_shape::<D>(sums.s_acc.dims()[0]);
            let x = (sums.acc + sums.bias.reshape(bias)) * sums.s_acc.reshape(scale);
            return self.fake_quantize(point, wrap(activate(x, activation)));
        };
        let name = &self.plan.layers()[index];
        let (layer, activation) = static_layer(deployed, name)?;
        let (dims, device) = (sums.acc.dims(), sums.acc.device());
        if layer.bias.len() != dims[1] {
            return Err(QatError::State(format!(
                "{name}: the deployed layer has {} output channels, this model {}",
                layer.bias.len(),
                dims[1]
            )));
        }
        let inner: usize = dims[2..].iter().product();
        let zp = layer.output.zero_point;
        let codes = host(sums.acc)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = (i / inner) % dims[1];
                let acc = exact_i32(v)
                    .and_then(|a| a.checked_add(layer.bias[c]))
                    .ok_or_else(|| {
                        QatError::State(format!("{name}: sum {v} is not an exact int32 sum"))
                    })?;
                Ok((layer.requantize(c, acc, activation) - zp) as f32)
            })
            .collect::<Result<Vec<f32>, QatError>>()?;
        let codes = Tensor::from_data(TensorData::new(codes, dims), &device);
        Ok(self.deployed_codes(wrap(codes), layer.output))
    }

    /// Centred codes of layer `index`'s weight (burn layout, output channels on
    /// `channel_axis`) and its per-channel (or single) scales.
    fn weight<const D: usize>(
        &self,
        index: usize,
        w: Tensor<D>,
        channel_axis: usize,
    ) -> Result<(Tensor<D>, Tensor<1>), QatError> {
        let layer = &self.plan.layers()[index];
        let params = current_weight_params(self.net, self.state, self.config, layer)?;
        let all = params.as_slice();
        let device = w.device();
        let mut shape = [1usize; D];
        shape[channel_axis] = all.len();
        let grid = FakeQuantGrid {
            qmin: all[0].qmin,
            qmax: all[0].qmax,
        };
        let scale = match self.lsq {
            Some(lsq) => {
                let per_scale = w.dims().iter().product::<usize>() / all.len();
                let g = lsq_gradient_scale(per_scale, all[0].qmax - all[0].zero_point);
                let learned = lsq.weights.get(index).ok_or_else(|| no_scale(layer))?;
                scaled_gradient(learned.val().clamp_min(MIN_SCALE), g)
            }
            None => constant(all.iter().map(|p| p.scale).collect(), &device),
        };
        let zero_points = constant(all.iter().map(|p| p.zero_point as f32).collect(), &device);
        let codes = quantize_centred(
            w,
            scale.clone().reshape(shape),
            zero_points.reshape(shape),
            grid,
        );
        Ok((codes, scale))
    }

    fn conv(
        &self,
        index: usize,
        conv: &Conv2d,
        x: Tensor<4>,
        s_in: Tensor<1>,
    ) -> Result<Sums<4>, QatError> {
        let (w, s_w) = self.weight(index, conv.weight.val(), 0)?;
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [(0, 0); 2],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
            ref other => {
                return Err(QatError::Config(format!(
                    "{} padding {other:?} is not explicit",
                    self.plan.layers()[index]
                )));
            }
        };
        let options =
            ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
        let [out, cin, kh, kw] = w.dims();
        let grid = self.bias_grid(index, cin * kh * kw)?;
        let (s_acc, bias) = bias_codes(conv.bias.as_ref(), s_in, s_w, out, grid);
        Ok(Sums {
            acc: conv2d(x, w, None, options),
            s_acc,
            bias,
        })
    }

    fn linear(
        &self,
        index: usize,
        layer: &Linear,
        x: Tensor<2>,
        s_in: Tensor<1>,
    ) -> Result<Sums<2>, QatError> {
        let (w, s_w) = self.weight(index, layer.weight.val(), 1)?;
        let [depth, out] = w.dims();
        let grid = self.bias_grid(index, depth)?;
        let (s_acc, bias) = bias_codes(layer.bias.as_ref(), s_in, s_w, out, grid);
        Ok(Sums {
            acc: linear(x, w, None),
            s_acc,
            bias,
        })
    }
}

impl Pass<'_> {
    /// The runtime's int32 grid of layer `index`'s bias codes (zero point 0): clamped so
    /// that no partial sum of its `depth` taps overflows.
    fn bias_grid(&self, index: usize, depth: usize) -> Result<FakeQuantGrid, QatError> {
        let bound = bias_bound(depth).ok_or_else(|| {
            QatError::Config(format!(
                "layer `{}`: {depth} taps per output overflow int32 accumulation",
                self.plan.layers()[index]
            ))
        })?;
        Ok(FakeQuantGrid {
            qmin: -bound,
            qmax: bound,
        })
    }
}

/// The accumulator scale `s_in·s_w` per output channel and the bias as codes on the
/// runtime's int32 `grid` of that scale (zero point 0), gradient straight through.
fn bias_codes(
    bias: Option<&Param<Tensor<1>>>,
    s_in: Tensor<1>,
    s_w: Tensor<1>,
    channels: usize,
    grid: FakeQuantGrid,
) -> (Tensor<1>, Tensor<1>) {
    let s_acc = s_in * s_w;
    let s_fixed = s_acc.clone().detach();
    let codes = match bias {
        Some(b) => {
            let zero = Tensor::zeros([1], &s_fixed.device());
            quantize_centred(b.val(), s_fixed, zero, grid)
        }
        None => Tensor::zeros([channels], &s_fixed.device()),
    };
    (s_acc, codes)
}

/// `[1, channels, 1, ...]`: a per-channel (or single) value broadcast over NCHW or
/// `[batch, features]`.
fn channel_shape<const D: usize>(channels: usize) -> [usize; D] {
    let mut shape = [1; D];
    shape[1] = channels;
    shape
}

/// An f32 tensor holding an exact integer sum, as i32; `None` if it is not one (a
/// partial sum beyond f32's 2^24 would have been rounded).
fn exact_i32(v: f32) -> Option<i32> {
    const EXACT: f32 = (1 << 24) as f32;
    (v.fract() == 0.0 && v.abs() <= EXACT).then_some(v as i32)
}

/// The converted layer named `name` of `deployed`, which must be static.
fn static_layer<'m>(
    deployed: &'m QuantizedModel,
    name: &str,
) -> Result<(&'m StaticLayer, Activation), QatError> {
    let layer = deployed
        .steps()
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| s.op.layer());
    match layer {
        Some(Layer {
            exec: LayerExec::Static(s),
            activation,
        }) => Ok((s, *activation)),
        _ => Err(QatError::State(format!(
            "the deployed model has no static layer `{name}`"
        ))),
    }
}
