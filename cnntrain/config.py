"""Experiment files: YAML -> defaults -> --set overrides -> validated dataclasses.

Every default is declared once, below, as a dataclass field with a comment; the
README's config reference is written from these. Errors name the file and the
key path: `configs/x.yaml: optimizer.lrr: unknown key (did you mean 'lr'?)`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .registry import AUGMENTATIONS, DATASETS, LAYERS, LOSSES, OPTIMIZERS, PREPROCESS, SCHEDULES, did_you_mean


class _Loader(yaml.SafeLoader):
    """safe_load, but `1e-3` is a float as in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python data with the safe loader; ConfigError naming `source` on any error."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: {where}invalid YAML: {problem}") from None


@dataclass
class DataConfig:
    dataset: str = "mnist"                    # registered dataset: mnist | fashion_mnist | cifar10 | image_folder
    root: Optional[str] = None                # searched first, then $CNNTRAIN_DATA, ~/.cache/cnntrain, /usr/share/datasets
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


MONITORS = ("val_acc", "val_loss", "train_acc", "train_loss")


@dataclass
class EarlyStoppingConfig:
    monitor: Optional[str] = None  # metric to watch: val_acc, val_loss, train_acc, train_loss; default: train.monitor
    patience: int = 5              # epochs without improvement before training stops
    min_delta: float = 0.0         # an improvement smaller than this does not count


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
    early_stopping: Optional[EarlyStoppingConfig] = None  # e.g. {monitor: val_loss, patience: 3, min_delta: 0.001}


