"""A Config into objects: every registry `create` call of the package is in this module.

resolve() constructs each component a config names (layers, loss, optimizer, schedules,
preprocessing and augmentation steps) once, which is also how their options are validated;
the session, the inspection commands and the benchmark build from that Experiment.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, config_from_dict, config_from_text, load_config
from .data.augment import Augment
from .data.loader import BatchLoader
from .data.transforms import PixelStats, Preprocess
from .errors import ConfigError, RunError
from .losses import L2Penalty
from .model import Sequential
from .optim.schedules import build_momentum_schedule, build_schedule, momentum_options
from .registry import AUGMENTATIONS, LAYERS, LOSSES, OPTIMIZERS, PREPROCESS, SCHEDULES, accepted_kwargs
from .runs import load_checkpoint
from .schema import step_entry

MODEL_STREAM = 0  # spawn_key of the generator that initialises weights and draws dropout masks


@dataclass(frozen=True)
class Experiment:
    """A validated config and the components it names, each constructed once.

    Stateful components (layers, the optimizer) are prototypes: network() and optimizer()
    hand out fresh copies, so one Experiment can build any number of models.
    """

    cfg: Config
    layers: tuple
    loss: object
    optimizer_prototype: object
    schedule: object            # closed form in t; build_setup binds it to the length of training
    momentum: object | None
    preprocess_steps: tuple
    augment_steps: tuple

    def network(self, input_shape, n_classes: int | None = None) -> Sequential:
        """The model, built for input_shape and seeded by cfg.seed; ConfigError when it cannot fit the data."""
        cfg = self.cfg
        if cfg.model.input_shape is not None and list(cfg.model.input_shape) != list(input_shape):
            raise ConfigError(f"{cfg.source}: model.input_shape: {list(cfg.model.input_shape)} does not match the "
                              f"dataset's images {list(input_shape)} (channels, height, width)")
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(MODEL_STREAM,)))
        model = _built(copy.deepcopy(list(self.layers)), input_shape, rng, f"{cfg.source}: model.layers")
        if n_classes is not None:
            try:
                self.loss.check_output(model.out_shape, n_classes)
            except ValueError as exc:
                raise ConfigError(f"{cfg.source}: model.layers: {exc}") from None
        model.rng = rng
        return model

    def optimizer(self):
        return copy.deepcopy(self.optimizer_prototype)

    def penalty(self, model: Sequential) -> L2Penalty:
        """L2 on each layer's W with the layer's coefficient (biases and normalisation parameters excluded)."""
        return L2Penalty({f"layers.{i}.W": c for i, (layer, c) in enumerate(zip(model.layers, self.cfg.layer_l2))
                          if "W" in layer.params})

    def preprocess(self, channels: int, train_x: np.ndarray | None = None) -> Preprocess:
        """data.preprocess for `channels`, fitting unspecified statistics on the training images train_x."""
        steps = self.preprocess_steps
        stats = PixelStats.of(train_x) if train_x is not None and any(s.needs_data() for s in steps) else None
        try:
            return Preprocess(steps, channels, stats)
        except ValueError as exc:
            raise ConfigError(f"{self.cfg.source}: data.preprocess: {exc}") from None

    def stored_preprocess(self, meta: dict, channels: int) -> Preprocess:
        """The preprocessing a checkpoint was trained with: its stored, fitted map (older checkpoints: the config's)."""
        try:
            if "preprocess" in meta:
                return Preprocess.from_state(meta["preprocess"], channels)
            return self.preprocess(channels)
        except (ConfigError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"{self.cfg.source}: cannot rebuild the preprocessing: {exc}") from None

    def augment(self) -> Augment:
        return Augment(list(self.augment_steps))


def resolve(cfg: Config) -> Experiment:
    """Construct every component of cfg; a bad option is a ConfigError naming the file and key path."""
    try:
        return _resolve(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None


def _resolve(cfg: Config) -> Experiment:
    layers = tuple(LAYERS.create(name, kwargs, where=f"model.layers[{i}].{name}")
                   for i, (name, kwargs) in enumerate(cfg.layer_specs))
    optimizer = OPTIMIZERS.create(cfg.optimizer.name, cfg.optimizer.options, where="optimizer")
    schedule = SCHEDULES.create(cfg.schedule.name, {**cfg.schedule.options, "lr": cfg.optimizer.lr}, where="schedule")
    momentum = None
    if cfg.momentum_schedule is not None:
        if "momentum" not in (accepted_kwargs(OPTIMIZERS.get(cfg.optimizer.name)) or []):
            raise ConfigError(f"momentum_schedule: optimizer '{cfg.optimizer.name}' has no momentum "
                              "to schedule (use momentum or nesterov)")
        options = momentum_options(cfg.momentum_schedule.options, cfg.optimizer.options.get("momentum"))
        momentum = SCHEDULES.create(cfg.momentum_schedule.name, options, where="momentum_schedule")
    steps = {}
    for section, registry, kind in (("preprocess", PREPROCESS, "a preprocessing step"),
                                    ("augment", AUGMENTATIONS, "an augmentation")):
        steps[section] = []
        for i, entry in enumerate(getattr(cfg.data, section)):
            name, kwargs = step_entry(entry, f"data.{section}[{i}]", kind)
            steps[section].append(registry.create(name, kwargs, where=f"data.{section}[{i}].{name}"))
    loss = LOSSES.create(cfg.loss, {}, where="loss")
    return Experiment(cfg, layers, loss, optimizer, schedule, momentum, tuple(steps["preprocess"]),
                      tuple(steps["augment"]))


def load_experiment(path, overrides=()) -> Experiment:
    """Read, override, validate and construct an experiment file."""
    return resolve(load_config(path, overrides))


def experiment_from_dict(data, source: str = "<config>", overrides=(), default_name: str | None = None) -> Experiment:
    return resolve(config_from_dict(data, source, overrides, default_name))


def experiment_from_text(text: str, source: str) -> Experiment:
    """A resolved config saved as text (config.yaml, checkpoints) back into an Experiment."""
    return resolve(config_from_text(text, source))


def build_model(layer_specs, in_shape, rng: np.random.Generator, where: str = "model.layers") -> Sequential:
    """[(name, kwargs), ...] -> a built Sequential; ConfigError names the layer's key path."""
    layers = [LAYERS.create(name, kwargs, where=f"{where}[{i}].{name}") for i, (name, kwargs) in enumerate(layer_specs)]
    return _built(layers, in_shape, rng, where)


def _built(layers, in_shape, rng: np.random.Generator, where: str) -> Sequential:
    """A Sequential of `layers` built for in_shape; a misfit is a ConfigError at `where`."""
    model = Sequential(layers)
    try:
        model.build(in_shape, rng)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return model


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
    """Everything fit() needs, built from an Experiment and its data splits."""

    splits: object
    model: Sequential
    loss: object
    optimizer: object
    loader: BatchLoader
    schedule: object
    momentum: object
    penalty: L2Penalty
    chunk_size: int


def build_setup(exp: Experiment, splits, preprocess_state: dict | None = None) -> Setup:
    """Model, optimizer, loader and schedules; preprocessing fitted on the training split, or restored."""
    cfg = exp.cfg
    model = exp.network(splits.input_shape, len(splits.classes))
    if cfg.model.init_from:
        init_from(model, cfg.model.init_from, cfg.source)
    n_train = len(splits.train[1])
    if n_train == 0:
        raise ConfigError(f"{cfg.source}: data: no training images left after the validation split and limits")
    channels = splits.input_shape[0]
    if preprocess_state is None:
        preprocess = exp.preprocess(channels, splits.train[0])
    else:
        preprocess = exp.stored_preprocess({"preprocess": preprocess_state}, channels)
    loader = BatchLoader(*splits.train, cfg.batch_size(n_train), preprocess, shuffle=cfg.train.shuffle,
                         seed=cfg.seed, drop_last=cfg.train.drop_last, augment=exp.augment())
    if len(loader) == 0:
        raise ConfigError(f"{cfg.source}: train.drop_last: batch_size {loader.batch_size} is larger than the "
                          f"{n_train} training images, so every batch would be dropped")
    steps, total = len(loader), len(loader) * cfg.train.epochs
    schedule = build_schedule(exp.schedule, steps, total, cfg.base_lr(n_train), where=f"{cfg.source}: schedule")
    momentum = None
    if exp.momentum is not None:
        momentum = build_momentum_schedule(exp.momentum, steps, total, where=f"{cfg.source}: momentum_schedule")
    return Setup(splits, model, exp.loss, exp.optimizer(), loader, schedule, momentum, exp.penalty(model),
                 cfg.chunk_size(n_train))
