//! The QAT model: a BatchNorm-folded [`GraphNet`] run with fake quantization where the
//! int8 runtime quantizes it ([`QatPlan`]), observers in the loop, and (with LSQ)
//! learned step sizes; its quantization state, and the parameters it hands the runtime.
//!
//! While observers are live, each training batch first updates the moving-average
//! min/max of every activation point (PyTorch's order), and the forward uses the updated
//! params; weights are quantized with the per-channel or per-tensor min/max of their
//! current values. Freezing fixes both; with LSQ the frozen scales then become trainable.

use std::collections::BTreeMap;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use cinder_model::GraphNet;
use cinder_model::export::host;
use cinder_observers::{MovingAverageMinMaxObserver, Observer, weight_params};
use cinder_runtime::QuantizedModel;
use cinder_tensor::params::MIN_SCALE;
use cinder_tensor::{QuantParams, TensorBuf, TensorQuantParams};
use serde::{Deserialize, Serialize};

use crate::config::QatConfig;
use crate::error::QatError;
use crate::forward::forward;
use crate::plan::QatPlan;

/// Learned step sizes: one `[1]` scale per activation point ([`QatPlan::points`]
/// order), and one scale per output channel (or one per tensor) of each weighted layer
/// ([`QatPlan::layers`] order).
#[derive(Module, Debug)]
pub struct LsqScales {
    pub activations: Vec<Param<Tensor<1>>>,
    pub weights: Vec<Param<Tensor<1>>>,
}

