//! The QAT model: the ConvNet's layers run with fake quantization where the int8
//! runtime quantizes, observers in the loop, and (with LSQ) learned step sizes.
//!
//! Per step: the graph input is fake-quantized with its activation params; each weighted
//! layer runs on fake-quantized weights (per-channel or per-tensor min/max of the current
//! weights, or frozen / learned params) and a bias snapped to the runtime's int32 grid
//! (`s_in·s_w`, zero point 0); its output, after the fused ReLU, is fake-quantized with
//! that point's params. Max-pooling and flatten keep the params of their input. While
//! observers are live, each training batch first updates the moving-average min/max of
//! every point (PyTorch's order), and the forward uses the updated params.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::ConvNet;
use cinder_observers::{MovingAverageMinMaxObserver, Observer, weight_params};
use cinder_runtime::{Activation, Layer, LayerExec, QuantizedModel, StaticLayer, StepOp};
use cinder_tensor::params::MIN_SCALE;
use cinder_tensor::{QuantParams, TensorBuf, TensorQuantParams};
use serde::{Deserialize, Serialize};

use crate::config::{ACTIVATION_POINTS, LAYERS, QatConfig};
use crate::error::QatError;
use crate::fake_quant::{FakeQuantGrid, lsq_gradient_scale, quantize_centred, scaled_gradient};

/// The int32 grid of biases (scale `s_in·s_w`, zero point 0).
const BIAS_GRID: FakeQuantGrid = FakeQuantGrid {
    qmin: -i32::MAX,
    qmax: i32::MAX,
};

/// Learned step sizes: one `[1]` scale per activation point ([`ACTIVATION_POINTS`]
/// order), and one scale per output channel (or one per tensor) of each weighted layer
/// ([`LAYERS`] order).
#[derive(Module, Debug)]
pub struct LsqScales {
    pub activations: Vec<Param<Tensor<1>>>,
    pub weights: Vec<Param<Tensor<1>>>,
}

/// The trainable part of a QAT model: the BatchNorm-free ConvNet and, with LSQ, the
/// scales.
#[derive(Module, Debug)]
pub struct QatNet {
    pub net: ConvNet,
    pub lsq: Option<LsqScales>,
}

/// A full set of quantization parameters: those fixed when the observers froze, or
/// those a model uses now ([`QatModel::effective_params`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrozenParams {
    pub activations: BTreeMap<String, QuantParams>,
    /// Graph convention: per-channel params on axis 0 (the output channel).
    pub weights: BTreeMap<String, TensorQuantParams>,
}

/// The non-trainable quantization state, saved in QAT checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantState {
    /// Training steps taken.
    pub steps: usize,
    /// Images the observers saw.
    pub observed_images: usize,
    pub observers: BTreeMap<String, MovingAverageMinMaxObserver>,
    pub frozen: Option<FrozenParams>,
}

impl QuantState {
    /// Checks a state read from a checkpoint against the model it drives: an observer
    /// with an averaging constant in (0, 1] for every activation point and for no other
    /// name, and, once frozen, params for every point and weighted layer, per-channel
    /// ones with one entry per output channel of `net`.
    pub(crate) fn check(&self, net: &ConvNet) -> Result<(), QatError> {
        check_keys("state.observers", self.observers.keys(), &ACTIVATION_POINTS)?;
        for (point, observer) in &self.observers {
            let c = observer.averaging_constant();
            if !(c > 0.0 && c <= 1.0) {
                return Err(QatError::State(format!(
                    "state.observers.{point}.averaging_constant = {c}: expected a value in (0, 1]"
                )));
            }
        }
        let Some(frozen) = &self.frozen else {
            return Ok(());
        };
        check_keys(
            "state.frozen.activations",
            frozen.activations.keys(),
            &ACTIVATION_POINTS,
        )?;
        check_keys("state.frozen.weights", frozen.weights.keys(), &LAYERS)?;
        for (layer, params) in &frozen.weights {
            let (found, expected) = (params.as_slice().len(), out_channels(net, layer));
            if matches!(params, TensorQuantParams::PerChannel { .. }) && found != expected {
                return Err(QatError::State(format!(
                    "state.frozen.weights.{layer} holds {found} channels: expected {expected}"
                )));
            }
        }
        Ok(())
    }

