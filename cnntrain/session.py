"""A training session: a new run or a resumed one, its callbacks, and summary.json from start to finish."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import signal
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from .build import Experiment, Setup, build_setup, experiment_from_text
from .callbacks import Checkpointer, CSVLogger, EarlyStopping, GradNormLogger, PlotCallback, ThreadPolicy
from .data.splits import load_splits
from .errors import ConfigError, RunError, RunInterrupted
from .memory import keep_freed_memory
from .monitor import Monitor
from .parallel import DataParallel, choose_workers, gradients_for
from .runs import (atomic_write_text, json_number, load_checkpoint, make_run_dir, split_state, truncate_csv,
                   write_json)
from .tensorboard import TensorBoardLogger, require_tensorboard
from .threads import TrainingProcesses
from .train import EPOCH_COLUMNS, STEP_COLUMNS, Diverged, Interrupted, TrainState, evaluate, fit


def versions() -> dict:
    return {"cnntrain": __version__, "python": platform.python_version(), "numpy": np.__version__}


@contextlib.contextmanager
def stop_on_signals():
    """Ctrl-C and SIGTERM ask training to stop after the current step; yields a poll returning the signal.

    A second signal stops at once (KeyboardInterrupt), for a step that takes too long.
    """
    received = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: received[0] if received else None
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def train_from_config(exp: Experiment, runs_dir="runs", echo=print, progress=None, run_dir=None,
                      until_epoch: int | None = None) -> dict:
    """Train an experiment end to end into a new run directory; returns summary.json's content.

    run_dir: this directory (created, or holding no run yet) instead of a new runs_dir/<name>-<timestamp>.
    until_epoch: pause after that epoch with status "paused"; `resume_run` continues it exactly.
    """
    with TrainingProcesses() as processes:  # listed before the data loads, so a run started alongside counts it
        return _train_new(exp, runs_dir, echo, progress, processes, run_dir, until_epoch)


def _train_new(exp: Experiment, runs_dir, echo, progress, processes, run_dir, until_epoch) -> dict:
    cfg = exp.cfg
    if cfg.train.tensorboard:
        require_tensorboard()
    splits = load_splits(cfg, log=echo)
    setup = build_setup(exp, splits)
    run_dir = make_run_dir(runs_dir, cfg.name) if run_dir is None else _empty_run_dir(Path(run_dir))
    echo(f"run directory: {run_dir}")
    for line in setup.loader.preprocess.describe():
        echo(f"preprocess {line}")
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    return _train(exp, run_dir, setup, TrainState(), echo, progress, processes, until_epoch)


def _empty_run_dir(run_dir: Path) -> Path:
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{run_dir}: cannot create the run directory: {exc.strerror or exc}") from None
    if (run_dir / "config.yaml").exists() or any((run_dir / "checkpoints").iterdir()):
        raise RunError(f"{run_dir}: already holds a run; resume it or choose another directory")
    return run_dir


def resume_run(run_dir, epochs: int | None = None, echo=print, progress=None, until_epoch: int | None = None) -> dict:
    """Continue a run from checkpoints/last.npz, as if it had never stopped (optionally to more epochs)."""
    with TrainingProcesses() as processes:
        return _resume(Path(run_dir), epochs, echo, progress, processes, until_epoch)


def _resume(run_dir: Path, epochs, echo, progress, processes, until_epoch) -> dict:
    path = run_dir / "config.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{run_dir}: not a run directory (cannot read config.yaml: {exc.strerror or exc})") from None
    exp = experiment_from_text(text, str(path))
    cfg = exp.cfg
    if cfg.train.tensorboard:
        require_tensorboard()
    if epochs is not None:
        cfg.train.epochs = epochs
    checkpoint = run_dir / "checkpoints" / "last.npz"
    if not checkpoint.is_file():
        raise RunError(f"{run_dir}: no checkpoints/last.npz to resume from (the run stopped before its first "
                       "checkpoint; start it again)")
    _, meta, arrays = load_checkpoint(checkpoint)
    for stale in checkpoint.parent.glob(".*.tmp"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    splits = load_splits(cfg, log=echo)
    setup = build_setup(exp, splits, meta.get("preprocess"))
    state = TrainState.from_dict(meta.get("state", {}))
    finished = state.stopped_early or state.step >= cfg.train.epochs * len(setup.loader)
    if finished and _status(run_dir) == "completed":
        raise ConfigError(f"{run_dir}: already trained {state.epoch} of {cfg.train.epochs} epochs"
                          f"{' (stopped early)' if state.stopped_early else ''}; "
                          "resume with --set train.epochs=N to train further")
    try:
        model_state, optim_state = split_state(arrays)
        setup.model.load_state_dict(model_state, str(checkpoint))
        setup.optimizer.load_state_dict(optim_state)
        setup.model.rng.bit_generator.state = meta["rng"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{checkpoint}: does not fit {path}: {exc}") from None
    truncate_csv(run_dir / "metrics.csv", "epoch", state.epoch)
    truncate_csv(run_dir / "steps.csv", "step", state.step)
    truncate_csv(run_dir / "grad_norms.csv", "step", state.step)
    atomic_write_text(path, cfg.to_yaml())
    echo(f"resuming {run_dir} at epoch {state.epoch + 1}, step {state.step + 1}")
    return _train(exp, run_dir, setup, state, echo, progress, processes, until_epoch)


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _train(exp: Experiment, run_dir: Path, setup: Setup, state: TrainState, echo, progress, processes,
           until_epoch: int | None = None) -> dict:
    """fit() with the run directory's callbacks; keeps summary.json's status current."""
    from .progress import ProgressBar

    cfg = exp.cfg
    splits, model, loss, loader = setup.splits, setup.model, setup.loss, setup.loader
    has_val = len(splits.val[1]) > 0
    monitor = Monitor(cfg.train.monitor, has_val)
    summary = {"name": cfg.name, "status": "running", "seed": cfg.seed, "run_dir": str(run_dir),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "params": model.num_params(),
               "train_images": len(splits.train[1]), "val_images": len(splits.val[1]),
               "test_images": len(splits.test[1]), "classes": list(splits.classes),
               "preprocess": loader.preprocess.state(), "versions": versions(),
               "monitor": monitor.name, "monitor_mode": monitor.mode, "monitor_requested": monitor.metric}
    write_json(run_dir / "summary.json", summary)
    step_columns = STEP_COLUMNS + (["momentum"] if setup.momentum else [])
    sharpness = cfg.train.track_sharpness
    epoch_columns = EPOCH_COLUMNS + (["sharpness"] if sharpness else [])
    workers = choose_workers(cfg.train.workers, cfg.train.threads, processes.count(), model.macs(),
                             loader.batch_size, setup.chunk_size)
    threads = ThreadPolicy(processes, cfg.train.threads, echo, workers=workers, optimizer=setup.optimizer)
    callbacks = [ProgressBar(cfg.train.epochs, bar=progress), CSVLogger(run_dir, step_columns, epoch_columns),
                 Checkpointer(run_dir, cfg.to_yaml(), model, setup.optimizer, splits.classes,
                              loader.preprocess.state(), monitor, cfg.train.checkpoint_every),
                 PlotCallback(run_dir), threads]
    grad_norms = GradNormLogger(run_dir) if cfg.train.log_grad_norms else None
    tensorboard = TensorBoardLogger(run_dir, cfg.to_dict(), grad_norms) if cfg.train.tensorboard else None
    callbacks += [cb for cb in (grad_norms, tensorboard) if cb is not None]
    if sharpness is not None:
        from .insight.sharpness import SharpnessTracker

        callbacks.append(SharpnessTracker(sharpness, model, loss, setup.penalty, splits.train, loader.preprocess, cfg.seed))
    es = cfg.train.early_stopping
    if es is not None:
        callbacks.append(EarlyStopping(Monitor(es.monitor or cfg.train.monitor, has_val, es.min_delta), es.patience))
    keep_freed_memory()
    if workers > 1:
        echo(f"data parallel: {workers} processes share each batch (train.workers: {cfg.train.workers})")
    try:
        with (gradients_for(model, loss, workers, loader.batch_size, setup.chunk_size, threads) as gradients,
              stop_on_signals() as stop_requested):
            if isinstance(gradients, DataParallel) and state.epoch < cfg.train.epochs:
                # the workers start before the clock of the first epoch does, which then times steps alone
                gradients.start(loader.transform(splits.train[0][:1]), splits.train[1][:1])
            state = fit(model, loss, setup.optimizer, setup.schedule, loader, splits.val, cfg.train.epochs, callbacks,
                        state, eval_batch_size=cfg.train.eval_batch_size, penalty=setup.penalty,
                        momentum=setup.momentum, chunk_size=setup.chunk_size,
                        grad_clip_norm=cfg.train.grad_clip_norm, stop_requested=stop_requested,
                        until_epoch=until_epoch, gradients=gradients)
    except Interrupted as exc:
        write_json(run_dir / "summary.json", {**summary, "status": "interrupted"})
        raise RunInterrupted(f"interrupted at epoch {state.epoch + 1}, step {state.step}; checkpoint saved; "
                             f"resume with: cnntrain run --resume {run_dir}", exc.signum) from None
    except Diverged:
        write_json(run_dir / "summary.json", {**summary, "status": "diverged"})
        raise
    except BaseException:
        write_json(run_dir / "summary.json", {**summary, "status": "failed"})
        raise

    progress_fields = {"epochs": state.epoch, "steps": state.step, "stopped_early": state.stopped_early,
                       "best_monitor_value": json_number(state.best_value), "best_epoch": state.best_epoch,
                       "train_seconds": round(state.train_seconds, 3), "blas_threads": threads.threads,
                       "workers": workers}
    if state.epoch < cfg.train.epochs and not state.stopped_early:  # paused by until_epoch
        summary.update(status="paused", **progress_fields)
        write_json(run_dir / "summary.json", summary)
        return summary
    best = run_dir / "checkpoints" / "best.npz"
    if best.is_file():  # test the weights that eval uses by default
        _, _, arrays = load_checkpoint(best)
        model.load_state_dict(split_state(arrays)[0], str(best))
    test_loss, test_acc, _ = evaluate(model, loss, *splits.test, loader.preprocess, cfg.train.eval_batch_size)
    last = state.history[-1]
    val_accs = [row["val_acc"] for row in state.history if math.isfinite(row["val_acc"])]
    summary.update({
        "status": "completed", **progress_fields,
        "test_loss": json_number(test_loss), "test_accuracy": json_number(test_acc), "test_checkpoint": "best.npz",
        "best_val_accuracy": max(val_accs) if val_accs else None,
        "final_train_loss": json_number(last["train_loss"]), "final_train_accuracy": json_number(last["train_acc"]),
        "final_val_loss": json_number(last["val_loss"]), "final_val_accuracy": json_number(last["val_acc"]),
        "images_per_second": round(state.images_seen / state.train_seconds, 1) if state.train_seconds else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    write_json(run_dir / "summary.json", summary)
    if tensorboard is not None:
        tensorboard.finish(summary)
    return summary
