"""Config -> objects -> fit() -> run directory. The one place that knows all three."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from . import __version__
from .config import Config, config_from_text, step_entry
from .data.loader import BatchLoader, holdout
from .data.augment import Augment
from .data.transforms import PixelStats, Preprocess
from .errors import ConfigError, RunError, RunInterrupted
from .losses import L2Penalty
from .metrics import confusion_matrix, per_class_accuracy
from .model import Sequential, build_model
from .optim.schedules import build_momentum_schedule, build_schedule
from .registry import AUGMENTATIONS, DATASETS, LOSSES, OPTIMIZERS, PREPROCESS, accepted_kwargs
from .runs import (CSVLogger, CsvAppender, atomic_write_text, find_checkpoint, json_number, load_checkpoint,
                   make_run_dir, save_checkpoint, split_state, truncate_csv, write_json)
from .train import (STEP_COLUMNS, Callback, EarlyStopping, Interrupted, TrainState, evaluate, fit, improved,
                    monitor_mode)

MODEL_STREAM = 0  # spawn_key of the generator that initialises weights and draws dropout masks


@dataclass
class Splits:
    """uint8 images and int64 labels of each split, with the class names."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    classes: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])


def _limit(split, n):
    return split if n is None else (split[0][:n], split[1][:n])


def load_dataset(cfg: Config, log=None):
    """The registered dataset of cfg.data, called with the data options its function accepts."""
    data = cfg.data
    fn = DATASETS.get(data.dataset, "data.dataset")
    kwargs = {k: getattr(data, k) for k in accepted_kwargs(fn) or () if k != "log" and hasattr(data, k)}
    try:
        return fn(**kwargs, log=log)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None


def load_splits(cfg: Config, log=None) -> Splits:
    """The dataset of cfg.data, with the validation images held out (unless it has its own) and the limits applied."""
    data = cfg.data
    ds = load_dataset(cfg, log)
    train, test, classes = (ds.train_x, ds.train_y), (ds.test_x, ds.test_y), tuple(ds.classes)
    val = None if ds.val_x is None else (ds.val_x, ds.val_y)
    if data.classes is not None:
        if max(data.classes) >= len(classes):
            raise ConfigError(f"{cfg.source}: data.classes: {data.dataset} has classes 0..{len(classes) - 1}, "
                              f"got {data.classes}")
        train, test = select_classes(*train, data.classes), select_classes(*test, data.classes)
        val = None if val is None else select_classes(*val, data.classes)
        classes = tuple(classes[c] for c in data.classes)
    if val is None:
        try:
            train_idx, val_idx = holdout(len(train[1]), data.validation, data.split_seed)
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: data.validation: {exc}") from None
        train, val = (train[0][train_idx], train[1][train_idx]), (train[0][val_idx], train[1][val_idx])
    return Splits(_limit(train, data.limit_train), _limit(val, data.limit_val), _limit(test, data.limit_test), classes)


def select_classes(x, y, keep):
    """The samples whose label is in keep, relabelled by their position in keep."""
    lookup = np.full(max(int(y.max(initial=0)), max(keep)) + 1, -1, dtype=np.int64)
    lookup[list(keep)] = np.arange(len(keep))
    new = lookup[y]
    mask = new >= 0
    return x[mask], new[mask]


def _steps(cfg: Config, section: str, registry) -> list:
    """The objects of data.preprocess or data.augment, from their registry (entries checked by the config)."""
    steps = []
    for i, entry in enumerate(getattr(cfg.data, section)):
        name, kwargs = step_entry(entry, f"{cfg.source}: data.{section}[{i}]", "a step")
        steps.append(registry.create(name, kwargs, where=f"{cfg.source}: data.{section}[{i}].{name}"))
    return steps


def make_preprocess(cfg: Config, channels: int, train_x: np.ndarray | None = None) -> Preprocess:
    """data.preprocess for `channels`, fitting unspecified statistics on the training images train_x."""
    steps = _steps(cfg, "preprocess", PREPROCESS)
    stats = PixelStats.of(train_x) if train_x is not None and any(s.needs_data() for s in steps) else None
    try:
        return Preprocess(steps, channels, stats)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data.preprocess: {exc}") from None


