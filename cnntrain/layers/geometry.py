"""Window geometry shared by the conv and pool layers: output sizes and padding of NCHW arrays."""

from __future__ import annotations

import numpy as np


def out_size(size: int, kernel: int, stride: int, pad: tuple[int, int], dilation: int = 1) -> int:
    """floor((size + pad_lo + pad_hi - dilation*(kernel-1) - 1) / stride) + 1, may be <= 0."""
    span = dilation * (kernel - 1) + 1
    return (size + pad[0] + pad[1] - span) // stride + 1


def same_pad(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow/Keras 'same': out = ceil(size / stride), extra padding at the end."""
    span = dilation * (kernel - 1) + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, size_hw, kernel_hw, stride_hw, dilation_hw=(1, 1)):
    """'valid' | 'same' | int | (ph, pw) | ((top, bottom), (left, right)) -> ((t, b), (l, r))."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return tuple(same_pad(s, k, st, d) for s, k, st, d in zip(size_hw, kernel_hw, stride_hw, dilation_hw))
    if isinstance(padding, bool):
        raise ValueError(f"padding: must be 'valid', 'same', an int or a pair, got {padding!r}")
    if isinstance(padding, (int, np.integer)):
        padding = (int(padding), int(padding))
    if isinstance(padding, (list, tuple)) and len(padding) == 2:
        sides = []
        for p in padding:
            if isinstance(p, (list, tuple)) and len(p) == 2:
                sides.append((int(p[0]), int(p[1])))
            elif isinstance(p, (int, np.integer)) and not isinstance(p, bool):
                sides.append((int(p), int(p)))
            else:
                break
        else:
            if min(min(s) for s in sides) < 0:
                raise ValueError(f"padding: must be >= 0, got {padding!r}")
            return tuple(sides)
    raise ValueError(f"padding: must be 'valid', 'same', an int or a pair, got {padding!r}")


def pad(x: np.ndarray, padding, value: float = 0.0) -> np.ndarray:
    """Pad the two spatial axes of an NCHW array; returns x itself when there is nothing to pad."""
    (t, b), (l, r) = padding
    if t == b == l == r == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=value)


def unpad(dxp: np.ndarray, padding) -> np.ndarray:
    """Inverse of `pad` for gradients: the interior of a padded array."""
    (t, b), (l, r) = padding
    H, W = dxp.shape[2] - t - b, dxp.shape[3] - l - r
    return dxp[:, :, t : t + H, l : l + W]
