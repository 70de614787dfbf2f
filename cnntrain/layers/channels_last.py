"""Channels-last kernels behind conv2d and batchnorm: im2col, GEMMs (max pooling's: maxpool_kernels.py).

Arrays keep their logical NCHW shape everywhere, but conv outputs are NCHW-shaped views of NHWC
memory (PyTorch's channels_last): a window's KH*KW*C values are then contiguous runs, im2col is
one strided copy, and the GEMM writes NHWC directly. reference.py holds the textbook loops each
kernel here must agree with.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

def nhwc(x: np.ndarray) -> np.ndarray:
    """The (N, H, W, C) array behind an NCHW-shaped one: free for channels-last memory, else one copy."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nchw(xh: np.ndarray) -> np.ndarray:
    """An NCHW-shaped view of (N, H, W, C) memory."""
    return xh.transpose(0, 3, 1, 2)


def pad_nhwc(xh: np.ndarray, padding, value: float = 0.0) -> np.ndarray:
    (t, b), (l, r) = padding
    if t == b == l == r == 0:
        return xh
    N, H, W, C = xh.shape
    out = np.full((N, H + t + b, W + l + r, C), value, dtype=xh.dtype)
    out[:, t : t + H, l : l + W] = xh
    return out


FEW_CHANNELS = 4  # at most this many input channels, im2col copies offset by offset (see im2col_nhwc)


def im2col_nhwc(xp: np.ndarray, kernel, stride, dilation, out_hw) -> np.ndarray:
    """Padded (N, Hp, Wp, C) -> (N*OH*OW, KH*KW*C), rows in (n, oh, ow) order, columns in (kh, kw, c) order.

    With few channels (a first layer on images) a window row holds only C contiguous values and
    a strided copy crawls; then the matrix is built transposed, one (N, OH, OW) block per kernel
    offset and channel, and returned as a (P, KH*KW*C) view of it, which BLAS reads as well.
    """
    N, _, _, C = xp.shape
    if C <= FEW_CHANNELS:
        (sh, sw), (OH, OW) = stride, out_hw
        cols = np.empty((kernel[0], kernel[1], C, N, OH, OW), dtype=xp.dtype)
        for i in range(kernel[0]):
            for j in range(kernel[1]):
                top, left = i * dilation[0], j * dilation[1]
                window = xp[:, top : top + sh * (OH - 1) + 1 : sh, left : left + sw * (OW - 1) + 1 : sw]
                cols[i, j] = window.transpose(3, 0, 1, 2)
        return cols.reshape(kernel[0] * kernel[1] * C, N * OH * OW).T
    sN, sH, sW, sC = xp.strides
    win = as_strided(xp, shape=(N, out_hw[0], out_hw[1], kernel[0], kernel[1], C),
                     strides=(sN, sH * stride[0], sW * stride[1], sH * dilation[0], sW * dilation[1], sC),
                     writeable=False)
    return np.ascontiguousarray(win).reshape(N * out_hw[0] * out_hw[1], kernel[0] * kernel[1] * C)


def conv_input_grad_nhwc(dym: np.ndarray, W: np.ndarray, padded_shape, kernel, stride, dilation, out_hw) -> np.ndarray:
    """Gradient of a padded (N, Hp, Wp, C) conv input from dy as (N*OH*OW, F) and W as (KH*KW*C, F).

    One GEMM and one strided add per kernel offset: each GEMM writes a contiguous (N*OH*OW, C)
    block, so the adds read contiguous memory (one big GEMM followed by col2im would read
    (KH, KW)-strided memory instead).
    """
    N, Hp, Wp, C = padded_shape
    (sh, sw), (OH, OW) = stride, out_hw
    dxp = np.zeros(padded_shape, dtype=dym.dtype)
    Wo = W.reshape(kernel[0] * kernel[1], C, -1)
    for o in range(kernel[0] * kernel[1]):
        i, j = divmod(o, kernel[1])
        top, left = i * dilation[0], j * dilation[1]
        dxp[:, top : top + sh * (OH - 1) + 1 : sh, left : left + sw * (OW - 1) + 1 : sw] += (
            dym @ Wo[o].T).reshape(N, OH, OW, C)
    return dxp


def column_sums(m: np.ndarray) -> np.ndarray:
    """m.sum(axis=0) as a matrix-vector product: BLAS reads a tall m once in cache-friendly order,
    where NumPy's pairwise reduction over axis 0 strides across rows."""
    return np.ones(m.shape[0], dtype=m.dtype) @ m


CHUNK_BYTES = 4 << 20  # column-matrix bytes per GEMM: small enough to stay in cache from copy to product


