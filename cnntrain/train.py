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


def fit(model, loss, optimizer, schedule, loader, val, epochs: int, callbacks=(), state: TrainState | None = None,
        eval_batch_size: int = 1000, penalty=None) -> TrainState:
    """Train from `state` (default: the start) to `epochs`; val is (x_u8, y) or None.

    train_loss is the data loss alone; an L2 penalty's value is logged beside it as reg_loss.
    """
    state = state or TrainState()
    steps = len(loader)
    for cb in callbacks:
        cb.on_train_begin(state, steps)
    for epoch in range(state.epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(state)
        start = time.perf_counter()
        loss_sum, reg_sum, correct, seen = 0.0, 0.0, 0, 0
        lr = schedule(state.step)
        for xb, yb in loader.epoch(epoch):
            lr = schedule(state.step)
            out = model.forward(xb, training=True)
            batch_loss = loss.forward(out, yb)
            if not math.isfinite(batch_loss):
                raise RunError(f"training diverged: loss is {batch_loss} at epoch {epoch + 1}, step {state.step + 1}, "
                               f"lr {lr:g}; try a smaller optimizer.lr or a warmup")
            model.backward(loss.backward())
            params, grads = model.named_params(), model.named_grads()
            reg_sum += penalty.apply(params, grads) * len(yb) if penalty else 0.0
            optimizer.step(params, grads, lr)
            state.step += 1
            batch_correct = int((loss.predict(out) == yb).sum())
            loss_sum += batch_loss * len(yb)
            correct += batch_correct
            seen += len(yb)
            logs = {"step": state.step, "epoch": epoch + 1, "loss": batch_loss, "acc": batch_correct / len(yb), "lr": lr}
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
