"""The training loop. fit() never prints or writes: progress, CSV, checkpoints are callbacks."""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .data.loader import batches
from .errors import RunError
from .flat import flat

EPOCH_COLUMNS = ["epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "reg_loss"]
STEP_COLUMNS = ["step", "epoch", "loss", "acc", "lr"]


@dataclass
class TrainState:
    """Where training is, in enough detail to resume it exactly (saved as JSON in checkpoints).

    epoch and step count completed epochs and optimizer steps; the epoch_* sums belong to the
    epoch in progress, so a run stopped mid-epoch resumes with the same metrics row.
    """

    epoch: int = 0
    step: int = 0
    best_value: float | None = None      # best monitored metric so far (best.npz)
    best_epoch: int = 0
    train_seconds: float = 0.0
    images_seen: int = 0
    epoch_loss_sum: float = 0.0
    epoch_reg_sum: float = 0.0
    epoch_correct: int = 0
    epoch_seen: int = 0
    epoch_seconds: float = 0.0
    wait: int = 0                        # epochs without improvement (early stopping)
    stopped_early: bool = False
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class Diverged(RunError):
    """The loss or the gradient norm stopped being finite; nothing was updated by that step."""


class Interrupted(Exception):
    """Training stopped between two steps because a signal asked it to."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Callback:
    """Hooks called by fit(); `logs` keys are exactly the metrics.csv / steps.csv columns.

    fit() calls each hook on every callback in ascending `order` (stable for equal orders):
    loggers keep the default 0 and checkpointing runs after them (see callbacks.py), so a
    checkpoint never precedes the rows it covers. on_before_update sees the final gradients
    (after L2, clipping) just before the optimizer step; on_after_update the updated weights.
    """

    order: int = 0

    def on_train_begin(self, state: TrainState, steps_per_epoch: int) -> None: ...
    def on_epoch_begin(self, state: TrainState) -> None: ...
    def on_before_update(self, state: TrainState, params: dict, grads: dict) -> None: ...
    def on_after_update(self, state: TrainState, params: dict) -> None: ...
    def on_step_end(self, state: TrainState, logs: dict) -> None: ...
    def on_epoch_end(self, state: TrainState, logs: dict) -> None: ...
    def on_interrupt(self, state: TrainState) -> None: ...
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


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of every gradient entry (NaN or inf if any entry is)."""
    packed = flat(grads)
    if packed is not None:
        return math.sqrt(float(np.vdot(packed.data, packed.data)))
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))


def batch_gradients(model, loss, x_u8, y, transform, chunk_size: int):
    """(mean data loss, correct predictions, gradients) of one batch, in this process.

    A batch larger than chunk_size is run chunk by chunk (accumulate_chunks), so memory stays
    bounded (full-batch gradient descent). parallel.DataParallel is the same call with each
    chunk split over processes.
    """
    def one_pass(start: int, stop: int):
        yb = y[start:stop]
        out = model.forward(transform(x_u8[start:stop]), training=True)
        chunk_loss = loss.forward(out, yb)
        model.backward(loss.backward())
        return chunk_loss, int((loss.predict(out) == yb).sum()), model.named_grads()

    return accumulate_chunks(len(y), chunk_size, one_pass)


def accumulate_chunks(n: int, chunk_size: int, one_pass):
    """(mean loss, correct, gradients) of n rows from one_pass(start, stop) over chunks of chunk_size.

    Each chunk is a forward and backward of its own (batchnorm takes the chunk's statistics);
    losses and gradients are accumulated in chunk order, weighted by chunk length, so the step
    uses the exact mean gradient of the whole batch. One chunk returns one_pass's own gradients.
    """
    if chunk_size >= n:
        return one_pass(0, n)
    grads, total, correct = None, 0.0, 0
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        chunk_loss, chunk_correct, chunk_grads = one_pass(start, stop)
        w = (stop - start) / n
        total += chunk_loss * w
        correct += chunk_correct
        if grads is None:
            grads = {k: g * g.dtype.type(w) for k, g in chunk_grads.items()}
        else:
            for k, g in chunk_grads.items():
                grads[k] += g * g.dtype.type(w)
    return total, correct, grads