def checkpoint_preprocess(cfg: Config, meta: dict, channels: int) -> Preprocess:
    """The preprocessing a checkpoint was trained with: its stored, fitted map (older checkpoints: the config's)."""
    try:
        if "preprocess" in meta:
            return Preprocess.from_state(meta["preprocess"], channels)
        return make_preprocess(cfg, channels)
    except (ConfigError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{cfg.source}: cannot rebuild the preprocessing: {exc}") from None


def make_augment(cfg: Config) -> Augment:
    return Augment(_steps(cfg, "augment", AUGMENTATIONS))


def build_network(cfg: Config, input_shape, n_classes: int | None = None) -> tuple[Sequential, object]:
    """The model (built, seeded) and the loss; ConfigError when they cannot fit the data."""
    if cfg.model.input_shape is not None and list(cfg.model.input_shape) != list(input_shape):
        raise ConfigError(f"{cfg.source}: model.input_shape: {list(cfg.model.input_shape)} does not match the "
                          f"dataset's images {list(input_shape)} (channels, height, width)")
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(MODEL_STREAM,)))
    try:
        model = build_model(cfg.layer_specs, input_shape, rng)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None
    loss = LOSSES.create(cfg.loss, {}, where=f"{cfg.source}: loss")
    if n_classes is not None:
        try:
            loss.check_output(model.out_shape, n_classes)
        except ValueError as exc:
            raise ConfigError(f"{cfg.source}: model.layers: {exc}") from None
    model.rng = rng
    return model, loss


def build_penalty(cfg: Config, model: Sequential) -> L2Penalty:
    """L2 on each layer's W with the layer's coefficient (biases and normalisation parameters excluded)."""
    return L2Penalty({f"layers.{i}.W": c for i, (layer, c) in enumerate(zip(model.layers, cfg.layer_l2))
                      if "W" in layer.params})


def build_optimizer(cfg: Config):
    return OPTIMIZERS.create(cfg.optimizer["name"], cfg.optimizer_kwargs, where=f"{cfg.source}: optimizer")


def init_from(model: Sequential, path, source: str) -> None:
    """Copy weights (and buffers) by stable name from a checkpoint or plain .npz into model."""
    path = Path(path)
    try:
        _, _, arrays = load_checkpoint(path)
    except RunError:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{source}: model.init_from: cannot read {path}: {exc}") from None
    own = model.state_dict()
    weights = {k: v for k, v in arrays.items() if k in own}
    missing = sorted(set(model.named_params()) - set(weights))
    if missing:
        raise ConfigError(f"{source}: model.init_from: {path} has no {', '.join(missing)}; it does not fit this network")
    for name, value in weights.items():
        if value.shape != own[name].shape:
            raise ConfigError(f"{source}: model.init_from: {path}: {name} has shape {value.shape}, "
                              f"the network needs {own[name].shape}")
    model.load_state_dict({**own, **weights}, str(path))


@dataclass
class Setup:
    """Everything fit() needs, built from a config and its data splits."""

    splits: Splits
    model: Sequential
    loss: object
    optimizer: object
    loader: BatchLoader
    schedule: object
    momentum: object
    chunk_size: int


def build_setup(cfg: Config, splits: Splits, preprocess_state: dict | None = None) -> Setup:
    """Model, loss, optimizer, loader and schedules; preprocessing fitted on the training split, or restored."""
    model, loss = build_network(cfg, splits.input_shape, len(splits.classes))
    if cfg.model.init_from:
        init_from(model, cfg.model.init_from, cfg.source)
    n_train = len(splits.train[1])
    if n_train == 0:
        raise ConfigError(f"{cfg.source}: data: no training images left after the validation split and limits")
    channels = splits.input_shape[0]
    if preprocess_state is None:
        preprocess = make_preprocess(cfg, channels, splits.train[0])
    else:
        preprocess = checkpoint_preprocess(cfg, {"preprocess": preprocess_state}, channels)
    loader = BatchLoader(*splits.train, cfg.batch_size(n_train), preprocess, shuffle=cfg.train.shuffle,
                         seed=cfg.seed, drop_last=cfg.train.drop_last, augment=make_augment(cfg))
    if len(loader) == 0:
        raise ConfigError(f"{cfg.source}: train.drop_last: batch_size {loader.batch_size} is larger than the "
                          f"{n_train} training images, so every batch would be dropped")
    steps, total = len(loader), len(loader) * cfg.train.epochs
    options = {k: v for k, v in cfg.schedule.items() if k != "name"}
    schedule = build_schedule(cfg.schedule["name"], options, cfg.base_lr(n_train), steps, total,
                              where=f"{cfg.source}: schedule")
    momentum = None
    if cfg.momentum_schedule is not None:
        if "momentum" not in (accepted_kwargs(OPTIMIZERS.get(cfg.optimizer["name"])) or []):
            raise ConfigError(f"{cfg.source}: momentum_schedule: optimizer '{cfg.optimizer['name']}' has no momentum "
                              "to schedule (use momentum or nesterov)")
        momentum = build_momentum_schedule(cfg.momentum_schedule, steps, total, momentum=cfg.optimizer["momentum"],
                                           where=f"{cfg.source}: momentum_schedule")
    return Setup(splits, model, loss, build_optimizer(cfg), loader, schedule, momentum, cfg.chunk_size(n_train))