    fn new(averaging_constant: f32) -> Result<Self, QatError> {
        let observers = ACTIVATION_POINTS
            .iter()
            .map(|p| {
                Ok((
                    (*p).to_owned(),
                    MovingAverageMinMaxObserver::new(averaging_constant)?,
                ))
            })
            .collect::<Result<_, QatError>>()?;
        Ok(Self {
            steps: 0,
            observed_images: 0,
            observers,
            frozen: None,
        })
    }
}

/// Every name of `expected` is a key of `field`, and no other is.
fn check_keys<'a>(
    field: &'static str,
    keys: impl Iterator<Item = &'a String>,
    expected: &[&str],
) -> Result<(), QatError> {
    let keys: Vec<&String> = keys.collect();
    if let Some(key) = expected.iter().find(|k| !keys.iter().any(|n| n == *k)) {
        return Err(missing(field, key));
    }
    match keys.iter().find(|k| !expected.contains(&k.as_str())) {
        Some(key) => Err(QatError::State(format!(
            "{field} has an entry `{key}`: expected only {expected:?}"
        ))),
        None => Ok(()),
    }
}

/// A ConvNet under quantization-aware training (or its control) with its state.
#[derive(Debug, Clone)]
pub struct QatModel {
    pub(crate) net: QatNet,
    pub(crate) state: QuantState,
    pub(crate) config: QatConfig,
}

/// One forward pass's view of the quantization state.
struct Pass<'a> {
    config: &'a QatConfig,
    state: &'a mut QuantState,
    /// The learned scales, once they are in use (LSQ after the freeze).
    lsq: Option<&'a LsqScales>,
    observe: bool,
    /// Rescale with this converted model's integer output stages instead of in f32.
    deployed: Option<&'a QuantizedModel>,
}

/// A weighted layer's exact integer sums `Σ codes_in·codes_w` (no bias yet), its
/// accumulator scale `s_in·s_w` per output channel and its bias codes on that grid.
struct Sums<const D: usize> {
    acc: Tensor<D>,
    s_acc: Tensor<1>,
    bias: Tensor<1>,
}

impl QatModel {
    /// A QAT model over a copy of `model` (BatchNorm folded) on `device` (use an autodiff
    /// device to train it).
    pub fn new(model: &ConvNet, config: QatConfig, device: &Device) -> Result<Self, QatError> {
        config.validate()?;
        let net = ConvNet::from_float_graph(&model.to_float_graph()?, device)?;
        Ok(Self {
            net: QatNet::new(net, &config),
            state: QuantState::new(config.averaging_constant)?,
            config,
        })
    }

    /// Reassembles a model from checkpointed parts.
    pub(crate) fn from_parts(net: QatNet, state: QuantState, config: QatConfig) -> Self {
        Self { net, state, config }
    }

    /// The float ConvNet being fine-tuned (folded, float weights).
    pub fn net(&self) -> &ConvNet {
        &self.net.net
    }

    pub fn config(&self) -> &QatConfig {
        &self.config
    }

    pub fn state(&self) -> &QuantState {
        &self.state
    }

    /// Inference logits (the fake-quant simulation; the plain float forward for a
    /// control run): nothing is observed or learned.
    pub fn forward(&self, images: Tensor<4>) -> Result<Tensor<2>, QatError> {
        let net = self.net.valid();
        let mut state = self.state.clone();
        forward(&net, &self.config, &mut state, images, false, None)
    }

    /// Inference logits with `deployed`'s requantization: the same fake-quant sums, but
    /// the input quantizer and each layer's int32 bias, Q0.31 multipliers and clamps are
    /// those of `deployed` (this model's [`QatModel::export`], converted), applied to
    /// the exact integer sums on the host. Where the grids match, the logits equal the
    /// runtime's bit for bit; the f32 rescale of [`QatModel::forward`] (two f32
    /// roundings before the snap to the grid) lands one code apart on the odd value.
    pub fn forward_deployed(
        &self,
        images: Tensor<4>,
        deployed: &QuantizedModel,
    ) -> Result<Tensor<2>, QatError> {
        if !self.config.fake_quant {
            return Err(QatError::State(
                "a control run has no fake-quant forward to deploy".into(),
            ));
        }
        let net = self.net.valid();
        let mut state = self.state.clone();
        forward(
            &net,
            &self.config,
            &mut state,
            images,
            false,
            Some(deployed),
        )
    }

