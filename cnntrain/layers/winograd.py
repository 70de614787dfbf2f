"""Winograd F(2x2, 3x3) convolution (Lavin and Gray, 2016) on channels-last memory: forward, weight and
input gradients of 3x3 stride-1 convs, for layers/conv.py (which decides when: winograd_fits).

Each 2x2 block of outputs comes from a 4x4 input tile at stride 2,
Y = A^T [(G g G^T) * (B^T d B)] A, summed over channels: 16 products of (tiles, C) by (C, F)
instead of im2col's one of (pixels, 9C) by (9C, F), 2.25 times fewer multiply-adds.
B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T = [[1,1,1,0],[0,1,-1,-1]] are applied as
adds and subtractions over strided views, G as a matrix. reference.conv2d_forward / conv2d_backward
are the loops these are tested against.
"""

from __future__ import annotations

import numpy as np

from .channels_last import pad_nhwc

WINOGRAD_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
WINOGRAD_CHUNK_BYTES = 1 << 20  # transformed input per product: 2-8 images of cifar10_cnn, the fastest measured


def winograd_weights(W: np.ndarray, channels: int) -> np.ndarray:
    """W as (9*C, F), rows in (kh, kw, c) order -> U = G g G^T as (16, C, F), 16 in (row, column) order."""
    G = WINOGRAD_G.astype(W.dtype)
    rows = (G @ W.reshape(3, -1)).reshape(4, 3, -1)  # G along the kernel's rows, then (batched) its columns:
    return (G @ rows).reshape(16, channels, -1)  # two products, 15 times faster than the einsum


def _bt(rows):
    """B^T applied along one axis: four arrays (d0 - d2, d1 + d2, d2 - d1, d1 - d3) from four."""
    d0, d1, d2, d3 = rows
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def winograd_input(xp: np.ndarray, tiles_hw) -> np.ndarray:
    """Padded (n, 2TH+2, 2TW+2, C) -> V = B^T d B of every 4x4 tile at stride 2, as (16, n*TH*TW, C)."""
    n, _, _, C = xp.shape
    TH, TW = tiles_hw
    V = np.empty((4, 4, n, TH, TW, C), dtype=xp.dtype)
    for i, u in enumerate(_bt([xp[:, k : k + 2 * TH : 2] for k in range(4)])):  # rows, over whole image rows
        c0, c1, c2, c3 = (u[:, :, k : k + 2 * TW : 2] for k in range(4))
        np.subtract(c0, c2, out=V[i, 0])
        np.add(c1, c2, out=V[i, 1])
        np.subtract(c2, c1, out=V[i, 2])
        np.subtract(c1, c3, out=V[i, 3])
    return V.reshape(16, n * TH * TW, C)


def winograd_output(M: np.ndarray, n: int, tiles_hw, out: np.ndarray) -> None:
    """A^T m A of every tile of M (16, n*TH*TW, F) into out, (n*2TH*2TW, F) in (image, row, column) order."""
    TH, TW = tiles_hw
    M = M.reshape(4, 4, n, TH, TW, -1)
    y = out.reshape(n, TH, 2, TW, 2, -1)
    for a, r in enumerate((M[0] + M[1] + M[2], M[1] - M[2] - M[3])):  # A^T over rows, then columns
        np.add(r[0] + r[1], r[2], out=y[:, :, a, :, 0])
        np.subtract(r[1] - r[2], r[3], out=y[:, :, a, :, 1])


