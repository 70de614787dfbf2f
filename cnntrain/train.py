"""The training loop. fit() never prints or writes: progress, CSV, checkpoints are callbacks."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .data.loader import batches
from .errors import RunError

EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "reg_loss"]
STEP_COLUMNS = ["step", "epoch", "loss", "acc", "lr"]


@dataclass
class TrainState:
    """Where training is: completed epochs and steps, and the best monitored value so far."""

    epoch: int = 0
    step: int = 0
    best_val_acc: float = -math.inf
    best_epoch: int = 0
    train_seconds: float = 0.0
    images_seen: int = 0
    history: list = field(default_factory=list)


class Callback:
    """Hooks called by fit(); `logs` keys are exactly the metrics.csv / steps.csv columns."""

    def on_train_begin(self, state: TrainState, steps_per_epoch: int) -> None: ...
    def on_epoch_begin(self, state: TrainState) -> None: ...
    def on_step_end(self, state: TrainState, logs: dict) -> None: ...
    def on_epoch_end(self, state: TrainState, logs: dict) -> None: ...
    def on_train_end(self, state: TrainState) -> None: ...


def evaluate(model, loss, x: np.ndarray, y: np.ndarray, preprocess, batch_size: int):
    """(mean loss, accuracy, predictions) over a whole split, in eval mode."""
    total, preds = 0.0, []
    for xb, yb in batches(x, y, batch_size, preprocess):
        out = model.forward(xb, training=False)
        total += loss.forward(out, yb) * len(yb)
        preds.append(loss.predict(out))
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    n = max(len(y), 1)
    return total / n, float((pred == y).mean()) if len(y) else math.nan, pred


def train_step(model, loss, optimizer, x_u8, y, transform, lr: float, chunk_size: int, penalty=None):
    """One optimizer step on a batch: (data loss, correct predictions, penalty).

    A batch larger than chunk_size is run chunk by chunk with gradients accumulated,
    weighted by chunk length, so the step uses the exact mean gradient of the whole
    batch while memory stays bounded (full-batch gradient descent).
    """
    n = len(y)
    params = model.named_params()
    grads, total, correct = None, 0.0, 0
    for start in range(0, n, chunk_size):
        yb = y[start : start + chunk_size]
        out = model.forward(transform(x_u8[start : start + chunk_size]), training=True)
        chunk_loss = loss.forward(out, yb)
        model.backward(loss.backward())
        correct += int((loss.predict(out) == yb).sum())
        if chunk_size >= n:
            total, grads = chunk_loss, model.named_grads()
            break
        w = len(yb) / n
        total += chunk_loss * w
        if grads is None:
            grads = {k: g * g.dtype.type(w) for k, g in model.named_grads().items()}
        else:
            for k, g in model.named_grads().items():
                grads[k] += g * g.dtype.type(w)
    if not math.isfinite(total):
        return total, correct, 0.0
    reg = penalty.apply(params, grads) if penalty else 0.0
    optimizer.step(params, grads, lr)
    return total, correct, reg


def fit(model, loss, optimizer, schedule, loader, val, epochs: int, callbacks=(), state: TrainState | None = None,
        eval_batch_size: int = 1000, penalty=None, momentum=None, chunk_size: int | None = None) -> TrainState:
    """Train from `state` (default: the start) to `epochs`; val is (x_u8, y) or None.

    schedule(step) gives the lr of each step, momentum(step) (optional) sets optimizer.mu.
    train_loss is the data loss alone; an L2 penalty's value is logged beside it as reg_loss.
    """
    state = state or TrainState()
    steps = len(loader)
    chunk_size = chunk_size or loader.batch_size
    for cb in callbacks:
        cb.on_train_begin(state, steps)
    for epoch in range(state.epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(state)
        start = time.perf_counter()
        loss_sum, reg_sum, correct, seen = 0.0, 0.0, 0, 0
        lr = schedule(state.step)
        for x_u8, yb in loader.epoch(epoch):
            lr = schedule(state.step)
            logs = {"step": state.step + 1, "epoch": epoch + 1, "lr": lr}
            if momentum is not None:
                optimizer.mu = logs["momentum"] = momentum(state.step)
            batch_loss, batch_correct, reg = train_step(model, loss, optimizer, x_u8, yb, loader.transform, lr,
                                                        chunk_size, penalty)
            if not math.isfinite(batch_loss):
                raise RunError(f"training diverged: loss is {batch_loss} at epoch {epoch + 1}, step {state.step + 1}, "
                               f"lr {lr:g}; try a smaller optimizer.lr or a warmup")
            state.step += 1
            loss_sum += batch_loss * len(yb)
            reg_sum += reg * len(yb)
            correct += batch_correct
            seen += len(yb)
            logs.update(loss=batch_loss, acc=batch_correct / len(yb))
            for cb in callbacks:
                cb.on_step_end(state, logs)
        seconds = time.perf_counter() - start
        logs = {"epoch": epoch + 1, "step": state.step, "train_loss": loss_sum / seen, "train_acc": correct / seen,
                "val_loss": math.nan, "val_acc": math.nan, "lr": lr, "seconds": seconds, "reg_loss": reg_sum / seen}
        state.train_seconds += seconds
        state.images_seen += seen
        if val is not None and len(val[1]):
            logs["val_loss"], logs["val_acc"], _ = evaluate(model, loss, *val, loader.preprocess, eval_batch_size)
        state.epoch = epoch + 1
        state.history.append(logs)
        for cb in callbacks:
            cb.on_epoch_end(state, logs)
    for cb in callbacks:
        cb.on_train_end(state)
    return state
