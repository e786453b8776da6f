#!/usr/bin/env python3
"""ONNX Runtime, PyTorch and cinder's int8 runtime side by side, on the same weights and machine.

For a float model trained by `cargo xtask train` on Fashion-MNIST (a run directory with
`graph.json`, `graph.safetensors` and `summary.json`) and its int8 model (`cargo xtask
quantize`), this script

1. exports the float graph to ONNX (`cargo xtask onnx export`),
2. quantizes that ONNX model with ONNX Runtime's own `quantize_static` (QDQ, u8
   activations, s8 weights per channel, MinMax over the first `--calibration` training
   images, no reduce_range: ONNX Runtime's VNNI path),
3. measures the test accuracy of ONNX Runtime fp32, ONNX Runtime int8 and cinder int8,
4. where the Python package `torch` is installed, builds the same float graph in PyTorch
   from `graph.json` and `graph.safetensors` and quantizes it with PyTorch's `x86` engine
   (FX graph mode, the engine's default per-channel qconfig, the same calibration images),
5. times batch 1 and batch 64 of every model (`cargo xtask infer --report` for cinder),
   alternating round by round in this process tree, and prints the medians and the ratios
   of cinder to each int8 peer.

Needs `onnxruntime`, `onnx` and `numpy` (`python3 -m venv .venv && .venv/bin/pip install
onnxruntime onnx numpy`; optionally `torch`) and Debian's `dataset-fashion-mnist`. Example:

    cargo build --release -p xtask
    .venv/bin/python benches/peers/int8_vs_peers.py --run results/fmnist \
        --model results/fmnist/int8.cinder --xtask target/release/xtask
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from peer_data import fashion_mnist, quantize_u8s8, session


def accuracy(sess, images, labels, batch=256):
    name = sess.get_inputs()[0].name
    hits = 0
    for i in range(0, len(images), batch):
        logits = sess.run(None, {name: images[i : i + batch]})[0]
        hits += int((logits.argmax(axis=1) == labels[i : i + batch]).sum())
    return 100.0 * hits / len(images)


def time_ms(sess, images, batch, repeats):
    """Median milliseconds of `repeats` forwards of `batch` images."""
    name = sess.get_inputs()[0].name
    x = images[:batch]
    sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def cinder_run(args, report, images):
    """One `xtask infer` run: accuracy and its b1 / b64 medians."""
    command = [
        args.xtask, "infer", "--model", args.model, "--dataset", "fashion-mnist",
        "--summary", os.path.join(args.run, "summary.json"), "--limit", str(images),
        "--batch", "64", "--threads", str(args.threads), "--single", str(args.single),
        "--report", report,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(report) as f:
        return json.load(f)


def export_models(args, work, norm):
    float_onnx = os.path.join(work, "float.onnx")
    subprocess.run(
        [args.xtask, "onnx", "export", "--graph", os.path.join(args.run, "graph.json"),
         "--out", float_onnx],
        check=True, stdout=subprocess.DEVNULL,
    )
    train, _ = fashion_mnist("train", norm)
    int8_onnx = os.path.join(work, "int8.qdq.onnx")
    start = time.perf_counter()
    quantize_u8s8(float_onnx, int8_onnx, train[: args.calibration], 64)
    print(f"ONNX Runtime quantize_static: {time.perf_counter() - start:.2f} s "
          f"({args.calibration} calibration images)")
    return float_onnx, int8_onnx


def read_safetensors(path):
    """The f32 tensors of a safetensors file, by name."""
    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = data[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=np.float32).reshape(info["shape"])
        tensors[name] = array.copy()
    return tensors


def torch_graph(run):
    """The float graph of `run` as a PyTorch module that FX can trace."""
    import torch
    from torch import nn

    with open(os.path.join(run, "graph.json")) as f:
        spec = json.load(f)
    weights = read_safetensors(os.path.join(run, "graph.safetensors"))

    def layer(name, op):
        kind = op["type"]
        if kind == "conv2d":
            m = nn.Conv2d(op["in_channels"], op["out_channels"], op["kernel"], op["stride"],
                          op["padding"], groups=op["groups"], bias=op["bias"])
        elif kind == "linear":
            m = nn.Linear(op["in_features"], op["out_features"], bias=op["bias"])
        elif kind == "batch_norm":
            m = nn.BatchNorm2d(op["channels"], eps=op["eps"])
        elif kind == "relu":
            return nn.ReLU()
        elif kind == "clip":
            return nn.Hardtanh(op["min"], op["max"])
        elif kind == "max_pool2d":
            return nn.MaxPool2d(op["kernel"], op["stride"], op["padding"])
        elif kind == "avg_pool2d":
            return nn.AvgPool2d(op["kernel"], op["stride"], op["padding"],
                                count_include_pad=op["count_include_pad"])
        elif kind == "global_avg_pool":
            return nn.AdaptiveAvgPool2d(1)
        elif kind == "flatten":
            return nn.Flatten()
        else:
            return None
        state = {k.split(".", 1)[1]: torch.from_numpy(v) for k, v in weights.items()
                 if k.split(".", 1)[0] == name}
        m.load_state_dict(state, strict=False)
        return m

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.nodes = [(n["name"].replace(".", "_"), n["inputs"], n["op"]["type"])
                          for n in spec["nodes"]]
            self.layers = nn.ModuleDict()
            for n in spec["nodes"]:
                m = layer(n["name"], n["op"])
                if m is not None:
                    self.layers[n["name"].replace(".", "_")] = m

        def forward(self, x):
            values = {"input": x}
            last = x
            for (name, inputs, kind), node in zip(self.nodes, spec["nodes"]):
                args = [values[i] for i in inputs]
                if kind == "add":
                    last = torch.add(args[0], args[1])
                elif kind == "concat":
                    last = torch.cat(args, dim=1)
                else:
                    last = self.layers[name](args[0])
                values[node["name"]] = last
            return last

    return Graph().eval()


class TorchSession:
    """A PyTorch module behind ONNX Runtime's `run` interface, for the shared timers."""

    class Input:
        name = "input"

    def __init__(self, module):
        self.module = module

    def get_inputs(self):
        return [self.Input()]

    def run(self, _outputs, feed):
        import torch

        with torch.inference_mode():
            return [self.module(torch.from_numpy(feed["input"])).numpy()]


