"""Shape-only layers."""

from __future__ import annotations

import math

from ..registry import LAYERS
from .base import Layer, check_shape


@LAYERS.register("flatten")
class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), in C-order (channel-major, as PyTorch's flatten)."""

    def build(self, in_shape, rng):
        self.in_shape, self.out_shape = tuple(in_shape), (math.prod(in_shape),)
        return self.out_shape

    def forward(self, x, training):
        check_shape(x, self.in_shape, self)
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape((dy.shape[0],) + self.in_shape)
