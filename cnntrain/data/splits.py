"""A config's data as splits: the registered dataset loaded, classes selected, validation held out, limits applied."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import Config
from ..errors import ConfigError
from ..registry import DATASETS, accepted_kwargs
from .loader import holdout


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
