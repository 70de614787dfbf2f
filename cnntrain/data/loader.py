"""Splits and mini-batches over uint8 image arrays, converted to float32 one batch at a time."""

from __future__ import annotations

import math

import numpy as np

SHUFFLE_STREAM = 1  # spawn_key component that separates shuffling from other seeded streams


def holdout(n: int, validation, split_seed, what: str = "validation") -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with `validation` images (or a fraction) held out at random, both sorted.

    split_seed is an int or a SeedSequence (anything np.random.default_rng takes).
    """
    n_val = int(round(validation * n)) if isinstance(validation, float) else int(validation)
    if n_val >= n:
        raise ValueError(f"{what} holds out {n_val} of only {n} training images")
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The sample order of one epoch: a function of (seed, epoch) alone, so resuming needs no RNG state."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SHUFFLE_STREAM, epoch))).permutation(n)


class BatchLoader:
    """Yields (x uint8 (B, C, H, W), y int64 (B,)) in a seeded per-epoch order.

    The last batch of an epoch is shorter unless drop_last. `augment(x, seed, epoch, batch)`
    (training only) draws from (seed, epoch, batch) alone, so a resumed run sees the same
    images. `transform` turns a uint8 batch into the float32 network input (done by the
    trainer, chunk by chunk).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, preprocess, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, augment=None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y = x, y
        self.batch_size, self.preprocess, self.shuffle, self.seed = batch_size, preprocess, shuffle, seed
        self.drop_last, self.augment = drop_last, augment

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def transform(self, x_u8: np.ndarray) -> np.ndarray:
        return self.preprocess(x_u8)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of each batch of `epoch`, in order."""
        order = epoch_order(len(self.x), self.seed, epoch, self.shuffle)
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(len(self))]

    def epoch(self, epoch: int, start: int = 0):
        """Batches of `epoch` from batch index `start` on."""
        indices = self.batch_indices(epoch)
        for b in range(start, len(self)):
            idx = indices[b]
            x = self.x[idx]
            yield (self.augment(x, self.seed, epoch, b) if self.augment else x), self.y[idx]


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, preprocess):
    """In-order batches for evaluation."""
    for i in range(0, len(x), batch_size):
        yield preprocess(x[i : i + batch_size]), y[i : i + batch_size]
