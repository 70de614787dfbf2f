"""Pooling over NCHW batches: windowed max and average, global average, spatial pyramid."""

from __future__ import annotations

import numpy as np

from ..registry import LAYERS
from .channels_last import nchw, nhwc, pad_nhwc
from .maxpool_kernels import (PooledGrad, maxpool_backward_nhwc, maxpool_backward_parts_nhwc, maxpool_nhwc,
                              tiling_maxpool_backward_nhwc, windows_tile)

ROWS_RETRY = 100  # max-pool backward passes between tries of the row-wise gradient after a tie
from .geometry import out_size, pad, resolve_padding, unpad
from .base import Layer, check_shape, pair


class _Pool2D(Layer):
    """Shared options of the windowed poolings: size, stride (default = size), padding."""

    def __init__(self, size=2, stride=None, padding="valid"):
        super().__init__()
        self.size = pair(size, "size")
        self.stride = self.size if stride is None else pair(stride, "stride")
        if min(self.size) < 1 or min(self.stride) < 1:
            raise ValueError(f"size: size and stride must be >= 1, got size={size!r} stride={stride!r}")
        resolve_padding(padding, (1, 1), (1, 1), (1, 1))
        self.padding = padding
        self._stride_arg = stride

    def build(self, in_shape, rng):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (channels, height, width), got {tuple(in_shape)}")
        C, H, W = in_shape
        self.pads = resolve_padding(self.padding, (H, W), self.size, self.stride)
        OH, OW = (out_size(s, kk, st, p) for s, kk, st, p in zip((H, W), self.size, self.stride, self.pads))
        if OH < 1 or OW < 1:
            raise ValueError(f"window {self.size[0]}x{self.size[1]} leaves nothing of the input {C}x{H}x{W}")
        self.in_shape, self.out_shape = (C, H, W), (C, OH, OW)
        (t, b), (l, r) = self.pads
        inside = np.zeros((H + t + b, W + l + r))
        inside[t : t + H, l : l + W] = 1
        self._count = sum(inside[rows, cols] for _, rows, cols in self._offsets())  # (OH, OW) input elements per window
        if self._count.min() == 0:  # a max over padding alone is -inf; a mean over nothing divides by 0
            raise ValueError(f"padding: {self.padding!r} leaves a {self.size[0]}x{self.size[1]} window "
                             f"with no input element (input {C}x{H}x{W})")
        return self.out_shape

    def _offsets(self):
        """(index, row slice, column slice) of each kernel offset into the padded input."""
        (sh, sw), (_, OH, OW) = self.stride, self.out_shape
        for i in range(self.size[0]):
            for j in range(self.size[1]):
                yield i * self.size[1] + j, slice(i, i + sh * (OH - 1) + 1, sh), slice(j, j + sw * (OW - 1) + 1, sw)

    def get_config(self):
        stride = None if self._stride_arg is None else list(self.stride)
        return {"size": list(self.size), "stride": stride, "padding": self.padding}


@LAYERS.register("maxpool2d")
class MaxPool2D(_Pool2D):
    """y[n, c, i, j] = max of the size x size window at (i*stride, j*stride).

    x: (N, C, H, W) -> (N, C, OH, OW). stride defaults to size; padding pads with -inf.
    The gradient goes to the first maximum of each window (row-major), as in PyTorch.
    The plain loops: reference.maxpool2d_forward / maxpool2d_backward.
    (A ReLU right before it may run after it instead: see Sequential.forward.)
    """

    new_grad = True

    takes_max = True  # relu(max(x)) == max(relu(x)), so a ReLU before it may run after it
    _rows_wait = 0  # backward passes left before trying tiling_maxpool_backward_nhwc again (speed only)

    def forward(self, x, training):
        # Channels-last: one np.maximum per kernel offset over (N, OH, OW, C) views whose
        # innermost axis is contiguous; which offset won is recomputed only in backward.
        check_shape(x, self.in_shape, self)
        xp = pad_nhwc(nhwc(x), self.pads, value=-np.inf)
        y = maxpool_nhwc(xp, self.size, self.stride, self.out_shape[1:])
        if training:
            self._cache = (xp, y)
        return nchw(y)

    def backward(self, dy):
        xp, y = self._pop_cache()
        dyh, dxp = nhwc(dy), None
        if self._rows_wait == 0 and windows_tile(xp.shape, y.shape, self.size, self.stride):
            dxp = tiling_maxpool_backward_nhwc(xp, y, dyh, self.size)
            if dxp is None:  # ties: on such data (MNIST) they come every step, so stop trying for a while
                self._rows_wait = ROWS_RETRY
        else:
            self._rows_wait = max(0, self._rows_wait - 1)
        if dxp is None:
            dxp = maxpool_backward_nhwc(xp, y, dyh, self.size, self.stride)
        (t, _), (l, _) = self.pads
        H, W = self.in_shape[1:]
        return nchw(dxp[:, t : t + H, l : l + W])

    def backward_parts(self, dy) -> PooledGrad | None:
        """backward's gradient as a PooledGrad, one array per window offset, where the windows tile
        the unpadded input; else None, and backward is still to be called."""
        xp, y = self._pop_cache()
        if any(self.pads[0] + self.pads[1]) or not windows_tile(xp.shape, y.shape, self.size, self.stride):
            self._cache = (xp, y)
            return None
        return maxpool_backward_parts_nhwc(xp, y, nhwc(dy), self.size)


