"""Losses: forward(outputs, y) -> mean loss over the batch; backward() -> d loss / d outputs."""

from __future__ import annotations

import numpy as np

from .flat import flat_pair
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


def one_hot(y: np.ndarray, k: int, dtype) -> np.ndarray:
    out = np.zeros((len(y), k), dtype=dtype)
    out[np.arange(len(y)), y] = 1
    return out


@LOSSES.register("binary_cross_entropy")
class BinaryCrossEntropy(Loss):
    """On logits (logistic regression): L = mean_n [softplus(z_n) - y_n z_n], y in {0, 1}; dL/dz = (sigmoid(z) - y) / N.

    One output unit; the predicted class is 1 when z > 0 (probability > 0.5).
    """

    def forward(self, out, y):
        check_labels(out, y, "binary_cross_entropy")
        if out.shape[1] != 1:
            raise ValueError(f"binary_cross_entropy: expected one output unit, got outputs {out.shape}")
        z = out[:, 0]
        t = y.astype(out.dtype)
        self._cache = (z, t)
        # softplus(z) = max(z, 0) + log1p(exp(-|z|)) never overflows
        return float((np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))) - t * z).mean())

    def backward(self):
        z, t = self._cache
        e = np.exp(-np.abs(z))
        sig = np.where(z >= 0, 1 / (1 + e), e / (1 + e))
        return ((sig - t) / z.dtype.type(len(z)))[:, None]

    def predict(self, out):
        return (out[:, 0] > 0).astype(np.int64)

    def probabilities(self, out):
        p1 = 1 / (1 + np.exp(-np.clip(out[:, 0], -500, 500)))
        return np.stack([1 - p1, p1], axis=1)

    def check_output(self, out_shape, n_classes):
        if n_classes != 2 or out_shape != (1,):
            raise ValueError(f"binary_cross_entropy needs two classes (choose them with data.classes) and a last "
                             f"layer with one output unit, got {n_classes} classes and output {out_shape}")


class _Regression(Loss):
    """A loss between raw outputs (N, K) and the one-hot encoding of integer labels, averaged over N*K."""

    def forward(self, out, y):
        check_labels(out, y, self.registry_name)
        diff = out - one_hot(y, out.shape[1], out.dtype)
        self._cache = diff
        return float(self.value(diff).mean())

    def backward(self):
        diff = self._cache
        return self.grad(diff) / diff.dtype.type(diff.size)

    def probabilities(self, out):
        return out

    def check_output(self, out_shape, n_classes):
        if out_shape != (n_classes,):
            raise ValueError(f"{self.registry_name} needs the last layer to output ({n_classes},) "
                             f"(one value per class), got {out_shape}")


@LOSSES.register("mse")
class MSE(_Regression):
    """L = mean over N*K of (out - onehot(y))^2; dL/dout = 2 (out - onehot) / (N*K)."""

    def value(self, diff):
        return diff * diff

    def grad(self, diff):
        return 2 * diff


@LOSSES.register("l1")
class L1(_Regression):
    """L = mean over N*K of |out - onehot(y)|; dL/dout = sign(out - onehot) / (N*K) (0 at 0)."""

    def value(self, diff):
        return np.abs(diff)

    def grad(self, diff):
        return np.sign(diff)


class L2Penalty:
    """(l2 / 2) * sum ||W||^2 over chosen parameters, so its gradient l2 * W matches weight_decay's.

    `coefs` maps stable parameter names to their l2 coefficient.
    """

    def __init__(self, coefs: dict[str, float]):
        self.coefs = {name: c for name, c in coefs.items() if c}
        self._runs = (None, [])  # (layout, its runs of equal coefficients)

    def __bool__(self) -> bool:
        return bool(self.coefs)

    def apply(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> float:
        """Add the penalty's gradient to grads in place; return the penalty."""
        total = 0.0
        packed = flat_pair(params, grads)
        if packed is not None:  # one pass per run of equal coefficients (weights are packed first)
            p, g = (d.data for d in packed)
            layout = packed[0].layout
            if self._runs[0] is not layout:
                self._runs = (layout, layout.runs(lambda name: self.coefs.get(name, 0.0)))
            for a, b, c in self._runs[1]:
                if c:
                    g[a:b] += c * p[a:b]
                    total += 0.5 * c * float(np.vdot(p[a:b], p[a:b]))
            return total
        for name, c in self.coefs.items():
            p = params[name]
            grads[name] += c * p
            total += 0.5 * c * float(np.vdot(p, p))
        return total