@dataclass
class Config:
    model: ModelConfig
    name: Optional[str] = None     # run name; default: the experiment file's name
    seed: int = 0                  # seeds initialisation, shuffling and dropout
    data: DataConfig = field(default_factory=DataConfig)
    loss: Any = "softmax_cross_entropy"                                   # registered loss
    optimizer: dict = field(default_factory=lambda: {"name": "adam"})     # {name, lr, weight_decay, ...options}
    schedule: dict = field(default_factory=lambda: {"name": "constant"})  # {name, ...options}
    train: TrainConfig = field(default_factory=TrainConfig)
    momentum_schedule: Optional[dict] = None  # for momentum/nesterov, e.g. {name: linear, start: 0.5, end: 0.99, duration: 5}
    source: str = field(default="<config>", repr=False)                   # where it came from (not saved)

    @property
    def layer_specs(self) -> list[tuple[str, dict]]:
        """(name, constructor kwargs) per layer; the reserved `l2` option is left out (see layer_l2)."""
        specs = [layer_entry(entry, f"model.layers[{i}]") for i, entry in enumerate(self.model.layers)]
        return [(name, {k: v for k, v in kwargs.items() if k != "l2"}) for name, kwargs in specs]

    @property
    def layer_l2(self) -> list[float]:
        """The L2 coefficient of each layer's weights: its own `l2` option, else model.l2."""
        out = []
        for i, entry in enumerate(self.model.layers):
            _, kwargs = layer_entry(entry, f"model.layers[{i}]")
            out.append(kwargs.get("l2", self.model.l2))
        return out

    @property
    def optimizer_kwargs(self) -> dict:
        """The optimizer section as constructor kwargs (without name and cnntrain's own options)."""
        return {k: v for k, v in self.optimizer.items() if k != "name" and k not in OPTIMIZER_EXTRAS}

    def batch_size(self, n_train: int) -> int:
        return n_train if self.train.batch_size == "full" else min(self.train.batch_size, max(n_train, 1))

    def chunk_size(self, n_train: int) -> int:
        default = FULL_BATCH_CHUNK if self.train.batch_size == "full" else self.batch_size(n_train)
        return self.train.chunk_size or default

    def base_lr(self, n_train: int) -> float:
        """optimizer.lr, scaled by batch_size / base_batch_size under lr_scaling: linear."""
        lr = self.optimizer["lr"]
        if self.optimizer["lr_scaling"] == "linear":
            lr *= self.batch_size(n_train) / self.optimizer["base_batch_size"]
        return lr

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def step_entry(entry, where: str, kind: str) -> tuple[str, dict]:
    """`relu` or `{conv2d: {filters: 8}}` -> ("conv2d", {"filters": 8}); kind names the entry: "a layer"."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        ((name, kwargs),) = entry.items()
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of options, got {kwargs!r}")
        return name, kwargs
    raise ConfigError(f"{where}: expected {kind} name or {{name: {{options}}}}, got {entry!r}")


def layer_entry(entry, where: str) -> tuple[str, dict]:
    name, kwargs = step_entry(entry, where, "a layer")
    LAYERS.get(name, where)
    return name, kwargs


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(origin or tp, str(tp))


def _check(value, tp, path: str):
    """value if it matches the annotation tp (an int is a valid float); ConfigError otherwise."""
    if tp is Any:
        return value
    if typing.get_origin(tp) is Union:
        for option in typing.get_args(tp):
            try:
                return _check(value, option, path)
            except ConfigError:
                pass
    elif typing.get_origin(tp) is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _build(cls, data, path: str):
    """Recursively turn a mapping into dataclass `cls`, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path + '.' if path else ''}{key}: unknown key{did_you_mean(key, fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{sub}: required key is missing")
            continue
        tp = hints[name]
        options = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            optional = options[0] is not tp
            if data[name] is None and optional:
                kwargs[name] = None
            else:
                kwargs[name] = _build(options[0], {} if data[name] is None else data[name], sub)
        else:
            kwargs[name] = _check(data[name], tp, sub)
    return cls(**kwargs)


# Options of the optimizer section that cnntrain handles itself (not passed to the optimizer class).
OPTIMIZER_EXTRAS = {
    "lr_scaling": "none",       # `linear`: lr * batch_size / base_batch_size (Goyal et al., 2017)
    "base_batch_size": None,    # the batch size at which optimizer.lr is given, for lr_scaling: linear
}


def _named_section(value, path: str, registry, default_name: str, extras=None) -> dict:
    """`adam` or {name: adam, lr: ...} -> {name, every option with its default filled in}."""
    if value is None:
        value = {"name": default_name}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a name or a mapping with 'name', got {value!r}")
    value = dict(value)
    name = value.pop("name", default_name)
    if not isinstance(name, str):
        raise ConfigError(f"{path}.name: expected a string, got {name!r}")
    cls = registry.get(name, f"{path}.name")
    defaults = {}
    for p in inspect.signature(cls).parameters.values():
        if p.default is not inspect.Parameter.empty:
            default = p.default
            defaults[p.name] = list(default) if isinstance(default, tuple) else default
    defaults.update(extras or {})
    allowed = list(defaults) + [p for p in inspect.signature(cls).parameters if p not in defaults]
    for key in value:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown option for {registry.kind} '{name}'"
                              f"{did_you_mean(key, allowed)}; options: {', '.join(allowed)}")
    return {"name": name, **defaults, **value}


def _resolve(cfg: Config) -> Config:
    """Fill registry defaults into named sections and check what the dataclasses cannot."""
    cfg.optimizer = _named_section(cfg.optimizer, "optimizer", OPTIMIZERS, "adam", OPTIMIZER_EXTRAS)
    cfg.schedule = _named_section(cfg.schedule, "schedule", SCHEDULES, "constant")
    cfg.schedule.pop("lr", None)  # the schedule's base lr is optimizer.lr
    if not isinstance(cfg.loss, str):
        raise ConfigError(f"loss: expected a loss name, got {cfg.loss!r}")
    LOSSES.get(cfg.loss, "loss")
    DATASETS.get(cfg.data.dataset, "data.dataset")
    if not cfg.model.layers:
        raise ConfigError("model.layers: the network needs at least one layer")
    for i, (name, kwargs) in enumerate(cfg.layer_specs):  # option errors now, not after loading data
        LAYERS.create(name, kwargs, where=f"model.layers[{i}].{name}")
    for i, (l2, (name, _)) in enumerate(zip(cfg.layer_l2, cfg.layer_specs)):
        where = "model.l2" if l2 is cfg.model.l2 else f"model.layers[{i}].{name}.l2"
        if isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0:
            raise ConfigError(f"{where}: expected a number >= 0, got {l2!r}")
    classes = cfg.data.classes
    if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes)
                                or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)):
        raise ConfigError(f"data.classes: expected a list of at least two distinct class indices, got {classes!r}")
    OPTIMIZERS.create(cfg.optimizer["name"], cfg.optimizer_kwargs, "optimizer")
    if cfg.optimizer["lr_scaling"] not in ("none", "linear"):
        raise ConfigError(f"optimizer.lr_scaling: expected none or linear, got {cfg.optimizer['lr_scaling']!r}")
    base = cfg.optimizer["base_batch_size"]
    if cfg.optimizer["lr_scaling"] == "linear" and (isinstance(base, bool) or not isinstance(base, int) or base < 1):
        raise ConfigError(f"optimizer.base_batch_size: lr_scaling: linear needs an integer >= 1, got {base!r}")
    SCHEDULES.create(cfg.schedule["name"], {"lr": 1.0, **{k: v for k, v in cfg.schedule.items() if k != "name"}},
                     "schedule")
    for key in ("epochs", "batch_size", "eval_batch_size", "chunk_size", "checkpoint_every"):
        value = getattr(cfg.train, key)
        if isinstance(value, int) and value < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(cfg.train, key)}")
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
    for section, registry, kind in (("preprocess", PREPROCESS, "a preprocessing step"),
                                    ("augment", AUGMENTATIONS, "an augmentation")):
        for i, entry in enumerate(getattr(cfg.data, section)):
            name, kwargs = step_entry(entry, f"data.{section}[{i}]", kind)
            registry.create(name, kwargs, where=f"data.{section}[{i}].{name}")
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


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML) to the raw config mapping in place."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment}: expected KEY.PATH=VALUE")
    value = parse_yaml(text, f"--set {assignment}")
    parts = key.strip().split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {assignment}: {where}: expected a list index below {len(node)}")
            part = int(part)
            if isinstance(node[part], str) and not last:
                node[part] = {node[part]: {}}
        elif isinstance(node, dict):
            if not last and node.get(part) is None:
                node[part] = {}
        else:
            raise ConfigError(f"--set {assignment}: {'.'.join(parts[:i])} is not a mapping")
        if last:
            node[part] = value
        else:
            node = node[part]


def config_from_dict(data, source: str = "<config>", overrides=(), default_name: str | None = None) -> Config:
    """Validate a raw mapping (plus overrides) into a resolved Config; errors are prefixed by source."""
    try:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"top level: expected a mapping of sections, got {type(data).__name__}")
        for assignment in overrides:
            apply_override(data, assignment)
        cfg = _resolve(_build(Config, data, ""))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if cfg.name is None:
        cfg.name = default_name or "run"
    cfg.source = source
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