    /// A training forward: updates the observers while they are live, freezes them at
    /// the configured step, and counts the step.
    pub(crate) fn train_forward(&mut self, images: Tensor<4>) -> Result<Tensor<2>, QatError> {
        let freeze_now = self.config.fake_quant
            && self.state.frozen.is_none()
            && self
                .config
                .freeze_observers_after
                .is_some_and(|n| self.state.steps >= n);
        if freeze_now {
            self.freeze()?;
        }
        let batch = images.dims()[0];
        let observing = self.config.fake_quant && self.state.frozen.is_none();
        let logits = forward(&self.net, &self.config, &mut self.state, images, true, None)?;
        self.state.steps += 1;
        if observing {
            self.state.observed_images += batch;
        }
        Ok(logits)
    }

    /// Fixes the current params; with LSQ, loads them into the learned scales.
    fn freeze(&mut self) -> Result<(), QatError> {
        let frozen = FrozenParams {
            activations: ACTIVATION_POINTS
                .iter()
                .map(|&p| Ok((p.to_owned(), observed_params(&self.state, &self.config, p)?)))
                .collect::<Result<_, QatError>>()?,
            weights: LAYERS
                .iter()
                .map(|&l| {
                    Ok((
                        l.to_owned(),
                        min_max_params(&self.net.net, &self.config, l)?,
                    ))
                })
                .collect::<Result<_, QatError>>()?,
        };
        if let Some(lsq) = self.net.lsq.take() {
            self.net.lsq = Some(lsq.load(&frozen));
        }
        self.state.frozen = Some(frozen);
        Ok(())
    }

    /// The parameters the fake-quant forward uses now, activations by point and
    /// weights by layer (graph convention): what the runtime must be given.
    pub fn effective_params(&self) -> Result<FrozenParams, QatError> {
        if !self.config.fake_quant {
            return Err(QatError::State(
                "a control run has no quantization parameters (calibrate its net instead)".into(),
            ));
        }
        let acts = ACTIVATION_POINTS
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let mut params = current_params(&self.state, &self.config, p)?;
                if let Some(s) = self.learned(|l| &l.activations[i])? {
                    params.scale = s[0];
                }
                Ok((p.to_owned(), params))
            })
            .collect::<Result<_, QatError>>()?;
        let weights = LAYERS
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                let mut params =
                    current_weight_params(&self.net.net, &self.state, &self.config, l)?;
                if let Some(s) = self.learned(|lsq| &lsq.weights[i])? {
                    with_scales(&mut params, &s);
                }
                Ok((l.to_owned(), params))
            })
            .collect::<Result<_, QatError>>()?;
        Ok(FrozenParams {
            activations: acts,
            weights,
        })
    }

    /// A learned scale's values (clamped as the forward clamps them), when LSQ is in use.
    fn learned(
        &self,
        pick: impl Fn(&LsqScales) -> &Param<Tensor<1>>,
    ) -> Result<Option<Vec<f32>>, QatError> {
        match (&self.net.lsq, &self.state.frozen) {
            (Some(lsq), Some(_)) => Ok(Some(host(pick(lsq).val().clamp_min(MIN_SCALE))?)),
            _ => Ok(None),
        }
    }
}

fn with_scales(params: &mut TensorQuantParams, scales: &[f32]) {
    match params {
        TensorQuantParams::PerTensor(p) => p.scale = scales[0],
        TensorQuantParams::PerChannel { channels, .. } => {
            for (p, &s) in channels.iter_mut().zip(scales) {
                p.scale = s;
            }
        }
    }
}

impl QatNet {
    /// The trainable part over `net` (LSQ scales set to 1 until the observers freeze).
    pub(crate) fn new(net: ConvNet, config: &QatConfig) -> Self {
        let device = net.device();
        let lsq = (config.lsq && config.fake_quant).then(|| {
            let scale = |n: usize| Param::from_data(TensorData::new(vec![1.0f32; n], [n]), &device);
            LsqScales {
                activations: ACTIVATION_POINTS.iter().map(|_| scale(1)).collect(),
                weights: LAYERS
                    .iter()
                    .map(|l| {
                        let per_tensor = config
                            .weight_scheme(l)
                            .is_ok_and(|s| s.granularity == cinder_tensor::Granularity::PerTensor);
                        scale(if per_tensor { 1 } else { out_channels(&net, l) })
                    })
                    .collect(),
            }
        });
        Self { net, lsq }
    }
}

