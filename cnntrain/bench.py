"""Throughput of a config's training steps and inference, and where the time goes layer by layer.

The headline figures time the very step a run takes (train.train_step on uint8 batches through the
run's preprocessing, L2 and clipping, split over the same data parallel processes and BLAS threads),
with nothing in between, so they match a real epoch's images_per_second; the per-layer profile is
measured afterwards in separate, instrumented passes, in this process.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

import numpy as np

from .build import Experiment
from .callbacks import ThreadPolicy
from .data.splits import load_dataset, static_input_shape
from .errors import CnnTrainError
from .memory import keep_freed_memory, peak_rss_mb, release_freed_memory, reset_peak_memory
from .parallel import choose_workers, gradients_for
from .threads import TrainingProcesses, blas_hint, blas_library
from .train import train_step


def gemm_gflops(n: int = 1024, repeats: int = 5) -> float:
    """NumPy's float32 matrix product speed on this machine with its current BLAS threads: the best of repeats."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_steps(step, steps: int, min_seconds: float) -> tuple[float, int]:
    """(seconds per step, steps taken): at least `steps` calls of step(), and more until min_seconds passed."""
    done, start = 0, time.perf_counter()
    while done < steps or time.perf_counter() - start < min_seconds:
        step()
        done += 1
    return (time.perf_counter() - start) / done, done


def step_flops(model) -> tuple[int, int]:
    """(training, inference) floating-point operations per image: 2 per multiply-add.

    Training counts the forward pass, the weight gradient of every layer with weights (as many
    multiply-adds as its forward) and the input gradient of every layer but the first.
    """
    forward = weighted = first = 0
    for i, layer in enumerate(model.layers):
        macs = layer.macs()
        forward += macs
        if "W" in layer.params:
            weighted += macs
            first = macs if i == 0 else first
    return 2 * (forward + 2 * weighted - first), 2 * forward


def benchmark(exp: Experiment, batch_size: int | None = None, steps: int = 50, warmup: int = 5,
              profile: bool = True, min_seconds: float = 1.0) -> dict:
    """Images/s and GFLOP/s of training steps and inference on the config's training images (bench_images).

    The training figure times at least `steps` steps and goes on until `min_seconds` have passed: 50
    lenet5 steps take 0.15 s, short enough for one burst of other work on a shared machine to move
    the figure by 30%, where an epoch's seconds average it out.
    """
    cfg = exp.cfg
    in_shape = static_input_shape(cfg)
    n_out = None if cfg.loss != "binary_cross_entropy" else 2
    model, loss = exp.network(in_shape, n_out), exp.loss
    optimizer, penalty = exp.optimizer(), exp.penalty(model)
    batch = batch_size or (cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 64)
    classes = 2 if model.out_shape[0] == 1 else model.out_shape[0]
    x_u8, y, data = bench_images(cfg, in_shape, classes, max(BATCHES * batch, cfg.train.eval_batch_size))
    release_freed_memory()  # the dataset it took them from is gone: peak memory is the steps' own
    reset_peak_memory()
    keep_freed_memory()  # as a training run does (after the dataset, whose memory it would keep)
    preprocess = exp.preprocess(in_shape[0], x_u8)
    lr = cfg.optimizer.lr
    batches = [(x_u8[i : i + batch], y[i : i + batch]) for i in range(0, BATCHES * batch, batch)]
    chunk = cfg.train.chunk_size or batch  # --batch-size sets the step's batch, chunked only if asked
    processes = TrainingProcesses()  # not registered: a benchmark shares the cores as a run would
    workers = choose_workers(cfg.train.workers, cfg.train.threads, processes.count(), model.macs(), batch, chunk)
    threads = ThreadPolicy(processes, cfg.train.threads, echo=lambda line: None, workers=workers,
                           optimizer=optimizer)
    threads.apply()
    try:
        with gradients_for(model, loss, workers, batch, chunk, threads) as gradients:
            result = _measure(cfg, model, loss, optimizer, penalty, preprocess, x_u8, batches, lr, steps, warmup,
                              profile, gradients, chunk, min_seconds)
    finally:
        threads.on_train_end(None)
    return {**result, "workers": workers, "blas_threads": threads.each, "data": data}


BATCHES = 8  # distinct batches the timed steps cycle through


