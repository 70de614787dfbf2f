"""The callbacks a run directory is written by: CSV logs, gradient norms, checkpoints, figures, early stopping."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import __version__
from .monitor import Monitor
from .runs import CsvAppender, save_checkpoint
from .train import EPOCH_COLUMNS, STEP_COLUMNS, Callback, TrainState


class CSVLogger(Callback):
    """Appends one row per epoch to metrics.csv and one per step to steps.csv, flushed as written."""

    def __init__(self, run_dir: Path, step_columns=STEP_COLUMNS, epoch_columns=EPOCH_COLUMNS):
        self.steps = CsvAppender(run_dir / "steps.csv", step_columns)
        self.epochs = CsvAppender(run_dir / "metrics.csv", epoch_columns)

    def on_step_end(self, state, logs):
        self.steps.append(logs)

    def on_epoch_end(self, state, logs):
        self.epochs.append(logs)

    def on_train_end(self, state):
        self.steps.close()
        self.epochs.close()

    on_interrupt = on_train_end


class GradNormLogger(Callback):
    """grad_norms.csv: per step, each weight's gradient L2 norm and its update-to-weight ratio ||dW|| / ||W||.

    Vanishing gradients show as norms falling layer by layer towards the input; a healthy
    update ratio is around 1e-3 (far smaller: learning stalls; near 1: too large a step).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "grad_norms.csv"
        self.row, self.before, self.csv = {}, {}, None

    def on_before_update(self, state, params, grads):
        for name, g in grads.items():
            if name.endswith(".W"):
                self.row[f"{name[:-2]}.grad_norm"] = math.sqrt(float(np.vdot(g, g)))
                self.before[name] = params[name].copy()

    def on_after_update(self, state, params):
        for name, old in self.before.items():
            delta = params[name] - old
            self.row[f"{name[:-2]}.update_ratio"] = math.sqrt(float(np.vdot(delta, delta)) / max(float(np.vdot(old, old)), 1e-30))

    def on_step_end(self, state, logs):
        row = {"step": logs["step"], "epoch": logs["epoch"], **self.row}
        if self.csv is None:  # the columns are known once the first step has named the weights
            self.csv = CsvAppender(self.path, row)
        self.csv.append(row)

    def on_train_end(self, state):
        if self.csv is not None:
            self.csv.close()

    on_interrupt = on_train_end


class EarlyStopping(Callback):
    """Stops training after `patience` epochs in which the monitored metric did not improve."""

    def __init__(self, monitor: Monitor, patience: int = 5):
        self.monitor, self.patience = monitor, patience
        self.best = None

    def on_train_begin(self, state, steps_per_epoch):
        # replay the epochs up to the last improvement, so a resumed run knows its best
        self.best, _ = self.monitor.best(state.history[: len(state.history) - state.wait])

    def on_epoch_end(self, state, logs):
        value = self.monitor.value(logs)
        if self.monitor.improved(value, self.best):
            self.best, state.wait = value, 0
        else:
            state.wait += 1
            if state.wait >= self.patience:
                state.stopped_early = True