impl LsqScales {
    /// The scales set to the frozen params (parameter ids kept).
    fn load(self, frozen: &FrozenParams) -> Self {
        let set = |p: Param<Tensor<1>>, values: Vec<f32>| {
            p.map(|t| {
                let n = values.len();
                Tensor::from_data(TensorData::new(values, [n]), &t.device()).require_grad()
            })
        };
        let scales = |t: &TensorQuantParams| t.as_slice().iter().map(|p| p.scale).collect();
        Self {
            activations: self
                .activations
                .into_iter()
                .zip(ACTIVATION_POINTS)
                .map(|(p, name)| set(p, vec![frozen.activations[name].scale]))
                .collect(),
            weights: self
                .weights
                .into_iter()
                .zip(LAYERS)
                .map(|(p, name)| set(p, scales(&frozen.weights[name])))
                .collect(),
        }
    }
}

fn out_channels(net: &ConvNet, layer: &str) -> usize {
    match layer {
        "conv1" => net.conv1.weight.dims()[0],
        "conv2" => net.conv2.weight.dims()[0],
        "fc1" => net.fc1.weight.dims()[1],
        _ => net.fc2.weight.dims()[1],
    }
}

fn missing(field: &'static str, key: &str) -> QatError {
    QatError::MissingEntry {
        field,
        key: key.to_owned(),
    }
}

/// Reads a tensor back to the host as f32.
fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, QatError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| QatError::State(format!("tensor data: {e:?}")))
}

/// The activation params of `point` from its observer.
fn observed_params(
    state: &QuantState,
    config: &QatConfig,
    point: &str,
) -> Result<QuantParams, QatError> {
    let observer = state
        .observers
        .get(point)
        .ok_or_else(|| missing("state.observers", point))?;
    let params = observer.params(&config.activations).map_err(|e| {
        QatError::State(format!(
            "activation `{point}`: {e} (run at least one training step before using the model)"
        ))
    })?;
    Ok(*params.channel(0))
}

/// The frozen params of `point`, or its observer's current ones.
fn current_params(
    state: &QuantState,
    config: &QatConfig,
    point: &str,
) -> Result<QuantParams, QatError> {
    match &state.frozen {
        Some(f) => f
            .activations
            .get(point)
            .copied()
            .ok_or_else(|| missing("state.frozen.activations", point)),
        None => observed_params(state, config, point),
    }
}

/// The frozen params of `layer`'s weights, or the min/max params of its current ones.
fn current_weight_params(
    net: &ConvNet,
    state: &QuantState,
    config: &QatConfig,
    layer: &str,
) -> Result<TensorQuantParams, QatError> {
    match &state.frozen {
        Some(f) => f
            .weights
            .get(layer)
            .cloned()
            .ok_or_else(|| missing("state.frozen.weights", layer)),
        None => min_max_params(net, config, layer),
    }
}

/// Per-channel (or per-tensor) min/max params of `layer`'s current weights, in graph
/// convention, through cinder-observers' weight observer on the channel extremes.
fn min_max_params(
    net: &ConvNet,
    config: &QatConfig,
    layer: &str,
) -> Result<TensorQuantParams, QatError> {
    let (lo, hi) = match layer {
        "conv1" => conv_extremes(&net.conv1),
        "conv2" => conv_extremes(&net.conv2),
        "fc1" => linear_extremes(&net.fc1),
        _ => linear_extremes(&net.fc2),
    };
    let (lo, hi) = (host(lo)?, host(hi)?);
    let extremes: Vec<f32> = lo.iter().zip(&hi).flat_map(|(&a, &b)| [a, b]).collect();
    let t = TensorBuf::new(vec![lo.len(), 2], extremes)?;
    Ok(weight_params(&t, &config.weight_scheme(layer)?)?)
}

fn conv_extremes(conv: &Conv2d) -> (Tensor<1>, Tensor<1>) {
    let [out, cin, kh, kw] = conv.weight.dims();
    let w = conv.weight.val().detach().reshape([out, cin * kh * kw]);
    (
        w.clone().min_dim(1).reshape([out]),
        w.max_dim(1).reshape([out]),
    )
}

