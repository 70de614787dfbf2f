"""Experiment files: YAML -> defaults -> --set overrides -> validated dataclasses.

Every default is declared once, below, as a dataclass field with a comment; the
README's config reference is written from these. Errors name the file and the
key path: `configs/x.yaml: optimizer.lrr: unknown key (did you mean 'lr'?)`.
Options of registered components (a layer's, an optimizer's) are checked when
build.resolve() constructs them, once.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .monitor import MONITORS
from .registry import DATASETS, LAYERS, LOSSES, OPTIMIZERS, SCHEDULES, Registry, did_you_mean
from .schema import apply_override, build_dataclass, parse_yaml, step_entry


@dataclass
class DataConfig:
    dataset: str = "mnist"                    # registered dataset: mnist | fashion_mnist | cifar10 | image_folder
    root: Optional[str] = None                # the only folder looked in when set; else $CNNTRAIN_DATA, ~/.cache/cnntrain, /usr/share/datasets
    download: bool = True                     # fetch missing files from public mirrors (checksum-verified, cached)
    mirror: Optional[str] = None              # a base URL tried before the public mirrors
    path: Optional[str] = None                # image_folder: folder with one sub-folder of images per class (training set)
    val_path: Optional[str] = None            # image_folder: a separate validation folder (then nothing is held out of path)
    test_path: Optional[str] = None           # image_folder: a separate test folder
    test_split: Union[int, float] = 0         # image_folder without test_path: images (or a fraction) of path held out for testing
    channels: Optional[int] = None            # image_folder: 1 (grey) or 3 (RGB) channels; default model.input_shape's, else 3
    image_size: Union[int, list, None] = None  # image_folder: [height, width] (or one int) images are resized to; default model.input_shape's
    strict: bool = False                      # image_folder: an unreadable image file is an error (default: skipped with a warning)
    cache: bool = True                        # image_folder: keep decoded images in the cache dir, reused while the folder is unchanged
    validation: Union[int, float] = 5000      # images held out of the training set (a float in (0, 1) is a fraction)
    split_seed: int = 0                       # which images are held out; fixed so every seed shares one validation set
    limit_train: Optional[int] = None         # use only the first N training images (quick experiments)
    limit_val: Optional[int] = None           # use only the first N validation images
    limit_test: Optional[int] = None          # use only the first N test images
    classes: Optional[list] = None            # keep only these classes (by index), relabelled 0..k-1 in this order, e.g. [0, 1]
    preprocess: list = field(default_factory=list)  # steps after scaling pixels to [0, 1], e.g. [{normalize: {mean: 0.1307, std: 0.3081}}]
    augment: list = field(default_factory=list)     # training-only random augmentation, e.g. [{random_crop: {padding: 4}}, hflip]


IMAGE_FOLDER_KEYS = ("path", "val_path", "test_path", "test_split", "channels", "image_size", "strict", "cache")


@dataclass
class ModelConfig:
    layers: list = field(default_factory=list)  # layer entries: `- relu` or `- conv2d: {filters: 8, ...}`
    input_shape: Optional[list] = None          # [channels, height, width]; default: the dataset's image shape
    init_from: Optional[str] = None             # a checkpoint (.npz) whose weights, by stable name, start this run
    l2: float = 0.0                             # L2 penalty (l2/2)*||W||^2 on every weight W (not biases or batchnorm); a layer's own `l2:` overrides


@dataclass
class EarlyStoppingConfig:
    monitor: Optional[str] = None  # metric to watch: val_acc, val_loss, train_acc, train_loss; default: train.monitor
    patience: int = 5              # epochs without improvement before training stops
    min_delta: float = 0.0         # an improvement smaller than this does not count


@dataclass
class SharpnessConfig:
    every: int = 1                 # measure after every E-th epoch (the column is empty in the other rows)
    batch: int = 1000              # training images the Hessian is taken on, drawn once with the seed (all if fewer)
    iters: int = 20                # Lanczos steps, each one Hessian-vector product (two gradient passes)


FULL_BATCH_CHUNK = 1000  # images per pass when batch_size is `full` and chunk_size is not given


@dataclass
class TrainConfig:
    epochs: int = 5                # passes over the training set
    batch_size: Union[int, Literal["full"]] = 64   # images per optimizer step: 1 is classic SGD, `full` the whole training set (BGD)
    drop_last: bool = False        # skip the last, smaller batch of each epoch
    chunk_size: Optional[int] = None  # images per forward/backward pass inside a step (gradients accumulated); default: the batch, or 1000 for `full`
    shuffle: bool = True           # reshuffle the training set every epoch (seeded)
    eval_batch_size: int = 1000    # images per forward pass when evaluating (memory only, no effect on results)
    monitor: str = "val_acc"       # the metric best.npz follows: val_acc, val_loss, train_acc, train_loss
    checkpoint_every: Optional[int] = None    # also save checkpoints/last.npz every N steps (it is saved every epoch anyway)
    grad_clip_norm: Optional[float] = None    # rescale the gradient when its global L2 norm exceeds this
    log_grad_norms: bool = False   # log each layer's gradient norm and update/weight ratio per step (grad_norms.csv/.png)
    tensorboard: bool = False      # also write TensorBoard event files to RUN_DIR/tensorboard (pip install 'cnntrain[tensorboard]')
    threads: Optional[int] = None  # BLAS threads; default: cores / live cnntrain training processes, unless OMP_NUM_THREADS etc. is set
    workers: Union[int, Literal["auto"]] = "auto"  # processes that share each batch (data parallel); auto: one per BLAS thread when steps are big enough
    early_stopping: Optional[EarlyStoppingConfig] = None  # e.g. {monitor: val_loss, patience: 3, min_delta: 0.001}
    track_sharpness: Optional[SharpnessConfig] = None     # log the top Hessian eigenvalue, e.g. {every: 1, batch: 1000, iters: 20}


@dataclass
class NamedSection:
    """A registered component chosen by name: `adam` or {name: adam, lr: ...}, written flat in YAML.

    options holds the component's constructor options with every default filled in from its
    signature, so the resolved config shows them all.
    """

    name: str
    options: dict = field(default_factory=dict)

    registry: ClassVar[Registry]
    default_name: ClassVar[str]
    own_keys: ClassVar[dict] = {}          # cnntrain's options of the section (not the component's), with defaults
    hidden: ClassVar[tuple[str, ...]] = ()  # constructor options that cnntrain fills in itself

    @classmethod
    def from_data(cls, value, path: str):
        if value is None:
            value = {"name": cls.default_name}
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a name or a mapping with 'name', got {value!r}")
        value = dict(value)
        name = value.pop("name", cls.default_name)
        if not isinstance(name, str):
            raise ConfigError(f"{path}.name: expected a string, got {name!r}")
        params = [p for p in inspect.signature(cls.registry.get(name, f"{path}.name")).parameters.values()
                  if p.name not in cls.hidden]
        defaults = {p.name: list(p.default) if isinstance(p.default, tuple) else p.default
                    for p in params if p.default is not inspect.Parameter.empty}
        allowed = [p.name for p in params] + list(cls.own_keys)
        for key in value:
            if key not in allowed:
                raise ConfigError(f"{path}.{key}: unknown option for {cls.registry.kind} '{name}'"
                                  f"{did_you_mean(key, allowed)}; options: {', '.join(allowed)}")
        own = {key: value.pop(key, default) for key, default in cls.own_keys.items()}
        return cls(name=name, options={**defaults, **value}, **own)

    def to_data(self) -> dict:
        """The flat YAML form: {name, options..., own keys...}."""
        own = {key: getattr(self, key) for key in self.own_keys}
        return {"name": self.name, **self.options, **own}


@dataclass
class OptimizerConfig(NamedSection):
    name: str = "adam"                    # registered optimizer: sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw
    options: dict = field(default_factory=dict)  # its options (lr, weight_decay, betas, ...), defaults filled in
    lr_scaling: str = "none"              # `linear`: lr * batch_size / base_batch_size (Goyal et al., 2017)
    base_batch_size: Optional[int] = None  # the batch size at which optimizer.lr is given, for lr_scaling: linear

    registry: ClassVar[Registry] = OPTIMIZERS
    default_name: ClassVar[str] = "adam"
    own_keys: ClassVar[dict] = {"lr_scaling": "none", "base_batch_size": None}

    @property
    def lr(self) -> float:
        return self.options["lr"]


@dataclass
class ScheduleConfig(NamedSection):
    name: str = "constant"                # registered schedule: constant, step, multistep, exponential, ...
    options: dict = field(default_factory=dict)  # its options (warmup_epochs, t_max, ...); its base lr is optimizer.lr

    registry: ClassVar[Registry] = SCHEDULES
    default_name: ClassVar[str] = "constant"
    hidden: ClassVar[tuple[str, ...]] = ("lr",)


@dataclass
class MomentumScheduleConfig(NamedSection):
    name: str = "constant"                # a registered schedule whose values are momenta
    options: dict = field(default_factory=dict)  # its options; `lr` is the base momentum (default: start, else optimizer.momentum)

    registry: ClassVar[Registry] = SCHEDULES
    default_name: ClassVar[str] = "constant"


@dataclass
class Config:
    model: ModelConfig
    name: Optional[str] = None     # run name; default: the experiment file's name
    seed: int = 0                  # seeds initialisation, shuffling and dropout
    data: DataConfig = field(default_factory=DataConfig)
    loss: Any = "softmax_cross_entropy"                                 # registered loss
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # {name, lr, weight_decay, ...options}
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)      # {name, ...options}
    train: TrainConfig = field(default_factory=TrainConfig)
    momentum_schedule: Optional[MomentumScheduleConfig] = None  # for momentum/nesterov, e.g. {name: linear, start: 0.5, end: 0.99, duration: 5}
    sweep: Optional[dict] = field(default=None, metadata={"omit_none": True})  # many runs of this file: `cnntrain sweep` (grid, sample, seeds, halving); ignored by `cnntrain run`
    source: str = field(default="<config>", repr=False, metadata={"internal": True})  # where it came from (not saved)

    @property
    def layer_specs(self) -> list[tuple[str, dict]]:
        """(name, constructor kwargs) per layer; the reserved `l2` option is left out (see layer_l2)."""
        specs = [layer_entry(entry, f"model.layers[{i}]") for i, entry in enumerate(self.model.layers)]
        return [(name, {k: v for k, v in kwargs.items() if k != "l2"}) for name, kwargs in specs]

    @property
    def layer_l2(self) -> list[float]:
        """The L2 coefficient of each layer's weights: its own `l2` option, else model.l2."""
        return [layer_entry(entry, f"model.layers[{i}]")[1].get("l2", self.model.l2)
                for i, entry in enumerate(self.model.layers)]

    def batch_size(self, n_train: int) -> int:
        return n_train if self.train.batch_size == "full" else min(self.train.batch_size, max(n_train, 1))

    def chunk_size(self, n_train: int) -> int:
        default = FULL_BATCH_CHUNK if self.train.batch_size == "full" else self.batch_size(n_train)
        return self.train.chunk_size or default

    def base_lr(self, n_train: int) -> float:
        """optimizer.lr, scaled by batch_size / base_batch_size under lr_scaling: linear."""
        lr = self.optimizer.lr
        if self.optimizer.lr_scaling == "linear":
            lr *= self.batch_size(n_train) / self.optimizer.base_batch_size
        return lr

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("internal") or (value is None and f.metadata.get("omit_none")):
                continue
            out[f.name] = value.to_data() if isinstance(value, NamedSection) else (
                dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def layer_entry(entry, where: str) -> tuple[str, dict]:
    name, kwargs = step_entry(entry, where, "a layer")
    LAYERS.get(name, where)
    return name, kwargs


def _validate(cfg: Config) -> Config:
    """Check what the dataclasses cannot (a component's own options are checked by build.resolve)."""
    if not isinstance(cfg.loss, str):
        raise ConfigError(f"loss: expected a loss name, got {cfg.loss!r}")
    LOSSES.get(cfg.loss, "loss")
    DATASETS.get(cfg.data.dataset, "data.dataset")
    if not cfg.model.layers:
        raise ConfigError("model.layers: the network needs at least one layer")
    for i, (l2, (name, _)) in enumerate(zip(cfg.layer_l2, cfg.layer_specs)):
        where = "model.l2" if l2 is cfg.model.l2 else f"model.layers[{i}].{name}.l2"
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0:
            raise ConfigError(f"{where}: expected a number >= 0, got {l2!r}")
    classes = cfg.data.classes
    if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes)
                                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
        raise ConfigError(f"data.classes: expected a list of at least two distinct class indices, got {classes!r}")
    if cfg.optimizer.lr_scaling not in ("none", "linear"):
        raise ConfigError(f"optimizer.lr_scaling: expected none or linear, got {cfg.optimizer.lr_scaling!r}")
    base = cfg.optimizer.base_batch_size
    if cfg.optimizer.lr_scaling == "linear" and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
        raise ConfigError(f"optimizer.base_batch_size: lr_scaling: linear needs an integer >= 1, got {base!r}")
    sharp = cfg.train.track_sharpness
    for key, value in ([(k, getattr(cfg.train, k)) for k in ("epochs", "batch_size", "eval_batch_size", "chunk_size",
                                                              "checkpoint_every", "threads", "workers")]
                       + [(f"track_sharpness.{k}", getattr(sharp, k)) for k in ("every", "batch", "iters") if sharp]):
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {value}")
    for where, metric in (("train.monitor", cfg.train.monitor),
                          ("train.early_stopping.monitor", cfg.train.early_stopping and cfg.train.early_stopping.monitor)):
        if metric is not None and metric not in MONITORS:
            raise ConfigError(f"{where}: expected one of {', '.join(MONITORS)}, got {metric!r}{did_you_mean(metric, MONITORS)}")
    es = cfg.train.early_stopping
    if es is not None:
        if es.patience < 1:
            raise ConfigError(f"train.early_stopping.patience: must be >= 1, got {es.patience}")
        if es.min_delta < 0:
            raise ConfigError(f"train.early_stopping.min_delta: must be >= 0, got {es.min_delta}")
    if cfg.train.grad_clip_norm is not None and not cfg.train.grad_clip_norm > 0:
        raise ConfigError(f"train.grad_clip_norm: must be > 0 or null, got {cfg.train.grad_clip_norm}")
    for key in ("validation", "test_split"):
        v = getattr(cfg.data, key)
        if v < 0 or (isinstance(v, float) and v >= 1):
            raise ConfigError(f"data.{key}: expected an image count >= 0 or a fraction in [0, 1), got {v}")
    for key in ("limit_train", "limit_val", "limit_test"):
        value = getattr(cfg.data, key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}: must be >= 1 or null, got {value}")
    shape = cfg.model.input_shape
    if shape is not None and (len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape)):
        raise ConfigError(f"model.input_shape: expected [channels, height, width] of positive integers, got {shape!r}")
    if cfg.name is not None and (not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.name) or cfg.name.startswith(".")):
        raise ConfigError(f"name: use letters, digits, '_', '-' and '.', got {cfg.name!r}")
    _resolve_images(cfg)
    return cfg