def train_step(model, loss, optimizer, x_u8, y, transform, lr: float, chunk_size: int, penalty=None,
               grad_clip_norm: float | None = None, callbacks=(), state: TrainState | None = None,
               gradients=batch_gradients):
    """One optimizer step on a batch: (data loss, correct predictions, penalty, gradient norm).

    gradients computes the batch's mean loss and gradients (batch_gradients, or a DataParallel).
    Nothing is updated when the loss or the gradient is not finite.
    """
    params = model.named_params()
    total, correct, grads = gradients(model, loss, x_u8, y, transform, chunk_size)
    grads = model.packed_grads(grads)  # one buffer: the penalty, the norm and the update make one pass each
    if not math.isfinite(total):
        return total, correct, 0.0, math.nan
    reg = penalty.apply(params, grads) if penalty else 0.0
    norm = global_norm(grads)
    if not math.isfinite(norm):
        return total, correct, reg, norm
    if grad_clip_norm is not None and norm > grad_clip_norm:
        scale = grad_clip_norm / norm
        packed = flat(grads)
        for g in [packed.data] if packed is not None else grads.values():  # in place, as the L2 term was added
            g *= g.dtype.type(scale)
    for cb in callbacks:
        cb.on_before_update(state, params, grads)
    optimizer.step(params, grads, lr)
    for cb in callbacks:
        cb.on_after_update(state, params)
    return total, correct, reg, norm


def fit(model, loss, optimizer, schedule, loader, val, epochs: int, callbacks=(), state: TrainState | None = None,
        eval_batch_size: int = 1000, penalty=None, momentum=None, chunk_size: int | None = None,
        grad_clip_norm: float | None = None, stop_requested=lambda: None, until_epoch: int | None = None,
        gradients=batch_gradients) -> TrainState:
    """Train from `state` (default: the start, else where it stopped, even mid-epoch) to `epochs`.

    until_epoch pauses after that epoch: the schedule still spans `epochs`, so resuming later
    continues exactly as if training had never paused (successive halving builds on this).

    val is (x_u8, y) or None; schedule(step) gives each step's lr and momentum(step) (optional)
    sets optimizer.mu. stop_requested() returning a signal number ends training after the
    current step with Interrupted, once every callback's on_interrupt has run (checkpointing).
    train_loss is the data loss alone; an L2 penalty's value is logged beside it as reg_loss.
    A non-finite loss or gradient norm raises Diverged before any parameter changes.
    gradients: how each batch's gradients are computed (batch_gradients, or a parallel.DataParallel).
    """
    state = state or TrainState()
    callbacks = sorted(callbacks, key=lambda cb: cb.order)
    steps = len(loader)
    chunk_size = chunk_size or loader.batch_size
    for cb in callbacks:
        cb.on_train_begin(state, steps)
    stop = epochs if until_epoch is None else min(epochs, until_epoch)
    while state.epoch < stop and not state.stopped_early:
        epoch = state.epoch
        first = state.step - epoch * steps  # batches of this epoch already done (resuming mid-epoch)
        if first == 0:
            state.epoch_loss_sum = state.epoch_reg_sum = state.epoch_seconds = 0.0
            state.epoch_correct = state.epoch_seen = 0
        for cb in callbacks:
            cb.on_epoch_begin(state)
        for x_u8, yb in loader.epoch(epoch, start=first):
            start = time.perf_counter()
            lr = schedule(state.step)
            logs = {"step": state.step + 1, "epoch": epoch + 1, "lr": lr}
            if momentum is not None:
                optimizer.mu = logs["momentum"] = momentum(state.step)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught below, as divergence
                batch_loss, batch_correct, reg, norm = train_step(model, loss, optimizer, x_u8, yb, loader.transform,
                                                                  lr, chunk_size, penalty, grad_clip_norm, callbacks, state,
                                                                  gradients)
            if not (math.isfinite(batch_loss) and math.isfinite(norm)):
                what = f"loss is {batch_loss}" if not math.isfinite(batch_loss) else f"gradient norm is {norm}"
                raise Diverged(f"training diverged: {what} at epoch {epoch + 1}, step {state.step + 1}, lr {lr:g}; "
                               "try a smaller optimizer.lr, a warmup (schedule.warmup_epochs) or "
                               "train.grad_clip_norm")
            state.step += 1
            state.epoch_loss_sum += batch_loss * len(yb)
            state.epoch_reg_sum += reg * len(yb)
            state.epoch_correct += batch_correct
            state.epoch_seen += len(yb)
            state.epoch_seconds += time.perf_counter() - start
            logs.update(loss=batch_loss, acc=batch_correct / len(yb))
            for cb in callbacks:
                cb.on_step_end(state, logs)
            signum = stop_requested()
            if signum is not None and state.step < epochs * steps:
                for cb in callbacks:
                    cb.on_interrupt(state)
                raise Interrupted(signum)
        seen = state.epoch_seen
        logs = {"epoch": epoch + 1, "step": state.step, "train_loss": state.epoch_loss_sum / seen,
                "train_acc": state.epoch_correct / seen, "val_loss": math.nan, "val_acc": math.nan,
                "lr": schedule(state.step - 1),
                "seconds": state.epoch_seconds, "reg_loss": state.epoch_reg_sum / seen}
        state.train_seconds += state.epoch_seconds
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