def winograd_output_adjoint(dy: np.ndarray) -> np.ndarray:
    """dM = A dY A^T of each 2x2 block of dy (n, 2TH, 2TW, F): the gradient of winograd_output's M, (16, n*TH*TW, F)."""
    n, H, W, F = dy.shape
    TH, TW = H // 2, W // 2
    dM = np.empty((4, 4, n, TH, TW, F), dtype=dy.dtype)
    y0, y1 = dy[:, 0::2], dy[:, 1::2]
    for i, r in enumerate((y0, y0 + y1, y0 - y1, -y1)):  # A = [[1,0],[1,1],[1,-1],[0,-1]], rows then columns
        c0, c1 = r[:, :, 0::2], r[:, :, 1::2]
        dM[i, 0] = c0
        np.add(c0, c1, out=dM[i, 1])
        np.subtract(c0, c1, out=dM[i, 2])
        np.negative(c1, out=dM[i, 3])
    return dM.reshape(16, n * TH * TW, F)


def conv_forward_winograd_nhwc(xp: np.ndarray, W: np.ndarray, out_hw, keep: bool):
    """conv_forward_nhwc for a 3x3, stride-1 conv with even output sides, by Winograd F(2x2, 3x3).
    xp: the padded input, (N, OH + 2, OW + 2, C).

    16 products of (tiles, C) by (C, F) instead of one of (pixels, 9C) by (9C, F): 2.25 times
    fewer multiply-adds, and transforms of the input (six adds per value) and output in place of
    im2col's nine-fold copy, a few images at a time so the transformed tiles stay in cache.
    cifar10_cnn's forward convs, 32 images on one thread: 25-41% faster than im2col. Returns
    y (N*OH*OW, F) and, when keep, the transformed input blocks (winograd_weight_grad's).
    """
    N, _, _, C = xp.shape
    OH, OW = out_hw
    tiles = (OH // 2, OW // 2)
    U = winograd_weights(W, C)
    step = max(1, WINOGRAD_CHUNK_BYTES // (16 * tiles[0] * tiles[1] * C * xp.itemsize))
    y = np.empty((N * OH * OW, W.shape[1]), dtype=np.result_type(xp, W))
    blocks = []
    for start in range(0, N, step):
        sub = xp[start : start + step]
        V = winograd_input(sub, tiles)
        winograd_output(np.matmul(V, U), len(sub), tiles, y[start * OH * OW : (start + len(sub)) * OH * OW])
        if keep:
            blocks.append(V)
    return y, blocks


def winograd_weight_grad(blocks, dym: np.ndarray, out_hw, channels: int) -> np.ndarray:
    """The weight gradient (9*C, F) of conv_forward_winograd_nhwc: dU = V^T dM per tile position, summed
    over the blocks, then G^T dU G."""
    OH, OW = out_hw
    F = dym.shape[1]
    dU, start = None, 0
    for V in blocks:
        n = V.shape[1] * 4 // (OH * OW)
        dM = winograd_output_adjoint(dym[start * OH * OW : (start + n) * OH * OW].reshape(n, OH, OW, F))
        part = np.matmul(V.transpose(0, 2, 1), dM)
        dU = part if dU is None else dU + part
        start += n
    G = WINOGRAD_G.astype(dym.dtype)
    rows = (G.T @ dU.reshape(4, -1)).reshape(3, 4, -1)
    return (G.T @ rows).reshape(9 * channels, F)


def conv_input_grad_winograd_nhwc(dym: np.ndarray, W: np.ndarray, in_shape, pads, out_hw) -> np.ndarray:
    """The input gradient (N, H, W, C), H and W even, of a 3x3 stride-1 conv padded by at most 2 on each
    side: conv_forward_winograd_nhwc of dy, padded by 2 less the conv's padding, with the kernel flipped
    and F, C swapped."""
    N, H, Wd, C = in_shape
    (t, b), (l, r) = pads
    F = dym.shape[1]
    flipped = np.ascontiguousarray(W.reshape(3, 3, C, F)[::-1, ::-1].transpose(0, 1, 3, 2)).reshape(9 * F, C)
    dyp = pad_nhwc(dym.reshape(N, *out_hw, F), ((2 - t, 2 - b), (2 - l, 2 - r)))
    dx, _ = conv_forward_winograd_nhwc(dyp, flipped, (H, Wd), keep=False)
    return dx.reshape(N, H, Wd, C)
