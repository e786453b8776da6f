"""Shared by the peer scripts: Fashion-MNIST as cinder reads it, ONNX Runtime sessions,
and ONNX Runtime's own static quantization with the calibration reader it takes."""

import gzip

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    """An IDX file (gzip) as a numpy array of its declared shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def fashion_mnist(split, norm):
    """Images as cinder reads them: 28x28 centred in 32x32 with zeros, the gray plane
    replicated to 3 channels, then `(v / 255 - mean[c]) / std[c]`; and the labels."""
    prefix = "train" if split == "train" else "t10k"
    gray = read_idx(f"{FASHION_MNIST}/{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(f"{FASHION_MNIST}/{prefix}-labels-idx1-ubyte.gz")
    padded = np.zeros((gray.shape[0], 32, 32), dtype=np.uint8)
    padded[:, 2:30, 2:30] = gray
    rgb = np.repeat(padded[:, None, :, :], 3, axis=1).astype(np.float32) / 255.0
    mean = np.asarray(norm["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(norm["std"], dtype=np.float32)[None, :, None, None]
    return ((rgb - mean) / std).astype(np.float32), labels.astype(np.int64)


class Batches(CalibrationDataReader):
    """`images` fed to ONNX Runtime's calibration `batch` at a time as input `name`."""

    def __init__(self, name, images, batch):
        self.items = iter(
            [{name: images[i : i + batch]} for i in range(0, len(images), batch)]
        )

    def get_next(self):
        return next(self.items, None)


def session(path, threads):
    """A CPU session of `path` on `threads` threads, all graph optimizations on (the
    fusion of QDQ pairs into integer kernels among them)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def quantize_u8s8(float_path, out, calibration, batch, prepare=True):
    """ONNX Runtime's `quantize_static` as its documentation recommends for x86: QDQ,
    u8 activations, s8 weights per output channel, MinMax over `calibration`, no
    reduce_range (its VNNI path); `prepare` runs its pre-processing (shape inference and
    graph optimization) first, in a file beside `out`."""
    source = float_path
    if prepare:
        source = out + ".prep.onnx"
        quant_pre_process(float_path, source, skip_symbolic_shape=True)
    name = onnx.load(source).graph.input[0].name
    quantize_static(
        source, out, Batches(name, calibration, batch),
        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
        calibrate_method=CalibrationMethod.MinMax,
    )