class Checkpointer(Callback):
    """checkpoints/last.npz every epoch (and every `every` steps, and on interrupt); best.npz when `monitor` improves.

    With no validation split, a val_* monitor falls back to its train_* twin.
    """

    def __init__(self, run_dir: Path, cfg: Config, model: Sequential, optimizer, classes, preprocess: Preprocess):
        self.dir = run_dir / "checkpoints"
        self.config_text = cfg.to_yaml()
        self.model, self.optimizer, self.classes = model, optimizer, list(classes)
        self.preprocess = preprocess.state()
        self.monitor, self.every = cfg.train.monitor, cfg.train.checkpoint_every

    def save(self, name: str, state: TrainState) -> None:
        meta = {"epoch": state.epoch, "step": state.step, "classes": self.classes,
                "rng": self.model.rng.bit_generator.state, "input_shape": list(self.model.in_shape),
                "preprocess": self.preprocess,
                "state": state.to_dict(), "cnntrain_version": __version__}
        save_checkpoint(self.dir / name, self.config_text, meta,
                        {**self.model.state_dict(), **self.optimizer.state_dict()})

    def on_step_end(self, state, logs):
        if self.every and state.step % self.every == 0:
            self.save("last.npz", state)

    def on_interrupt(self, state):
        self.save("last.npz", state)

    def on_epoch_end(self, state, logs):
        metric = self.monitor
        if not math.isfinite(logs[metric]) and metric.startswith("val_"):
            metric = "train_" + metric[len("val_"):]
        better = improved(logs[metric], state.best_value, monitor_mode(metric))
        if better:
            state.best_value, state.best_epoch = logs[metric], state.epoch
        self.save("last.npz", state)
        if better:
            self.save("best.npz", state)


class GradNormLogger(Callback):
    """grad_norms.csv: per step, each weight's gradient L2 norm and its update-to-weight ratio ||dW|| / ||W||.

    Vanishing gradients show as norms falling layer by layer towards the input; a healthy
    update ratio is around 1e-3 (far smaller: learning stalls; near 1: too large a step).
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / "grad_norms.csv"
        self.row, self.before, self.csv = {}, {}, None

    def before_update(self, params, grads):
        for name, g in grads.items():
            if name.endswith(".W"):
                self.row[f"{name[:-2]}.grad_norm"] = math.sqrt(float(np.vdot(g, g)))
                self.before[name] = params[name].copy()

    def after_update(self, params):
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


class PlotCallback(Callback):
    """Redraws loss.png, accuracy.png and lr.png so a long run can be watched: after an epoch when
    `every` seconds have passed since the last drawing, and when training ends or stops."""

    def __init__(self, run_dir: Path, every: float = 10.0):
        self.run_dir, self.every, self.last = run_dir, every, -math.inf

    def draw(self, state=None):
        from .plots import plot_grad_norms, plot_run

        plot_run(self.run_dir)
        if (self.run_dir / "grad_norms.csv").exists():
            plot_grad_norms(self.run_dir)
        self.last = time.monotonic()

    def on_epoch_end(self, state, logs):
        if time.monotonic() - self.last >= self.every:
            self.draw()

    on_train_end = on_interrupt = draw


def describe_dataset(cfg: Config) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The dataset's image shape and class names, known without decoding any image.

    A dataset function either has `input_shape` and `classes`, or `describe(data_config)`
    when they depend on the config (an image folder's size and sub-folders).
    """
    dataset = DATASETS.get(cfg.data.dataset, "data.dataset")
    if hasattr(dataset, "describe"):
        shape, classes = dataset.describe(cfg.data)
    else:
        shape, classes = dataset.input_shape, dataset.classes
    return tuple(shape), tuple(classes)


def static_input_shape(cfg: Config) -> tuple[int, ...]:
    return describe_dataset(cfg)[0]