@LAYERS.register("avgpool2d")
class AvgPool2D(_Pool2D):
    """y[n, c, i, j] = mean of the window at (i*stride, j*stride) over its elements inside the input.

    x: (N, C, H, W) -> (N, C, OH, OW). stride defaults to size. Padding is not counted: a window
    hanging over the border divides by its in-input element count (Keras 'same'; PyTorch's
    count_include_pad=False), so a constant input stays constant.
    The plain loops: reference.avgpool2d_forward / avgpool2d_backward.
    """

    new_grad = True

    def build(self, in_shape, rng):
        super().build(in_shape, rng)
        self._inv_count = 1.0 / self._count
        return self.out_shape

    def _row_col_slices(self):
        (sh, sw), (_, OH, OW) = self.stride, self.out_shape
        rows = [slice(i, i + sh * (OH - 1) + 1, sh) for i in range(self.size[0])]
        cols = [slice(j, j + sw * (OW - 1) + 1, sw) for j in range(self.size[1])]
        return rows, cols

    def forward(self, x, training):
        # The window sum is separable: KH strided adds down the rows, then KW across the columns
        # (KH + KW passes, the second on an array OH/H as large) instead of KH*KW passes.
        check_shape(x, self.in_shape, self)
        xp = pad(x, self.pads)
        rows, cols = self._row_col_slices()
        r = xp[:, :, rows[0]]  # (N, C, OH, Wp)
        for s in rows[1:]:
            r = r + xp[:, :, s]
        y = r[:, :, :, cols[0]]  # (N, C, OH, OW)
        for s in cols[1:]:
            y = y + r[:, :, :, s]
        if training:
            self._cache = xp.shape
        return y * self._inv_count.astype(x.dtype)

    def backward(self, dy):
        padded_shape = self._pop_cache()
        rows, cols = self._row_col_slices()
        dyw = dy * self._inv_count.astype(dy.dtype)
        dr = np.zeros((*dy.shape[:3], padded_shape[3]), dtype=dy.dtype)  # (N, C, OH, Wp)
        for s in cols:
            dr[:, :, :, s] += dyw
        dxp = np.zeros(padded_shape, dtype=dy.dtype)
        for s in rows:
            dxp[:, :, s] += dr
        return unpad(dxp, self.pads)

    def macs(self):
        """One add per input element of every window (padding excluded); comparisons in max pooling count 0."""
        return self.out_shape[0] * int(self._count.sum())


@LAYERS.register("global_avgpool")
class GlobalAvgPool2D(Layer):
    """y[n, c] = mean of x[n, c] over H and W.  x: (N, C, H, W) -> (N, C).

    The plain loops: reference.avgpool2d_forward with one window the size of the input.
    """

    new_grad = True

    def build(self, in_shape, rng):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (channels, height, width), got {tuple(in_shape)}")
        self.in_shape, self.out_shape = tuple(in_shape), (in_shape[0],)
        return self.out_shape

    def forward(self, x, training):
        check_shape(x, self.in_shape, self)
        if training:
            self._cache = True
        N, (C, H, W) = len(x), self.in_shape
        # channels-last memory (a conv's or batchnorm's output): the mean over pixels as a vector-matrix
        # product reads each image's (H*W, C) block once, 4x faster than mean(axis=(2, 3)) here
        sums = np.ones(H * W, dtype=x.dtype) @ nhwc(x).reshape(N, H * W, C)
        return sums / x.dtype.type(H * W)

    def backward(self, dy):
        self._pop_cache()
        _, H, W = self.in_shape
        dyw = dy * dy.dtype.type(1 / (H * W))
        # channels-last, like the input: the ReLU or batchnorm before it multiplies it with arrays laid
        # out that way, and mixing the two layouts made that product 7x slower
        return nchw(np.broadcast_to(dyw[:, None, None, :], (len(dy), H, W, dy.shape[1])).copy())

    def macs(self):
        """One add per input element."""
        C, H, W = self.in_shape
        return C * H * W


