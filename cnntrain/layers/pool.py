"""Max pooling over NCHW batches."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from . import _im2col as k
from .base import Layer, check_shape, pair


@LAYERS.register("maxpool2d")
class MaxPool2D(Layer):
    """y[n, c, i, j] = max of the size x size window at (i*stride, j*stride).

    x: (N, C, H, W) -> (N, C, OH, OW). stride defaults to size; padding pads with -inf.
    The gradient goes to the first maximum of each window (row-major), as in PyTorch.
    """

    def __init__(self, size=2, stride=None, padding="valid"):
        super().__init__()
        self.size = pair(size, "size")
        self.stride = self.size if stride is None else pair(stride, "stride")
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ValueError(f"size: size and stride must be >= 1, got size={size!r} stride={stride!r}")
        k.resolve_padding(padding, (1, 1), (1, 1), (1, 1))
        self.padding = padding
        self._stride_arg = stride

    def build(self, in_shape, rng):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (channels, height, width), got {tuple(in_shape)}")
        C, H, W = in_shape
        self.pads = k.resolve_padding(self.padding, (H, W), self.size, self.stride)
        OH, OW = (k.out_size(s, kk, st, p) for s, kk, st, p in zip((H, W), self.size, self.stride, self.pads))
        if OH < 1 or OW < 1:
            raise ValueError(f"window {self.size[0]}x{self.size[1]} leaves nothing of the input {C}x{H}x{W}")
        self.in_shape, self.out_shape = (C, H, W), (C, OH, OW)
        return self.out_shape

    def _offsets(self):
        """(index, row slice, column slice) of each kernel offset into the padded input."""
        (sh, sw), (_, OH, OW) = self.stride, self.out_shape
        for i in range(self.size[0]):
            for j in range(self.size[1]):
                yield i * self.size[1] + j, slice(i, i + sh * (OH - 1) + 1, sh), slice(j, j + sw * (OW - 1) + 1, sw)

    def forward(self, x, training):
        # One elementwise pass per kernel offset (KH*KW of them) over strided views: no window copies.
        check_shape(x, self.in_shape, self)
        xp = k.pad(x, self.pads, value=-np.inf)
        y = idx = None
        for o, rows, cols in self._offsets():
            s = xp[:, :, rows, cols]
            if y is None:
                y, idx = s.copy(), np.zeros(s.shape, dtype=np.uint8)
            else:
                better = s > y  # strict: ties keep the earlier offset, as PyTorch does
                np.copyto(y, s, where=better)
                np.copyto(idx, o, where=better)
        if training:
            self._cache = (idx, xp.shape)
        return y

    def backward(self, dy):
        idx, padded_shape = self._pop_cache()
        dxp = np.zeros(padded_shape, dtype=dy.dtype)
        for o, rows, cols in self._offsets():
            dxp[:, :, rows, cols] += dy * (idx == o)
        return k.unpad(dxp, self.pads)

    def get_config(self):
        stride = None if self._stride_arg is None else list(self.stride)
        return {"size": list(self.size), "stride": stride, "padding": self.padding}
