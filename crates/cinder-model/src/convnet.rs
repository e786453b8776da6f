//! The reference ConvNet of the article, its BatchNorm variant, and BatchNorm folding.
//!
//! `conv(3→64,k3,s1,p1) → ReLU → maxpool2 → conv(64→128,k3,s1,p1) → ReLU → maxpool2 →
//! flatten(128·8·8) → fc(8192→1024) → ReLU → fc(1024→10)`, every size taken from a
//! [`ConvNetConfig`]. With `batch_norm` a BatchNorm follows each convolution;
//! [`ConvNet::fold_batchnorm`] folds it into the convolution for inference.
//!
//! Weights are drawn from our own seeded generator with PyTorch's default scheme
//! (weights and biases uniform in ±1/√fan_in), so a seed gives the same initial model on
//! every backend and in every thread.

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{BatchNorm, BatchNormConfig, Linear, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::export::{Activations, INPUT_NAME};
use crate::rng::SplitMix64;

/// Sizes of the ConvNet. The two convolutions keep the spatial size (3×3, padding 1) and
/// each 2×2 max-pool halves it, so `input_size` must be a multiple of 4.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvNetConfig {
    pub in_channels: usize,
    /// Output channels of `conv1` and `conv2`.
    pub channels: [usize; 2],
    /// Width of the hidden fully connected layer `fc1`.
    pub hidden: usize,
    pub classes: usize,
    /// Height and width of the (square) input image.
    pub input_size: usize,
    /// A BatchNorm after each convolution.
    pub batch_norm: bool,
}

impl Default for ConvNetConfig {
    fn default() -> Self {
        Self::reference()
    }
}

impl ConvNetConfig {
    /// The article's model: 3×32×32 input, 64 and 128 channels, 1024 hidden, 10 classes.
    pub fn reference() -> Self {
        Self {
            in_channels: 3,
            channels: [64, 128],
            hidden: 1024,
            classes: 10,
            input_size: 32,
            batch_norm: false,
        }
    }

    pub fn with_batch_norm(mut self, batch_norm: bool) -> Self {
        self.batch_norm = batch_norm;
        self
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let sizes = [
            self.in_channels,
            self.channels[0],
            self.channels[1],
            self.hidden,
            self.classes,
        ];
        if sizes.contains(&0) {
            return Err(ModelError::Config(format!(
                "all sizes must be positive, got {self:?}"
            )));
        }
        if self.input_size == 0 || !self.input_size.is_multiple_of(4) {
            return Err(ModelError::Config(format!(
                "input_size {} must be a positive multiple of 4 (two 2x2 max-pools)",
                self.input_size
            )));
        }
        Ok(())
    }

    /// Features after the second pool: `channels[1] · (input_size/4)²`.
    pub fn flat_features(&self) -> usize {
        self.channels[1] * (self.input_size / 4).pow(2)
    }

    /// Per-sample input shape `[C, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        [self.in_channels, self.input_size, self.input_size]
    }

    /// A freshly initialised model on `device` (use `device.autodiff()` to train it).
    pub fn init(&self, device: &Device, seed: u64) -> Result<ConvNet, ModelError> {
        self.validate()?;
        let mut rng = SplitMix64::stream(seed, INIT_STREAM);
        let [c1, c2] = self.channels;
        let weights = HostWeights {
            conv1: random_layer(&mut rng, [c1, self.in_channels, 3, 3]),
            conv2: random_layer(&mut rng, [c2, c1, 3, 3]),
            fc1: random_layer(&mut rng, [self.flat_features(), self.hidden]),
            fc2: random_layer(&mut rng, [self.hidden, self.classes]),
        };
        Ok(ConvNet::assemble(self, weights, device))
    }
}

/// Generator stream for weight initialisation (data order uses other streams).
const INIT_STREAM: u64 = 1;

/// The reference ConvNet. Fields are public so that other crates (QAT) can run the same
/// layers with their own hooks; the burn module paths (`conv1.weight`, `fc2.bias`, ...)
/// match the float graph's node names.
#[derive(Module, Debug)]
pub struct ConvNet {
    pub conv1: Conv2d,
    pub bn1: Option<BatchNorm>,
    pub conv2: Conv2d,
    pub bn2: Option<BatchNorm>,
    /// Weight stored `[in, out]` (burn's layout).
    pub fc1: Linear,
    /// Weight stored `[in, out]` (burn's layout).
    pub fc2: Linear,
    pub pool: MaxPool2d,
    pub relu: Relu,
    #[module(skip)]
    pub config: ConvNetConfig,
}

