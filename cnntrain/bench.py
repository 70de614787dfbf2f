"""Throughput of training steps and inference on batches of a config's shape, with a per-layer profile."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from .build import Experiment
from .data.splits import static_input_shape


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def benchmark(exp: Experiment, batch_size: int | None = None, steps: int = 50, warmup: int = 5) -> dict:
    """Images/s of full training steps (forward, loss, backward, optimizer) and of inference.

    Random float32 inputs of the configured shape (data loading excluded); per-layer forward and
    backward seconds are measured in the same timed steps.
    """
    cfg = exp.cfg
    in_shape = static_input_shape(cfg)
    dataset_classes = 2 if cfg.loss == "binary_cross_entropy" else None
    model, loss = exp.network(in_shape, dataset_classes), exp.loss
    optimizer, penalty = exp.optimizer(), exp.penalty(model)
    batch = batch_size or (cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 64)
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
    n_out = model.out_shape[0]
    y = rng.integers(0, 2 if n_out == 1 else n_out, batch)
    layers = model.layers
    fwd, bwd = np.zeros(len(layers)), np.zeros(len(layers))
    lr = cfg.optimizer.lr

    def train_step(profile):
        h = x
        for i, layer in enumerate(layers):
            t = time.perf_counter()
            h = layer.forward(h, training=True)
            profile[0][i] += time.perf_counter() - t
        loss.forward(h, y)
        d = loss.backward()
        for i in range(len(layers) - 1, -1, -1):
            t = time.perf_counter()
            if i == 0 and hasattr(layers[0], "backward_params"):  # as Sequential.backward: no input gradient
                layers[0].backward_params(d)
            else:
                d = layers[i].backward(d)
            profile[1][i] += time.perf_counter() - t
        params, grads = model.named_params(), model.named_grads()
        if penalty:
            penalty.apply(params, grads)
        optimizer.step(params, grads, lr)

    scratch = (np.zeros(len(layers)), np.zeros(len(layers)))
    for _ in range(warmup):
        train_step(scratch)
    start = time.perf_counter()
    for _ in range(steps):
        train_step((fwd, bwd))
    train_time = (time.perf_counter() - start) / steps
    for _ in range(warmup):
        model.forward(x, training=False)
    start = time.perf_counter()
    for _ in range(steps):
        model.forward(x, training=False)
    infer_time = (time.perf_counter() - start) / steps
    total = fwd.sum() + bwd.sum()
    rows = [{"name": f"layers.{i}", "type": layer.registry_name, "forward_ms": 1e3 * fwd[i] / steps,
             "backward_ms": 1e3 * bwd[i] / steps, "share": (fwd[i] + bwd[i]) / total if total else 0.0}
            for i, layer in enumerate(layers)]
    return {"name": cfg.name, "batch_size": batch, "steps": steps, "train_step_ms": 1e3 * train_time,
            "train_images_per_s": batch / train_time, "infer_images_per_s": batch / infer_time,
            "other_ms": 1e3 * (train_time - total / steps), "peak_memory_mb": peak_rss_mb(), "layers": rows}
