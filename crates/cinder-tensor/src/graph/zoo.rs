//! The model zoo's architectures as graph descriptions ([`GraphSpec`]), without weights:
//! what a trainer builds a network from, and what tests build random graphs of.
//!
//! - [`convnet`]: the reference ConvNet (two 3×3 convolutions with ReLU and 2×2 max-pool,
//!   two fully connected layers), optionally with a BatchNorm after each convolution.
//! - [`resnet20`]: He et al. 2016's CIFAR ResNet-20: a 3×3 stem, 3 stages × 3 basic blocks
//!   of 16/32/64 channels (conv-BN-ReLU, conv-BN, residual add, ReLU), 1×1 conv + BN
//!   projection shortcuts where the shape changes, global average pool, fc.
//! - [`mobilenetv2_tiny`]: MobileNetV2's inverted residual blocks (Sandler et al. 2018:
//!   1×1 expand + BN + ReLU6, 3×3 depthwise + BN + ReLU6, 1×1 linear projection + BN,
//!   residual add where the shapes match), narrowed to train on two CPU cores.
//!
//! Node names follow PyTorch's module paths (`layer1.0.conv1`, `layer2.0.downsample.0`)
//! so calibration tables and configs stay readable and stable.

use super::{GRAPH_FORMAT_VERSION, GraphSpec, INPUT, NodeSpec, OpSpec};

/// BatchNorm epsilon of the zoo (PyTorch's default).
const BN_EPS: f32 = 1e-5;

/// The reference ConvNet's architecture for `input` images (`[C, H, W]`, H and W
/// multiples of 4): `conv(C→channels[0],k3,p1) → ReLU → maxpool2 →
/// conv(→channels[1],k3,p1) → ReLU → maxpool2 → flatten → fc(→hidden) → ReLU →
/// fc(→classes)`, with a BatchNorm (`bn1`, `bn2`) after each convolution when
/// `batch_norm`.
pub fn convnet(
    input: [usize; 3],
    channels: [usize; 2],
    hidden: usize,
    classes: usize,
    batch_norm: bool,
) -> GraphSpec {
    let [c1, c2] = channels;
    let mut g = Builder::new(input);
    for (i, (cin, cout)) in [(input[0], c1), (c1, c2)].into_iter().enumerate() {
        let n = i + 1;
        g.conv(&format!("conv{n}"), cin, cout, 3, 1, 1, true);
        if batch_norm {
            g.batch_norm(&format!("bn{n}"), cout);
        }
        g.push(&format!("relu{n}"), OpSpec::Relu);
        g.push(
            &format!("pool{n}"),
            OpSpec::MaxPool2d {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
            },
        );
    }
    g.push("flatten", OpSpec::Flatten);
    g.linear("fc1", channels[1] * (input[1] / 4) * (input[2] / 4), hidden);
    g.push("relu3", OpSpec::Relu);
    g.linear("fc2", hidden, classes);
    g.finish()
}

/// He et al. 2016's ResNet-20 for `input` images and `classes` classes.
pub fn resnet20(input: [usize; 3], classes: usize) -> GraphSpec {
    let mut g = Builder::new(input);
    g.conv_bn("conv1", "bn1", input[0], 16, 3, 1);
    g.push("relu", OpSpec::Relu);
    let mut channels = 16;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            basic_block(
                &mut g,
                &format!("layer{}.{block}", stage + 1),
                channels,
                width,
                stride,
            );
            channels = width;
        }
    }
    g.push("avgpool", OpSpec::GlobalAvgPool);
    g.push("flatten", OpSpec::Flatten);
    g.linear("fc", channels, classes);
    g.finish()
}

/// conv3×3(stride)-BN-ReLU, conv3×3-BN, plus the shortcut (identity, or a 1×1 conv + BN
/// projection when the shape changes), then ReLU.
fn basic_block(g: &mut Builder, name: &str, cin: usize, cout: usize, stride: usize) {
    let block_input = g.last.clone();
    g.conv_bn(
        &format!("{name}.conv1"),
        &format!("{name}.bn1"),
        cin,
        cout,
        3,
        stride,
    );
    g.push(&format!("{name}.relu1"), OpSpec::Relu);
    g.conv_bn(
        &format!("{name}.conv2"),
        &format!("{name}.bn2"),
        cout,
        cout,
        3,
        1,
    );
    let main = g.last.clone();
    let shortcut = if stride != 1 || cin != cout {
        g.last = block_input;
        let (conv, bn) = (
            format!("{name}.downsample.0"),
            format!("{name}.downsample.1"),
        );
        g.conv_bn(&conv, &bn, cin, cout, 1, stride);
        g.last.clone()
    } else {
        block_input
    };
    g.node(&format!("{name}.add"), &[&main, &shortcut], OpSpec::Add);
    g.push(&format!("{name}.relu2"), OpSpec::Relu);
}

/// The inverted residual stages of `mobilenetv2-tiny`: (expansion, output channels,
/// blocks, stride of the first block).
const MOBILENET_TINY_STAGES: [(usize, usize, usize, usize); 4] =
    [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2)];
/// Stem and head widths of `mobilenetv2-tiny`.
const MOBILENET_TINY_STEM: usize = 16;
const MOBILENET_TINY_HEAD: usize = 256;

