#!/usr/bin/env python3
"""cinder and ONNX Runtime on each other's quantized models, and on an outside model.

For a float model trained by `cargo xtask train` on Fashion-MNIST (a run directory with
`graph.json`, `graph.safetensors`, `summary.json` and its int8 model `int8.cinder`), this
script measures, on real test images:

(b) cinder's int8 model exported as QDQ ONNX (`cargo xtask onnx export --model`), run by
    ONNX Runtime, against cinder's own run of it: argmax agreement and the largest logit
    difference in steps of the output scale;
(c) the float model exported as ONNX, quantized by ONNX Runtime's `quantize_static` (QDQ,
    static, uint8 activations, int8 weights per channel, MinMax over the images `cargo
    xtask calibrate` would use), imported into cinder (`cargo xtask onnx import`), run by
    both: the same comparison;
(d) an outside model: a small CNN (three convolutions with BatchNorm, global average
    pooling) trained here in PyTorch on the same images, exported with
    `torch.onnx.export`, quantized W8A8 static by cinder (`cargo xtask calibrate
    --model-onnx`, `cargo xtask quantize --model-onnx`) and by ONNX Runtime's
    `quantize_static` with the same calibration images (`cargo xtask onnx
    calibration-images`); the test accuracy of fp32 (ONNX Runtime), cinder int8 and ONNX
    Runtime int8 on the whole test split.

Needs `onnxruntime`, `onnx`, `numpy` and, for (d), `torch` (CPU), and Debian's
`dataset-fashion-mnist`. Example:

    cargo build --release -p xtask
    .venv/bin/python benches/peers/onnx_interop.py --run results/fmnist \
        --xtask target/release/xtask
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import numpy_helper

from peer_data import fashion_mnist, quantize_u8s8, session


def xtask(args, *command):
    subprocess.run([args.xtask, *command], check=True, stdout=subprocess.DEVNULL)


def ort_logits(path, images, threads, batch=256):
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return np.concatenate(
        [sess.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def cinder_logits(args, model, images, work):
    inp, out = os.path.join(work, "input.f32"), os.path.join(work, "output.f32")
    images.astype("<f4").tofile(inp)
    xtask(args, "onnx", "run", "--model", model, "--input", inp, "--out", out)
    return np.fromfile(out, dtype="<f4").reshape(len(images), -1)


def output_scale(path):
    """The scale of the DequantizeLinear that writes the QDQ model's output."""
    model = onnx.load(path)
    out = model.graph.output[0].name
    node = next(n for n in model.graph.node if out in n.output)
    assert node.op_type == "DequantizeLinear", node.op_type
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return float(inits[node.input[1]])


def compare(what, cinder, onnxruntime, scale, labels):
    agree = np.mean(cinder.argmax(1) == onnxruntime.argmax(1))
    diff = np.abs(cinder - onnxruntime).max()
    print(
        f"{what}: argmax agreement {100 * agree:.2f}% over {len(labels)} test images, "
        f"max |cinder - ONNX Runtime| = {diff:.3g} = {diff / scale:.2f} output steps; "
        f"accuracy cinder {100 * np.mean(cinder.argmax(1) == labels):.2f}%, "
        f"ONNX Runtime {100 * np.mean(onnxruntime.argmax(1) == labels):.2f}%"
    )


def calibration_images(args, work):
    path = os.path.join(work, "calibration.f32")
    xtask(
        args, "onnx", "calibration-images", "--batches", str(args.batches),
        "--batch-size", "32", "--seed", "0", "--out", path,
    )
    return np.fromfile(path, dtype="<f4").reshape(-1, 3, 32, 32)


def round_trips(args, work, test, labels, calibration):
    n = args.compare
    images, labels = test[:n], labels[:n]
    qdq = os.path.join(work, "cinder_qdq.onnx")
    model = os.path.join(args.run, "int8.cinder")
    xtask(args, "onnx", "export", "--model", model, "--out", qdq)
    compare(
        "(b) cinder int8 exported as QDQ",
        cinder_logits(args, model, images, work),
        ort_logits(qdq, images, args.threads),
        output_scale(qdq),
        labels,
    )
    float_path, ort_qdq = os.path.join(work, "float.onnx"), os.path.join(work, "ort_qdq.onnx")
    xtask(args, "onnx", "export", "--graph", os.path.join(args.run, "graph.json"), "--out", float_path)
    quantize_u8s8(float_path, ort_qdq, calibration, 32, prepare=False)
    imported = os.path.join(work, "ort_imported")
    xtask(args, "onnx", "import", "--onnx", ort_qdq, "--out", imported)
    compare(
        "(c) ONNX Runtime quantize_static imported into cinder",
        cinder_logits(args, os.path.join(imported, "int8.cinder"), images, work),
        ort_logits(ort_qdq, images, args.threads),
        output_scale(ort_qdq),
        labels,
    )


