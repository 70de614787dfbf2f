"""Winograd convolution (Lavin and Gray, 2016) on channels-last memory: forward, weight and input
gradients of 3x3 stride-1 convs, for layers/conv.py (which decides when: winograd_fits, and which
scheme: winograd_scheme). This module holds the driver (blocks of images, the products) and the
F(2x2, 3x3) scheme; winograd_f4.py holds F(4x4, 3x3).

F(2x2, 3x3): each 2x2 block of outputs comes from a 4x4 input tile at stride 2,
Y = A^T [(G g G^T) * (B^T d B)] A, summed over channels: 16 products of (tiles, C) by (C, F)
instead of im2col's one of (pixels, 9C) by (9C, F), 2.25 times fewer multiply-adds.
B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]] and A^T = [[1,1,1,0],[0,1,-1,-1]] are applied as
adds and subtractions, G as a matrix. The backward pass runs the same algorithm's adjoints:
dM = A dY A^T, then dU = V^T dM for the weights and dV = dM U^T, folded back onto the overlapping
input tiles (B dV B^T), for the input.

Memory layout: neighbouring columns of a channels-last image are C values apart, so a transform
between columns, done directly, would run NumPy's inner loop over only C values at a time. The
columns are split instead into phases, even and odd ones here (one copy that moves whole C-value
runs, as items of a void dtype), after which every add runs over whole rows of tiles, and each
stage runs over all tile columns (or rows) at once: NumPy's per-call cost is then paid a few
times per block, not per tile position.
reference.conv2d_forward / conv2d_backward are the loops all of this is tested against.
"""

from __future__ import annotations

import numpy as np

# Transformed input per block of images: 7-56 images of cifar10_cnn's convs with F(4x4, 3x3). Its
# 32x32x32 -> 32 conv, forward and backward on 32 images, one thread: 13.5-13.6 ms against 13.9-14.1
# with 1 MiB (NumPy's per-call cost weighs more on smaller arrays); its transforms and products
# alone 10.8 ms against 12.0 (1 MiB) and 11.7 (4 MiB). keras_mnist's F(2x2, 3x3) conv: no change.
WINOGRAD_CHUNK_BYTES = 2 << 20


def winograd_weights(W: np.ndarray, channels: int, G: np.ndarray) -> np.ndarray:
    """W as (9*C, F), rows in (kh, kw, c) order -> U = G g G^T as (a*a, C, F), in (row, column) order."""
    G = G.astype(W.dtype)
    a = len(G)
    rows = (G @ W.reshape(3, -1)).reshape(a, 3, -1)  # G along the kernel's rows, then (batched) its columns:
    return (G @ rows).reshape(a * a, channels, -1)  # two products, 15 times faster than the einsum


def _items(a: np.ndarray) -> np.ndarray:
    """(n, H, W, C) memory as an (n, H, W) array of C-value items: strided copies then move whole runs."""
    n, H, W, C = a.shape
    return a.view(np.dtype((np.void, C * a.itemsize))).reshape(n, H, W)


