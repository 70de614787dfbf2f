"""The learning-rate range test (Smith, 2015; fastai's lr_find): train from the config's initialisation
while the lr grows exponentially, and read a good lr off the smoothed loss curve. Nothing is written.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..build import Experiment, build_setup
from ..data.splits import load_splits
from ..memory import keep_freed_memory
from ..train import train_step
from .hessian import fair_threads

BETA = 0.98          # memory of the smoothed loss (about 50 steps)
DIVERGE = 4.0        # stop once the smoothed loss exceeds this many times its best
SKIP_END = 5         # points at the end of the curve the suggestions ignore (where it blows up)
DISAGREE = 10.0      # suggestions further apart than this factor earn a warning


def ramp(start: float, end: float, steps: int) -> np.ndarray:
    """lr_i = start * (end / start) ** (i / (steps - 1)), i = 0..steps-1: first start, last end, geometric."""
    if not 0 < start < end or steps < 2:
        raise ValueError(f"the ramp needs 0 < start < end and steps >= 2, got {start:g}, {end:g}, {steps}")
    return np.geomspace(start, end, steps)


class RangeTest:
    """The smoothed loss and the stop rule, fed one batch loss at a time.

    avg_i = beta * avg_{i-1} + (1 - beta) * loss_i (avg_{-1} = 0); smoothed_i = avg_i / (1 - beta ** (i + 1)),
    the bias correction that makes the first values an average rather than a fraction of one.
    record() returns why to stop: the smoothed loss is not finite, or exceeds `diverge` times its
    best so far; else None. The point that stops the test is recorded too.
    """

    def __init__(self, beta: float = BETA, diverge: float = DIVERGE):
        self.beta, self.diverge = beta, diverge
        self.avg, self.best = 0.0, math.inf
        self.losses, self.smoothed = [], []

    def record(self, loss: float) -> str | None:
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        smoothed = self.avg / (1 - self.beta ** (len(self.losses) + 1))
        self.losses.append(float(loss))
        self.smoothed.append(float(smoothed))
        if not math.isfinite(smoothed):
            return "the smoothed loss is not finite"
        if smoothed > self.diverge * self.best:
            return f"the smoothed loss exceeded {self.diverge:g} times its best"
        self.best = min(self.best, smoothed)
        return None


def valley(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The lr at the middle index (a + b) // 2 of the longest descent of the curve.

    The descent is the longest strictly decreasing subsequence of `smoothed` (fastai's valley: it
    tolerates small upticks that would break a run of consecutive decreases), from index a to b;
    on ties the one that ends first. lrs are geometric, so the middle index is the middle in log lr.
    """
    n = len(smoothed)
    length, first = np.ones(n, dtype=np.int64), np.arange(n)
    for i in range(1, n):
        above = np.flatnonzero(smoothed[:i] > smoothed[i])  # earlier points this one descends from
        if above.size:
            j = above[np.argmax(length[above])]
            length[i], first[i] = length[j] + 1, first[j]
    b = int(np.argmax(length))
    return float(lrs[(int(first[b]) + b) // 2])


def steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The lr where d smoothed / d log10(lr) is most negative (np.gradient: central differences inside)."""
    return float(lrs[int(np.argmin(np.gradient(smoothed, np.log10(lrs))))])


def min_over_10(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """The lr of the lowest smoothed loss, divided by 10 (at the minimum the lr is already too large)."""
    return float(lrs[int(np.argmin(smoothed))]) / 10


SUGGESTIONS = {"valley": valley, "steepest": steepest, "min/10": min_over_10}


def window(n: int) -> slice:
    """The points the suggestions read: all but the first tenth (an average of too few batches) and the
    last SKIP_END (where the curve blows up), unless that leaves fewer than 3."""
    first = n // 10
    last = n - SKIP_END if n - SKIP_END - first >= 3 else n
    return slice(first, last)


def suggest(lrs, smoothed) -> dict[str, float] | None:
    """{'valley', 'steepest', 'min/10': lr} over window() of the finite prefix of the curve; None below 3 points."""
    lrs, smoothed = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)
    n = int(np.argmin(np.isfinite(smoothed))) if not np.isfinite(smoothed).all() else len(smoothed)
    part = window(n)
    if part.stop - part.start < 3:
        return None
    return {name: fn(lrs[part], smoothed[part]) for name, fn in SUGGESTIONS.items()}


def disagreement(suggestions: dict[str, float]) -> float:
    """max / min of the suggested lrs."""
    values = list(suggestions.values())
    return max(values) / min(values)


def disagreement_warning(suggestions: dict[str, float] | None, factor: float = DISAGREE) -> str | None:
    """A one-line warning when the suggestions are more than `factor` apart, else None."""
    if not suggestions or disagreement(suggestions) <= factor:
        return None
    listed = ", ".join(f"{name} {lr:.2g}" for name, lr in suggestions.items())
    return (f"warning: the suggestions disagree by {disagreement(suggestions):.0f}x ({listed}); "
            "read the curve: pick an lr where the loss still falls steeply, well before its minimum")


def lr_find(exp: Experiment, start: float = 1e-7, end: float = 10.0, steps: int = 100, log=None) -> dict:
    """Train from the config's initialisation with lr_i = ramp(start, end, steps)[i], one mini-batch per step.

    Everything else is the config's: optimizer (momentum, betas), data pipeline (preprocessing fitted
    on the training split, augmentation), L2 penalty, gradient clipping; epochs repeat when steps
    exceed one. The lr schedule and momentum schedule are not applied. `losses` are the batch data
    losses (as steps.csv logs them). Stops early by RangeTest's rule, or when the gradient is not finite.
    """
    keep_freed_memory()  # each step frees and takes back the same arrays, as in a run
    with fair_threads():  # BLAS threads shared with the cnntrain runs alongside, as a run shares them
        return _lr_find(exp, start, end, steps, log)


def _lr_find(exp: Experiment, start: float, end: float, steps: int, log) -> dict:
    cfg = exp.cfg
    setup = build_setup(exp, load_splits(cfg, log=log))
    model, loss, optimizer, loader = setup.model, setup.loss, setup.optimizer, setup.loader
    lrs = ramp(start, end, steps)
    test, stopped, began = RangeTest(), None, time.perf_counter()
    for lr, (x_u8, y) in zip(lrs, _endless(loader)):
        with np.errstate(over="ignore", invalid="ignore"):
            batch_loss, _, _, norm = train_step(model, loss, optimizer, x_u8, y, loader.transform, float(lr),
                                                setup.chunk_size, setup.penalty, cfg.train.grad_clip_norm)
        stopped = test.record(batch_loss)
        if stopped is None and not math.isfinite(norm):
            stopped = "the gradient is not finite"
        if stopped:
            break
    n = len(test.losses)
    suggestions = suggest(lrs[:n], test.smoothed)
    return {"name": cfg.name, "optimizer": cfg.optimizer.name, "batch_size": loader.batch_size,
            "config_lr": cfg.base_lr(len(setup.splits.train[1])), "start": start, "end": end, "steps": steps,
            "lrs": lrs[:n].tolist(), "losses": test.losses, "smoothed": test.smoothed,
            "stopped_early": stopped, "stopped_at": {"step": n, "lr": float(lrs[n - 1])} if stopped else None,
            "suggestions": suggestions,
            "disagreement": disagreement(suggestions) if suggestions else None,
            "seconds": round(time.perf_counter() - began, 3)}


def _endless(loader):
    """The training batches of epoch 0, 1, 2, ... in turn, each epoch shuffled and augmented as in a run."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1