def train_outside_model(train, labels, seconds, seed):
    """A small CNN unlike cinder's reference ConvNet, trained for about `seconds`."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    torch.set_num_threads(2)

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    model = nn.Sequential(
        *block(3, 16), nn.MaxPool2d(2),
        *block(16, 32), nn.MaxPool2d(2),
        *block(32, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = torch.from_numpy(train), torch.from_numpy(labels)
    rng = np.random.default_rng(seed)
    start, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < seconds:
        for batch in np.array_split(rng.permutation(len(x)), len(x) // 128):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
    print(f"(d) trained the outside CNN in PyTorch: {steps} steps of 128 images, "
          f"{time.perf_counter() - start:.0f} s, last loss {loss.item():.3f}")
    return model.eval()


def export_torch(model, path):
    import torch

    dummy = torch.zeros(1, 3, 32, 32)
    torch.onnx.export(
        model, dummy, path, input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17, dynamo=False,
    )


def outside_model(args, work, test, labels, calibration):
    train, train_labels = fashion_mnist("train", {"mean": [0.5] * 3, "std": [0.5] * 3})
    model = train_outside_model(train, train_labels, args.train_seconds, args.seed)
    float_path = os.path.join(work, "outside.onnx")
    export_torch(model, float_path)
    accuracy = lambda logits: 100 * np.mean(logits.argmax(1) == labels)
    fp32 = accuracy(ort_logits(float_path, test, args.threads))
    cal_dir = os.path.join(work, "outside_cinder")
    xtask(
        args, "calibrate", "--model-onnx", float_path, "--dataset", "fashion-mnist",
        "--batches", str(args.batches), "--batch-size", "32", "--seed", "0", "--out", cal_dir,
    )
    int8 = os.path.join(cal_dir, "int8.cinder")
    xtask(
        args, "quantize", "--model-onnx", float_path,
        "--calibration", os.path.join(cal_dir, "calibration.json"), "--out", int8,
    )
    cinder = accuracy(cinder_logits(args, int8, test, work))
    ort_qdq = os.path.join(work, "outside_ort_qdq.onnx")
    quantize_u8s8(float_path, ort_qdq, calibration, 32, prepare=False)
    ort_int8 = ort_logits(ort_qdq, test, args.threads)
    print(
        f"(d) outside CNN on {len(labels)} test images, {len(calibration)} calibration "
        f"images: fp32 {fp32:.2f}%, cinder W8A8 static PTQ {cinder:.2f}%, "
        f"ONNX Runtime quantize_static {accuracy(ort_int8):.2f}%"
    )
    imported = os.path.join(work, "outside_ort_imported")
    xtask(args, "onnx", "import", "--onnx", ort_qdq, "--out", imported)
    compare(
        "(d) ONNX Runtime's int8 outside CNN imported into cinder",
        cinder_logits(args, os.path.join(imported, "int8.cinder"), test, work),
        ort_int8,
        output_scale(ort_qdq),
        labels,
    )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="cargo xtask train --out directory with int8.cinder")
    p.add_argument("--xtask", required=True, help="the release xtask binary")
    p.add_argument("--compare", type=int, default=1000, help="test images of (b) and (c)")
    p.add_argument("--batches", type=int, default=32, help="calibration batches of 32 images")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-seconds", type=float, default=90.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-outside", action="store_true", help="only (b) and (c)")
    p.add_argument("--work", help="keep the models here (default: a temporary directory)")
    args = p.parse_args()
    with open(os.path.join(args.run, "summary.json")) as f:
        norm = json.load(f)["normalization"]
    test, labels = fashion_mnist("test", norm)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or temporary
        os.makedirs(work, exist_ok=True)
        calibration = calibration_images(args, work)
        round_trips(args, work, test, labels, calibration)
        if not args.skip_outside:
            outside_model(args, work, test, labels, calibration)


if __name__ == "__main__":
    sys.exit(main())
