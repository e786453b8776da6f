#!/usr/bin/env python3
"""Training speed of cinder against PyTorch, side by side on the same data and recipe.

Both train the reference ConvNet (conv 3->64 k3 p1, ReLU, maxpool 2, conv 64->128 k3 p1,
ReLU, maxpool 2, fc 8192->1024, ReLU, fc 1024->10), or with `--model resnet20` the
ResNet-20 of cinder's zoo (He et al., "Deep Residual Learning for Image Recognition":
bias-free 3x3 convs with BatchNorm, 1x1 projection shortcuts), for a fixed number of steps with SGD
lr 0.01, momentum 0.9, batch 64, on 2 threads, over the same images: a seeded synthetic
set written in CIFAR-10's binary format, which `cargo xtask train --dataset cifar10`
reads and this script reads too, both normalising per channel with the training split's
mean and standard deviation. Each side gathers and normalises every batch inside its
timed loop (cinder on a helper thread, as `cargo xtask train` does). The runs alternate
(cinder, PyTorch, cinder, ...) and the medians and their ratio are printed, with the
machine's load average. Then the fp32 inference forward at batch 1 and 64, burn flex
(`cargo bench -p cinder-benches --bench model`, criterion's median estimate) against
PyTorch (median of timed calls), also alternating.

Run from anywhere:  python3 benches/peers/train_speed.py [--steps 40] [--rounds 3]
Needs the Python package `torch` (and nothing else); without it the script says so and
exits 0, since PyTorch is not part of cinder's build or CI.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORD = 1 + 3 * 32 * 32  # CIFAR-10 binary record: label byte + CHW image bytes
CLASSES = 10


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["convnet", "resnet20"], default="convnet")
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per training run")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each side")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--forward-reps", type=int, default=20, help="timed PyTorch forwards per batch size")
    p.add_argument("--no-forward", action="store_true", help="skip the fp32 forward comparison")
    p.add_argument("--xtask", type=Path,
                   help="a built xtask binary to train with instead of `cargo xtask` (e.g. to "
                        "compare two builds)")
    return p.parse_args()


def synthetic_images(n, rng):
    """`n` CIFAR-10 records: a class-dependent colour and stripe pattern plus noise."""
    out = bytearray()
    for i in range(n):
        label = i % CLASSES
        noise = rng.randbytes(3 * 32 * 32)
        out.append(label)
        for c in range(3):
            base = 40 + 20 * ((label + c) % CLASSES)
            for y in range(32):
                stripe = 60 if (y // (1 + label % 4)) % 2 == 0 else 0
                row = noise[(c * 32 + y) * 32:(c * 32 + y + 1) * 32]
                out.extend(min(255, base + stripe + v // 4) for v in row)
    return bytes(out)


def write_cifar10(dir_, train, test, seed):
    """The data set in CIFAR-10's binary layout: five training files and a test file."""
    rng = random.Random(seed)
    data = synthetic_images(train, rng)
    per = -(-train // 5)
    for i in range(5):
        chunk = data[i * per * RECORD:min(train, (i + 1) * per) * RECORD]
        (dir_ / f"data_batch_{i + 1}.bin").write_bytes(chunk)
    (dir_ / "test_batch.bin").write_bytes(synthetic_images(test, rng))


def load_cifar10(dir_):
    import numpy as np

    raw = b"".join((dir_ / f"data_batch_{i}.bin").read_bytes() for i in range(1, 6))
    recs = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    return recs[:, 1:].reshape(-1, 3, 32, 32).copy(), recs[:, 0].astype(np.int64)


def load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cargo(*args, env=None):
    return subprocess.run(["cargo", *args], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True)


def cinder_train(data_dir, args, run):
    """images/s of one `cargo xtask train` epoch (its own figure: data and metrics
    included, test evaluation excluded)."""
    out = Path(tempfile.mkdtemp(prefix=f"cinder-train-{run}-"))
    train = ["train", "--model", args.model, "--dataset", "cifar10", "--data-dir", str(data_dir),
             "--epochs", "1", "--batch", str(args.batch), "--lr", "0.01", "--momentum", "0.9",
             "--seed", str(args.seed), "--test-limit", str(args.batch), "--out", str(out)]
    if args.xtask is None:
        cargo("xtask", *train)
    else:
        subprocess.run([str(args.xtask), *train], check=True, capture_output=True, text=True)
    line = (out / "metrics.jsonl").read_text().splitlines()[0]
    return json.loads(line)["images_per_sec"]


def reference_convnet(torch):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 8 * 8, 1024), nn.ReLU(), nn.Linear(1024, CLASSES))