/// A MobileNetV2-style network for small images: a 3×3 stem (stride 1) with BN and
/// ReLU6, the inverted residual stages of `MOBILENET_TINY_STAGES` (32 → 16 → 8 → 4 on a
/// 32×32 input), a 1×1 head conv + BN + ReLU6, global average pool and fc.
pub fn mobilenetv2_tiny(input: [usize; 3], classes: usize) -> GraphSpec {
    let mut g = Builder::new(input);
    g.conv_bn("stem.conv", "stem.bn", input[0], MOBILENET_TINY_STEM, 3, 1);
    g.push("stem.relu6", relu6());
    let (mut channels, mut index) = (MOBILENET_TINY_STEM, 0);
    for (expansion, width, blocks, first_stride) in MOBILENET_TINY_STAGES {
        for b in 0..blocks {
            let stride = if b == 0 { first_stride } else { 1 };
            inverted_residual(
                &mut g,
                &format!("blocks.{index}"),
                channels,
                width,
                expansion,
                stride,
            );
            channels = width;
            index += 1;
        }
    }
    g.conv_bn("head.conv", "head.bn", channels, MOBILENET_TINY_HEAD, 1, 1);
    g.push("head.relu6", relu6());
    g.push("avgpool", OpSpec::GlobalAvgPool);
    g.push("flatten", OpSpec::Flatten);
    g.linear("fc", MOBILENET_TINY_HEAD, classes);
    g.finish()
}

fn relu6() -> OpSpec {
    OpSpec::Clip { min: 0.0, max: 6.0 }
}

/// 1×1 expand + BN + ReLU6 (absent when `expansion` is 1), 3×3 depthwise (stride) + BN +
/// ReLU6, 1×1 projection + BN, and a residual add when input and output shapes match.
fn inverted_residual(
    g: &mut Builder,
    name: &str,
    cin: usize,
    cout: usize,
    expansion: usize,
    stride: usize,
) {
    let block_input = g.last.clone();
    let hidden = cin * expansion;
    if expansion != 1 {
        g.conv_bn(
            &format!("{name}.expand.conv"),
            &format!("{name}.expand.bn"),
            cin,
            hidden,
            1,
            1,
        );
        g.push(&format!("{name}.expand.relu6"), relu6());
    }
    g.node(
        &format!("{name}.dw.conv"),
        &[&g.last.clone()],
        OpSpec::Conv2d {
            in_channels: hidden,
            out_channels: hidden,
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [1, 1],
            groups: hidden,
            bias: false,
        },
    );
    g.batch_norm(&format!("{name}.dw.bn"), hidden);
    g.push(&format!("{name}.dw.relu6"), relu6());
    g.conv_bn(
        &format!("{name}.project.conv"),
        &format!("{name}.project.bn"),
        hidden,
        cout,
        1,
        1,
    );
    if stride == 1 && cin == cout {
        let main = g.last.clone();
        g.node(&format!("{name}.add"), &[&main, &block_input], OpSpec::Add);
    }
}

/// Appends nodes, each reading the previous one unless told otherwise.
struct Builder {
    input_shape: Vec<usize>,
    nodes: Vec<NodeSpec>,
    /// The tensor the next node reads by default.
    last: String,
}

impl Builder {
    fn new(input: [usize; 3]) -> Self {
        Self {
            input_shape: input.to_vec(),
            nodes: Vec::new(),
            last: INPUT.to_owned(),
        }
    }

    fn node(&mut self, name: &str, inputs: &[&str], op: OpSpec) {
        self.nodes.push(NodeSpec {
            name: name.to_owned(),
            inputs: inputs.iter().map(|s| (*s).to_owned()).collect(),
            op,
        });
        self.last = name.to_owned();
    }

    fn push(&mut self, name: &str, op: OpSpec) {
        let last = self.last.clone();
        self.node(name, &[&last], op);
    }

    #[allow(clippy::too_many_arguments)]
    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    ) {
        self.push(
            name,
            OpSpec::Conv2d {
                in_channels: cin,
                out_channels: cout,
                kernel: [k, k],
                stride: [stride, stride],
                padding: [pad, pad],
                groups: 1,
                bias,
            },
        );
    }

    /// A bias-free k×k convolution ("same" padding) followed by a BatchNorm.
    fn conv_bn(&mut self, conv: &str, bn: &str, cin: usize, cout: usize, k: usize, stride: usize) {
        self.conv(conv, cin, cout, k, stride, k / 2, false);
        self.batch_norm(bn, cout);
    }

    fn batch_norm(&mut self, name: &str, channels: usize) {
        self.push(
            name,
            OpSpec::BatchNorm {
                channels,
                eps: BN_EPS,
            },
        );
    }

    fn linear(&mut self, name: &str, inputs: usize, outputs: usize) {
        self.push(
            name,
            OpSpec::Linear {
                in_features: inputs,
                out_features: outputs,
                bias: true,
            },
        );
    }

    fn finish(self) -> GraphSpec {
        GraphSpec {
            format_version: GRAPH_FORMAT_VERSION,
            input_shape: self.input_shape,
            nodes: self.nodes,
        }
    }
}