def adaptive_bins(size: int, n: int) -> list[tuple[int, int]]:
    """PyTorch adaptive-pooling bins of 0..size-1: bin i is [floor(i*size/n), ceil((i+1)*size/n))."""
    return [((i * size) // n, -(-(i + 1) * size // n)) for i in range(n)]


@LAYERS.register("spp")
class SpatialPyramidPooling(Layer):
    """Spatial pyramid pooling (He et al., 2014): (N, C, H, W) -> (N, C * sum(n*n for n in levels)).

    Level n pools n x n bins with PyTorch's adaptive-pooling boundaries; each level is flattened
    channel-major (c, i, j) and the levels are concatenated in order, so the length does not
    depend on H and W (any H, W >= max(levels)). mode 'max': the gradient goes to the first maximum of a bin.
    The plain loops: reference.spp_forward / spp_backward.
    """

    def __init__(self, levels=(1, 2, 4), mode: str = "max"):
        super().__init__()
        if (not isinstance(levels, (list, tuple)) or not levels
                or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in levels)):
            raise ValueError(f"levels: must be a non-empty list of integers >= 1, got {levels!r}")
        if mode not in ("max", "avg"):
            raise ValueError(f"mode: must be 'max' or 'avg', got {mode!r}")
        self.levels, self.mode = [int(n) for n in levels], mode

    def _check_size(self, H, W):
        if min(H, W) < max(self.levels):
            raise ValueError(f"levels: input {H}x{W} is smaller than the finest level {max(self.levels)}")

    def build(self, in_shape, rng):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (channels, height, width), got {tuple(in_shape)}")
        C, H, W = in_shape
        self._check_size(H, W)
        self.in_shape, self.out_shape = (C, H, W), (C * sum(n * n for n in self.levels),)
        return self.out_shape

    def _bins(self, H, W):
        """(output columns of the bin's C channels, row slice, column slice) for every bin."""
        C, start = self.in_shape[0], 0
        for n in self.levels:
            for i, (r0, r1) in enumerate(adaptive_bins(H, n)):
                for j, (c0, c1) in enumerate(adaptive_bins(W, n)):
                    yield slice(start + i * n + j, start + C * n * n, n * n), slice(r0, r1), slice(c0, c1)
            start += C * n * n

    def forward(self, x, training):
        # One reduction per bin (sum(n*n) of them), each over all samples and channels at once.
        C = self.in_shape[0]
        if x.ndim != 4 or x.shape[1] != C:
            raise ValueError(f"{type(self).__name__}: expected input of shape (N, {C}, H, W), got {x.shape}")
        N, _, H, W = x.shape
        self._check_size(H, W)
        y = np.empty((N, self.out_shape[0]), dtype=x.dtype)
        first = []
        for out, rows, cols in self._bins(H, W):
            region = x[:, :, rows, cols]
            if self.mode == "avg":
                y[:, out] = region.mean(axis=(2, 3))
            elif not training:
                y[:, out] = region.max(axis=(2, 3))
            else:
                flat = region.reshape(N, C, -1)
                idx = flat.argmax(axis=2)  # (N, C); argmax picks the first maximum in row-major order
                y[:, out] = np.take_along_axis(flat, idx[:, :, None], axis=2)[:, :, 0]
                first.append(idx)
        if training:
            self._cache = (x.shape, first)
        return y

    def backward(self, dy):
        (N, C, H, W), first = self._pop_cache()
        dx = np.zeros((N, C, H, W), dtype=dy.dtype)
        for b, (out, rows, cols) in enumerate(self._bins(H, W)):
            bh, bw = rows.stop - rows.start, cols.stop - cols.start
            g = dy[:, out]  # (N, C)
            if self.mode == "avg":
                dx[:, :, rows, cols] += (g * g.dtype.type(1 / (bh * bw)))[:, :, None, None]
            else:
                onehot = np.zeros((N, C, bh * bw), dtype=dy.dtype)
                np.put_along_axis(onehot, first[b][:, :, None], g[:, :, None], axis=2)
                dx[:, :, rows, cols] += onehot.reshape(N, C, bh, bw)  # += as adaptive bins may overlap
        return dx

    def macs(self):
        """mode 'avg': one add per element of every bin at the built size; 'max': 0 (comparisons)."""
        if self.mode == "max":
            return 0
        C, H, W = self.in_shape
        return C * sum((rows.stop - rows.start) * (cols.stop - cols.start) for _, rows, cols in self._bins(H, W))

    def get_config(self):
        return {"levels": list(self.levels), "mode": self.mode}
