"""Loop-based convolution and pooling, written straight from the definitions. Oracles for tests only."""

from __future__ import annotations

import math

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


def avgpool2d(x, size, stride, pads):
    """y[n, c, i, j] = mean of x over the window at (i*sh - top, j*sw - left) clipped to the input.

    Padding is not counted.
    """
    (t, bo), (l, r) = pads
    N, C, H, W = x.shape
    OH, OW = (H + t + bo - size[0]) // stride[0] + 1, (W + l + r - size[1]) // stride[1] + 1
    y = np.zeros((N, C, OH, OW))
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    values = [x[n, c, u, v]
                              for u in range(i * stride[0] - t, i * stride[0] - t + size[0])
                              for v in range(j * stride[1] - l, j * stride[1] - l + size[1])
                              if 0 <= u < H and 0 <= v < W]
                    y[n, c, i, j] = sum(values) / len(values)
    return y


def spp(x, levels, mode):
    """Level n: bin (i, j) spans rows floor(i*H/n) .. ceil((i+1)*H/n) - 1, columns alike.

    Levels are concatenated in order, each in (c, i, j) order.
    """
    N, C, H, W = x.shape
    reduce = np.max if mode == "max" else np.mean
    out = []
    for n in range(N):
        row = []
        for lv in levels:
            for c in range(C):
                for i in range(lv):
                    for j in range(lv):
                        r0, r1 = math.floor(i * H / lv), math.ceil((i + 1) * H / lv)
                        c0, c1 = math.floor(j * W / lv), math.ceil((j + 1) * W / lv)
                        row.append(reduce(x[n, c, r0:r1, c0:c1]))
        out.append(row)
    return np.array(out)
