"""Textbook CNN kernels: loops written straight from the definitions, to read beside course notes.

The oracles the fast channels-last layers are tested against; not registered, never on a hot path.
Arrays are NCHW, results float64. Padding comes resolved as pads = ((top, bottom), (left, right)),
stride as (sh, sw), dilation as (dh, dw), window size as (KH, KW).
"""

from __future__ import annotations

import numpy as np


def _pad(x, pads, value=0.0):
    """x (N, C, H, W) padded on its two spatial axes, as float64."""
    (t, b), (l, r) = pads
    return np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def _unpad(dxp, pads):
    """The interior of a padded gradient: what flows back to the unpadded input."""
    (t, b), (l, r) = pads
    return dxp[:, :, t : dxp.shape[2] - b, l : dxp.shape[3] - r]


def output_size(size, kernel, stride, pad, dilation=1):
    """floor((size + pad_lo + pad_hi - dilation*(kernel-1) - 1) / stride) + 1 window positions."""
    return (size + pad[0] + pad[1] - dilation * (kernel - 1) - 1) // stride + 1


def _output_hw(x, kernel, stride, pads, dilation=(1, 1)):
    """(OH, OW) of a window sliding over x (N, C, H, W)."""
    return tuple(output_size(size, k, s, p, d)
                 for size, k, s, p, d in zip(x.shape[2:], kernel, stride, pads, dilation))


def _windows(out_hw, kernel, stride, dilation=(1, 1)):
    """(i, j, rows, cols) of every output position: the slices of its window in the padded input."""
    (KH, KW), (sh, sw), (dh, dw) = kernel, stride, dilation
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            yield (i, j, slice(i * sh, i * sh + dh * (KH - 1) + 1, dh),
                   slice(j * sw, j * sw + dw * (KW - 1) + 1, dw))


def conv2d_forward(x, W, b, stride, pads, dilation):
    """y[n, f, i, j] = b[f] + sum_{c, u, v} xp[n, c, i*sh + u*dh, j*sw + v*dw] * W[f, c, u, v].

    Cross-correlation, as in every framework; xp is x zero-padded. x: (N, C, H, W),
    W: (F, C, KH, KW), b: (F,) or None -> y: (N, F, OH, OW).
    """
    xp = _pad(x, pads)
    N, F = x.shape[0], W.shape[0]
    out_hw = _output_hw(x, W.shape[2:], stride, pads, dilation)
    y = np.zeros((N, F, *out_hw))
    for n in range(N):
        for f in range(F):
            for i, j, rows, cols in _windows(out_hw, W.shape[2:], stride, dilation):
                y[n, f, i, j] = np.sum(xp[n, :, rows, cols] * W[f]) + (0.0 if b is None else b[f])
    return y


def conv2d_backward(dy, x, W, stride, pads, dilation):
    """Chain rule through each y[n, f, i, j]: dW[f] += dy * window, dxp[window] += dy * W[f].

    dy: (N, F, OH, OW) -> dx like x, dW like W, and db (F,) = dy summed over n, i, j.
    """
    xp = _pad(x, pads)
    dxp, dW = np.zeros_like(xp), np.zeros(W.shape)
    N, F = x.shape[0], W.shape[0]
    for n in range(N):
        for f in range(F):
            for i, j, rows, cols in _windows(dy.shape[2:], W.shape[2:], stride, dilation):
                dW[f] += dy[n, f, i, j] * xp[n, :, rows, cols]
                dxp[n, :, rows, cols] += dy[n, f, i, j] * W[f]
    return _unpad(dxp, pads), dW, dy.sum(axis=(0, 2, 3))


def maxpool2d_forward(x, size, stride, pads):
    """y[n, c, i, j] = max of xp[n, c] over the size window at (i*sh, j*sw); xp is x padded with -inf.

    x: (N, C, H, W) -> y: (N, C, OH, OW).
    """
    xp = _pad(x, pads, value=-np.inf)
    out_hw = _output_hw(x, size, stride, pads)
    y = np.zeros((*x.shape[:2], *out_hw))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, j, rows, cols in _windows(out_hw, size, stride):
                y[n, c, i, j] = xp[n, c, rows, cols].max()
    return y


def maxpool2d_backward(dy, x, size, stride, pads):
    """dy[n, c, i, j] goes to the first maximum of its window in row-major order (PyTorch's rule).

    Overlapping windows add up. dy: (N, C, OH, OW) -> dx: (N, C, H, W).
    """
    xp = _pad(x, pads, value=-np.inf)
    dxp = np.zeros_like(xp)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, j, rows, cols in _windows(dy.shape[2:], size, stride):
                window = xp[n, c, rows, cols]
                u, v = np.unravel_index(np.argmax(window), window.shape)  # argmax: the first maximum
                dxp[n, c, rows.start + u, cols.start + v] += dy[n, c, i, j]
    return _unpad(dxp, pads)


def _inside(x, rows, cols, pads):
    """The part of a padded-coordinate window that lies in x: (row slice, column slice) of x."""
    (t, _), (l, _) = pads
    H, W = x.shape[2:]
    return (slice(max(rows.start - t, 0), min(rows.stop - t, H)),
            slice(max(cols.start - l, 0), min(cols.stop - l, W)))


def avgpool2d_forward(x, size, stride, pads):
    """y[n, c, i, j] = mean of x[n, c] over the part of the window at (i*sh - top, j*sw - left) inside x.

    Padding is not counted (Keras 'same', PyTorch count_include_pad=False). x: (N, C, H, W) -> (N, C, OH, OW).
    """
    x = np.asarray(x, dtype=np.float64)
    out_hw = _output_hw(x, size, stride, pads)
    y = np.zeros((*x.shape[:2], *out_hw))
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, j, rows, cols in _windows(out_hw, size, stride):
                inside_rows, inside_cols = _inside(x, rows, cols, pads)
                y[n, c, i, j] = np.mean(x[n, c, inside_rows, inside_cols])
    return y


