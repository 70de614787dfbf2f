"""Fully connected layer."""

from __future__ import annotations

import numpy as np

from ..init import make_init
from ..registry import LAYERS
from .base import Layer, check_shape
from .conv import positive_int


@LAYERS.register("dense")
class Dense(Layer):
    """Fully connected, y = x @ W + b.  x: (N, D) -> y: (N, units); W: (D, units), b: (units,)."""

    new_output = True  # forward returns an array of its own (Sequential may apply the next activation in place)
    new_grad = True

    def __init__(self, units: int, use_bias: bool = True, init="xavier_uniform"):
        super().__init__()
        self.units = positive_int(units, "units")
        self.use_bias, self.init = bool(use_bias), init
        self._init = make_init(init)

    def build(self, in_shape, rng):
        if len(in_shape) != 1:
            raise ValueError(f"expects flat input (features,), got {tuple(in_shape)}; add 'flatten' before it")
        (d,) = in_shape
        self.params["W"] = self._init((d, self.units), d, self.units, rng)
        if self.use_bias:
            self.params["b"] = np.zeros(self.units, dtype=np.float32)
        self.in_shape, self.out_shape = (d,), (self.units,)
        return self.out_shape

    def forward(self, x, training):
        check_shape(x, self.in_shape, self)
        if training:
            self._cache = x
        y = x @ self.params["W"]
        return y + self.params["b"] if self.use_bias else y

    def forward_scaled(self, x, scale, shift):
        """Evaluation forward, then y * scale + shift per unit, folded into W and b (a batchnorm after it)."""
        check_shape(x, self.in_shape, self)
        b = shift if not self.use_bias else self.params["b"] * scale + shift
        return x @ (self.params["W"] * scale) + b

    def backward(self, dy):
        self.backward_params(dy)
        return dy @ self.params["W"].T

    def backward_params(self, dy):
        """Parameter gradients only (for a first layer, whose input needs none)."""
        x = self._pop_cache()
        self.grads["W"] = x.T @ dy
        if self.use_bias:
            self.grads["b"] = dy.sum(axis=0)

    def macs(self):
        return self.in_shape[0] * self.units

    def get_config(self):
        return {"units": self.units, "use_bias": self.use_bias, "init": self.init}
