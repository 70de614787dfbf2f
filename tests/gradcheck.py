"""Central finite differences in float64, compared by relative error."""

from __future__ import annotations

import numpy as np


def numeric_grad(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d x by central differences, perturbing x in place one entry at a time."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        fp = f()
        x[i] = old - eps
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * eps)
    return grad


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max |a|, max |b|): scale-free, about 1e-9 for a correct float64 backward."""
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), 1e-12)
    return float(np.abs(a - b).max(initial=0) / scale)


def check_layer(layer, x: np.ndarray, rng: np.random.Generator, before_forward=None, tol: float = 1e-6) -> dict:
    """Relative errors of dx and of every parameter gradient of `layer` at x, against a random dy."""
    def out():
        if before_forward is not None:
            before_forward()
        return layer.forward(x, training=True)

    y = out()
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    analytic = {"x": dx, **{k: v.copy() for k, v in layer.grads.items()}}
    targets = {"x": x, **layer.params}

    def loss():
        value = float(np.sum(out() * dy))
        layer._cache = None
        return value

    errors = {name: rel_error(analytic[name], numeric_grad(loss, arr)) for name, arr in targets.items()}
    bad = {k: e for k, e in errors.items() if not e < tol}
    assert not bad, f"{type(layer).__name__} on x{x.shape}: gradient relative errors {bad} exceed {tol}"
    return errors