/// The trainable part of a QAT model: the BatchNorm-free network and, with LSQ, the
/// scales.
#[derive(Module, Debug)]
pub struct QatNet {
    pub net: GraphNet,
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
    /// with an averaging constant in (0, 1] for every activation point of `plan` and for
    /// no other name, and, once frozen, params for every point and weighted layer,
    /// per-channel ones with one entry per output channel of `net`.
    pub(crate) fn check(&self, plan: &QatPlan, net: &GraphNet) -> Result<(), QatError> {
        check_keys("state.observers", self.observers.keys(), plan.points())?;
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
            plan.points(),
        )?;
        check_keys("state.frozen.weights", frozen.weights.keys(), plan.layers())?;
        for (layer, params) in &frozen.weights {
            let (found, expected) = (params.as_slice().len(), out_channels(net, layer)?);
            if matches!(params, TensorQuantParams::PerChannel { .. }) && found != expected {
                return Err(QatError::State(format!(
                    "state.frozen.weights.{layer} holds {found} channels: expected {expected}"
                )));
            }
        }
        Ok(())
    }

    fn new(plan: &QatPlan, averaging_constant: f32) -> Result<Self, QatError> {
        let observers = plan
            .points()
            .iter()
            .map(|p| {
                Ok((
                    p.clone(),
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
    expected: &[String],
) -> Result<(), QatError> {
    let keys: Vec<&String> = keys.collect();
    if let Some(key) = expected.iter().find(|k| !keys.contains(k)) {
        return Err(missing(field, key));
    }
    match keys.iter().find(|k| !expected.contains(k)) {
        Some(key) => Err(QatError::State(format!(
            "{field} has an entry `{key}`: expected only {expected:?}"
        ))),
        None => Ok(()),
    }
}

/// A network under quantization-aware training (or its control) with its state.
#[derive(Debug, Clone)]
pub struct QatModel {
    pub(crate) net: QatNet,
    pub(crate) plan: QatPlan,
    pub(crate) state: QuantState,
    pub(crate) config: QatConfig,
}

impl QatModel {
    /// A QAT model over a copy of `model` (BatchNorm folded) on `device` (use an autodiff
    /// device to train it).
    pub fn new(model: &GraphNet, config: QatConfig, device: &Device) -> Result<Self, QatError> {
        let net = GraphNet::from_float_graph(&model.to_inference_graph()?, device)?;
        let plan = QatPlan::new(net.spec())?;
        config.validate(plan.layers())?;
        Ok(Self {
            net: QatNet::new(net, &plan, &config)?,
            state: QuantState::new(&plan, config.averaging_constant)?,
            plan,
            config,
        })
    }

    /// The float network being fine-tuned (folded, float weights).
    pub fn net(&self) -> &GraphNet {
        &self.net.net
    }

    /// Where the network is quantized: its activation points and weighted layers.
    pub fn plan(&self) -> &QatPlan {
        &self.plan
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
        forward(self.parts(&net, &mut state), images, false, None)
    }

    /// Inference logits with `deployed`'s requantization: the same fake-quant sums, but
    /// the quantizers, each layer's int32 bias, Q0.31 multipliers and clamps, and each
    /// int8 merge's multipliers are those of `deployed` (this model's
    /// [`QatModel::export`], converted), applied to the exact integer sums on the host.
    /// Where the grids match, the logits equal the runtime's bit for bit; the f32
    /// rescale of [`QatModel::forward`] (two f32 roundings before the snap to the grid)
    /// lands one code apart on the odd value.
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
        forward(self.parts(&net, &mut state), images, false, Some(deployed))
    }

    fn parts<'a>(&'a self, net: &'a QatNet, state: &'a mut QuantState) -> Parts<'a> {
        Parts {
            net,
            plan: &self.plan,
            config: &self.config,
            state,
        }
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
        let parts = Parts {
            net: &self.net,
            plan: &self.plan,
            config: &self.config,
            state: &mut self.state,
        };
        let logits = forward(parts, images, true, None)?;
        self.state.steps += 1;
        if observing {
            self.state.observed_images += batch;
        }
        Ok(logits)
    }

    /// Fixes the current params; with LSQ, loads them into the learned scales.
    fn freeze(&mut self) -> Result<(), QatError> {
        let frozen = FrozenParams {
            activations: self
                .plan
                .points()
                .iter()
                .map(|p| Ok((p.clone(), observed_params(&self.state, &self.config, p)?)))
                .collect::<Result<_, QatError>>()?,
            weights: self
                .plan
                .layers()
                .iter()
                .map(|l| Ok((l.clone(), min_max_params(&self.net.net, &self.config, l)?)))
                .collect::<Result<_, QatError>>()?,
        };
        if let Some(lsq) = self.net.lsq.take() {
            self.net.lsq = Some(lsq.load(&frozen, &self.plan)?);
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
        let acts = self
            .plan
            .points()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut params = current_params(&self.state, &self.config, p)?;
                if let Some(s) = self.learned(|l| l.activations.get(i))? {
                    params.scale = s[0];
                }
                Ok((p.clone(), params))
            })
            .collect::<Result<_, QatError>>()?;
        let weights = self
            .plan
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let mut params =
                    current_weight_params(&self.net.net, &self.state, &self.config, l)?;
                if let Some(s) = self.learned(|lsq| lsq.weights.get(i))? {
                    with_scales(&mut params, &s);
                }
                Ok((l.clone(), params))
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
        pick: impl Fn(&LsqScales) -> Option<&Param<Tensor<1>>>,
    ) -> Result<Option<Vec<f32>>, QatError> {
        match (&self.net.lsq, &self.state.frozen) {
            (Some(lsq), Some(_)) => {
                let scale = pick(lsq).ok_or_else(|| {
                    QatError::State("the learned scales do not match the graph's points".into())
                })?;
                Ok(Some(host(scale.val().clamp_min(MIN_SCALE))?))
            }
            _ => Ok(None),
        }
    }
}

