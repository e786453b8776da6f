#!/usr/bin/env python3
"""The reference ConvNet's Fashion-MNIST accuracy trained by PyTorch, seed by seed, on the
recipe `cargo xtask train` runs: the first `--limit` training images (as cinder reads
them: 28x28 centred in 32x32, 3 channels, mean/std 0.5), SGD with momentum (dampening
0), batch `--batch`, a fresh random order every epoch, PyTorch's default initialization
(the one cinder's `GraphNet::init` follows), then top-1 accuracy on the 10k test images.
Compare with

    cargo xtask train --dataset fashion-mnist --limit 20000 --epochs 2 --batch 64 --lr 0.01 --seed S

Needs `torch` and `numpy` (and `onnxruntime`, which peer_data imports) and Debian's
`dataset-fashion-mnist`:

    python3 benches/peers/fashion_accuracy.py --seeds 0 1 2
"""

import argparse
import statistics

from peer_data import fashion_mnist
from train_speed import reference_convnet


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=20000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def train_and_test(torch, train, test, args, seed):
    torch.manual_seed(seed)
    model = reference_convnet(torch)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    (x, y), (tx, ty) = train, test
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(y))
        for i in range(0, len(y), args.batch):
            idx = order[i : i + args.batch]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        hits = sum(
            int((model(tx[i : i + 256]).argmax(1) == ty[i : i + 256]).sum())
            for i in range(0, len(ty), 256)
        )
    return 100.0 * hits / len(ty)


def main():
    import torch

    args = parse_args()
    torch.set_num_threads(args.threads)
    half = {"mean": [0.5] * 3, "std": [0.5] * 3}
    images, labels = fashion_mnist("train", half)
    train = (torch.from_numpy(images[: args.limit]), torch.from_numpy(labels[: args.limit]))
    test_images, test_labels = fashion_mnist("test", half)
    test = (torch.from_numpy(test_images), torch.from_numpy(test_labels))
    accuracies = []
    for seed in args.seeds:
        accuracy = train_and_test(torch, train, test, args, seed)
        accuracies.append(accuracy)
        print(f"seed {seed}: test accuracy {accuracy:.2f}%", flush=True)
    if len(accuracies) > 1:
        print(
            f"mean {statistics.mean(accuracies):.2f}%, "
            f"sd {statistics.stdev(accuracies):.2f} pp over {len(accuracies)} seeds"
        )


if __name__ == "__main__":
    main()