def resnet20(torch):
    """cinder's `resnet20` zoo architecture for 3x32x32 inputs and 10 classes."""
    nn = torch.nn

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.main = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                      *conv_bn(cout, cout, 3, 1))
            project = stride != 1 or cin != cout
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if project else nn.Identity()

        def forward(self, x):
            return torch.relu(self.main(x) + self.shortcut(x))

    layers, cin = [*conv_bn(3, 16, 3, 1), nn.ReLU()], 16
    for stage, width in enumerate([16, 32, 64]):
        for block in range(3):
            layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, CLASSES)]
    return nn.Sequential(*layers)


def torch_train(torch, images, labels, args, run):
    """images/s of one PyTorch epoch over the same images: each batch gathered from the
    uint8 set and normalised inside the timed loop, as cinder does."""
    torch.manual_seed(args.seed + run)
    model = resnet20(torch) if args.model == "resnet20" else reference_convnet(torch)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = images.float().mean(dim=(0, 2, 3), keepdim=True)
    std = images.float().std(dim=(0, 2, 3), keepdim=True)
    order = torch.randperm(len(labels))
    start = time.perf_counter()
    for i in range(0, len(labels), args.batch):
        idx = order[i:i + args.batch]
        x = (images[idx].float() - mean) / std
        loss = torch.nn.functional.cross_entropy(model(x), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
    return len(labels) / (time.perf_counter() - start)


def flex_forward():
    """Criterion's median estimate (ms) of burn flex's fp32 forward at b1 and b64."""
    out = cargo("bench", "-p", "cinder-benches", "--bench", "model", "--", "flex/").stdout
    ms = {}
    for batch in (1, 64):
        m = re.search(rf"flex/b{batch}\s+time:\s+\[\S+ \S+ (\S+) (\S+)", out)
        if m is None:
            sys.exit(f"could not read flex/b{batch} from criterion's output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        ms[batch] = value * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return ms


def torch_forward(torch, reps):
    """Median ms of PyTorch's fp32 inference forward at b1 and b64."""
    model = reference_convnet(torch).eval()
    ms = {}
    with torch.no_grad():
        for batch in (1, 64):
            x = torch.randn(batch, 3, 32, 32)
            for _ in range(3):
                model(x)
            times = []
            for _ in range(reps):
                t = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t) * 1e3)
            ms[batch] = statistics.median(times)
    return ms


def main():
    args = parse_args()
    try:
        import numpy  # noqa: F401
        import torch
    except ImportError as e:
        print(f"skipped: PyTorch is not installed ({e}); "
              "install `torch` and `numpy` in a virtual environment to compare")
        return 0
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    print(f"PyTorch {torch.__version__}, {args.threads} threads; "
          f"{args.model}, {args.steps} steps of batch {args.batch}, {args.rounds} alternating rounds")
    print("building ...", flush=True)
    if args.xtask is None:
        cargo("build", "--release", "-p", "xtask")
    if not args.no_forward:
        cargo("bench", "-p", "cinder-benches", "--bench", "model", "--no-run")
    with tempfile.TemporaryDirectory(prefix="cinder-peers-") as tmp:
        data_dir = Path(tmp)
        write_cifar10(data_dir, args.steps * args.batch, args.batch, args.seed)
        x, y = load_cifar10(data_dir)
        images, labels = torch.from_numpy(x), torch.from_numpy(y)
        rows = {"cinder": [], "pytorch": []}
        for run in range(args.rounds):
            rows["cinder"].append(cinder_train(data_dir, args, run))
            rows["pytorch"].append(torch_train(torch, images, labels, args, run))
            print(f"round {run + 1}: cinder {rows['cinder'][-1]:.1f} img/s, "
                  f"PyTorch {rows['pytorch'][-1]:.1f} img/s (load {load_average()})", flush=True)
    c, t = statistics.median(rows["cinder"]), statistics.median(rows["pytorch"])
    print(f"training, median: cinder {c:.1f} img/s, PyTorch {t:.1f} img/s, "
          f"cinder/PyTorch {c / t:.2f}x")
    if args.no_forward:
        return 0
    fwd = {"flex": [], "pytorch": []}
    for run in range(args.rounds):
        fwd["flex"].append(flex_forward())
        fwd["pytorch"].append(torch_forward(torch, args.forward_reps))
        print(f"round {run + 1}: flex b1 {fwd['flex'][-1][1]:.2f} ms b64 {fwd['flex'][-1][64]:.1f} ms, "
              f"PyTorch b1 {fwd['pytorch'][-1][1]:.2f} ms b64 {fwd['pytorch'][-1][64]:.1f} ms "
              f"(load {load_average()})", flush=True)
    for batch in (1, 64):
        f = statistics.median(r[batch] for r in fwd["flex"])
        p = statistics.median(r[batch] for r in fwd["pytorch"])
        print(f"fp32 forward b{batch}, median: burn flex {f:.2f} ms, PyTorch {p:.2f} ms, "
              f"flex/PyTorch time {f / p:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
