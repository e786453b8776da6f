//! The reference ConvNet as named burn layers (`conv1`, `conv2`, `fc1`, `fc2`), for code
//! that runs those layers with its own hooks in between (cinder-qat's fake-quantized
//! forward). It is a view of the zoo's `convnet` graph ([`ConvNetConfig::spec`]) without
//! BatchNorm: it is built from, and converts back to, a [`FloatGraph`] of that layout, and
//! [`ConvNetConfig::init`] draws the same weights as [`GraphNet::init`].

use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::MaxPool2d;
use burn::nn::{Linear, PaddingConfig2d, Relu};
use burn::tensor::{Device, Tensor};
use cinder_tensor::graph::{FloatGraph, Op};

use crate::error::ModelError;
use crate::net::GraphNet;
use crate::zoo::ConvNetConfig;

/// The BatchNorm-free reference ConvNet. The burn module paths (`conv1.weight`,
/// `fc2.bias`, ...) match the float graph's tensor names.
#[derive(Module, Debug)]
pub struct ConvNet {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    /// Weight stored `[in, out]` (burn's layout).
    pub fc1: Linear,
    /// Weight stored `[in, out]` (burn's layout).
    pub fc2: Linear,
    pub pool: MaxPool2d,
    pub relu: Relu,
    #[module(skip)]
    pub config: ConvNetConfig,
}

impl ConvNetConfig {
    /// A freshly initialised ConvNet on `device`: the weights of [`GraphNet::init`] for
    /// this architecture, BatchNorm (if any) folded.
    pub fn init(&self, device: &Device, seed: u64) -> Result<ConvNet, ModelError> {
        let net = GraphNet::init(&self.spec()?, device, seed)?;
        ConvNet::from_float_graph(&net.to_inference_graph()?, device)
    }
}

impl ConvNet {
    /// The ConvNet holding the weights of `graph`, which must have the BatchNorm-free
    /// layout of [`ConvNetConfig::spec`].
    pub fn from_float_graph(graph: &FloatGraph, device: &Device) -> Result<ConvNet, ModelError> {
        let config = config_of(graph)?;
        let expected = config.spec()?;
        if graph.spec() != expected {
            return Err(ModelError::GraphLayout(format!(
                "the graph is not the reference ConvNet: expected {expected:?}"
            )));
        }
        let net = GraphNet::from_float_graph(graph, device)?;
        let [conv1, conv2] = net
            .convs()
            .try_into()
            .map_err(|_| layout("two convolutions"))?;
        let [fc1, fc2] = net
            .linears()
            .try_into()
            .map_err(|_| layout("two linear layers"))?;
        Ok(ConvNet {
            conv1,
            conv2,
            fc1,
            fc2,
            pool: MaxPool2d {
                stride: [2, 2],
                kernel_size: [2, 2],
                padding: PaddingConfig2d::Valid,
                dilation: [1, 1],
                ceil_mode: false,
            },
            relu: Relu::new(),
            config,
        })
    }

    /// The model as a float graph of the zoo's `convnet` layout.
    pub fn to_float_graph(&self) -> Result<FloatGraph, ModelError> {
        let net = GraphNet::from_layers(
            self.config.spec()?,
            vec![self.conv1.clone(), self.conv2.clone()],
            vec![self.fc1.clone(), self.fc2.clone()],
        )?;
        net.to_float_graph()
    }

    /// The device holding the weights.
    pub fn device(&self) -> Device {
        self.conv1.weight.val().device()
    }

    /// Logits `[B, classes]` for images `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = self.pool.forward(self.relu.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.relu.forward(self.conv2.forward(x)));
        let x = self.relu.forward(self.fc1.forward(x.flatten(1, 3)));
        self.fc2.forward(x)
    }
}

fn layout(what: &str) -> ModelError {
    ModelError::GraphLayout(format!("the reference ConvNet has {what}"))
}

/// The sizes a graph of the ConvNet's layout has (checked against the layout after).
fn config_of(graph: &FloatGraph) -> Result<ConvNetConfig, ModelError> {
    let conv = |name: &str| match graph.node(name).map(|n| &n.op) {
        Some(Op::Conv2d(c)) => Ok(c.out_channels()),
        _ => Err(layout(&format!("a convolution `{name}`"))),
    };
    let linear = |name: &str| match graph.node(name).map(|n| &n.op) {
        Some(Op::Linear(l)) => Ok(l.out_features()),
        _ => Err(layout(&format!("a linear layer `{name}`"))),
    };
    let input = graph.input_shape();
    if input.len() != 3 || input[1] != input[2] {
        return Err(ModelError::GraphLayout(format!(
            "input shape {input:?} is not [C, S, S]"
        )));
    }
    Ok(ConvNetConfig {
        in_channels: input[0],
        channels: [conv("conv1")?, conv("conv2")?],
        hidden: linear("fc1")?,
        classes: linear("fc2")?,
        input_size: input[1],
        batch_norm: false,
    })
}