def _resolve_images(cfg: Config) -> None:
    """image_folder's keys: only with that dataset; channels and image_size made explicit, paths absolute."""
    data, defaults = cfg.data, DataConfig()
    if data.dataset != "image_folder":
        for key in IMAGE_FOLDER_KEYS:
            if getattr(data, key) != getattr(defaults, key):
                raise ConfigError(f"data.{key}: only used by dataset image_folder (this is {data.dataset})")
        return
    if data.path is None:
        raise ConfigError("data.path: required for dataset image_folder (a folder with one sub-folder per class)")
    for key in ("path", "val_path", "test_path"):
        if getattr(data, key) is not None:
            setattr(data, key, str(Path(getattr(data, key)).expanduser().absolute()))
    shape = cfg.model.input_shape
    if data.channels is None:
        data.channels = shape[0] if shape and shape[0] in (1, 3) else 3
    if data.channels not in (1, 3):
        raise ConfigError(f"data.channels: expected 1 (grey) or 3 (RGB), got {data.channels!r}")
    size = data.image_size
    if size is None:
        if not shape:
            raise ConfigError("data.image_size: required for image_folder, e.g. [32, 32] (or set model.input_shape)")
        size = list(shape[1:])
    size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise ConfigError(f"data.image_size: expected [height, width] of positive integers, got {data.image_size!r}")
    data.image_size = size


def config_from_dict(data, source: str = "<config>", overrides=(), default_name: str | None = None) -> Config:
    """Validate a raw mapping (plus overrides) into a Config; errors are prefixed by source."""
    try:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"top level: expected a mapping of sections, got {type(data).__name__}")
        for assignment in overrides:
            apply_override(data, assignment)
        cfg = _validate(build_dataclass(Config, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cfg.name is None:
        cfg.name = default_name or "run"
    cfg.source = source
    if cfg.sweep is not None:  # lazily: sweep.spec imports NumPy, and parse_sweep prefixes source itself
        from .sweep.spec import parse_sweep
        parse_sweep(cfg.sweep, source)
    return cfg


def load_config(path, overrides=()) -> Config:
    """Read, override and validate an experiment file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return config_from_dict(parse_yaml(text, str(path)), str(path), overrides, default_name=path.stem)


def config_from_text(text: str, source: str) -> Config:
    """A resolved config saved as text (config.yaml, checkpoints) back into a Config."""
    return config_from_dict(parse_yaml(text, source), source)
