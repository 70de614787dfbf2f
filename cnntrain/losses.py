"""Losses: forward(outputs, y) -> mean loss over the batch; backward() -> d loss / d outputs."""

from __future__ import annotations

import numpy as np

from .registry import LOSSES


class Loss:
    """A loss on the network's raw outputs (logits); also knows how to turn them into predictions."""

    def forward(self, out: np.ndarray, y: np.ndarray) -> float:
        raise NotImplementedError

    def backward(self) -> np.ndarray:
        raise NotImplementedError

    def predict(self, out: np.ndarray) -> np.ndarray:
        """Predicted class index per sample."""
        return out.argmax(axis=1)

    def probabilities(self, out: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_output(self, out_shape: tuple[int, ...], n_classes: int) -> None:
        """ValueError when a network's output cannot feed this loss for n_classes."""


def check_labels(out: np.ndarray, y: np.ndarray, name: str) -> None:
    if out.ndim != 2 or y.shape != (out.shape[0],):
        raise ValueError(f"{name}: expected outputs (N, K) and integer labels (N,), got {out.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {y.dtype}")


def log_softmax(z: np.ndarray) -> np.ndarray:
    """z - logsumexp(z) along axis 1, shifted by the row max so exp never overflows."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@LOSSES.register("softmax_cross_entropy")
class SoftmaxCrossEntropy(Loss):
    """L = -mean_n log softmax(z_n)[y_n], fused with softmax: dL/dz = (softmax(z) - onehot(y)) / N."""

    def forward(self, out, y):
        check_labels(out, y, "softmax_cross_entropy")
        logp = log_softmax(out)
        N = out.shape[0]
        self._cache = (logp, y)
        return float(-logp[np.arange(N), y].mean())

    def backward(self):
        logp, y = self._cache
        N = logp.shape[0]
        d = np.exp(logp)
        d[np.arange(N), y] -= 1
        return d / logp.dtype.type(N)

    def probabilities(self, out):
        return np.exp(log_softmax(out))

    def check_output(self, out_shape, n_classes):
        if out_shape != (n_classes,):
            raise ValueError(f"softmax_cross_entropy needs the last layer to output ({n_classes},) "
                             f"(one logit per class), got {out_shape}")
