"""Preprocessing: uint8 images -> float32, as one per-channel affine map x = u8 * scale + offset.

Pixels are first scaled to [0, 1]; each step then rewrites the affine map, so a
batch is converted with a single multiply-add however many steps there are.
Steps whose statistics are not given (mean, std, min, max) fit them on the
training images: an exact per-channel histogram of the uint8 pixels, pushed
through the map built so far. The fitted map is saved in every checkpoint.
"""

from __future__ import annotations

import numpy as np

from ..registry import PREPROCESS


def _per_channel(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be a number or a list of numbers per channel, got {value!r}")
    return arr


def _optional(value, name: str) -> np.ndarray | None:
    return None if value is None else _per_channel(value, name)


class PixelStats:
    """Per-channel histogram of uint8 images (N, C, H, W): exact moments without a float copy of the data."""

    def __init__(self, counts: np.ndarray):
        self.counts = counts  # (C, 256) int64

    @classmethod
    def of(cls, x_u8: np.ndarray) -> "PixelStats":
        if x_u8.dtype != np.uint8 or x_u8.ndim != 4:
            raise ValueError(f"statistics need uint8 images (N, C, H, W), got {x_u8.dtype} {x_u8.shape}")
        return cls(np.stack([np.bincount(x_u8[:, c].ravel(), minlength=256) for c in range(x_u8.shape[1])]))

    @property
    def n(self) -> int:
        return int(self.counts[0].sum())

    def describe(self, scale, offset, per_channel: bool = True):
        """(mean, std, min, max) per channel (or over all channels) of u8 * scale + offset."""
        values = np.arange(256.0) * scale[:, None] + offset[:, None]  # (C, 256): every pixel value, mapped
        counts = self.counts.astype(np.float64)
        if not per_channel:
            values, counts = values.reshape(1, -1), counts.reshape(1, -1)
        total = counts.sum(axis=1)
        mean = (counts * values).sum(axis=1) / total
        std = np.sqrt((counts * (values - mean[:, None]) ** 2).sum(axis=1) / total)
        present = np.where(counts > 0, values, np.nan)
        return mean, std, np.nanmin(present, axis=1), np.nanmax(present, axis=1)


class Step:
    """A preprocessing step: rewrites the affine map (scale, offset), fitting its statistics if needed."""

    def needs_data(self) -> bool:
        return False

    def compose(self, scale: np.ndarray, offset: np.ndarray, stats: PixelStats | None):
        raise NotImplementedError

    def fitted(self) -> dict:
        """The step's options with fitted statistics filled in (plain lists, for JSON)."""
        return {}

    def _stats(self, stats, scale, offset, per_channel=True):
        if stats is None:
            raise ValueError(f"{self.registry_name}: statistics are fitted on the training images, "
                             "but no training images were given")
        return stats.describe(scale, offset, per_channel)


@PREPROCESS.register("standardize")
class Standardize(Step):
    """x <- (x - mean) / std per channel on [0, 1]-scaled pixels; mean and std fitted on the training set when null."""

    def __init__(self, mean=None, std=None, per_channel: bool = True):
        self.mean, self.std = _optional(mean, "mean"), _optional(std, "std")
        if self.std is not None and np.any(self.std <= 0):
            raise ValueError(f"std: must be > 0, got {std!r}")
        self.per_channel = per_channel

    def needs_data(self):
        return self.mean is None or self.std is None

    def compose(self, scale, offset, stats):
        if self.needs_data():
            mean, std, _, _ = self._stats(stats, scale, offset, self.per_channel)
            self.mean = mean if self.mean is None else self.mean
            self.std = np.where(std > 0, std, 1.0) if self.std is None else self.std  # a constant channel stays put
        return scale / self.std, (offset - self.mean) / self.std

    def fitted(self):
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


@PREPROCESS.register("normalize")
class Normalize(Standardize):
    """standardize under torchvision's name: (x - mean) / std, with the ImageNet-style values given or fitted."""


@PREPROCESS.register("mean_subtract")
class MeanSubtract(Step):
    """x <- x - mean per channel on [0, 1]-scaled pixels; mean fitted on the training set when null."""

    def __init__(self, mean=None, per_channel: bool = True):
        self.mean, self.per_channel = _optional(mean, "mean"), per_channel

    def needs_data(self):
        return self.mean is None

    def compose(self, scale, offset, stats):
        if self.mean is None:
            self.mean = self._stats(stats, scale, offset, self.per_channel)[0]
        return scale, offset - self.mean

    def fitted(self):
        return {"mean": self.mean.tolist()}


@PREPROCESS.register("minmax")
class MinMax(Step):
    """x <- low + (x - min) * (high - low) / (max - min) per channel; min and max fitted on the training set when null.

    min and max are in the units reached so far ([0, 1]-scaled pixels when first); range [-1, 1] by default.
    """

    def __init__(self, range=(-1.0, 1.0), min=None, max=None, per_channel: bool = True):  # noqa: A002 (config names)
        bounds = np.asarray(range, dtype=np.float64).reshape(-1)
        if bounds.size != 2 or not np.all(np.isfinite(bounds)) or not bounds[0] < bounds[1]:
            raise ValueError(f"range: expected [low, high] with low < high, e.g. [-1, 1] or [0, 1], got {range!r}")
        self.low, self.high = float(bounds[0]), float(bounds[1])
        self.min, self.max, self.per_channel = _optional(min, "min"), _optional(max, "max"), per_channel

    def needs_data(self):
        return self.min is None or self.max is None

    def compose(self, scale, offset, stats):
        if self.needs_data():
            _, _, lo, hi = self._stats(stats, scale, offset, self.per_channel)
            self.min = lo if self.min is None else self.min
            self.max = hi if self.max is None else self.max
        span = self.max - self.min
        if np.any(span < 0):
            raise ValueError(f"minmax: max must be >= min, got min {self.min.tolist()} and max {self.max.tolist()}")
        factor = (self.high - self.low) / np.where(span > 0, span, 1.0)  # a constant channel maps to low
        return scale * factor, (offset - self.min) * factor + self.low

    def fitted(self):
        return {"range": [self.low, self.high], "min": self.min.tolist(), "max": self.max.tolist()}


class Preprocess:
    """Callable uint8 (N, C, H, W) -> float32, built from registered steps for C channels.

    `stats` (PixelStats of the training images) is needed only by steps that fit
    statistics; `state()` and `from_state()` carry the fitted map through checkpoints.
    """

    def __init__(self, steps, channels: int, stats: PixelStats | None = None, dtype=np.float32):
        scale, offset = np.full(channels, 1 / 255.0), np.zeros(channels)
        self.steps = []
        for step in steps:
            fitted = step.needs_data()
            scale, offset = step.compose(scale, offset, stats)
            if scale.size not in (1, channels) or offset.size not in (1, channels):
                raise ValueError(f"{step.registry_name}: has {max(scale.size, offset.size)} values per channel, "
                                 f"the images have {channels} channels")
            scale, offset = np.broadcast_to(scale, (channels,)), np.broadcast_to(offset, (channels,))
            self.steps.append({"name": step.registry_name, **step.fitted(), "fitted": fitted})
        self._set(scale, offset, dtype)

    def _set(self, scale, offset, dtype):
        self.scale64, self.offset64 = np.array(scale, dtype=np.float64), np.array(offset, dtype=np.float64)
        shape = (1, len(self.scale64), 1, 1)
        self.scale = self.scale64.astype(dtype).reshape(shape)
        self.offset = self.offset64.astype(dtype).reshape(shape)

    def describe(self) -> list[str]:
        """One line per step with its values, e.g. `standardize: mean [0.2862], std [0.3531] (fitted ...)`."""
        lines = []
        for step in self.steps:
            values = ", ".join(f"{k} {[float(f'{v:.4g}') for v in value] if isinstance(value, list) else value}"
                               for k, value in step.items() if k not in ("name", "fitted"))
            lines.append(f"{step['name']}: {values}" + (" (fitted on the training split)" if step.get("fitted") else ""))
        return lines

    def state(self) -> dict:
        """JSON-able: the per-channel map and each step with its fitted statistics."""
        return {"scale": self.scale64.tolist(), "offset": self.offset64.tolist(), "steps": self.steps}

    @classmethod
    def from_state(cls, state: dict, channels: int, dtype=np.float32) -> "Preprocess":
        scale, offset = np.asarray(state["scale"], np.float64), np.asarray(state["offset"], np.float64)
        if scale.shape != (channels,) or offset.shape != (channels,):
            raise ValueError(f"stored preprocessing has {scale.size} channels, the network takes {channels}")
        self = cls.__new__(cls)
        self.steps = list(state.get("steps", []))
        self._set(scale, offset, dtype)
        return self

    def __call__(self, x_u8: np.ndarray) -> np.ndarray:
        out = x_u8.astype(self.scale.dtype)
        out *= self.scale
        out += self.offset
        return out
