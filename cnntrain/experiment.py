"""Config -> objects -> fit() -> run directory. The one place that knows all three."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .config import Config, config_from_text
from .data.loader import BatchLoader, holdout
from .data.transforms import Preprocess
from .errors import ConfigError, RunError
from .losses import L2Penalty
from .metrics import confusion_matrix, per_class_accuracy
from .model import Sequential, build_model
from .optim.schedules import build_momentum_schedule, build_schedule
from .registry import DATASETS, LOSSES, OPTIMIZERS, PREPROCESS, accepted_kwargs
from .runs import (CSVLogger, atomic_write_text, find_checkpoint, json_number, load_checkpoint, make_run_dir,
                   save_checkpoint, write_json)
from .train import STEP_COLUMNS, Callback, TrainState, evaluate, fit

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


def load_splits(cfg: Config, log=None) -> Splits:
    """The dataset of cfg.data, with the validation images held out and the limits applied."""
    data = cfg.data
    ds = DATASETS.get(data.dataset, "data.dataset")(root=data.root, download=data.download, mirror=data.mirror, log=log)
    (train_x, train_y), test, classes = (ds.train_x, ds.train_y), (ds.test_x, ds.test_y), tuple(ds.classes)
    if data.classes is not None:
        if max(data.classes) >= len(classes):
            raise ConfigError(f"{cfg.source}: data.classes: {data.dataset} has classes 0..{len(classes) - 1}, "
                              f"got {data.classes}")
        (train_x, train_y), test = select_classes(train_x, train_y, data.classes), select_classes(*test, data.classes)
        classes = tuple(classes[c] for c in data.classes)
    try:
        train_idx, val_idx = holdout(len(train_y), data.validation, data.split_seed)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data.validation: {exc}") from None
    train = _limit((train_x[train_idx], train_y[train_idx]), data.limit_train)
    val = _limit((train_x[val_idx], train_y[val_idx]), data.limit_val)
    return Splits(train, val, _limit(test, data.limit_test), classes)


def select_classes(x, y, keep):
    """The samples whose label is in keep, relabelled by their position in keep."""
    lookup = np.full(max(int(y.max()), max(keep)) + 1, -1, dtype=np.int64)
    lookup[list(keep)] = np.arange(len(keep))
    new = lookup[y]
    mask = new >= 0
    return x[mask], new[mask]


def make_preprocess(cfg: Config, channels: int) -> Preprocess:
    steps = []
    for i, entry in enumerate(cfg.data.preprocess):
        where = f"data.preprocess[{i}]"
        if isinstance(entry, str):
            entry = {entry: {}}
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ConfigError(f"{cfg.source}: {where}: expected a step name or {{name: {{options}}}}, got {entry!r}")
        ((name, kwargs),) = entry.items()
        steps.append(PREPROCESS.create(name, kwargs or {}, where=f"{cfg.source}: {where}.{name}"))
    try:
        return Preprocess(steps, channels)
    except ValueError as exc:
        raise ConfigError(f"{cfg.source}: data.preprocess: {exc}") from None


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


def build_setup(cfg: Config, splits: Splits) -> Setup:
    model, loss = build_network(cfg, splits.input_shape, len(splits.classes))
    if cfg.model.init_from:
        init_from(model, cfg.model.init_from, cfg.source)
    n_train = len(splits.train[1])
    if n_train == 0:
        raise ConfigError(f"{cfg.source}: data: no training images left after the validation split and limits")
    loader = BatchLoader(*splits.train, cfg.batch_size(n_train), make_preprocess(cfg, splits.input_shape[0]),
                         shuffle=cfg.train.shuffle, seed=cfg.seed, drop_last=cfg.train.drop_last)
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


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


class Checkpointer(Callback):
    """Saves checkpoints/last.npz every epoch and best.npz when validation accuracy improves."""

    def __init__(self, run_dir: Path, cfg: Config, model: Sequential, optimizer, classes):
        self.dir = run_dir / "checkpoints"
        self.config_text = cfg.to_yaml()
        self.model, self.optimizer, self.classes = model, optimizer, list(classes)
        self.best_state = None

    def save(self, name: str, state: TrainState) -> None:
        meta = {"epoch": state.epoch, "step": state.step, "best_val_acc": json_number(state.best_val_acc),
                "best_epoch": state.best_epoch, "classes": self.classes, "rng": rng_state(self.model.rng),
                "input_shape": list(self.model.in_shape), "cnntrain_version": __version__}
        save_checkpoint(self.dir / name, self.config_text, meta,
                        {**self.model.state_dict(), **self.optimizer.state_dict()})

    def on_epoch_end(self, state, logs):
        monitored = logs["val_acc"] if math.isfinite(logs["val_acc"]) else logs["train_acc"]
        improved = monitored > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = monitored, state.epoch
        self.save("last.npz", state)
        if improved:
            self.save("best.npz", state)
            self.best_state = {k: v.copy() for k, v in self.model.state_dict().items()}


class PlotCallback(Callback):
    """Redraws loss.png, accuracy.png and lr.png after every epoch, so a long run can be watched."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_epoch_end(self, state, logs):
        from .plots import plot_run

        plot_run(self.run_dir)


