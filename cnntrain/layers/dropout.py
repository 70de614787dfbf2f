"""Inverted dropout."""

from __future__ import annotations

import math

import numpy as np

from ..registry import LAYERS
from .base import Layer


KEEP_LEVELS = 1 << 16  # a mask entry keeps its value when a uniform 16-bit draw is >= rate * 65536


def dropout_mask(seed: int, first_row: int, shape, rate: float) -> np.ndarray:
    """Rows first_row .. first_row + shape[0] of the batch mask of `seed` (True: keep), as a bool array.

    Counter-based: row r's draws are Philox(seed)'s 16-bit outputs from counter r * ceil(D / 16),
    D values per row, so any slice of rows is computed alone and equals that slice of the whole
    batch's mask: data parallel processes each draw their own rows of the one mask.
    """
    n, per_row = shape[0], math.prod(shape[1:])
    blocks = -(-per_row // 16)  # Philox counter steps per row: 4 x 64 bits = 16 draws of 16 bits
    raw = np.random.Philox(key=seed, counter=first_row * blocks).random_raw(n * blocks * 4)
    draws = raw.view(np.uint16).reshape(n, blocks * 16)[:, :per_row]
    return (draws >= round(rate * KEEP_LEVELS)).reshape(shape)


@LAYERS.register("dropout")
class Dropout(Layer):
    """Training: y = x * mask / (1 - rate), mask ~ Bernoulli(1 - rate). Evaluation: y = x.

    Each training forward draws a seed from the generator given at build (the run's seeded one,
    saved in checkpoints), never np.random, and takes the batch's mask from it (dropout_mask);
    rate is applied to 1/65536. In data parallel training (parallel.py) the first process draws
    the seed and each process is given it with its first row as `share`.
    """

    new_grad = True

    def __init__(self, rate: float = 0.5):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"rate: must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.share = None  # (seed, first row) for the next forward, set by parallel.DataParallel

    def build(self, in_shape, rng):
        self.rng = rng
        return super().build(in_shape, rng)

    def draw_seed(self) -> int:
        return int(self.rng.integers(0, 1 << 63))

    def forward(self, x, training):
        if not training:
            return x
        (seed, first_row), self.share = self.share or (self.draw_seed(), 0), None
        keep = dropout_mask(seed, first_row, x.shape, self.rate)
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
