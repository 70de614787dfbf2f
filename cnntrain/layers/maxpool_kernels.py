"""Max-pool kernels on channels-last (N, H, W, C) memory: window maxima, the gradient routed to each
window's first maximum, and that gradient kept in parts for a first convolution (PooledGrad).
reference.maxpool2d_forward / maxpool2d_backward are the textbook loops they must agree with.
"""

from __future__ import annotations

import numpy as np

from .channels_last import column_sums


def _offset_views(a: np.ndarray, kernel, stride, out_hw):
    """(N, OH, OW, C) strided views of a padded (N, Hp, Wp, C) array, one per kernel offset, row-major."""
    (sh, sw), (OH, OW) = stride, out_hw
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield a[:, i : i + sh * (OH - 1) + 1 : sh, j : j + sw * (OW - 1) + 1 : sw]


def maxpool_nhwc(xp: np.ndarray, kernel, stride, out_hw) -> np.ndarray:
    """Window maxima of a padded (N, Hp, Wp, C) array: one np.maximum per kernel offset.

    When windows tile the input and C is small, rows are reduced first, over whole image rows
    of W*C values, then the KW neighbours: a ufunc's per-row overhead dominates when each row
    holds only C <= 16 values, so long rows amortise it.
    """
    N, H, W, C = xp.shape
    (KH, KW), (OH, OW) = kernel, out_hw
    if C <= 16 and tuple(stride) == tuple(kernel) and (H, W) == (KH * OH, KW * OW):
        rows = xp.reshape(N, OH, KH, W * C)
        y = rows[:, :, 0].copy()
        for i in range(1, KH):
            np.maximum(y, rows[:, :, i], out=y)
        cells = y.reshape(N, OH, OW, KW * C)
        out = cells[..., :C].copy()
        for j in range(1, KW):
            np.maximum(out, cells[..., j * C : (j + 1) * C], out=out)
        return out
    views = _offset_views(xp, kernel, stride, out_hw)
    y = next(views).copy()
    for view in views:
        np.maximum(y, view, out=y)
    return y


def windows_tile(xp_shape, y_shape, kernel, stride) -> bool:
    """Whether the windows cover the padded input exactly, each entry once."""
    return tuple(stride) == tuple(kernel) and all(n == s * o for n, s, o in zip(xp_shape[1:3], stride, y_shape[1:3]))


def _first_maxima(xp: np.ndarray, y: np.ndarray, kernel, stride):
    """For each kernel offset (row-major), the bool mask of the windows whose first maximum it holds.

    Which offset held the maximum is recomputed by comparison with y, far cheaper than tracking an
    argmax in the forward pass; "hit and not yet taken" is one comparison of bools.
    """
    taken = None
    last = kernel[0] * kernel[1] - 1
    for k, view in enumerate(_offset_views(xp, kernel, stride, y.shape[1:3])):
        hit = view == y
        if taken is None:
            taken = hit
        else:
            np.greater(hit, taken, out=hit)  # hit and not taken, in one pass over bools
            if k < last:
                taken |= hit
        yield hit


def maxpool_backward_nhwc(xp: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel, stride) -> np.ndarray:
    """Route dy to the first maximum (row-major) of each window; returns the padded input's gradient."""
    tiles = windows_tile(xp.shape, y.shape, kernel, stride)
    dxp = (np.empty if tiles else np.zeros)(xp.shape, dtype=dy.dtype)  # tiling windows write every entry once
    for hit, dview in zip(_first_maxima(xp, y, kernel, stride), _offset_views(dxp, kernel, stride, y.shape[1:3])):
        if tiles:
            np.multiply(dy, hit, out=dview)
        else:
            dview += dy * hit
    return dxp


