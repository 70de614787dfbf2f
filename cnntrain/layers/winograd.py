"""Winograd convolution (Lavin and Gray, 2016) on channels-last memory: forward, weight and input
gradients of 3x3 stride-1 convs, for layers/conv.py (which decides when: winograd_fits, and which
scheme: winograd_scheme).

F(m x m, 3x3): each m x m block of outputs comes from an a x a input tile (a = m + 2) at stride m,
Y = A^T [(G g G^T) * (B^T d B)] A, summed over channels: a^2 products of (tiles, C) by (C, F)
instead of im2col's one of (pixels, 9C) by (9C, F). F(2x2, 3x3) does 2.25 times fewer
multiply-adds than im2col, F(4x4, 3x3) 4 times fewer. The backward pass runs the same algorithm's
adjoints: dM = A dY A^T, then dU = V^T dM for the weights and dV = dM U^T, folded back onto the
overlapping input tiles (B dV B^T), for the input.

Each transform of a block of images is one copy and one matrix product: the tiles are gathered
(a strided view, copied whole) into an (a*a, tiles*C) matrix and multiplied by the Kronecker
product of the transform with itself, (a*a, a*a), which applies it along rows and columns at once;
outputs are scattered back the same way, overlapping input tiles summed in four strided adds.
The product does more multiply-adds than a sequence of adds over the tiles would, but it reads
and writes each value once, where those sequences took 17 NumPy passes per axis with temporaries:
all four transforms of cifar10_cnn's 32x32x32 -> 32 conv 1.3-2.5 times faster, one thread.
reference.conv2d_forward / conv2d_backward are the loops all of this is tested against.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import as_strided

# Transformed input per block of images: 7-56 images of cifar10_cnn's convs with F(4x4, 3x3), so
# that a block's tiles stay in cache from transform to product.
WINOGRAD_CHUNK_BYTES = 2 << 20


class WinogradScheme:
    """F(m x m, 3x3) by its matrices: B^T (a x a), G (a x 3) and A^T (m x a), a = m + 2."""

    def __init__(self, name: str, BT, G, AT):
        self.name = name
        self.BT, self.G, self.AT = (np.array(M, dtype=np.float64) for M in (BT, G, AT))
        self.m, self.a = self.AT.shape

    @functools.lru_cache(maxsize=None)  # two schemes that live as long as the module, a few dtypes each
    def kron(self, name: str, dtype) -> np.ndarray:
        """The transform along rows and columns at once, as one (rows, columns) matrix of dtype:
        "B" (a*a, a*a), "A" (m*m, a*a), and their transposes "Bt" and "At"."""
        M = {"B": self.BT, "A": self.AT}[name[0]]
        K = np.kron(M, M)
        return np.ascontiguousarray(K.T if name.endswith("t") else K, dtype=dtype)

    def __repr__(self):
        return self.name


F2x2 = WinogradScheme(  # interpolation points 0, 1, -1 and infinity
    "F(2x2, 3x3)",
    BT=[[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    G=[[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
    AT=[[1, 1, 1, 0], [0, 1, -1, -1]],
)
F4x4 = WinogradScheme(  # interpolation points 0, 1, -1, 2, -2 and infinity
    "F(4x4, 3x3)",
    BT=[[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    G=[[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
       [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    AT=[[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
)


def winograd_weights(W: np.ndarray, channels: int, G: np.ndarray) -> np.ndarray:
    """W as (9*C, F), rows in (kh, kw, c) order -> U = G g G^T as (a*a, C, F), in (row, column) order."""
    G = G.astype(W.dtype)
    a = len(G)
    rows = (G @ W.reshape(3, -1)).reshape(a, 3, -1)  # G along the kernel's rows, then (batched) its columns:
    return (G @ rows).reshape(a * a, channels, -1)  # two products, 15 times faster than the einsum


def _tiles(x: np.ndarray, size, stride: int, tiles_hw, offset=(0, 0), writeable: bool = False) -> np.ndarray:
    """The size[0] x size[1] tiles at `stride` of x (n, H, W, C) from `offset`, as a strided view
    (size[0], size[1], n, TH, TW, C): position in the tile first, as the transforms' matrices take it.
    Writeable only where the tiles do not overlap (the output's blocks, each part of the input's)."""
    n, C = x.shape[0], x.shape[3]
    s = x.strides
    start = x[:, offset[0]:, offset[1]:]
    return as_strided(start, (*size, n, *tiles_hw, C), (s[1], s[2], s[0], stride * s[1], stride * s[2], s[3]),
                      writeable=writeable)


def _padded(x: np.ndarray, pads) -> np.ndarray:
    """x (n, H, W, C) zero padded by pads: x itself when there is none, else a new array with only its
    border zeroed."""
    (t, b), (l, r) = pads
    if not (t or b or l or r):
        return x
    n, H, W, C = x.shape
    xp = np.empty((n, t + H + b, l + W + r, C), dtype=x.dtype)
    xp[:, :t] = 0
    xp[:, t + H :] = 0
    xp[:, t : t + H, :l] = 0
    xp[:, t : t + H, l + W :] = 0
    xp[:, t : t + H, l : l + W] = x
    return xp


def transform_input(x: np.ndarray, pads, tiles_hw, scheme) -> np.ndarray:
    """V = B^T d B of every a x a tile at stride m of x (n, H, W, C) padded by pads, as (a*a, n*TH*TW, C)."""
    n, C = x.shape[0], x.shape[3]
    a, T = scheme.a, tiles_hw[0] * tiles_hw[1]
    d = np.empty((a, a, n, *tiles_hw, C), dtype=x.dtype)
    d[...] = _tiles(_padded(x, pads), (a, a), scheme.m, tiles_hw)
    return (scheme.kron("B", x.dtype) @ d.reshape(a * a, -1)).reshape(a * a, n * T, C)


def transform_output(M: np.ndarray, n: int, tiles_hw, scheme, out: np.ndarray) -> None:
    """A^T M A of every tile of M (a*a, n*TH*TW, F) into out, (n*m*TH*m*TW, F) in (image, row, column) order."""
    m, F = scheme.m, M.shape[-1]
    Y = scheme.kron("A", M.dtype) @ M.reshape(len(M), -1)
    TH, TW = tiles_hw
    blocks = _tiles(out.reshape(n, m * TH, m * TW, F), (m, m), m, tiles_hw, writeable=True)
    blocks[...] = Y.reshape(m, m, n, TH, TW, F)


def output_adjoint(dy: np.ndarray, scheme) -> np.ndarray:
    """dM = A dY A^T of each m x m block of dy (n, m*TH, m*TW, F): the gradient of transform_output's M,
    as (a*a, n*TH*TW, F)."""
    n, H, W, F = dy.shape
    m = scheme.m
    tiles_hw = (H // m, W // m)
    blocks = np.empty((m, m, n, *tiles_hw, F), dtype=dy.dtype)
    blocks[...] = _tiles(dy, (m, m), m, tiles_hw)
    return (scheme.kron("At", dy.dtype) @ blocks.reshape(m * m, -1)).reshape(scheme.a**2, -1, F)


def input_adjoint(dV: np.ndarray, tiles_hw, pads, scheme, out: np.ndarray) -> None:
    """The gradient of transform_input: dV (a*a, n*TH*TW, C) -> d x, written into out (n, H, W, C).

    B dV B^T per tile, then the tiles summed where they overlap: a tile's first m rows and columns
    are its own, its last two the next tile's first two.
    """
    n, H, W, C = out.shape
    a, m = scheme.a, scheme.m
    TH, TW = tiles_hw
    dd = (scheme.kron("Bt", dV.dtype) @ dV.reshape(a * a, -1)).reshape(a, a, n, TH, TW, C)
    (t, b), (l, r) = pads
    padded = bool(t or b or l or r)
    dxp = np.empty((n, m * TH + 2, m * TW + 2, C), dtype=dV.dtype) if padded else out
    dxp[:, m * TH :] = 0  # the last tiles' overlap, which no tile's own part writes
    dxp[:, : m * TH, m * TW :] = 0
    own, rest = slice(0, m), slice(m, a)
    _tiles(dxp, (m, m), m, tiles_hw, writeable=True)[...] = dd[own, own]
    _tiles(dxp, (2, m), m, tiles_hw, (m, 0), True)[...] += dd[rest, own]
    _tiles(dxp, (m, 2), m, tiles_hw, (0, m), True)[...] += dd[own, rest]
    _tiles(dxp, (2, 2), m, tiles_hw, (m, m), True)[...] += dd[rest, rest]
    if padded:
        out[...] = dxp[:, t : t + H, l : l + W]


def tiles_for(out_hw, scheme) -> tuple[int, int]:
    """Tiles along each side: enough m x m output blocks to cover the output (the last may overhang)."""
    return tuple(-(-side // scheme.m) for side in out_hw)


def _tile_pads(pads, out_hw, tiles_hw, scheme):
    """pads, with the bottom and right grown by the last tiles' overhang: the input every tile reads."""
    ((t, b), (l, r)), m = pads, scheme.m
    return (t, b + m * tiles_hw[0] - out_hw[0]), (l, r + m * tiles_hw[1] - out_hw[1])


