"""Preprocessing: uint8 images -> float32, as one per-channel affine map x = u8 * scale + offset.

Pixels are first scaled to [0, 1]; each step then rewrites the affine map, so a
batch is converted with a single multiply-add however many steps there are.
"""

from __future__ import annotations

import numpy as np

from ..registry import PREPROCESS


def _per_channel(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be a number or a list of numbers per channel, got {value!r}")
    return arr


@PREPROCESS.register("normalize")
class Normalize:
    """x <- (x - mean) / std on [0, 1]-scaled pixels; mean and std are scalars or one per channel."""

    def __init__(self, mean=0.0, std=1.0):
        self.mean = _per_channel(mean, "mean")
        self.std = _per_channel(std, "std")
        if np.any(self.std <= 0):
            raise ValueError(f"std: must be > 0, got {std!r}")

    def compose(self, scale: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scale / self.std, (offset - self.mean) / self.std


class Preprocess:
    """Callable uint8 (N, C, H, W) -> float32, built from registered steps for C channels."""

    def __init__(self, steps, channels: int, dtype=np.float32):
        scale, offset = np.full(channels, 1 / 255.0), np.zeros(channels)
        for step in steps:
            scale, offset = step.compose(scale, offset)
            if scale.size not in (1, channels):
                raise ValueError(f"a preprocessing step has {scale.size} values per channel, the images have {channels} channels")
        shape = (1, channels, 1, 1)
        self.scale = np.broadcast_to(scale, (channels,)).astype(dtype).reshape(shape)
        self.offset = np.broadcast_to(offset, (channels,)).astype(dtype).reshape(shape)

    def __call__(self, x_u8: np.ndarray) -> np.ndarray:
        out = x_u8.astype(self.scale.dtype)
        out *= self.scale
        out += self.offset
        return out
