"""Winograd F(4x4, 3x3) (Lavin and Gray, 2016): each 4x4 block of outputs from a 6x6 input tile at
stride 4, 36 products of (tiles, C) by (C, F) per 16 outputs, 4 times fewer multiply-adds than
im2col (F(2x2, 3x3): 2.25 times). Its transforms take more adds per value, but on tiles that
hold 2.25 values per input value instead of 4; the driver is winograd.py's, this module is the
scheme: the matrices (interpolation points 0, 1, -1, 2, -2 and infinity) and their four
transforms, as common-subexpression sequences of NumPy adds over whole rows of tiles:

B^T = [[4,0,-5,0,1,0], [0,-4,-4,1,1,0], [0,4,-4,-1,1,0], [0,-2,-1,2,1,0], [0,2,-1,-2,1,0], [0,4,0,-5,0,1]]
A^T = [[1,1,1,1,1,0], [0,1,-1,2,-2,0], [0,1,1,4,4,0], [0,1,-1,8,-8,1]]

Columns are split four ways (column 4k + r in phase r) so that tile t's six columns are phases
0-3 at t and 0-1 at t + 1, contiguous slices.
"""

from __future__ import annotations

import numpy as np

from .winograd import merge_columns, split_columns


def _bt6(d, out) -> None:
    """B^T along one axis: six arrays d -> six out (written with out=; none of them may alias d)."""
    d0, d1, d2, d3, d4, d5 = d
    v0, v1, v2, v3, v4, v5 = out
    t1 = np.multiply(d2, 4)
    np.subtract(d4, t1, out=t1)  # d4 - 4 d2
    t2 = np.multiply(d1, 4)
    np.subtract(d3, t2, out=t2)  # d3 - 4 d1
    np.add(t1, t2, out=v1)
    np.subtract(t1, t2, out=v2)
    c = np.subtract(d4, d2, out=t1)
    e = np.subtract(d3, d1, out=t2)
    e *= 2  # 2 (d3 - d1)
    np.add(c, e, out=v3)
    np.subtract(c, e, out=v4)
    np.subtract(d0, d2, out=v0)
    v0 *= 4
    v0 += c  # 4 d0 - 5 d2 + d4
    np.subtract(d5, d3, out=v5)
    e *= 2
    v5 -= e  # 4 d1 - 5 d3 + d5


def _input4(x: np.ndarray, pads, tiles_hw) -> np.ndarray:
    """V = B^T d B of every 6x6 tile at stride 4 of x (n, H, W, C) zero padded by pads, as (36, n*TH*TW, C).

    Each stage is one _bt6 over all six tile columns (or rows) at once: with 6x6 tiles the arrays
    are small, and 17 NumPy calls instead of 102 halved the row stage (NumPy's per-call cost).
    """
    n, _, _, C = x.shape
    TH, TW = tiles_hw
    p0, p1, p2, p3 = split_columns(x, pads, TW + 1, phases=4)
    cols = np.empty((6, n, 4 * TH + 2, TW, C), dtype=x.dtype)
    _bt6([p0[:, :, :TW], p1[:, :, :TW], p2[:, :, :TW], p3[:, :, :TW], p0[:, :, 1:], p1[:, :, 1:]], cols)
    V = np.empty((6, 6, n, TH, TW, C), dtype=x.dtype)
    _bt6([cols[:, :, k : k + 4 * TH : 4] for k in range(6)], V)  # then along rows, at stride 4
    return V.reshape(36, n * TH * TW, C)


def _at6(m, out) -> None:
    """A^T along one axis: six arrays m -> four out (the last op of each writes it, so out may be strided)."""
    m0, m1, m2, m3, m4, m5 = m
    a, b = m1 + m2, m1 - m2
    c, d = m3 + m4, m3 - m4
    np.add(m0, a + c, out=out[0])
    np.add(b, d * 2, out=out[1])
    c *= 4
    np.add(a, c, out=out[2])
    d *= 8
    b += d
    np.add(b, m5, out=out[3])


def _output4(M: np.ndarray, n: int, tiles_hw, out: np.ndarray) -> None:
    """A^T m A of every tile of M (36, n*TH*TW, F) into out, (n*4TH*4TW, F) in (image, row, column) order."""
    TH, TW = tiles_hw
    F = M.shape[-1]
    M = M.reshape(6, 6, n, TH, TW, F)
    rows = np.empty((6, n, TH, 4, TW, F), dtype=M.dtype)  # (column j, image, tile row, row a in it, ...)
    _at6(M, list(rows.transpose(3, 0, 1, 2, 4, 5)))  # over rows, for every column at once
    parts = np.empty((4, n, 4 * TH, TW, F), dtype=M.dtype)  # out's columns 4t + b, in phase b
    _at6(rows.reshape(6, n, 4 * TH, TW, F), parts)  # then over columns, for every row at once
    merge_columns(parts, ((0, 0), (0, 0)), out.reshape(n, 4 * TH, 4 * TW, F))