def summarize(cfg: Config) -> dict:
    """Per-layer output shape, parameters and multiply-adds, built from the config alone (no data)."""
    in_shape, classes = describe_dataset(cfg)
    n_classes = len(cfg.data.classes) if cfg.data.classes else len(classes)
    model, _ = build_network(cfg, in_shape, n_classes)
    rows = model.summary_rows()
    return {"name": cfg.name, "input_shape": list(in_shape), "layers": rows,
            "totals": {"params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows),
                       "output_shape": list(model.out_shape)}}


def schedule_table(cfg: Config, log=None) -> dict:
    """The lr (and momentum) of every step of cfg's training, computed without training."""
    setup = build_setup(cfg, load_splits(cfg, log=log))
    spe = len(setup.loader)
    steps = np.arange(spe * cfg.train.epochs)
    table = {"step": steps + 1, "epoch": steps // spe + 1, "lr": np.array([setup.schedule(int(s)) for s in steps])}
    if setup.momentum is not None:
        table["momentum"] = np.array([setup.momentum(int(s)) for s in steps])
    return {"name": cfg.name, "steps_per_epoch": spe, "batch_size": setup.loader.batch_size, "table": table}


def preview_batch(cfg: Config, count: int = 16, epoch: int = 0, log=None) -> dict:
    """The first `count` images of an epoch's first training batch, as stored and as augmented for
    training (the very pixels fit() gets), with the preprocessed batch's statistics."""
    setup = build_setup(cfg, load_splits(cfg, log=log))
    loader = setup.loader
    first = loader.batch_indices(epoch)[0]
    augmented, labels = next(loader.epoch(epoch))
    count = min(count, len(labels))
    x = loader.preprocess(augmented)
    return {"name": cfg.name, "raw": loader.x[first[:count]], "augmented": augmented[:count], "labels": labels[:count],
            "classes": setup.splits.classes, "preprocess": loader.preprocess.describe(), "batch_size": len(labels),
            "augment": [entry if isinstance(entry, str) else yaml.safe_dump(entry, default_flow_style=True).strip()
                        for entry in cfg.data.augment],
            "input_stats": {"min": float(x.min()), "max": float(x.max()), "mean": float(x.mean()),
                            "std": float(x.std())}}


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


def train_from_config(cfg: Config, runs_dir="runs", echo=print, progress=None) -> dict:
    """Train cfg end to end into a new run directory; returns summary.json's content."""
    splits = load_splits(cfg, log=echo)
    setup = build_setup(cfg, splits)
    run_dir = make_run_dir(runs_dir, cfg.name)
    echo(f"run directory: {run_dir}")
    for line in setup.loader.preprocess.describe():
        echo(f"preprocess {line}")
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    return _train(cfg, run_dir, setup, TrainState(), echo, progress)


def resume_run(run_dir, epochs: int | None = None, echo=print, progress=None) -> dict:
    """Continue a run from checkpoints/last.npz, as if it had never stopped (optionally to more epochs)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{run_dir}: not a run directory (cannot read config.yaml: {exc.strerror or exc})") from None
    cfg = config_from_text(text, str(path))
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
    setup = build_setup(cfg, splits, meta.get("preprocess"))
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
    return _train(cfg, run_dir, setup, state, echo, progress)


def _status(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def _train(cfg: Config, run_dir: Path, setup: Setup, state: TrainState, echo, progress) -> dict:
    """fit() with the run directory's callbacks; keeps summary.json's status current."""
    from .progress import ProgressBar

    splits, model, loss, loader = setup.splits, setup.model, setup.loss, setup.loader
    summary = {"name": cfg.name, "status": "running", "seed": cfg.seed, "run_dir": str(run_dir),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "params": model.num_params(),
               "train_images": len(splits.train[1]), "val_images": len(splits.val[1]),
               "test_images": len(splits.test[1]), "classes": list(splits.classes),
               "preprocess": loader.preprocess.state(), "versions": versions()}
    write_json(run_dir / "summary.json", summary)
    step_columns = STEP_COLUMNS + (["momentum"] if setup.momentum else [])
    callbacks = [ProgressBar(cfg.train.epochs, bar=progress), CSVLogger(run_dir, step_columns)]
    if cfg.train.early_stopping is not None:
        es = cfg.train.early_stopping
        callbacks.append(EarlyStopping(es.monitor or cfg.train.monitor, es.patience, es.min_delta))
    callbacks += [Checkpointer(run_dir, cfg, model, setup.optimizer, splits.classes, loader.preprocess)]
    observer = GradNormLogger(run_dir) if cfg.train.log_grad_norms else None
    if observer is not None:
        callbacks.insert(2, observer)  # rows written before any checkpoint, as the other CSVs
    callbacks.append(PlotCallback(run_dir))
    try:
        with stop_on_signals() as stop_requested:
            state = fit(model, loss, setup.optimizer, setup.schedule, loader, splits.val, cfg.train.epochs, callbacks,
                        state, eval_batch_size=cfg.train.eval_batch_size, penalty=build_penalty(cfg, model),
                        momentum=setup.momentum, chunk_size=setup.chunk_size,
                        grad_clip_norm=cfg.train.grad_clip_norm, stop_requested=stop_requested, observer=observer)
    except Interrupted as exc:
        write_json(run_dir / "summary.json", {**summary, "status": "interrupted"})
        raise RunInterrupted(f"interrupted at epoch {state.epoch + 1}, step {state.step}; checkpoint saved; "
                             f"resume with: cnntrain run --resume {run_dir}", exc.signum) from None
    except RunError as exc:
        status = "diverged" if "diverged" in str(exc) else "failed"
        write_json(run_dir / "summary.json", {**summary, "status": status})
        raise
    except BaseException:
        write_json(run_dir / "summary.json", {**summary, "status": "failed"})
        raise

    best = run_dir / "checkpoints" / "best.npz"
    if best.is_file():  # test the weights that eval uses by default
        _, _, arrays = load_checkpoint(best)
        model.load_state_dict(split_state(arrays)[0], str(best))
    test_loss, test_acc, _ = evaluate(model, loss, *splits.test, loader.preprocess, cfg.train.eval_batch_size)
    last = state.history[-1]
    val_accs = [row["val_acc"] for row in state.history if math.isfinite(row["val_acc"])]
    summary.update({
        "status": "completed", "epochs": state.epoch, "steps": state.step, "stopped_early": state.stopped_early,
        "test_loss": json_number(test_loss), "test_accuracy": json_number(test_acc), "test_checkpoint": "best.npz",
        "monitor": cfg.train.monitor, "best_monitor_value": json_number(state.best_value),
        "best_epoch": state.best_epoch, "best_val_accuracy": max(val_accs) if val_accs else None,
        "final_train_loss": json_number(last["train_loss"]), "final_train_accuracy": json_number(last["train_acc"]),
        "final_val_loss": json_number(last["val_loss"]), "final_val_accuracy": json_number(last["val_acc"]),
        "train_seconds": round(state.train_seconds, 3),
        "images_per_second": round(state.images_seen / state.train_seconds, 1) if state.train_seconds else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    write_json(run_dir / "summary.json", summary)
    return summary


def load_model(checkpoint) -> tuple[Config, dict, Sequential, object]:
    """(config, meta, model with the checkpoint's weights, loss) from a checkpoint file."""
    config_text, meta, arrays = load_checkpoint(checkpoint)
    try:
        cfg = config_from_text(config_text, f"{checkpoint} (embedded config)")
    except ConfigError as exc:
        raise RunError(str(exc)) from None
    model, loss = build_network(cfg, tuple(meta["input_shape"]), len(meta["classes"]))
    try:
        model.load_state_dict(split_state(arrays)[0], str(checkpoint))
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return cfg, meta, model, loss


def evaluate_checkpoint(path, split: str = "test", batch_size: int | None = None, log=None) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on one split."""
    checkpoint = find_checkpoint(path)
    cfg, meta, model, loss = load_model(checkpoint)
    splits = load_splits(cfg, log=log)
    x, y = getattr(splits, split)
    preprocess = checkpoint_preprocess(cfg, meta, splits.input_shape[0])
    mean_loss, acc, pred = evaluate(model, loss, x, y, preprocess, batch_size or cfg.train.eval_batch_size)
    classes = meta["classes"]
    cm = confusion_matrix(y, pred, len(classes))
    return {"checkpoint": str(checkpoint), "split": split, "n": int(len(y)), "loss": json_number(mean_loss),
            "accuracy": json_number(acc), "classes": classes,
            "per_class_accuracy": {c: json_number(float(a)) for c, a in zip(classes, per_class_accuracy(cm))},
            "confusion_matrix": cm.tolist(), "epoch": meta["epoch"]}