fn linear_extremes(linear: &Linear) -> (Tensor<1>, Tensor<1>) {
    let [_, out] = linear.weight.dims();
    let w = linear.weight.val().detach();
    (
        w.clone().min_dim(0).reshape([out]),
        w.max_dim(0).reshape([out]),
    )
}

/// The network's forward, with fake quantization unless the run is a control.
///
/// Tensors travel between layers as centred codes `q - zp` (max-pooling and flatten
/// commute with the affine map), and each weighted layer computes
/// `(Σ codes_in·codes_w + bias codes) · s_in·s_w` as the runtime does: an exact integer
/// sum in f32, then one scaling. Mathematically this is the layer on fake-quantized
/// values, so the gradients are those of the STE; numerically it avoids the rounding
/// noise of summing thousands of f32 products, which would otherwise move a few
/// activations to a neighbouring code and flip a few predictions. With `deployed`, the
/// input quantizer and each layer's rescale are the converted model's, on the host (an
/// inference-only path: it is not differentiable).
fn forward(
    net: &QatNet,
    config: &QatConfig,
    state: &mut QuantState,
    images: Tensor<4>,
    training: bool,
    deployed: Option<&QuantizedModel>,
) -> Result<Tensor<2>, QatError> {
    if !config.fake_quant {
        return Ok(net.net.forward(images));
    }
    let observe = training && state.frozen.is_none();
    let lsq = net.lsq.as_ref().filter(|_| state.frozen.is_some());
    let mut pass = Pass {
        config,
        state,
        lsq,
        observe,
        deployed,
    };
    let n = &net.net;
    let (x, s) = pass.input(images)?;
    let sums = pass.conv(n, 0, &n.conv1, x, s)?;
    let (x, s) = pass.rescale(0, sums)?;
    let x = n.pool.forward(x);
    let sums = pass.conv(n, 1, &n.conv2, x, s)?;
    let (x, s) = pass.rescale(1, sums)?;
    let x: Tensor<2> = n.pool.forward(x).flatten(1, 3);
    let sums = pass.linear(n, 2, &n.fc1, x, s)?;
    let (x, s) = pass.rescale(2, sums)?;
    let sums = pass.linear(n, 3, &n.fc2, x, s)?;
    let (codes, scale) = pass.rescale(3, sums)?;
    Ok(codes * scale.reshape([1, 1]))
}