def _column_runs(width: int, left: int, count: int, phases: int):
    """For each phase r of the padded columns P*k + r (P phases, k < count) of an image `width` wide
    padded by `left`: (r, the first k inside the image, its image column, how many are inside)."""
    for r in range(phases):
        k = max(0, (left - r + phases - 1) // phases)
        c = phases * k + r - left
        yield r, k, c, max(0, min(count - k, (width - c + phases - 1) // phases))


def split_columns(x: np.ndarray, pads, count: int, phases: int = 2) -> list[np.ndarray]:
    """x (n, H, W, C), zero padded by pads -> its padded columns P*k + r, k < count, as P arrays
    (n, Hp, count, C), one per phase r: even and odd columns for P = 2."""
    n, H, W, C = x.shape
    (t, b), (l, _) = pads
    xs = _items(x)
    parts = []
    for _, k, c, inside in _column_runs(W, l, count, phases):
        part = np.empty((n, H + t + b, count, C), dtype=x.dtype)
        part[:, :t] = 0
        part[:, t + H :] = 0
        part[:, t : t + H, :k] = 0
        part[:, t : t + H, k + inside :] = 0
        _items(part)[:, t : t + H, k : k + inside] = xs[:, :, c : c + phases * inside : phases]
        parts.append(part)
    return parts


def merge_columns(parts, pads, out: np.ndarray) -> None:
    """The inverse of split_columns, cropped: out (n, H, W, C) = the image's columns of the phases."""
    _, H, W, _ = out.shape
    (t, _), (l, _) = pads
    outs, phases = _items(out), len(parts)
    for r, k, c, inside in _column_runs(W, l, parts[0].shape[2], phases):
        outs[:, :, c : c + phases * inside : phases] = _items(parts[r])[:, t : t + H, k : k + inside]


def _input2(x: np.ndarray, pads, tiles_hw) -> np.ndarray:
    """V = B^T d B of every 4x4 tile at stride 2 of x (n, H, W, C) zero padded by pads, as (16, n*TH*TW, C).

    B^T along columns first, on the even and odd columns: tile t's are e[t], o[t], e[t+1], o[t+1].
    """
    n, _, _, C = x.shape
    TH, TW = tiles_hw
    e, o = split_columns(x, pads, TW + 1)
    e0, e1, o0, o1 = e[:, :, :TW], e[:, :, 1:], o[:, :, :TW], o[:, :, 1:]
    cols = np.empty((4, n, 2 * TH + 2, TW, C), dtype=x.dtype)
    np.subtract(e0, e1, out=cols[0])
    np.add(o0, e1, out=cols[1])
    np.subtract(e1, o0, out=cols[2])
    np.subtract(o0, o1, out=cols[3])
    d0, d1, d2, d3 = (cols[:, :, k : k + 2 * TH : 2] for k in range(4))  # then along rows, at stride 2,
    V = np.empty((4, 4, n, TH, TW, C), dtype=x.dtype)  # for every tile column at once
    np.subtract(d0, d2, out=V[0])
    np.add(d1, d2, out=V[1])
    np.subtract(d2, d1, out=V[2])
    np.subtract(d1, d3, out=V[3])
    return V.reshape(16, n * TH * TW, C)


def _input2_adjoint(dV: np.ndarray, tiles_hw, pads, out: np.ndarray) -> None:
    """The gradient of _input2: dV (16, n*TH*TW, C) -> d x, written into out (n, H, W, C).

    B dV B^T per tile, then the tiles' overlaps summed: padded row 2k gets tile k's first row and
    tile k-1's third, row 2k+1 tile k's second and tile k-1's fourth; columns alike.
    """
    n, _, _, C = out.shape
    TH, TW = tiles_hw
    dV = dV.reshape(4, 4, n, TH, TW, C)
    rows = np.empty((4, n, TH + 1, 2, TW, C), dtype=dV.dtype)  # (column j, image, padded row, column, C)
    _fold_tiles(dV, rows[:, :, :, 0], rows[:, :, :, 1], TH)
    rows = rows.reshape(4, n, 2 * TH + 2, TW, C)
    halves = np.empty((2, n, 2 * TH + 2, TW + 1, C), dtype=dV.dtype)  # even and odd padded columns
    _fold_tiles(rows, halves[0], halves[1], TW)
    merge_columns(halves, pads, out)


def _fold_tiles(d, even, odd, T: int) -> None:
    """B applied to the four tile rows d[0..3] (tiles along axis 2 of each), summed where tiles overlap:
    even[k] = d0[k] + (d1 + d2 - d0)[k-1], odd[k] = (d1 - d2 + d3)[k] - d3[k-1], for k = 0..T.
    Three adds per output row, the fewest two-operand ufuncs can do it in."""
    d0, d1, d2, d3 = d
    s = d1 + d2
    s -= d0
    even[:, :, 0] = d0[:, :, 0]
    np.add(d0[:, :, 1:], s[:, :, : T - 1], out=even[:, :, 1:T])
    even[:, :, T] = s[:, :, T - 1]
    np.subtract(d1, d2, out=s)
    s += d3
    np.subtract(s[:, :, 1:], d3[:, :, : T - 1], out=odd[:, :, 1:T])
    odd[:, :, 0] = s[:, :, 0]
    np.negative(d3[:, :, T - 1], out=odd[:, :, T])


def _output2(M: np.ndarray, n: int, tiles_hw, out: np.ndarray) -> None:
    """A^T m A of every tile of M (16, n*TH*TW, F) into out, (n*2TH*2TW, F) in (image, row, column) order."""
    TH, TW = tiles_hw
    M = M.reshape(4, 4, n, TH, TW, -1)
    y = out.reshape(n, TH, 2, TW, 2, -1)
    for a, r in enumerate((M[0] + M[1] + M[2], M[1] - M[2] - M[3])):  # A^T over rows, then columns (written
        np.add(r[0] + r[1], r[2], out=y[:, :, a, :, 0])  # straight to every other column: no faster split)
        np.subtract(r[1] - r[2], r[3], out=y[:, :, a, :, 1])


def _output2_adjoint(dy: np.ndarray) -> np.ndarray:
    """dM = A dY A^T of each 2x2 block of dy (n, 2TH, 2TW, F): the gradient of _output2's M, as
    (16, n*TH*TW, F), with its fourth row and column negated (F2x2.signs restores them)."""
    n, H, W, F = dy.shape
    TH, TW = H // 2, W // 2
    e, o = split_columns(dy, ((0, 0), (0, 0)), TW)
    dM = np.empty((4, 4, n, TH, TW, F), dtype=dy.dtype)
    for c, j in ((e, 0), (o, 3)):  # A = [[1,0],[1,1],[1,-1],[0,-1]] over rows, its last row's sign left out
        r0, r1 = c[:, 0::2], c[:, 1::2]
        dM[0, j] = r0
        np.add(r0, r1, out=dM[1, j])
        np.subtract(r0, r1, out=dM[2, j])
        dM[3, j] = r1
    np.add(dM[:, 0], dM[:, 3], out=dM[:, 1])  # then over columns
    np.subtract(dM[:, 0], dM[:, 3], out=dM[:, 2])
    return dM.reshape(16, n * TH * TW, F)


class F2x2:
    """Winograd F(2x2, 3x3): 4x4 input tiles at stride 2, 16 products, 2.25 times fewer multiply-adds than
    im2col. B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]], A^T = [[1,1,1,0],[0,1,-1,-1]]."""

    m = 2
    G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
    # the adjoint dM is built with its fourth row and column negated (no negation passes); the products
    # that read it take these signs back, on their small (C, F) operands
    signs = np.outer([1, 1, 1, -1], [1, 1, 1, -1]).reshape(16, 1, 1)
    input, input_adjoint = staticmethod(_input2), staticmethod(_input2_adjoint)
    output, output_adjoint = staticmethod(_output2), staticmethod(_output2_adjoint)


def conv_forward_winograd_nhwc(x: np.ndarray, W: np.ndarray, pads, out_hw, keep: bool, scheme=F2x2):
    """conv_forward_nhwc for a 3x3, stride-1 conv by Winograd F(m x m, 3x3), output sides multiples of m.
    x: the unpadded input, (N, H, W, C), padded by pads on the way into the transform; scheme: F2x2
    or winograd_f4.F4x4 (its transforms, G and m).

    (m+2)^2 products of (tiles, C) by (C, F) instead of one of (pixels, 9C) by (9C, F), and transforms
    of the input and output in place of im2col's nine-fold copy, a few images at a time so the
    transformed tiles stay in cache. Returns y (N*OH*OW, F) and, when keep, the transformed input
    blocks (winograd_backward's).
    """
    N, _, _, C = x.shape
    OH, OW = out_hw
    tiles = (OH // scheme.m, OW // scheme.m)
    U = winograd_weights(W, C, scheme.G)
    step = max(1, WINOGRAD_CHUNK_BYTES // (len(U) * tiles[0] * tiles[1] * C * x.itemsize))
    y = np.empty((N * OH * OW, W.shape[1]), dtype=np.result_type(x, W))
    blocks = []
    for start in range(0, N, step):
        V = scheme.input(x[start : start + step], pads, tiles)
        n = V.shape[1] // (tiles[0] * tiles[1])
        scheme.output(np.matmul(V, U), n, tiles, y[start * OH * OW : (start + n) * OH * OW])
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
    tiles = (OH // scheme.m, OW // scheme.m)
    F = dym.shape[1]
    signs = scheme.signs.astype(dym.dtype)  # of the tile positions whose dM the adjoint built negated
    Ut = (winograd_weights(W, C, scheme.G) * signs).transpose(0, 2, 1) if input_grad else None
    dx = np.empty(in_shape, dtype=dym.dtype) if input_grad else None
    dU, start = None, 0
    for V in blocks:
        n = V.shape[1] // (tiles[0] * tiles[1])
        dM = scheme.output_adjoint(dym[start * OH * OW : (start + n) * OH * OW].reshape(n, OH, OW, F))
        part = np.matmul(V.transpose(0, 2, 1), dM)
        dU = part if dU is None else dU + part
        if input_grad:
            scheme.input_adjoint(np.matmul(dM, Ut), tiles, pads, dx[start : start + n])
        start += n
    dU *= signs
    G = scheme.G.astype(dym.dtype)
    rows = (G.T @ dU.reshape(len(G), -1)).reshape(3, len(G), -1)
    return (G.T @ rows).reshape(9 * C, F), dx
