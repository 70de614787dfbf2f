"""Training-time augmentation of uint8 batches (B, C, H, W), vectorised over the batch.

Each step is a callable (x, rng) -> new array of the same shape and dtype. `Augment`
seeds one Generator per (seed, epoch, batch), so a resumed run redraws exactly the
same crops and flips without storing any RNG state.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..registry import AUGMENTATIONS, did_you_mean

AUGMENT_STREAM = 2  # spawn_key component: 0 is the model (experiment.py), 1 shuffling (loader.py)
PADDING_MODES = ("constant", "reflect", "edge")  # np.pad modes (torchvision's constant/reflect/edge)


def _int_option(value, key: str, low: int = 0, high: int | None = None) -> int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{key}: must be an integer {bound}, got {value!r}")
    return int(value)


def _batch_shape(x: np.ndarray) -> tuple[int, int, int, int]:
    if x.ndim != 4:
        raise ValueError(f"augmentation expects a batch (B, C, H, W), got shape {x.shape}")
    return x.shape


def crop(x_padded: np.ndarray, oy: np.ndarray, ox: np.ndarray, H: int, W: int) -> np.ndarray:
    """out[i] = x_padded[i, :, oy[i]:oy[i]+H, ox[i]:ox[i]+W].  (B, C, HP, WP) -> (B, C, H, W)."""
    windows = sliding_window_view(x_padded, (H, W), axis=(2, 3))  # (B, C, HP-H+1, WP-W+1, H, W), no copy
    # The three index arrays are split by a slice, so their broadcast axis B comes first: (B, C, H, W).
    return windows[np.arange(len(x_padded)), :, oy, ox]


def pad(x: np.ndarray, pad_y: int, pad_x: int, mode: str, fill=0) -> np.ndarray:
    """np.pad of H by pad_y and W by pad_x on both sides.  (B, C, H, W) -> (B, C, H+2*pad_y, W+2*pad_x)."""
    if mode != "constant":
        return np.pad(x, ((0, 0), (0, 0), (pad_y, pad_y), (pad_x, pad_x)), mode=mode)
    B, C, H, W = x.shape
    out = np.full((B, C, H + 2 * pad_y, W + 2 * pad_x), fill, dtype=x.dtype)  # 4x faster than np.pad here
    out[:, :, pad_y:pad_y + H, pad_x:pad_x + W] = x
    return out


def random_crop(x: np.ndarray, rng: np.random.Generator, pad_y: int, pad_x: int, mode: str, fill) -> np.ndarray:
    """Pad H by pad_y and W by pad_x on both sides, then crop (H, W) at offsets uniform in 0..2*pad."""
    B, _, H, W = _batch_shape(x)
    oy = rng.integers(0, 2 * pad_y + 1, size=B)
    ox = rng.integers(0, 2 * pad_x + 1, size=B)
    return crop(pad(x, pad_y, pad_x, mode, fill), oy, ox, H, W)


@AUGMENTATIONS.register("random_crop")
class RandomCrop:
    """Pad each side by `padding` (np.pad mode), crop the original (H, W) at a uniform random offset.

    torchvision's RandomCrop(size, padding); the offset is drawn per sample in 0..2*padding on each axis.
    """

    def __init__(self, padding: int = 4, padding_mode: str = "constant", fill: int = 0):
        self.padding = _int_option(padding, "padding")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode: must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}"
                             f"{did_you_mean(padding_mode, PADDING_MODES)}")
        self.padding_mode = padding_mode
        self.fill = _int_option(fill, "fill", 0, 255)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_crop(x, rng, self.padding, self.padding, self.padding_mode, self.fill)

    def get_config(self) -> dict:
        return {"padding": self.padding, "padding_mode": self.padding_mode, "fill": self.fill}


@AUGMENTATIONS.register("random_shift")
class RandomShift:
    """Translate each sample by integer dx in -max_dx..max_dx, dy in -max_dy..max_dy; uncovered pixels = fill.

    Keras width/height_shift_range in pixels. A shift by (dx, dy) is a crop of the
    fill-padded image at offset (max_dy - dy, max_dx - dx), so this reuses `random_crop`.
    """

    def __init__(self, max_dx: int = 2, max_dy: int = 2, fill: int = 0):
        self.max_dx = _int_option(max_dx, "max_dx")
        self.max_dy = _int_option(max_dy, "max_dy")
        self.fill = _int_option(fill, "fill", 0, 255)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return random_crop(x, rng, self.max_dy, self.max_dx, "constant", self.fill)

    def get_config(self) -> dict:
        return {"max_dx": self.max_dx, "max_dy": self.max_dy, "fill": self.fill}


@AUGMENTATIONS.register("hflip")
class HorizontalFlip:
    """Flip each sample left-right (reverse W) with probability p."""

    def __init__(self, p: float = 0.5):
        ok = isinstance(p, numbers.Real) and not isinstance(p, bool) and 0 <= p <= 1  # False for NaN
        if not ok:
            raise ValueError(f"p: must be a number in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        B = _batch_shape(x)[0]
        flip = rng.random(B) < self.p  # random() is in [0, 1): p=0 never flips, p=1 always does
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def get_config(self) -> dict:
        return {"p": self.p}


def augment_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The Generator of one batch: a function of (seed, epoch, batch) alone, so resuming needs no RNG state."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(AUGMENT_STREAM, epoch, batch)))


class Augment:
    """Applies steps in order with a Generator that is a function of (seed, epoch, batch) alone."""

    def __init__(self, steps: list):
        self.steps = list(steps)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def __call__(self, x: np.ndarray, seed: int, epoch: int, batch: int) -> np.ndarray:
        """A new augmented batch (x is never written); x itself when there are no steps."""
        if not self.steps:
            return x
        rng = augment_rng(seed, epoch, batch)
        for step in self.steps:
            x = step(x, rng)
        return x
