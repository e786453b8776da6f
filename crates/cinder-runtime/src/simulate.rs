//! The float simulation of a quantized model (fake quantization): f32 arithmetic
//! throughout, with every tensor that the integer path quantizes snapped to its grid by
//! `QuantParams::fake_quantize` (ties to even), the weights dequantized from their codes
//! and the int32 biases dequantized at `s_in * s_w`. It shares the model's parameters and
//! none of its integer arithmetic, so its agreement with the runtime checks the
//! requantization (Q0.31 multipliers, rounding shifts, clamps) against real arithmetic.

use cinder_tensor::{QuantParams, Tensor, TensorBuf};

use crate::error::RunError;
use crate::float::{batch_size, pool_forward, relu, weighted_forward};
use crate::model::{LayerExec, QuantizedModel, StepOp, acc_scale, dynamic_params, scan_range};

/// Runs the fake-quant simulation of `model` on `input` (`[B, ...input_shape]`, NCHW).
pub fn simulate(
    model: &QuantizedModel,
    input: &impl Tensor<f32>,
) -> Result<TensorBuf<f32>, RunError> {
    let batch = batch_size(input.shape(), model.input_shape())?;
    cinder_observers::min_max(input.data()).map_err(RunError::Input)?;
    let shapes = model.shapes();
    let mut x = input.data().to_vec();
    // The parameters of the current tensor while the integer path holds it as int8.
    let mut grid: Option<QuantParams> = None;
    for (i, step) in model.steps().iter().enumerate() {
        let in_shape = &shapes[i];
        let out_len: usize = shapes[i + 1].iter().product();
        x = match &step.op {
            StepOp::Quantize(p) => {
                grid = Some(*p);
                fake_quantize(&x, p)
            }
            StepOp::Dequantize => {
                grid = None;
                x
            }
            StepOp::Relu => x.into_iter().map(relu).collect(),
            StepOp::MaxPool2d { kernel, stride } => {
                pool_forward(&x, batch, in_shape, out_len, *kernel, *stride)
            }
            StepOp::Flatten => x,
            op => {
                let layer = op.layer().expect("every other step is matched before");
                let geometry = op.geometry(in_shape);
                let (y, output) = match &layer.exec {
                    LayerExec::Static(s) => {
                        let input = grid.expect("validation: static layers read int8");
                        let bias: Vec<f32> = s
                            .bias
                            .iter()
                            .enumerate()
                            .map(|(c, &b)| b as f32 * acc_scale(input.scale, s.weights.scale(c)))
                            .collect();
                        let w = s.weights.dequantized();
                        (
                            weighted_forward(geometry, &x, batch, out_len, w.data(), &bias),
                            Some(s.output),
                        )
                    }
                    LayerExec::Dynamic(d) => {
                        let p = dynamic_params(&step.name, scan_range(&step.name, &x)?)?;
                        let w = d.weights.dequantized();
                        (
                            weighted_forward(
                                geometry,
                                &fake_quantize(&x, &p),
                                batch,
                                out_len,
                                w.data(),
                                &d.bias,
                            ),
                            None,
                        )
                    }
                    LayerExec::Float(f) => (
                        weighted_forward(geometry, &x, batch, out_len, f.weight.data(), &f.bias),
                        None,
                    ),
                };
                let y = if layer.relu {
                    y.into_iter().map(relu).collect()
                } else {
                    y
                };
                grid = output;
                match output {
                    Some(p) => fake_quantize(&y, &p),
                    None => y,
                }
            }
        };
    }
    let mut shape = vec![batch];
    shape.extend_from_slice(model.output_shape());
    Ok(TensorBuf::new(shape, x).expect("shapes chain"))
}

fn fake_quantize(x: &[f32], p: &QuantParams) -> Vec<f32> {
    x.iter().map(|&v| p.fake_quantize(v)).collect()
}
