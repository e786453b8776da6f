#!/usr/bin/env python3
"""The peer rows of `cargo xtask experiment`'s report: ONNX Runtime on the experiment's
own float model, calibration images and test images, on the same machine.

The experiment writes a job file (JSON) and runs this script with it; the script

1. runs ONNX Runtime on the float model the experiment exported (fp32),
2. quantizes that model with ONNX Runtime's own `quantize_static` (QDQ, u8 activations,
   s8 weights per output channel, MinMax, no reduce_range) on the experiment's
   calibration images,
3. runs ONNX Runtime on each of cinder's int8 models exported as QDQ ONNX,

and for each model measures the test accuracy, the predicted classes and the latencies
the experiment measures for its own models: the median of the evaluation batches and of
single images, in one session on the job's thread count. It writes the results as JSON.

Job fields: `float_onnx`, `work_dir`, `calibration` (`path` of little-endian float32
images `[N, C, H, W]`, `batch`), `test_images` and `test_labels` (float32 images and
uint8 labels), `image_shape`, `batch`, `single`, `threads`, `cells` (`name`, `onnx`).

    python3 benches/peers/experiment_peers.py JOB.json RESULT.json
"""

import json
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime

from peer_data import quantize_u8s8, session


def load_images(path, shape):
    return np.fromfile(path, dtype="<f4").reshape([-1, *shape])


def measure(path, images, labels, batch, single, threads):
    """Accuracy, predictions, median batch and single-image milliseconds of `path`."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    sess.run(None, {name: images[:batch]})
    predictions, batch_times = [], []
    for start in range(0, len(images), batch):
        x = images[start : start + batch]
        begin = time.perf_counter()
        logits = sess.run(None, {name: x})[0]
        batch_times.append(time.perf_counter() - begin)
        predictions.extend(int(p) for p in logits.argmax(axis=1))
    single_times = []
    for i in range(min(single, len(images))):
        x = images[i : i + 1]
        begin = time.perf_counter()
        sess.run(None, {name: x})
        single_times.append(time.perf_counter() - begin)
    median_ms = lambda ts: 1e3 * statistics.median(ts) if ts else None  # noqa: E731
    return {
        "accuracy": float(np.mean(np.asarray(predictions) == labels)),
        "predictions": predictions,
        "batch_ms": median_ms(batch_times),
        "single_ms": median_ms(single_times),
        "model_bytes": os.path.getsize(path),
    }


def main():
    job_path, result_path = sys.argv[1:3]
    with open(job_path) as f:
        job = json.load(f)
    shape = job["image_shape"]
    images = load_images(job["test_images"], shape)
    labels = np.fromfile(job["test_labels"], dtype=np.uint8).astype(np.int64)
    run = lambda path: measure(  # noqa: E731
        path, images, labels, job["batch"], job["single"], job["threads"]
    )
    calibration = load_images(job["calibration"]["path"], shape)
    int8_path = os.path.join(job["work_dir"], "onnxruntime-int8.qdq.onnx")
    begin = time.perf_counter()
    quantize_u8s8(job["float_onnx"], int8_path, calibration, job["calibration"]["batch"])
    quantize_seconds = time.perf_counter() - begin
    result = {
        "onnxruntime_version": onnxruntime.__version__,
        "fp32": run(job["float_onnx"]),
        "quantize_static": dict(run(int8_path), seconds=quantize_seconds),
        "cells": {cell["name"]: run(cell["onnx"]) for cell in job["cells"]},
    }
    tmp = result_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
