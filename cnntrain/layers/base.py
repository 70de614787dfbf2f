"""The Layer interface every network building block implements."""

from __future__ import annotations

import numpy as np


class Layer:
    """A differentiable block: build(in_shape, rng) -> out_shape, forward, backward.

    `params` and `grads` share keys (W, b, gamma, ...); `buffers` hold state the
    optimizer never touches (running statistics). Shapes exclude the batch axis.

    Two promises Sequential uses to save passes over the activations: `new_output`, forward
    returns an array nothing else holds (not even this layer's cache); `new_grad`, so does
    backward. A layer with `overwrites` accepts forward(x, training, overwrite=True) and
    backward(dy, overwrite=True), and may then write over x or dy.
    """

    new_output = False
    new_grad = False
    overwrites = False

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self._cache = None

    def build(self, in_shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, ...]:
        """Create parameters for inputs of `in_shape`; return the output shape."""
        self.in_shape = self.out_shape = tuple(in_shape)
        return self.out_shape

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dy: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def macs(self) -> int:
        """Multiply-adds of one forward pass for one sample (0 for parameter-free layers)."""
        return 0

    def _pop_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward pass in training mode")
        cache, self._cache = self._cache, None
        return cache

    def get_config(self) -> dict:
        """Constructor kwargs as plain YAML scalars (the config round trip)."""
        return {}

    @classmethod
    def from_config(cls, cfg: dict) -> "Layer":
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints as (h, w); ValueError naming the option otherwise."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = value
    else:
        h = w = value
    for v in (h, w):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name}: must be an int or a pair of ints, got {value!r}")
    return int(h), int(w)


def check_shape(x: np.ndarray, expected: tuple[int, ...], layer: Layer) -> None:
    """A one-line ValueError when x (batch first) does not match the built shape."""
    if x.shape[1:] != tuple(expected):
        raise ValueError(
            f"{type(layer).__name__}: expected input of shape (N, {', '.join(map(str, expected))}), got {x.shape}"
        )