/// A weight and bias pair on the host, the weight in burn's layout.
pub(crate) struct HostLayer<const D: usize> {
    pub(crate) weight: Vec<f32>,
    pub(crate) weight_shape: [usize; D],
    pub(crate) bias: Vec<f32>,
}

/// All weights of a (BatchNorm-free) ConvNet on the host.
pub(crate) struct HostWeights {
    pub(crate) conv1: HostLayer<4>,
    pub(crate) conv2: HostLayer<4>,
    pub(crate) fc1: HostLayer<2>,
    pub(crate) fc2: HostLayer<2>,
}

/// Uniform ±1/√fan_in for weight and bias (PyTorch's default for Conv2d and Linear).
/// `shape` is `[out, in, k, k]` for a convolution and `[in, out]` for a linear layer.
fn random_layer<const D: usize>(rng: &mut SplitMix64, shape: [usize; D]) -> HostLayer<D> {
    let (fan_in, out) = if D == 4 {
        (shape[1] * shape[2] * shape[3], shape[0])
    } else {
        (shape[0], shape[1])
    };
    let bound = 1.0 / (fan_in as f32).sqrt();
    let mut draw = |n: usize| (0..n).map(|_| rng.symmetric(bound)).collect::<Vec<f32>>();
    HostLayer {
        weight: draw(shape.iter().product()),
        weight_shape: shape,
        bias: draw(out),
    }
}

fn param<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Param<Tensor<D>> {
    Param::from_data(TensorData::new(values, shape), device)
}

/// A 3×3, stride 1, padding 1 convolution from a host weight `[out, in, 3, 3]`.
fn conv3x3(layer: HostLayer<4>, device: &Device) -> Conv2d {
    let out = layer.weight_shape[0];
    Conv2d {
        weight: param(layer.weight, layer.weight_shape, device),
        bias: Some(param(layer.bias, [out], device)),
        stride: [1, 1],
        kernel_size: [3, 3],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(1, 1, 1, 1),
    }
}

/// A linear layer from a host weight in burn's `[in, out]` layout.
fn linear_in_out(layer: HostLayer<2>, device: &Device) -> Linear {
    let out = layer.weight_shape[1];
    Linear {
        weight: param(layer.weight, layer.weight_shape, device),
        bias: Some(param(layer.bias, [out], device)),
    }
}

/// Reads a tensor back to the host as f32.
pub(crate) fn host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ModelError::Data(format!("{e:?}")))
}

pub(crate) fn bias_of(bias: &Option<Param<Tensor<1>>>, len: usize) -> Result<Vec<f32>, ModelError> {
    bias.as_ref().map_or(Ok(vec![0.0; len]), |b| host(b.val()))
}

impl ConvNet {
    /// A BatchNorm-free model (BatchNorms fresh when `config.batch_norm`) from host weights.
    pub(crate) fn assemble(config: &ConvNetConfig, w: HostWeights, device: &Device) -> ConvNet {
        let batch_norm = |c| {
            config
                .batch_norm
                .then(|| BatchNormConfig::new(c).init(device))
        };
        ConvNet {
            bn1: batch_norm(w.conv1.weight_shape[0]),
            bn2: batch_norm(w.conv2.weight_shape[0]),
            conv1: conv3x3(w.conv1, device),
            conv2: conv3x3(w.conv2, device),
            fc1: linear_in_out(w.fc1, device),
            fc2: linear_in_out(w.fc2, device),
            pool: MaxPool2d {
                stride: [2, 2],
                kernel_size: [2, 2],
                padding: PaddingConfig2d::Valid,
                dilation: [1, 1],
                ceil_mode: false,
            },
            relu: Relu::new(),
            config: config.clone(),
        }
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.conv1.weight.val().device()
    }

