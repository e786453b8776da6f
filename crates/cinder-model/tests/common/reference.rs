//! A plain f32 evaluator of a float graph, one sample at a time, written from the
//! operator definitions (direct loops, no burn), to check the burn forward against.

use std::collections::HashMap;

use cinder_tensor::Tensor as _;
use cinder_tensor::graph::{Conv2d, FloatGraph, INPUT, Linear, Op, Pool2d};

/// A per-sample tensor and its shape (`[C, H, W]` or `[F]`).
#[derive(Clone)]
struct Value {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// The output of `graph` for one sample `[C, H, W]` (flattened).
pub fn reference_forward(graph: &FloatGraph, sample: &[f32]) -> Vec<f32> {
    let mut values: HashMap<&str, Value> = HashMap::new();
    values.insert(
        INPUT,
        Value {
            shape: graph.input_shape().to_vec(),
            data: sample.to_vec(),
        },
    );
    for node in graph.nodes() {
        let inputs: Vec<&Value> = node.inputs.iter().map(|i| &values[i.as_str()]).collect();
        let out = eval(&node.op, &inputs);
        values.insert(&node.name, out);
    }
    values.remove(graph.output().name.as_str()).unwrap().data
}

fn eval(op: &Op, inputs: &[&Value]) -> Value {
    let x = inputs[0];
    let map = |f: &dyn Fn(f32) -> f32| Value {
        shape: x.shape.clone(),
        data: x.data.iter().map(|&v| f(v)).collect(),
    };
    match op {
        Op::Conv2d(c) => conv(c, x),
        Op::BatchNorm(bn) => {
            let affine = bn.affine();
            let per = x.data.len() / affine.len();
            Value {
                shape: x.shape.clone(),
                data: x
                    .data
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| affine[i / per].0 * v + affine[i / per].1)
                    .collect(),
            }
        }
        Op::Relu => map(&|v| v.max(0.0)),
        &Op::Clip { min, max } => map(&|v| v.clamp(min, max)),
        Op::MaxPool2d(p) => pool(p, x, true, false),
        Op::AvgPool2d(a) => pool(&a.window, x, false, a.count_include_pad),
        Op::GlobalAvgPool => {
            let c = x.shape[0];
            let per = x.data.len() / c;
            Value {
                shape: vec![c, 1, 1],
                data: x
                    .data
                    .chunks(per)
                    .map(|ch| ch.iter().sum::<f32>() / per as f32)
                    .collect(),
            }
        }
        Op::Add => Value {
            shape: x.shape.clone(),
            data: x
                .data
                .iter()
                .zip(&inputs[1].data)
                .map(|(a, b)| a + b)
                .collect(),
        },
        Op::Concat => {
            let mut shape = x.shape.clone();
            shape[0] = inputs.iter().map(|v| v.shape[0]).sum();
            Value {
                shape,
                data: inputs.iter().flat_map(|v| v.data.iter().copied()).collect(),
            }
        }
        Op::Flatten => Value {
            shape: vec![x.data.len()],
            data: x.data.clone(),
        },
        Op::Linear(l) => linear(l, x),
    }
}

fn conv(c: &Conv2d, x: &Value) -> Value {
    let (o_n, g) = (c.out_channels(), c.groups);
    let i_per = c.weight.shape()[1];
    let o_per = o_n / g;
    let [kh, kw] = c.kernel();
    let (h, w) = (x.shape[1], x.shape[2]);
    let oh = (h + 2 * c.padding[0] - kh) / c.stride[0] + 1;
    let ow = (w + 2 * c.padding[1] - kw) / c.stride[1] + 1;
    let (wt, b) = (c.weight.data(), c.bias_or_zeros());
    let mut out = vec![0.0f32; o_n * oh * ow];
    for o in 0..o_n {
        let group = o / o_per;
        for y in 0..oh {
            for xx in 0..ow {
                let mut acc = b[o];
                for i in 0..i_per {
                    let ic = group * i_per + i;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (y * c.stride[0] + ky) as isize - c.padding[0] as isize;
                            let ix = (xx * c.stride[1] + kx) as isize - c.padding[1] as isize;
                            if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                                acc += wt[((o * i_per + i) * kh + ky) * kw + kx]
                                    * x.data[(ic * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
                out[(o * oh + y) * ow + xx] = acc;
            }
        }
    }
    Value {
        shape: vec![o_n, oh, ow],
        data: out,
    }
}

fn pool(p: &Pool2d, x: &Value, max: bool, count_include_pad: bool) -> Value {
    let (c, h, w) = (x.shape[0], x.shape[1], x.shape[2]);
    let [kh, kw] = p.kernel;
    let oh = (h + 2 * p.padding[0] - kh) / p.stride[0] + 1;
    let ow = (w + 2 * p.padding[1] - kw) / p.stride[1] + 1;
    let mut out = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        for y in 0..oh {
            for xx in 0..ow {
                let (mut best, mut sum, mut n) = (f32::NEG_INFINITY, 0.0f32, 0usize);
                for ky in 0..kh {
                    for kx in 0..kw {
                        let iy = (y * p.stride[0] + ky) as isize - p.padding[0] as isize;
                        let ix = (xx * p.stride[1] + kx) as isize - p.padding[1] as isize;
                        if (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix) {
                            let v = x.data[(ch * h + iy as usize) * w + ix as usize];
                            best = best.max(v);
                            sum += v;
                            n += 1;
                        }
                    }
                }
                let count = if count_include_pad { kh * kw } else { n.max(1) };
                out.push(if max { best } else { sum / count as f32 });
            }
        }
    }
    Value {
        shape: vec![c, oh, ow],
        data: out,
    }
}

fn linear(l: &Linear, x: &Value) -> Value {
    let (o_n, i_n) = (l.out_features(), l.in_features());
    let (wt, b) = (l.weight.data(), l.bias_or_zeros());
    Value {
        shape: vec![o_n],
        data: (0..o_n)
            .map(|o| b[o] + (0..i_n).map(|i| wt[o * i_n + i] * x.data[i]).sum::<f32>())
            .collect(),
    }
}
