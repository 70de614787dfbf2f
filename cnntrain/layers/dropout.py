"""Inverted dropout."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer


@LAYERS.register("dropout")
class Dropout(Layer):
    """Training: y = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate). Evaluation: y = x.

    Masks come from the generator given at build (the run's seeded one), never np.random.
    """

    def __init__(self, rate: float = 0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate: must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def build(self, in_shape, rng):
        self.rng = rng
        return super().build(in_shape, rng)

    def forward(self, x, training):
        if not training:
            return x
        keep = self.rng.random(x.shape, dtype=np.float32) >= self.rate
        self._cache = keep  # a bool mask: a quarter of a float one, and x * keep * scale == x * (keep * scale)
        y = np.multiply(x, keep)
        y *= x.dtype.type(1 / (1 - self.rate))
        return y

    def backward(self, dy):
        dx = np.multiply(dy, self._pop_cache())
        dx *= dy.dtype.type(1 / (1 - self.rate))
        return dx

    def get_config(self):
        return {"rate": self.rate}
