"""Loop-based convolution and pooling, written straight from the definitions. Oracles for tests only."""

from __future__ import annotations

import numpy as np


def conv2d(x, W, b, stride, pads, dilation):
    """y[n, f, i, j] = b[f] + sum_{c, u, v} xp[n, c, i*sh + u*dh, j*sw + v*dw] * W[f, c, u, v]."""
    (t, bo), (l, r) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (l, r)))
    N, C, H, Wd = xp.shape
    F, _, KH, KW = W.shape
    sh, sw = stride
    dh, dw = dilation
    OH = (H - dh * (KH - 1) - 1) // sh + 1
    OW = (Wd - dw * (KW - 1) - 1) // sw + 1
    y = np.zeros((N, F, OH, OW))
    for n in range(N):
        for f in range(F):
            for i in range(OH):
                for j in range(OW):
                    total = 0.0 if b is None else b[f]
                    for c in range(C):
                        for u in range(KH):
                            for v in range(KW):
                                total += xp[n, c, i * sh + u * dh, j * sw + v * dw] * W[f, c, u, v]
                    y[n, f, i, j] = total
    return y


def maxpool2d(x, size, stride, pads):
    (t, bo), (l, r) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (l, r)), constant_values=-np.inf)
    N, C, H, W = xp.shape
    OH, OW = (H - size[0]) // stride[0] + 1, (W - size[1]) // stride[1] + 1
    y = np.zeros((N, C, OH, OW))
    for i in range(OH):
        for j in range(OW):
            y[:, :, i, j] = xp[:, :, i * stride[0] : i * stride[0] + size[0], j * stride[1] : j * stride[1] + size[1]].max(axis=(2, 3))
    return y