def summarize(cfg: Config) -> dict:
    """Per-layer output shape, parameters and multiply-adds, built from the config alone (no data)."""
    dataset = DATASETS.get(cfg.data.dataset, "data.dataset")
    in_shape = tuple(getattr(dataset, "input_shape", None) or cfg.model.input_shape)
    n_classes = len(cfg.data.classes) if cfg.data.classes else len(dataset.classes)
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


def versions() -> dict:
    return {"cnntrain": __version__, "python": platform.python_version(), "numpy": np.__version__}


def train_from_config(cfg: Config, runs_dir="runs", echo=print, progress=None) -> dict:
    """Train cfg end to end into a new run directory; returns summary.json's content."""
    splits = load_splits(cfg, log=echo)
    setup = build_setup(cfg, splits)
    model, loss, optimizer, loader = setup.model, setup.loss, setup.optimizer, setup.loader
    run_dir = make_run_dir(runs_dir, cfg.name)
    echo(f"run directory: {run_dir}")
    atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
    summary = {"name": cfg.name, "status": "running", "seed": cfg.seed, "run_dir": str(run_dir),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "params": model.num_params(),
               "train_images": len(splits.train[1]), "val_images": len(splits.val[1]),
               "test_images": len(splits.test[1]), "versions": versions()}
    write_json(run_dir / "summary.json", summary)

    from .progress import ProgressBar

    checkpointer = Checkpointer(run_dir, cfg, model, optimizer, splits.classes)
    step_columns = STEP_COLUMNS + (["momentum"] if setup.momentum else [])
    callbacks = [ProgressBar(cfg.train.epochs, bar=progress), CSVLogger(run_dir, step_columns), checkpointer,
                 PlotCallback(run_dir)]
    try:
        state = fit(model, loss, optimizer, setup.schedule, loader, splits.val, cfg.train.epochs, callbacks,
                    eval_batch_size=cfg.train.eval_batch_size, penalty=build_penalty(cfg, model),
                    momentum=setup.momentum, chunk_size=setup.chunk_size)
    except RunError:
        write_json(run_dir / "summary.json", {**summary, "status": "diverged"})
        raise
    except BaseException:
        write_json(run_dir / "summary.json", {**summary, "status": "failed"})
        raise

    if checkpointer.best_state is not None:
        model.load_state_dict(checkpointer.best_state)
    test_loss, test_acc, _ = evaluate(model, loss, *splits.test, loader.preprocess, cfg.train.eval_batch_size)
    last = state.history[-1]
    summary.update({
        "status": "completed", "epochs": state.epoch, "steps": state.step,
        "test_loss": json_number(test_loss), "test_accuracy": json_number(test_acc), "test_checkpoint": "best.npz",
        "best_val_accuracy": json_number(state.best_val_acc), "best_epoch": state.best_epoch,
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
        model.load_state_dict({k: v for k, v in arrays.items() if not k.startswith("optim/")}, str(checkpoint))
    except ValueError as exc:
        raise RunError(str(exc)) from None
    return cfg, meta, model, loss


def evaluate_checkpoint(path, split: str = "test", batch_size: int | None = None, log=None) -> dict:
    """Loss, accuracy, per-class accuracy and confusion matrix of a checkpoint on one split."""
    checkpoint = find_checkpoint(path)
    cfg, meta, model, loss = load_model(checkpoint)
    splits = load_splits(cfg, log=log)
    x, y = getattr(splits, split)
    preprocess = make_preprocess(cfg, splits.input_shape[0])
    mean_loss, acc, pred = evaluate(model, loss, x, y, preprocess, batch_size or cfg.train.eval_batch_size)
    classes = meta["classes"]
    cm = confusion_matrix(y, pred, len(classes))
    return {"checkpoint": str(checkpoint), "split": split, "n": int(len(y)), "loss": json_number(mean_loss),
            "accuracy": json_number(acc), "classes": classes,
            "per_class_accuracy": {c: json_number(float(a)) for c, a in zip(classes, per_class_accuracy(cm))},
            "confusion_matrix": cm.tolist(), "epoch": meta["epoch"]}