class PooledGrad:
    """The gradient of a tiling max pool's (N, H, W, C) input, not assembled: dy routed to each
    window's first maximum, one (N, OH, OW, C) array per kernel offset (zero where that offset did
    not win), less a per-channel affine of another array when `affine` = (other, scale, shift):
    dx = routed - scale * other - shift (a batchnorm's backward, BatchNorm.backward_pooled).

    A first convolution, whose input needs no gradient, takes its weight gradient from the parts
    (weight_grad) and never builds dx: the parts are a quarter of dx each and contiguous, where
    dx would be written through strided windows and read again, and the affine term costs one
    product with the column matrix instead of three passes over dx. dense() builds dx for any
    other use. reference.py's loops check both through the layers.
    """

    def __init__(self, parts: list, kernel, shape, affine=None):
        self.parts, self.kernel, self.shape, self.affine = parts, tuple(kernel), tuple(shape), affine

    def dense(self) -> np.ndarray:
        """dx as an (N, H, W, C) array."""
        dx = np.empty(self.shape, dtype=self.parts[0].dtype)  # the windows tile it: each entry written once
        for view, part in zip(_offset_views(dx, self.kernel, self.kernel, self.parts[0].shape[1:3]), self.parts):
            view[...] = part
        if self.affine is not None:
            other, scale, shift = self.affine
            rows = dx.reshape(-1, self.shape[3])
            rows -= other.reshape(rows.shape) * scale
            rows -= shift
        return dx

    def weight_grad(self, blocks, kernel_values: int) -> tuple[np.ndarray, np.ndarray]:
        """(cols^T dx, column sums of dx) for the im2col column blocks of the layer whose output dx is
        the gradient of: (K, C) and (C,), K = kernel_values (KH*KW*input channels); blocks hold the
        rows (n, h, w) of consecutive images, as conv_forward_nhwc keeps them."""
        (KH, KW), (N, H, W, C) = self.kernel, self.shape
        dW = np.zeros((kernel_values, C), dtype=self.parts[0].dtype)
        start = 0
        for cols in blocks:
            n = len(cols) // (H * W)
            images = cols.reshape(n, H, W, kernel_values)  # a view, also of im2col's transposed layout
            for (i, j), part in zip(np.ndindex(KH, KW), self.parts):
                dW += np.tensordot(images[:, i::KH, j::KW], part[start : start + n], axes=([0, 1, 2], [0, 1, 2]))
            if self.affine is not None:
                other, scale, _ = self.affine
                dW -= (cols.T @ other.reshape(N * H * W, C)[start * H * W : (start + n) * H * W]) * scale
            start += n
        sums = sum(column_sums(part.reshape(-1, C)) for part in self.parts)
        if self.affine is not None:
            other, scale, shift = self.affine
            shift_sums = sum(column_sums(cols) for cols in blocks)
            dW -= np.outer(shift_sums, shift)
            sums = sums - scale * column_sums(other.reshape(-1, C)) - shift * (N * H * W)
        return dW, sums


def maxpool_backward_parts_nhwc(xp: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel) -> PooledGrad:
    """maxpool_backward_nhwc for windows that tile xp, kept as its parts (PooledGrad): the same
    first maxima, each offset's share of dy in an array of its own."""
    return PooledGrad([np.multiply(dy, hit) for hit in _first_maxima(xp, y, kernel, kernel)], kernel, xp.shape)


def tiling_maxpool_backward_nhwc(xp: np.ndarray, y: np.ndarray, dy: np.ndarray, kernel):
    """maxpool_backward_nhwc for windows that tile xp, over whole image rows; None where it would differ.

    y and dy repeated along the width line up with xp's rows of W*C values, so one comparison
    and one product over long rows give dx: 30-40% faster than the per-offset loop. That routes
    dy to every position equal to its window's maximum, which is the first one only when the
    window holds a single one. Ties (MNIST's blank margins give whole windows of equal values)
    change nothing where the window's dy is 0, as it is wherever the ReLU after the pool is off
    (a blank margin's value there is one constant, often not positive): so the result stands when each
    window with a nonzero dy put exactly one nonzero into dx. Otherwise (a tie under a nonzero
    dy, or a NaN) None says to use maxpool_backward_nhwc; resolving ties over long rows measured
    no faster than that loop.
    """
    N, H, W, C = xp.shape
    (KH, KW), OH = kernel, y.shape[1]
    if np.isnan(y).any():  # a window with no hit could hide another's tie from the counts below
        return None
    rows = xp.reshape(N, OH, KH, W * C)
    hits = rows == np.repeat(y, KW, axis=2).reshape(N, OH, 1, W * C)
    dx = np.multiply(hits, np.repeat(dy, KW, axis=2).reshape(N, OH, 1, W * C))
    # without NaN every window has a hit: one hit each, or one nonzero per window whose dy is nonzero
    if np.count_nonzero(hits) != y.size and np.count_nonzero(dx) != np.count_nonzero(dy):
        return None
    return dx.reshape(N, H, W, C)