def avgpool2d_backward(dy, x, size, stride, pads):
    """Each in-input element of a window gets dy[n, c, i, j] / (its window's in-input count).

    dy: (N, C, OH, OW) -> dx: (N, C, H, W); overlapping windows add up.
    """
    dx = np.zeros(x.shape)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            for i, j, rows, cols in _windows(dy.shape[2:], size, stride):
                inside_rows, inside_cols = _inside(x, rows, cols, pads)
                count = x[n, c, inside_rows, inside_cols].size
                dx[n, c, inside_rows, inside_cols] += dy[n, c, i, j] / count
    return dx


def _as_rows(x):
    """(N, D) stays; (N, C, H, W) -> (N*H*W, C): one column per channel (CS231n's spatial batchnorm)."""
    x = np.asarray(x, dtype=np.float64)
    return x if x.ndim == 2 else x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def _from_rows(rows, shape):
    """The inverse of _as_rows for an array of the given shape."""
    if len(shape) == 2:
        return rows
    N, C, H, W = shape
    return rows.reshape(N, H, W, C).transpose(0, 3, 1, 2)


def batchnorm_forward(x, gamma, beta, eps):
    """Training mode: y = gamma * (x - mu) / sqrt(var + eps) + beta with the batch's mu and biased var.

    Per feature over N for x (N, D); per channel over N, H, W for x (N, C, H, W). gamma, beta: (D,) or (C,).
    The cache holds each node of the computational graph for batchnorm_backward.
    """
    rows = _as_rows(x)  # (m, C)
    mu = rows.mean(axis=0)
    xc = rows - mu
    var = (xc**2).mean(axis=0)
    std = np.sqrt(var + eps)
    inv_std = 1 / std
    xhat = xc * inv_std
    y = gamma * xhat + beta
    return _from_rows(y, x.shape), (xhat, xc, std, inv_std, np.asarray(gamma, dtype=np.float64), x.shape)


def batchnorm_backward(dy, cache):
    """Backward through the graph of batchnorm_forward, node by node (no fused formula).

    dy like x -> dx like x, dgamma and dbeta like gamma.
    """
    xhat, xc, std, inv_std, gamma, shape = cache
    dy = _as_rows(dy)
    m = len(dy)
    dbeta = dy.sum(axis=0)                     # y = gamma * xhat + beta
    dgamma = (dy * xhat).sum(axis=0)
    dxhat = dy * gamma
    dxc = dxhat * inv_std                      # xhat = xc * inv_std
    dinv_std = (dxhat * xc).sum(axis=0)
    dstd = -dinv_std / std**2                  # inv_std = 1 / std
    dvar = dstd / (2 * std)                    # std = sqrt(var + eps)
    dxc += 2 * xc * dvar / m                   # var = mean(xc**2)
    dmu = -dxc.sum(axis=0)                     # xc = x - mu
    dx = dxc + dmu / m                         # mu = mean(x)
    return _from_rows(dx, shape), dgamma, dbeta


def batchnorm_inference(x, gamma, beta, running_mean, running_var, eps):
    """Evaluation mode: y = gamma * (x - running_mean) / sqrt(running_var + eps) + beta, per channel or feature."""
    y = gamma * (_as_rows(x) - running_mean) / np.sqrt(running_var + eps) + beta
    return _from_rows(y, x.shape)


def _pyramid_bins(C, H, W, levels):
    """(output column, channel, row slice, column slice) of every spatial pyramid bin.

    Level L: bin (i, j) spans rows floor(i*H/L) .. ceil((i+1)*H/L) - 1 (PyTorch's adaptive pooling),
    columns alike; levels are concatenated in order, each flattened in (c, i, j) order.
    """
    k = 0
    for L in levels:
        for c in range(C):
            for i in range(L):
                for j in range(L):
                    rows = slice(i * H // L, -(-(i + 1) * H // L))  # integer floor and ceil
                    cols = slice(j * W // L, -(-(j + 1) * W // L))
                    yield k, c, rows, cols
                    k += 1


def spp_forward(x, levels, mode):
    """Spatial pyramid pooling: y[n, k] = max or mean of x[n, c] over bin k.  (N, C, H, W) -> (N, C*sum(L*L))."""
    x = np.asarray(x, dtype=np.float64)
    N, C, H, W = x.shape
    reduce = np.max if mode == "max" else np.mean
    y = np.zeros((N, C * sum(L * L for L in levels)))
    for n in range(N):
        for k, c, rows, cols in _pyramid_bins(C, H, W, levels):
            y[n, k] = reduce(x[n, c, rows, cols])
    return y


def spp_backward(dy, x, levels, mode):
    """dy[n, k] goes to the first maximum of bin k (max) or is spread evenly over it (avg).

    Bins of a level may overlap, so contributions add up. dy: (N, K) -> dx: (N, C, H, W).
    """
    N, C, H, W = x.shape
    dx = np.zeros(x.shape)
    for n in range(N):
        for k, c, rows, cols in _pyramid_bins(C, H, W, levels):
            region = x[n, c, rows, cols]
            if mode == "max":
                u, v = np.unravel_index(np.argmax(region), region.shape)  # argmax: the first maximum
                dx[n, c, rows.start + u, cols.start + v] += dy[n, k]
            else:
                dx[n, c, rows, cols] += dy[n, k] / region.size
    return dx