def conv_forward_nhwc(xp: np.ndarray, W: np.ndarray, kernel, stride, dilation, out_hw, keep: bool):
    """y = im2col(xp) @ W as (N*OH*OW, F), a few images at a time; also the column blocks when keep.

    Copying a block and multiplying it at once keeps it in cache, where one whole-batch column
    matrix would be written to memory and read back.
    """
    N, _, _, C = xp.shape
    OH, OW = out_hw
    per_image = OH * OW * kernel[0] * kernel[1] * C * xp.itemsize
    step = max(1, CHUNK_BYTES // per_image)
    y = np.empty((N * OH * OW, W.shape[1]), dtype=np.result_type(xp, W))
    blocks = []
    for start in range(0, N, step):
        cols = im2col_nhwc(xp[start : start + step], kernel, stride, dilation, out_hw)
        np.matmul(cols, W, out=y[start * OH * OW : (start + len(cols) // (OH * OW)) * OH * OW])
        if keep:
            blocks.append(cols)
    return y, blocks


BAND = 4  # output columns per row of the banded product (conv_forward_banded_nhwc)


def banded_weights(W: np.ndarray, kernel, channels: int, band: int = BAND) -> np.ndarray:
    """W as (KH*KW*C, F) -> the (KH*(band+KW-1)*C, band*F) matrix that maps a band of input columns
    to `band` neighbouring outputs: block (kh, w, c) -> (j, f) holds W[kh, w-j, c, f] where 0 <= w-j < KW."""
    (KH, KW), C, F = kernel, channels, W.shape[1]
    Wk = W.reshape(KH, KW, C, F)
    T = np.zeros((KH, band + KW - 1, C, band, F), dtype=W.dtype)
    for j in range(band):
        T[:, j : j + KW, :, j, :] = Wk
    return T.reshape(KH * (band + KW - 1) * C, band * F)


def band_rows(xp: np.ndarray, kernel, out_hw, band: int = BAND) -> np.ndarray:
    """Padded (N, Hp, Wp, C), Wp = band*nb + KW - 1 -> (N*OH*nb, KH*(band+KW-1)*C): for each output row
    and band of `band` outputs, the KH input rows' band+KW-1 columns under it (what banded_weights maps)."""
    N, _, _, C = xp.shape
    (KH, KW), (OH, OW) = kernel, out_hw
    width, nb = band + KW - 1, OW // band
    sN, sH, sW, sC = xp.strides
    win = as_strided(xp, shape=(N, OH, nb, KH, width, C), strides=(sN, sH, band * sW, sH, sW, sC), writeable=False)
    return np.ascontiguousarray(win).reshape(N * OH * nb, KH * width * C)


def conv_forward_banded_nhwc(xp: np.ndarray, W: np.ndarray, kernel, out_hw, keep: bool):
    """conv_forward_nhwc for stride 1 and few filters: the same (N*OH*OW, F) y and its row blocks.

    With F < 8 filters im2col's product has too few columns for OpenBLAS's kernels (a 5x5, 6-filter
    conv ran at 29-42 GFLOP/s). Here each row of the product makes BAND outputs from a band of
    BAND+KW-1 input columns (band_rows, a copy of KH*(BAND+KW-1)/(KH*KW) of im2col's values) times
    banded_weights, BAND*F columns wide. It does (BAND+KW-1)/KW times the multiply-adds and
    still wins: LeNet-5's first conv, 32 images, forward and weight gradient, 577 -> 417 us.
    When OW is not a multiple of BAND, xp gets columns of zeros that make whole bands, and their
    outputs are cropped.
    """
    N, _, _, C = xp.shape
    (KH, KW), (OH, OW) = kernel, out_hw
    extra = -OW % BAND
    if extra:
        xp = pad_nhwc(xp, ((0, 0), (0, extra)))
    T = banded_weights(W, kernel, C)
    nb = (OW + extra) // BAND
    per_image = OH * nb * KH * (BAND + KW - 1) * C * xp.itemsize
    step = max(1, CHUNK_BYTES // per_image)
    y = np.empty((N * OH * nb, BAND * W.shape[1]), dtype=np.result_type(xp, W))
    blocks = []
    for start in range(0, N, step):
        rows = band_rows(xp[start : start + step], kernel, (OH, OW + extra))
        np.matmul(rows, T, out=y[start * OH * nb : start * OH * nb + len(rows)])
        if keep:
            blocks.append(rows)
    F = W.shape[1]
    if extra:
        return np.ascontiguousarray(y.reshape(N, OH, OW + extra, F)[:, :, :OW]).reshape(-1, F), blocks
    return y.reshape(N * OH * OW, F), blocks


def banded_weight_grad(blocks, dym: np.ndarray, kernel, channels: int, out_hw) -> np.ndarray:
    """The weight gradient (KH*KW*C, F) of conv_forward_banded_nhwc from its row blocks and dy (N*OH*OW, F):
    the banded matrix's gradient, each of its BAND copies of W summed back."""
    (KH, KW), C, F, (OH, OW) = kernel, channels, dym.shape[1], out_hw
    extra = -OW % BAND
    if extra:  # the forward's cropped outputs: zeros
        padded = np.zeros((len(dym) // (OH * OW), OH, OW + extra, F), dtype=dym.dtype)
        padded[:, :, :OW] = dym.reshape(-1, OH, OW, F)
        dym = padded
    dyb = dym.reshape(-1, BAND * F)
    dT, start = None, 0
    for rows in blocks:
        part = rows.T @ dyb[start : start + len(rows)]
        dT = part if dT is None else dT + part
        start += len(rows)
    dT = dT.reshape(KH, BAND + KW - 1, C, BAND, F)
    dW = dT[:, 0:KW, :, 0, :].copy()
    for j in range(1, BAND):
        dW += dT[:, j : j + KW, :, j, :]
    return dW.reshape(KH * KW * C, F)


def conv_input_grad_flipped_nhwc(dym: np.ndarray, W: np.ndarray, in_shape, pads, kernel, dilation,
                                 out_hw) -> np.ndarray:
    """Gradient of an unpadded (N, H, W, C) input of a stride-1 conv, as a convolution of dy.

    dx = dy, padded by the kernel's extent, correlated with the kernel flipped in both axes and
    with F and C swapped: im2col of the padded dy and one GEMM per few images, the forward's
    structure. For padded convolutions with 32+ input channels it beats conv_input_grad_nhwc by
    up to 35% (one product with F*KH*KW inner terms instead of KH*KW with F each, and no padded
    array to zero, add into and crop); with fewer channels its product is too narrow, and
    without padding dy's border of zeros makes it the slower one (Conv2D.backward chooses).
    """
    N, H, Wd, C = in_shape
    (KH, KW), (dh, dw), (OH, OW) = kernel, dilation, out_hw
    F = dym.shape[1]
    (t, _), (l, _) = pads
    eh, ew = (KH - 1) * dh, (KW - 1) * dw
    # padded dy: row u holds dy[u - eh + t], so window row h + i*dh meets dy[h + t - (KH-1-i)*dh]
    top, left = eh - t, ew - l
    dyp = np.zeros((N, H + eh, Wd + ew, F), dtype=dym.dtype)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(H + eh, top + OH), min(Wd + ew, left + OW)
    dyp[:, r0:r1, c0:c1] = dym.reshape(N, OH, OW, F)[:, r0 - top : r1 - top, c0 - left : c1 - left]
    flipped = W.reshape(KH, KW, C, F)[::-1, ::-1].transpose(0, 1, 3, 2)
    flipped = np.ascontiguousarray(flipped).reshape(KH * KW * F, C)
    dx, _ = conv_forward_nhwc(dyp, flipped, kernel, (1, 1), dilation, (H, Wd), keep=False)
    return dx.reshape(N, H, Wd, C)


def conv_input_grad_shifts_nhwc(dym: np.ndarray, W: np.ndarray, padded_shape, pads, kernel, dilation,
                                out_hw) -> np.ndarray:
    """Gradient of the unpadded (N, H, W, C) input of a stride-1 conv with few channels.

    Channels first and every image on the padded input's own grid: dy goes into an (F, N, Hp, Wp)
    array of zeros, one product W (KH*KW*C, F) @ dy gives every kernel offset's contribution at
    once, and offset (i, j) is then the same (C, N*Hp*Wp) rows moved i*Wp + j places, so each
    add is C long runs instead of an (N, OH, OW, C) window with short ones. A shift never carries
    a value into the next image: only dy's zero rows and columns cross. With C < 16 it beat
    conv_input_grad_nhwc by 15-30% (lenet5's 6-channel 5x5 conv: 1.59 -> 1.10 ms a share).
    """
    N, Hp, Wp, C = padded_shape
    (KH, KW), (dh, dw), (OH, OW) = kernel, dilation, out_hw
    F = dym.shape[1]
    size = N * Hp * Wp
    grid = np.zeros((F, N, Hp, Wp), dtype=dym.dtype)
    grid[:, :, :OH, :OW] = dym.T.reshape(F, N, OH, OW)
    parts = (W @ grid.reshape(F, size)).reshape(KH * KW, C, size)
    dxt = np.zeros((C, size), dtype=dym.dtype)
    for o in range(KH * KW):
        i, j = divmod(o, KW)
        shift = i * dh * Wp + j * dw
        dxt[:, shift:] += parts[o, :, : size - shift]
    (t, b), (l, r) = pads
    inner = dxt.reshape(C, N, Hp, Wp)[:, :, t : Hp - b, l : Wp - r]
    return np.ascontiguousarray(inner.transpose(1, 2, 3, 0))  # channels-last, as every layer here expects
