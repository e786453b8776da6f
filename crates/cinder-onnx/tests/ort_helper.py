"""ONNX Runtime side of cinder-onnx's interop test (tests/onnxruntime.rs).

  ort_helper.py run MODEL INPUT SHAPE OUTPUT  runs MODEL in ONNX Runtime (CPU) on the
      little-endian float32 file INPUT of SHAPE (comma separated) and writes the first
      output as little-endian float32 to OUTPUT. On an x86 CPU without VNNI the QDQ nodes
      are not fused into ONNX Runtime's integer kernels (see `saturating_u8s8`).
  ort_helper.py make OUTPUT SEED  builds, with the onnx helper API, a small CNN cinder never
      produced (BN, depthwise conv, ReLU6 by Clip with Constant bounds, residual Add,
      MaxPool, GlobalAveragePool, Reshape, Dropout, Identity, Gemm, MatMul + Add), checks
      it with onnx.checker and saves it.
  ort_helper.py quantize MODEL CALIBRATION SHAPE OUTPUT GRANULARITY ACTIVATIONS quantizes
      the float MODEL with ONNX Runtime's quantize_static (QDQ format, static, int8
      weights, GRANULARITY per_channel or per_tensor, ACTIVATIONS uint8 or int8) calibrated
      by min/max on the little-endian float32 file CALIBRATION of SHAPE, one batch of 8
      samples at a time, and saves the QDQ model as OUTPUT.
"""

import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def saturating_u8s8():
    """Whether ONNX Runtime's fused u8 x s8 kernels are inexact here: on x86 without VNNI
    they multiply with vpmaddubsw, whose 16-bit sums of two products saturate (ONNX
    Runtime's documentation recommends reduce_range there). Such a CPU runs the QDQ model
    unfused instead: DequantizeLinear, the float operator, QuantizeLinear, which is the
    format's definition."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and "avx512_vnni" not in flags and "avx_vnni" not in flags


def run(model, inp, shape, out):
    dims = [int(d) for d in shape.split(",")]
    x = np.fromfile(inp, dtype="<f4").reshape(dims)
    options = ort.SessionOptions()
    if saturating_u8s8():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    y = session.run(None, {name: x})[0]
    np.asarray(y, dtype="<f4").tofile(out)


def make(out, seed):
    rng = np.random.default_rng(int(seed))

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array(
            (rng.standard_normal(shape) * scale).astype(np.float32), name
        )

    inits = [
        init("stem_w", 8, 3, 3, 3),
        numpy_helper.from_array(
            (1.0 + rng.standard_normal(8) * 0.1).astype(np.float32), "bn_scale"
        ),
        init("bn_bias", 8),
        init("bn_mean", 8),
        numpy_helper.from_array(
            rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_var"
        ),
        init("dw_w", 8, 1, 3, 3),
        init("dw_b", 8),
        init("pw_w", 8, 8, 1, 1),
        init("fc1_w", 16, 8),
        init("fc1_b", 16),
        init("fc2_w", 16, 10),
        init("fc2_b", 10),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat_shape"),
    ]
    scalar = lambda name, v: helper.make_node(
        "Constant",
        [],
        [name],
        value=numpy_helper.from_array(np.array(v, dtype=np.float32), name + "_value"),
    )
    nodes = [
        helper.make_node("Conv", ["x", "stem_w"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization",
            ["stem", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            ["bn"],
            name="bn",
            epsilon=1e-3,
        ),
        helper.make_node("Relu", ["bn"], ["act"], name="act"),
        helper.make_node(
            "Conv", ["act", "dw_w", "dw_b"], ["dw"], name="dw", group=8, pads=[1, 1, 1, 1]
        ),
        scalar("six_lo", 0.0),
        scalar("six_hi", 6.0),
        helper.make_node("Clip", ["dw", "six_lo", "six_hi"], ["dw_act"], name="relu6"),
        helper.make_node("Conv", ["dw_act", "pw_w"], ["pw"], name="pw"),
        helper.make_node("Add", ["pw", "act"], ["res"], name="residual"),
        helper.make_node(
            "MaxPool", ["res"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flat"),
        helper.make_node("Dropout", ["flat"], ["drop"], name="drop"),
        helper.make_node(
            "Gemm", ["drop", "fc1_w", "fc1_b"], ["fc1"], name="fc1", transB=1
        ),
        helper.make_node("Identity", ["fc1"], ["fc1_id"], name="fc1_id"),
        helper.make_node("Relu", ["fc1_id"], ["fc1_act"], name="fc1_act"),
        helper.make_node("MatMul", ["fc1_act", "fc2_w"], ["fc2_mm"], name="fc2"),
        helper.make_node("Add", ["fc2_mm", "fc2_b"], ["logits"], name="fc2_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "outside_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnx-helper"
    )
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)


def quantize(model, calibration, shape, out, granularity, activations):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    dims = [int(d) for d in shape.split(",")]
    x = np.fromfile(calibration, dtype="<f4").reshape(dims)
    name = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[i : i + 8]} for i in range(0, len(x), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        model,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=granularity == "per_channel",
        activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )


if __name__ == "__main__":
    {"run": run, "make": make, "quantize": quantize}[sys.argv[1]](*sys.argv[2:])
