"""Inverted dropout."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer


@LAYERS.register("dropout")
class Dropout(Layer):
    """Training: y = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate). Evaluation: y = x.

    Masks come from the generator given at build (the run's seeded one), never np.random. In data
    parallel training (parallel.py) the first process draws the whole batch's mask, as one process
    would, and each process is given its rows of it as `preset_mask`.
    """

    def __init__(self, rate: float = 0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate: must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.preset_mask = None

    def build(self, in_shape, rng):
        self.rng = rng
        return super().build(in_shape, rng)

    def forward(self, x, training):
        if not training:
            return x
        if self.preset_mask is None:
            keep = self.draw_mask(np.empty(x.shape, dtype=np.bool_))
        else:
            keep, self.preset_mask = self.preset_mask, None
            if keep.shape != x.shape:
                raise ValueError(f"dropout: the given mask has shape {keep.shape}, the input {x.shape}")
        self._cache = keep  # a bool mask: a quarter of a float one, and x * keep * scale == x * (keep * scale)
        y = np.multiply(x, keep)
        y *= x.dtype.type(1 / (1 - self.rate))
        return y

    def draw_mask(self, out: np.ndarray) -> np.ndarray:
        """Fill a bool array with the next mask (True: keep) from the generator; returns it."""
        return np.greater_equal(self.rng.random(out.shape, dtype=np.float32), self.rate, out=out)

    def backward(self, dy):
        dx = np.multiply(dy, self._pop_cache())
        dx *= dy.dtype.type(1 / (1 - self.rate))
        return dx

    def get_config(self):
        return {"rate": self.rate}
