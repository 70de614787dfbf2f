"""Activations. Elementwise ones supply f(x) and df(x, y); the base does cache and backward."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .base import Layer


class Elementwise(Layer):
    """y = f(x), dx = dy * f'(x); f' may use the output y to save work (sigmoid, tanh)."""

    new_grad = True

    def f(self, x):
        raise NotImplementedError

    def df(self, x, y):
        raise NotImplementedError

    def forward(self, x, training):
        y = self.f(x)
        if training:
            self._cache = (x, y)
        return y

    def backward(self, dy):
        x, y = self._pop_cache()
        return dy * self.df(x, y)

    def apply_inplace(self, x):
        """Evaluation on an array nobody else holds: x becomes f(x)."""
        x[...] = self.f(x)


@LAYERS.register("relu")
class ReLU(Elementwise):
    """max(x, 0); the derivative at 0 is taken as 0."""

    commutes_with_max = True  # see Sequential.forward
    # In place on arrays nobody else holds (a conv's or batchnorm's new output, the gradient of the layer
    # above): no new array of the activations' size, forward or backward. Its mask x > 0 is then read
    # from the output, the same test (max(x, 0) > 0 exactly where x > 0).
    overwrites = True

    def forward(self, x, training, overwrite=False):
        if not overwrite:
            return super().forward(x, training)
        np.maximum(x, 0, out=x)
        if training:
            self._cache = (x, x)
        return x

    def backward(self, dy, overwrite=False):
        x, y = self._pop_cache()
        return np.multiply(dy, self.df(x, y), out=dy if overwrite else None)

    def f(self, x):
        return np.maximum(x, 0)

    def df(self, x, y):
        return x > 0

    def apply_inplace(self, x):
        np.maximum(x, 0, out=x)


@LAYERS.register("leaky_relu")
class LeakyReLU(Elementwise):
    """x for x > 0, alpha * x otherwise."""

    def __init__(self, alpha: float = 0.01):
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"alpha: must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def f(self, x):
        return np.where(x > 0, x, self.alpha * x)

    def df(self, x, y):
        return np.where(x > 0, x.dtype.type(1), x.dtype.type(self.alpha))

    def get_config(self):
        return {"alpha": self.alpha}


@LAYERS.register("sigmoid")
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so large |x| never overflows."""

    def f(self, x):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))

    def df(self, x, y):
        return y * (1 - y)


@LAYERS.register("tanh")
class Tanh(Elementwise):
    """tanh(x); derivative 1 - y^2."""

    def f(self, x):
        return np.tanh(x)

    def df(self, x, y):
        return 1 - y * y


@LAYERS.register("softmax")
class Softmax(Layer):
    """exp(x - max) / sum over the last axis. For training, prefer the fused softmax_cross_entropy loss."""

    def forward(self, x, training):
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        y = z / z.sum(axis=-1, keepdims=True)
        if training:
            self._cache = y
        return y

    def backward(self, dy):
        y = self._pop_cache()
        return y * (dy - (dy * y).sum(axis=-1, keepdims=True))