def bench_images(cfg, in_shape, classes: int, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(n uint8 images, labels, what they are): the config's training images from the first on, repeated
    if there are fewer than n, when the dataset is on disk (it is never downloaded for this); else random.

    Real images time what a run's steps do with them: MNIST's blank margins make whole max-pool
    windows tie, and a tie takes max-pool backward's slower exact path (random images never tie).
    """
    try:
        data = replace(cfg, data=replace(cfg.data, download=False, limit_train=None))
        ds = load_dataset(data)
        x, y = ds.train_x, ds.train_y
    except (CnnTrainError, OSError, ValueError):
        x = y = None
    if x is not None and len(x) and tuple(x.shape[1:]) == tuple(in_shape) and x.dtype == np.uint8 \
            and int(y.max(initial=0)) < classes:
        rows = np.arange(n) % len(x)  # a copy of these rows only: the dataset's arrays can go
        return x[rows], y[rows].astype(np.int64), f"{cfg.data.dataset} training images"
    rng = np.random.default_rng(cfg.seed)
    return (rng.integers(0, 256, (n, *in_shape), dtype=np.uint8), rng.integers(0, classes, n),
            "random images (the dataset is not on disk)")


def _measure(cfg, model, loss, optimizer, penalty, preprocess, x_u8, batches, lr, steps, warmup, profile,
             gradients, chunk, min_seconds) -> dict:
    batch = len(batches[0][1])
    cycled = itertools.cycle(batches)

    def step():
        xb, yb = next(cycled)
        train_step(model, loss, optimizer, xb, yb, preprocess, lr, chunk, penalty,
                   cfg.train.grad_clip_norm, gradients=gradients)

    for _ in range(warmup):
        step()
    train_time, timed = _timed_steps(step, steps, min_seconds)
    train_peak = peak_rss_mb()  # before inference, whose larger batch would set the peak
    x_eval = x_u8[: cfg.train.eval_batch_size]
    model.forward(preprocess(x_eval), training=False)
    infer_steps = max(3, steps // 5)
    infer_time = _seconds(lambda: [model.forward(preprocess(x_eval), training=False)
                                   for _ in range(infer_steps)]) / infer_steps
    train_flops, infer_flops = step_flops(model)
    ceiling = gemm_gflops()
    result = {"name": cfg.name, "batch_size": batch, "eval_batch_size": len(x_eval), "steps": timed,
              "train_step_ms": 1e3 * train_time, "train_images_per_s": batch / train_time,
              "infer_images_per_s": len(x_eval) / infer_time,
              "train_gflops": train_flops * batch / train_time / 1e9,
              "infer_gflops": infer_flops * len(x_eval) / infer_time / 1e9, "gemm_gflops": ceiling,
              "blas": blas_library(), "blas_hint": blas_hint(),
              "train_peak_memory_mb": train_peak, "peak_memory_mb": peak_rss_mb(), "layers": []}
    result["train_ceiling_share"] = result["train_gflops"] / ceiling
    result["infer_ceiling_share"] = result["infer_gflops"] / ceiling
    if profile:
        xb, yb = batches[0]
        result["layers"], result["other_ms"] = layer_profile(model, loss, optimizer, penalty, preprocess(xb), yb,
                                                            lr, max(3, steps // 2))
    return result


def layer_profile(model, loss, optimizer, penalty, x, y, lr, steps: int) -> tuple[list[dict], float]:
    """Per-layer forward and backward milliseconds of instrumented steps, and the rest of a step (loss,
    optimizer, timer overhead); measured apart from the headline figures, which the timers would slow."""
    layers = model.layers
    fwd, bwd = np.zeros(len(layers)), np.zeros(len(layers))

    def instrumented():
        h = x
        for i, layer in enumerate(layers):
            start = time.perf_counter()
            h = layer.forward(h, training=True)
            fwd[i] += time.perf_counter() - start
        loss.forward(h, y)
        d = loss.backward()
        for i in range(len(layers) - 1, -1, -1):
            start = time.perf_counter()
            if i == 0 and hasattr(layers[0], "backward_params"):  # as Sequential.backward: no input gradient
                layers[0].backward_params(d)
            else:
                d = layers[i].backward(d)
            bwd[i] += time.perf_counter() - start
        params, grads = model.named_params(), model.named_grads()
        if penalty:
            penalty.apply(params, grads)
        optimizer.step(params, grads, lr)

    instrumented()
    fwd[:], bwd[:] = 0, 0
    total = _seconds(lambda: [instrumented() for _ in range(steps)]) / steps
    layer_total = (fwd.sum() + bwd.sum()) / steps
    rows = [{"name": f"layers.{i}", "type": layer.registry_name, "forward_ms": 1e3 * fwd[i] / steps,
             "backward_ms": 1e3 * bwd[i] / steps,
             "share": (fwd[i] + bwd[i]) / steps / total if total else 0.0}
            for i, layer in enumerate(layers)]
    return rows, 1e3 * (total - layer_total)
