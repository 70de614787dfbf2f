"""Optimizers: step(params, grads, lr) updates arrays in place by their stable names.

State is {param_name: {slot: array}} plus the step count t; state_dict() flattens
it to npz keys `optim/<param_name>/<slot>` and `optim/t`.
"""

from __future__ import annotations

import math

import numpy as np

from ..registry import OPTIMIZERS


def _number(value, name: str, low: float, high: float = math.inf, low_open=False, high_open=True) -> float:
    """value as float, or ValueError "name must be in [low, high), got value"."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok:
        value = float(value)
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        hi = "inf" if high == math.inf else f"{high:g}"
        raise ValueError(f"{name}: must be a number in {left}{low:g}, {hi}{right}, got {value!r}")
    return value


def decays(name: str) -> bool:
    """Weight decay applies to weights (`*.W`), not to biases or normalisation parameters."""
    return name.endswith(".W")


class Optimizer:
    """Base: holds lr, weight_decay (L2 added to the gradient: g + wd * p) and per-parameter slots."""

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0):
        self.lr = _number(lr, "lr", 0.0, low_open=True)
        self.weight_decay = _number(weight_decay, "weight_decay", 0.0)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.t = 0

    def slot(self, name: str, slot: str, like: np.ndarray) -> np.ndarray:
        """The named state array of a parameter, created as zeros on first use."""
        slots = self.state.setdefault(name, {})
        if slot not in slots:
            slots[slot] = np.zeros_like(like)
        return slots[slot]

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        self.t += 1
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay and decays(name):
                g = g + self.weight_decay * p
            self.update(name, p, g, lr)

    def update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"optim/t": np.array(self.t, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, value in slots.items():
                out[f"optim/{name}/{slot}"] = value
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["optim/t"])
        self.state = {}
        for key, value in state.items():
            if key != "optim/t" and key.startswith("optim/"):
                name, slot = key[len("optim/"):].rsplit("/", 1)
                self.state.setdefault(name, {})[slot] = np.array(value)


@OPTIMIZERS.register("sgd")
class SGD(Optimizer):
    """p <- p - lr * g."""

    def update(self, name, p, g, lr):
        p -= lr * g


@OPTIMIZERS.register("adam")
class Adam(Optimizer):
    """m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;  t starts at 1.

    Bias-corrected (Kingma and Ba, 2015): p <- p - lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
    With bias_correction: false, p <- p - lr * m / (sqrt(v) + eps).
    """

    def __init__(self, lr: float = 0.001, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: bool = True):
        super().__init__(lr, weight_decay)
        if not (isinstance(betas, (list, tuple)) and len(betas) == 2):
            raise ValueError(f"betas: must be a pair [beta1, beta2], got {betas!r}")
        self.b1 = _number(betas[0], "betas[0]", 0.0, 1.0)
        self.b2 = _number(betas[1], "betas[1]", 0.0, 1.0)
        self.eps = _number(eps, "eps", 0.0, low_open=True)
        self.bias_correction = bool(bias_correction)

    def update(self, name, p, g, lr):
        m = self.slot(name, "m", like=p)
        v = self.slot(name, "v", like=p)
        m *= self.b1
        m += (1 - self.b1) * g
        v *= self.b2
        v += (1 - self.b2) * (g * g)
        c1, c2 = (1 - self.b1 ** self.t, 1 - self.b2 ** self.t) if self.bias_correction else (1.0, 1.0)
        # lr * (m/c1) / (sqrt(v/c2) + eps), rearranged so only one full-size temporary is made
        denom = np.sqrt(v)
        denom /= math.sqrt(c2)
        denom += self.eps
        p -= (lr / c1) * m / denom