/// Layer `index` of [`LAYERS`] ends in a fused ReLU (all but the classifier).
fn has_relu(index: usize) -> bool {
    index + 1 < LAYERS.len()
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

impl Pass<'_> {
    /// The graph input's centred codes and scale: fake-quantized, or quantized with the
    /// deployed model's own input quantizer.
    fn input(&mut self, images: Tensor<4>) -> Result<(Tensor<4>, Tensor<1>), QatError> {
        let Some(deployed) = self.deployed else {
            return self.activation(0, images);
        };
        let Some(StepOp::Quantize(p)) = deployed.steps().first().map(|s| &s.op) else {
            return Err(QatError::State(
                "the deployed model does not start with its input quantizer".into(),
            ));
        };
        let (dims, device) = (images.dims(), images.device());
        let codes = host(images)?
            .iter()
            .map(|&v| (p.quantize(v) - p.zero_point) as f32)
            .collect();
        Ok((
            Tensor::from_data(TensorData::new(codes, dims), &device),
            constant(vec![p.scale], &device),
        ))
    }

    /// Layer `index`'s output (after its fused ReLU) as the next point's centred codes
    /// and scale: `(sums + bias)·s_in·s_w` fake-quantized, or requantized on the host by
    /// the deployed layer.
    fn rescale<const D: usize>(
        &mut self,
        index: usize,
        sums: Sums<D>,
    ) -> Result<(Tensor<D>, Tensor<1>), QatError> {
        let Some(deployed) = self.deployed else {
            let bias = channel_shape::<D>(sums.bias.dims()[0]);
            let scale = channel_shape::<D>(sums.s_acc.dims()[0]);
            let x = (sums.acc + sums.bias.reshape(bias)) * sums.s_acc.reshape(scale);
            let x = if has_relu(index) { relu(x) } else { x };
            return self.activation(index + 1, x);
        };
        let name = LAYERS[index];
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
        Ok((
            Tensor::from_data(TensorData::new(codes, dims), &device),
            constant(vec![layer.output.scale], &device),
        ))
    }

    /// Quantizes activation point `index`: its centred codes and its scale `[1]` (with
    /// LSQ's scaled gradient when learned).
    fn activation<const D: usize>(
        &mut self,
        index: usize,
        x: Tensor<D>,
    ) -> Result<(Tensor<D>, Tensor<1>), QatError> {
        let point = ACTIVATION_POINTS[index];
        let device = x.device();
        if self.observe {
            let lo = x.clone().detach().min().into_scalar::<f32>();
            let hi = x.clone().detach().max().into_scalar::<f32>();
            let observer = self
                .state
                .observers
                .get_mut(point)
                .ok_or_else(|| missing("state.observers", point))?;
            observer.observe(&TensorBuf::from_vec(vec![lo, hi]))?;
        }
        let p = current_params(self.state, self.config, point)?;
        let grid = FakeQuantGrid {
            qmin: p.qmin,
            qmax: p.qmax,
        };
        let scale = match self.lsq {
            Some(lsq) => {
                let features: usize = x.dims()[1..].iter().product();
                let g = lsq_gradient_scale(features, p.qmax - p.zero_point);
                scaled_gradient(lsq.activations[index].val().clamp_min(MIN_SCALE), g)
            }
            None => constant(vec![p.scale], &device),
        };
        let zero_point = constant(vec![p.zero_point as f32], &device);
        let codes = quantize_centred(
            x,
            scale.clone().reshape([1; D]),
            zero_point.reshape([1; D]),
            grid,
        );
        Ok((codes, scale))
    }

    /// Centred codes of layer `index`'s weight (burn layout, output channels on
    /// `channel_axis`) and its per-channel (or single) scales.
    fn weight<const D: usize>(
        &self,
        net: &ConvNet,
        index: usize,
        w: Tensor<D>,
        channel_axis: usize,
    ) -> Result<(Tensor<D>, Tensor<1>), QatError> {
        let layer = LAYERS[index];
        let params = current_weight_params(net, self.state, self.config, layer)?;
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
                scaled_gradient(lsq.weights[index].val().clamp_min(MIN_SCALE), g)
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

    /// The accumulator scale `s_in·s_w` per output channel and the bias as codes on
    /// the runtime's int32 grid of that scale (zero point 0), gradient straight through.
    fn bias(
        bias: Option<&Param<Tensor<1>>>,
        s_in: Tensor<1>,
        s_w: Tensor<1>,
        channels: usize,
    ) -> (Tensor<1>, Tensor<1>) {
        let s_acc = s_in * s_w;
        let s_fixed = s_acc.clone().detach();
        let codes = match bias {
            Some(b) => {
                let zero = Tensor::zeros([1], &s_fixed.device());
                quantize_centred(b.val(), s_fixed, zero, BIAS_GRID)
            }
            None => Tensor::zeros([channels], &s_fixed.device()),
        };
        (s_acc, codes)
    }

    fn conv(
        &self,
        net: &ConvNet,
        index: usize,
        conv: &Conv2d,
        x: Tensor<4>,
        s_in: Tensor<1>,
    ) -> Result<Sums<4>, QatError> {
        let (w, s_w) = self.weight(net, index, conv.weight.val(), 0)?;
        let padding = match conv.padding {
            PaddingConfig2d::Valid => [(0, 0); 2],
            PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
            ref other => {
                return Err(QatError::Config(format!(
                    "{} padding {other:?} is not explicit",
                    LAYERS[index]
                )));
            }
        };
        let options =
            ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
        let out = w.dims()[0];
        let (s_acc, bias) = Self::bias(conv.bias.as_ref(), s_in, s_w, out);
        Ok(Sums {
            acc: conv2d(x, w, None, options),
            s_acc,
            bias,
        })
    }

    fn linear(
        &self,
        net: &ConvNet,
        index: usize,
        layer: &Linear,
        x: Tensor<2>,
        s_in: Tensor<1>,
    ) -> Result<Sums<2>, QatError> {
        let (w, s_w) = self.weight(net, index, layer.weight.val(), 1)?;
        let out = w.dims()[1];
        let (s_acc, bias) = Self::bias(layer.bias.as_ref(), s_in, s_w, out);
        Ok(Sums {
            acc: linear(x, w, None),
            s_acc,
            bias,
        })
    }
}

fn constant(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}