def conv_forward_winograd_nhwc(x: np.ndarray, W: np.ndarray, pads, out_hw, keep: bool, scheme=F2x2):
    """conv_forward_nhwc for a 3x3, stride-1 conv by Winograd F(m x m, 3x3).
    x: the unpadded input, (N, H, W, C), padded by pads on the way into the transform; scheme: F2x2 or F4x4.
    Output sides that are not multiples of m take one more block each, read from zero padding and
    cropped off.

    Transforms of the input and output in place of im2col's nine-fold copy, a few images at a time so
    the transformed tiles stay in cache. Returns y (N*OH*OW, F) and, when keep, the transformed input
    blocks (winograd_backward's).
    """
    N, _, _, C = x.shape
    OH, OW = out_hw
    m, F = scheme.m, W.shape[1]
    tiles = tiles_for(out_hw, scheme)
    exact = (m * tiles[0], m * tiles[1]) == (OH, OW)
    pads = _tile_pads(pads, out_hw, tiles, scheme)
    U = winograd_weights(W, C, scheme.G)
    step = max(1, WINOGRAD_CHUNK_BYTES // (len(U) * tiles[0] * tiles[1] * C * x.itemsize))
    y = np.empty((N * OH * OW, F), dtype=np.result_type(x, W))
    blocks = []
    for start in range(0, N, step):
        V = transform_input(x[start : start + step], pads, tiles, scheme)
        n = V.shape[1] // (tiles[0] * tiles[1])
        out = y[start * OH * OW : (start + n) * OH * OW]
        if exact:
            transform_output(np.matmul(V, U), n, tiles, scheme, out)
        else:
            whole = np.empty((n * m * tiles[0] * m * tiles[1], F), dtype=y.dtype)
            transform_output(np.matmul(V, U), n, tiles, scheme, whole)
            out.reshape(n, OH, OW, F)[...] = whole.reshape(n, m * tiles[0], m * tiles[1], F)[:, :OH, :OW]
        if keep:
            blocks.append(V)
    return y, blocks


def winograd_backward(blocks, dym: np.ndarray, W: np.ndarray, pads, in_shape, out_hw, input_grad: bool,
                      scheme=F2x2):
    """The weight gradient (9*C, F) of conv_forward_winograd_nhwc and, with input_grad, its input
    gradient (N, H, W, C) (else None), block by block of the forward's images.

    dM = A dY A^T; dU = V^T dM per tile position, summed over the blocks, then dW = G^T dU G;
    dV = dM U^T, folded back onto the input by the input transform's adjoint. dM is made once for both.
    """
    C = in_shape[3]
    OH, OW = out_hw
    m, F = scheme.m, dym.shape[1]
    tiles = tiles_for(out_hw, scheme)
    exact = (m * tiles[0], m * tiles[1]) == (OH, OW)
    pads = _tile_pads(pads, out_hw, tiles, scheme)
    Ut = winograd_weights(W, C, scheme.G).transpose(0, 2, 1) if input_grad else None
    dx = np.empty(in_shape, dtype=dym.dtype) if input_grad else None
    dU, start = None, 0
    for V in blocks:
        n = V.shape[1] // (tiles[0] * tiles[1])
        dy = dym[start * OH * OW : (start + n) * OH * OW].reshape(n, OH, OW, F)
        if not exact:  # the overhanging outputs' gradient is 0
            dy = np.pad(dy, ((0, 0), (0, m * tiles[0] - OH), (0, m * tiles[1] - OW), (0, 0)))
        dM = output_adjoint(dy, scheme)
        part = np.matmul(V.transpose(0, 2, 1), dM)
        dU = part if dU is None else dU + part
        if input_grad:
            input_adjoint(np.matmul(dM, Ut), tiles, pads, scheme, dx[start : start + n])
        start += n
    G = scheme.G.astype(dym.dtype)
    rows = (G.T @ dU.reshape(len(G), -1)).reshape(3, len(G), -1)
    return (G.T @ rows).reshape(9 * C, F), dx