def _a6(y, out) -> None:
    """A (the transpose of A^T) along one axis: four arrays y -> six out."""
    y0, y1, y2, y3 = y
    out[0][...] = y0
    out[5][...] = y3
    p, q = y0 + y2, y1 + y3
    np.add(p, q, out=out[1])
    np.subtract(p, q, out=out[2])
    r = np.multiply(y2, 4, out=p)
    r += y0
    s = np.multiply(y3, 4, out=q)
    s += y1
    s *= 2
    np.add(r, s, out=out[3])
    np.subtract(r, s, out=out[4])


def _output4_adjoint(dy: np.ndarray) -> np.ndarray:
    """dM = A dY A^T of each 4x4 block of dy (n, 4TH, 4TW, F): the gradient of _output4's M, (36, n*TH*TW, F)."""
    n, H, W, F = dy.shape
    TH, TW = H // 4, W // 4
    phases = split_columns(dy, ((0, 0), (0, 0)), TW, phases=4)
    cols = np.empty((6, n, H, TW, F), dtype=dy.dtype)
    _a6(phases, cols)  # over columns
    dM = np.empty((6, 6, n, TH, TW, F), dtype=dy.dtype)
    _a6([cols[:, :, r::4] for r in range(4)], dM)  # then over rows, for every column at once
    return dM.reshape(36, n * TH * TW, F)


def _fold6(dv, parts, T: int) -> None:
    """B along one axis of six tile arrays dv (tiles along axis 2), summed where the tiles overlap into
    the four phases of padded positions 4k + r (parts[r], T + 1 along axis 2): position 4k gets tile
    k's first value and tile k-1's fifth, 4k + 1 tile k's second and tile k-1's sixth.

    B's rows: dd0 = 4 v0, dd1 = 4 (v5 - b) - 2 d, dd2 = -4 t - (v0 + c), dd3 = b + 2 d - 5 v5,
    dd4 = t + c, dd5 = v5, with a, b = v1 +- v2, c, d = v3 +- v4 and t = v0 + a: 19 calls.
    """
    v0, v1, v2, v3, v4, v5 = dv
    p0, p1, p2, p3 = parts
    t, b = v1 + v2, v1 - v2
    c, d = v3 + v4, v3 - v4
    t += v0
    dd4 = t + c
    np.multiply(v0, 4, out=p0[:, :, :T])  # p0[k] = dd0[k] + dd4[k-1]
    p0[:, :, 1:T] += dd4[:, :, : T - 1]
    p0[:, :, T] = dd4[:, :, T - 1]
    c += v0
    t *= -4
    np.subtract(t, c, out=p2[:, :, :T])  # p2[k] = dd2[k]
    p2[:, :, T] = 0
    d *= 2
    dd1 = np.subtract(v5, b)
    dd1 *= 4
    np.subtract(dd1, d, out=p1[:, :, :T])  # p1[k] = dd1[k] + dd5[k-1]
    p1[:, :, 1:T] += v5[:, :, : T - 1]
    p1[:, :, T] = v5[:, :, T - 1]
    np.add(b, d, out=p3[:, :, :T])  # p3[k] = dd3[k]
    np.multiply(v5, 5, out=c)
    p3[:, :, :T] -= c
    p3[:, :, T] = 0


def _input4_adjoint(dV: np.ndarray, tiles_hw, pads, out: np.ndarray) -> None:
    """The gradient of _input4: dV (36, n*TH*TW, C) -> d x, written into out (n, H, W, C)."""
    n, _, _, C = out.shape
    TH, TW = tiles_hw
    dV = dV.reshape(6, 6, n, TH, TW, C)
    rows = np.empty((6, n, TH + 1, 4, TW, C), dtype=dV.dtype)  # (column j, image, padded row 4k + r, ...)
    _fold6(dV, [rows[:, :, :, r] for r in range(4)], TH)
    rows = rows.reshape(6, n, 4 * TH + 4, TW, C)[:, :, : 4 * TH + 2]
    parts = np.empty((4, n, 4 * TH + 2, TW + 1, C), dtype=dV.dtype)  # the four phases of padded columns
    _fold6(rows, list(parts), TW)
    merge_columns(parts, pads, out)


class F4x4:
    """The F(4x4, 3x3) scheme for winograd.conv_forward_winograd_nhwc and winograd_backward."""

    m = 4
    G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    signs = np.ones((36, 1, 1))  # its adjoint builds dM as it is
    input, input_adjoint = staticmethod(_input4), staticmethod(_input4_adjoint)
    output, output_adjoint = staticmethod(_output4), staticmethod(_output4_adjoint)