/// What one forward pass reads: the network, its plan and config, and the quantization
/// state it updates while observing.
pub(crate) struct Parts<'a> {
    pub net: &'a QatNet,
    pub plan: &'a QatPlan,
    pub config: &'a QatConfig,
    pub state: &'a mut QuantState,
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
    pub(crate) fn new(net: GraphNet, plan: &QatPlan, config: &QatConfig) -> Result<Self, QatError> {
        let device = net.device();
        let scale = |n: usize| Param::from_data(TensorData::new(vec![1.0f32; n], [n]), &device);
        let lsq = match config.lsq && config.fake_quant {
            true => Some(LsqScales {
                activations: plan.points().iter().map(|_| scale(1)).collect(),
                weights: plan
                    .layers()
                    .iter()
                    .map(|l| {
                        let per_tensor = config.weight_scheme(l)?.granularity
                            == cinder_tensor::Granularity::PerTensor;
                        Ok(scale(if per_tensor {
                            1
                        } else {
                            out_channels(&net, l)?
                        }))
                    })
                    .collect::<Result<_, QatError>>()?,
            }),
            false => None,
        };
        Ok(cinder_model::net::number_params(Self { net, lsq }))
    }
}

impl LsqScales {
    /// The scales set to the frozen params (parameter ids kept).
    fn load(self, frozen: &FrozenParams, plan: &QatPlan) -> Result<Self, QatError> {
        let set = |p: Param<Tensor<1>>, values: Vec<f32>| {
            p.map(|t| {
                let n = values.len();
                Tensor::from_data(TensorData::new(values, [n]), &t.device()).require_grad()
            })
        };
        let activations = self
            .activations
            .into_iter()
            .zip(plan.points())
            .map(|(p, name)| {
                let params = frozen
                    .activations
                    .get(name)
                    .ok_or_else(|| missing("state.frozen.activations", name))?;
                Ok(set(p, vec![params.scale]))
            })
            .collect::<Result<_, QatError>>()?;
        let weights = self
            .weights
            .into_iter()
            .zip(plan.layers())
            .map(|(p, name)| {
                let params = frozen
                    .weights
                    .get(name)
                    .ok_or_else(|| missing("state.frozen.weights", name))?;
                Ok(set(p, params.as_slice().iter().map(|p| p.scale).collect()))
            })
            .collect::<Result<_, QatError>>()?;
        Ok(Self {
            activations,
            weights,
        })
    }
}

/// The number of output channels of weighted layer `layer`.
pub(crate) fn out_channels(net: &GraphNet, layer: &str) -> Result<usize, QatError> {
    match (net.conv(layer), net.linear(layer)) {
        (Some(conv), _) => Ok(conv.weight.dims()[0]),
        (_, Some(linear)) => Ok(linear.weight.dims()[1]),
        _ => Err(no_layer(layer)),
    }
}

pub(crate) fn no_layer(layer: &str) -> QatError {
    QatError::State(format!("the network has no weighted layer `{layer}`"))
}

pub(crate) fn missing(field: &'static str, key: &str) -> QatError {
    QatError::MissingEntry {
        field,
        key: key.to_owned(),
    }
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
pub(crate) fn current_params(
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
pub(crate) fn current_weight_params(
    net: &GraphNet,
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
    net: &GraphNet,
    config: &QatConfig,
    layer: &str,
) -> Result<TensorQuantParams, QatError> {
    let (lo, hi) = weight_extremes(net, layer)?;
    let (lo, hi) = (host(lo)?, host(hi)?);
    let extremes: Vec<f32> = lo.iter().zip(&hi).flat_map(|(&a, &b)| [a, b]).collect();
    let t = TensorBuf::new(vec![lo.len(), 2], extremes)?;
    Ok(weight_params(&t, &config.weight_scheme(layer)?)?)
}

/// The smallest and largest weight of each output channel of `layer`.
fn weight_extremes(net: &GraphNet, layer: &str) -> Result<(Tensor<1>, Tensor<1>), QatError> {
    if let Some(conv) = net.conv(layer) {
        let [out, cin, kh, kw] = conv.weight.dims();
        let w = conv.weight.val().detach().reshape([out, cin * kh * kw]);
        return Ok((
            w.clone().min_dim(1).reshape([out]),
            w.max_dim(1).reshape([out]),
        ));
    }
    let linear = net.linear(layer).ok_or_else(|| no_layer(layer))?;
    let [_, out] = linear.weight.dims();
    let w = linear.weight.val().detach();
    Ok((
        w.clone().min_dim(0).reshape([out]),
        w.max_dim(0).reshape([out]),
    ))
}