class Checkpointer(Callback):
    """checkpoints/last.npz every epoch (and every `every` steps, and on interrupt); best.npz when the monitor improves;
    init.npz, the weights training starts from, once when a new run begins (`cnntrain landscape` reads it).

    Runs after the loggers (order 10), so every row a checkpoint covers is already written.
    """

    order = 10

    def __init__(self, run_dir: Path, config_text: str, model, optimizer, classes, preprocess_state: dict,
                 monitor: Monitor, every: int | None = None):
        self.dir = run_dir / "checkpoints"
        self.config_text, self.model, self.optimizer = config_text, model, optimizer
        self.classes, self.preprocess = list(classes), preprocess_state
        self.monitor, self.every = monitor, every

    def save(self, name: str, state: TrainState) -> None:
        meta = {"epoch": state.epoch, "step": state.step, "classes": self.classes,
                "rng": self.model.rng.bit_generator.state, "input_shape": list(self.model.in_shape),
                "preprocess": self.preprocess,
                "state": state.to_dict(), "cnntrain_version": __version__}
        save_checkpoint(self.dir / name, self.config_text, meta,
                        {**self.model.state_dict(), **self.optimizer.state_dict()})

    def on_train_begin(self, state, steps_per_epoch):
        if state.step == 0:  # a new run; a resumed one keeps the init.npz it began with
            self.save("init.npz", state)

    def on_step_end(self, state, logs):
        if self.every and state.step % self.every == 0:
            self.save("last.npz", state)

    def on_interrupt(self, state):
        self.save("last.npz", state)

    def on_epoch_end(self, state, logs):
        value = self.monitor.value(logs)
        better = self.monitor.improved(value, state.best_value)
        if better:
            state.best_value, state.best_epoch = value, state.epoch
        self.save("last.npz", state)
        if better:
            self.save("best.npz", state)


class PlotCallback(Callback):
    """Redraws loss.png, accuracy.png and lr.png (and sharpness.png) so a long run can be watched: after an epoch when
    `every` seconds have passed since the last drawing, and when training ends or stops."""

    order = 20  # after the checkpoint, so a slow drawing never delays it

    def __init__(self, run_dir: Path, every: float = 10.0):
        self.run_dir, self.every, self.last = run_dir, every, -math.inf

    def draw(self, state=None):
        from .insight.plots import plot_sharpness
        from .plots import plot_grad_norms, plot_run

        plot_run(self.run_dir)
        if (self.run_dir / "grad_norms.csv").exists():
            plot_grad_norms(self.run_dir)
        plot_sharpness(self.run_dir)  # sharpness.png, when train.track_sharpness logs the column
        self.last = time.monotonic()

    def on_epoch_end(self, state, logs):
        if time.monotonic() - self.last >= self.every:
            self.draw()

    on_train_end = on_interrupt = draw


class ThreadPolicy(Callback):
    """BLAS threads (see threads.py): train.threads, an explicit OMP_NUM_THREADS-style variable, else
    max(1, cores // live cnntrain training processes), decided at every epoch and every `recheck`
    seconds within one, so runs started together settle on a share each. `threads` is the run's
    count; a data parallel run's `workers` processes take `each` during its steps. The process's
    own count comes back when training ends."""

    def __init__(self, processes, requested: int | None, echo, recheck: float = 2.0, workers: int = 1,
                 optimizer=None):
        self.processes, self.requested, self.echo, self.recheck = processes, requested, echo, recheck
        self.workers, self.optimizer = workers, optimizer
        self.threads = self.initial = None
        self.checked = -math.inf

    @property
    def each(self) -> int:
        """BLAS threads of each of the run's processes while they share a batch."""
        return max(1, (self.threads or 1) // self.workers)

    def apply(self) -> None:
        from .threads import blas_threads, choose, set_blas_threads

        self.checked = time.monotonic()
        current = blas_threads()
        if self.initial is None:
            self.initial = current
        n, why = choose(self.requested, self.processes.count())
        if n is not None and current is not None and n != current:
            set_blas_threads(n)
            if n < current:
                each = "" if self.workers == 1 else f", {max(1, n // self.workers)} in each of its {self.workers} processes"
                self.echo(f"threads: {why}, so this run uses {n} BLAS thread{'s' if n > 1 else ''}{each} instead of "
                          f"{current} (set train.threads or OMP_NUM_THREADS to choose)")
        self.threads = current if n is None else n
        if self.optimizer is not None:  # its elementwise updates run while the run's other processes wait
            self.optimizer.threads = max(1, self.threads or 1)

    def on_epoch_begin(self, state):
        self.apply()

    def on_step_end(self, state, logs):
        if time.monotonic() - self.checked >= self.recheck:
            self.apply()

    def on_train_end(self, state):
        from .threads import set_blas_threads

        if self.initial is not None:
            set_blas_threads(self.initial)

    on_interrupt = on_train_end