def torch_models(args, norm):
    """PyTorch fp32 and its `x86` engine's static per-channel int8, or {} without torch."""
    try:
        import torch
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError:
        print("PyTorch rows skipped: the Python package `torch` is not installed")
        return {}
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "x86"
    model = torch_graph(args.run)
    train, _ = fashion_mnist("train", norm)
    example = (torch.from_numpy(train[:1]),)
    prepared = prepare_fx(torch_graph(args.run), get_default_qconfig_mapping("x86"), example)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, args.calibration, 64):
            prepared(torch.from_numpy(train[i : min(i + 64, args.calibration)]))
    quantized = convert_fx(prepared)
    print(f"PyTorch x86 PTQ calibration + convert: {time.perf_counter() - start:.2f} s")
    return {"PyTorch fp32": TorchSession(model),
            "PyTorch x86 int8 per-channel": TorchSession(quantized)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="cinder training run directory")
    parser.add_argument("--model", required=True, help="cinder int8 model file")
    parser.add_argument("--xtask", required=True, help="the built xtask binary")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=200, help="b1 forwards per round")
    parser.add_argument("--batches", type=int, default=20, help="b64 forwards per round")
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--test", type=int, default=10000, help="test images for accuracy")
    args = parser.parse_args()

    with open(os.path.join(args.run, "summary.json")) as f:
        norm = json.load(f)["normalization"]
    test, labels = fashion_mnist("test", norm)
    test, labels = test[: args.test], labels[: args.test]
    with tempfile.TemporaryDirectory() as work:
        float_onnx, int8_onnx = export_models(args, work, norm)
        peers = {"ORT fp32": session(float_onnx, args.threads),
                 "ORT int8 U8S8 QDQ per-channel": session(int8_onnx, args.threads)}
        peers.update(torch_models(args, norm))
        report = os.path.join(work, "cinder.json")
        acc = {name: accuracy(s, test, labels) for name, s in peers.items()}
        acc["cinder int8"] = 100.0 * cinder_run(args, report, args.test)["accuracy"]
        times = {name: ([], []) for name in list(peers) + ["cinder int8"]}
        for _ in range(args.rounds):
            for name, s in peers.items():
                times[name][0].append(time_ms(s, test, 1, args.single))
                times[name][1].append(time_ms(s, test, 64, args.batches))
            run = cinder_run(args, report, 64 * args.batches)
            times["cinder int8"][0].append(run["single_median_ms"])
            times["cinder int8"][1].append(run["batch_median_ms"])
    print_table(args, acc, times)


def print_table(args, acc, times):
    median = {name: tuple(statistics.median(t) for t in ts) for name, ts in times.items()}
    print(f"\n{args.rounds} alternating rounds, {args.threads} threads, medians of round "
          f"medians; accuracy on {args.test} test images")
    print("| method | acc % | b1 ms | b64 ms |\n|---|---|---|---|")
    for name, (b1, b64) in median.items():
        value = acc[name]
        print(f"| {name} | {value:.2f} | {b1:.3f} | {b64:.2f} |")
    ours = median["cinder int8"]
    for name in [n for n in median if "int8" in n and n != "cinder int8"]:
        peer = median[name]
        print(f"cinder / {name}: b1 {ours[0] / peer[0]:.2f}x, b64 {ours[1] / peer[1]:.2f}x "
              "(goal <= 0.8x)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