    /// Logits `[B, classes]` for images `[B, C, H, W]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        self.forward_traced(images, None)
    }

    /// Logits plus the activation at every quantization point: the graph input (`input`)
    /// and the output of every node (`conv1`, `relu1`, ..., `fc2`), in graph order. With
    /// BatchNorm, `conv1`/`conv2` hold the normalised output (what the folded convolution
    /// computes).
    pub fn forward_with_activations(
        &self,
        images: Tensor<4>,
    ) -> Result<(Tensor<2>, Activations), ModelError> {
        let mut acts = Activations::default();
        let logits = self.forward_traced(images, Some(&mut acts));
        acts.finish()?;
        Ok((logits, acts))
    }

    fn forward_traced(&self, x: Tensor<4>, mut trace: Option<&mut Activations>) -> Tensor<2> {
        let t = &mut trace;
        tap(t, INPUT_NAME, &x);
        let x = conv_bn(&self.conv1, self.bn1.as_ref(), x);
        tap(t, "conv1", &x);
        let x = self.relu.forward(x);
        tap(t, "relu1", &x);
        let x = self.pool.forward(x);
        tap(t, "pool1", &x);
        let x = conv_bn(&self.conv2, self.bn2.as_ref(), x);
        tap(t, "conv2", &x);
        let x = self.relu.forward(x);
        tap(t, "relu2", &x);
        let x = self.pool.forward(x);
        tap(t, "pool2", &x);
        let x: Tensor<2> = x.flatten(1, 3);
        tap(t, "flatten", &x);
        let x = self.fc1.forward(x);
        tap(t, "fc1", &x);
        let x = self.relu.forward(x);
        tap(t, "relu3", &x);
        let x = self.fc2.forward(x);
        tap(t, "fc2", &x);
        x
    }

    /// The same network with each BatchNorm folded into the preceding convolution, for
    /// inference: `w' = w·γ/√(σ²+ε)`, `b' = (b−μ)·γ/√(σ²+ε) + β` per output channel, with the
    /// running statistics (eval-mode BatchNorm). Computed in f64, rounded once to f32.
    /// A model without BatchNorm is returned unchanged.
    pub fn fold_batchnorm(&self) -> Result<ConvNet, ModelError> {
        let mut folded = self.clone();
        if let Some(bn) = &self.bn1 {
            folded.conv1 = fold_conv_bn(&self.conv1, bn)?;
        }
        if let Some(bn) = &self.bn2 {
            folded.conv2 = fold_conv_bn(&self.conv2, bn)?;
        }
        folded.bn1 = None;
        folded.bn2 = None;
        folded.config.batch_norm = false;
        Ok(folded)
    }
}

/// Records `t` under `name` when tracing; a plain forward copies nothing.
fn tap<const D: usize>(trace: &mut Option<&mut Activations>, name: &'static str, t: &Tensor<D>) {
    if let Some(acts) = trace.as_deref_mut() {
        acts.push(name, t.to_data());
    }
}

fn conv_bn(conv: &Conv2d, bn: Option<&BatchNorm>, x: Tensor<4>) -> Tensor<4> {
    let y = conv.forward(x);
    match bn {
        Some(bn) => bn.forward(y),
        None => y,
    }
}

fn fold_conv_bn(conv: &Conv2d, bn: &BatchNorm) -> Result<Conv2d, ModelError> {
    let [out, cin, kh, kw] = conv.weight.dims();
    let weight = host(conv.weight.val())?;
    let bias = bias_of(&conv.bias, out)?;
    let gamma = host(bn.gamma.val())?;
    let beta = host(bn.beta.val())?;
    let mean = host(bn.running_mean.value())?;
    let var = host(bn.running_var.value())?;
    let per_out = cin * kh * kw;
    let scale: Vec<f64> = (0..out)
        .map(|o| f64::from(gamma[o]) / (f64::from(var[o]) + bn.epsilon).sqrt())
        .collect();
    let weight = weight
        .iter()
        .enumerate()
        .map(|(i, &w)| (f64::from(w) * scale[i / per_out]) as f32)
        .collect();
    let bias = (0..out)
        .map(|o| ((f64::from(bias[o]) - f64::from(mean[o])) * scale[o] + f64::from(beta[o])) as f32)
        .collect();
    let layer = HostLayer {
        weight,
        weight_shape: [out, cin, kh, kw],
        bias,
    };
    Ok(conv3x3(layer, &conv.weight.val().device()))
}
