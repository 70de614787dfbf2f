"""Two-dimensional test functions for watching optimizers: value, gradient, Hessian, trajectories."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ConfigError
from .registry import OPTIMIZERS, did_you_mean


@dataclass(frozen=True)
class Function:
    f: Callable
    grad: Callable
    hess: Callable
    start: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log_levels: bool = False
    about: str = ""
    lr: float = 0.01          # default step size, small enough for plain gradient descent here


def _beale_terms(x, y):
    return [(1.5, 1), (2.25, 2), (2.625, 3)]


def beale(x, y):
    return sum((c - x + x * y**k) ** 2 for c, k in _beale_terms(x, y))


def beale_grad(x, y):
    gx = gy = 0.0
    for c, k in _beale_terms(x, y):
        r = c - x + x * y**k
        gx = gx + 2 * r * (y**k - 1)
        gy = gy + 2 * r * k * x * y ** (k - 1)
    return np.array([gx, gy])


def beale_hess(x, y):
    h = np.zeros((2, 2))
    for c, k in _beale_terms(x, y):
        r = c - x + x * y**k
        rx, ry = y**k - 1, k * x * y ** (k - 1)
        rxy = k * y ** (k - 1)
        ryy = k * (k - 1) * x * y ** (k - 2) if k > 1 else 0.0
        h += 2 * np.array([[rx * rx, rx * ry + r * rxy], [rx * ry + r * rxy, ry * ry + r * ryy]])
    return h


FUNCTIONS = {
    "ravine": Function(lambda x, y: 0.5 * x**2 + 10 * y**2, lambda x, y: np.array([x, 20 * y]),
                       lambda x, y: np.array([[1.0, 0.0], [0.0, 20.0]]), (-4.5, 1.0), (-5, 5), (-1.5, 1.5),
                       about="0.5 x^2 + 10 y^2: an elongated bowl (curvatures 1 and 20)", lr=0.05),
    "saddle": Function(lambda x, y: x**2 - y**2, lambda x, y: np.array([2 * x, -2 * y]),
                       lambda x, y: np.array([[2.0, 0.0], [0.0, -2.0]]), (-1.5, 1e-4), (-2, 2), (-2, 2),
                       about="x^2 - y^2: a saddle at the origin", lr=0.05),
    "rosenbrock": Function(lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2,
                           lambda x, y: np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)]),
                           lambda x, y: np.array([[2 - 400 * (y - x**2) + 800 * x**2, -400 * x], [-400 * x, 200.0]]),
                           (-1.5, 2.0), (-2, 2), (-1, 3), log_levels=True,
                           about="(1 - x)^2 + 100 (y - x^2)^2: a curved valley, minimum at (1, 1)", lr=0.001),
    "beale": Function(beale, beale_grad, beale_hess, (1.0, 1.4), (-0.5, 4), (-1.5, 2), log_levels=True,
                      about="Beale's function, minimum at (3, 0.5)"),
    "two_minima": Function(lambda x, y: x**4 - 4 * x**2 + x + y**2, lambda x, y: np.array([4 * x**3 - 8 * x + 1, 2 * y]),
                           lambda x, y: np.array([[12 * x**2 - 8, 0.0], [0.0, 2.0]]), (2.0, 1.0), (-2.5, 2.5), (-2, 2),
                           about="x^4 - 4 x^2 + x + y^2: a local minimum near x = 1.35, the global one near x = -1.47"),
    "poly": Function(lambda x, y: x**5 + 2 * y**2 - 4 * x * y, lambda x, y: np.array([5 * x**4 - 4 * y, 4 * y - 4 * x]),
                     lambda x, y: np.array([[20 * x**3, -4.0], [-4.0, 4.0]]), (1.5, 0.5), (-1, 2), (-1, 2),
                     about="x^5 + 2 y^2 - 4 x y: a saddle at (0, 0) and a minimum at x = y = (4/5)^(1/3)"),
}


def get_function(name: str) -> Function:
    if name not in FUNCTIONS:
        raise ConfigError(f"--function: unknown function '{name}'{did_you_mean(name, FUNCTIONS)}; "
                          f"choose one of: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name]


def classify(hessian: np.ndarray, tol: float = 1e-6) -> str:
    """minimum (all eigenvalues > tol), maximum (all < -tol), saddle (both signs), else undetermined."""
    eig = np.linalg.eigvalsh(hessian)
    if np.all(eig > tol):
        return "minimum"
    if np.all(eig < -tol):
        return "maximum"
    if eig.min() < -tol and eig.max() > tol:
        return "saddle"
    return "undetermined"


def trajectory(fn: Function, optimizer: str, lr: float, steps: int, start, noise: float = 0.0,
               seed: int = 0) -> np.ndarray:
    """Points visited by the named optimizer (the training classes, unchanged) from start; (steps+1, 2)."""
    opt = OPTIMIZERS.create(optimizer, {"lr": lr}, where=f"--optimizers {optimizer}")
    rng = np.random.default_rng(seed)
    p = np.array(start, dtype=np.float64)
    path = [p.copy()]
    for _ in range(steps):
        g = fn.grad(*p)
        if noise:
            g = g + rng.normal(0.0, noise, 2)
        opt.step({"p": p}, {"p": g}, lr)
        if not np.all(np.isfinite(p)) or np.abs(p).max() > 1e6:
            break  # diverged: stop the path where it left the picture
        path.append(p.copy())
    return np.array(path)


def endpoint_lines(fn, paths: dict) -> list[str]:
    """Where each path ended, the gradient norm there, and what the Hessian's eigenvalues say the point is."""
    lines = [f"{'optimizer':<24}{'steps':>6}  {'end (x, y)':>22}  {'f':>11}  {'|grad|':>9}  Hessian says"]
    for label, p in paths.items():
        x, y = p[-1]
        g = math.hypot(*fn.grad(x, y))
        kind = classify(fn.hess(x, y)) + ("" if g < 1e-3 else " curvature (not yet a critical point)")
        lines.append(f"{label:<24}{len(p) - 1:>6}  ({x:>9.4f}, {y:>9.4f})  {fn.f(x, y):>11.4g}  {g:>9.2e}  {kind}")
    return lines


def parse_start(text: str | None, fn) -> tuple[float, float]:
    """`--start X,Y` as a point (default: the function's own starting point)."""
    if text is None:
        return fn.start
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--start: expected X,Y, got {text!r}") from None
    return x, y


def parse_rates(items) -> dict[str, float]:
    """`--lr 0.05` and `--lr adam=0.05` as {optimizer or '*': lr}."""
    rates = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            rates[key if sep else "*"] = float(value)
        except ValueError:
            raise ConfigError(f"--lr: expected LR or NAME=LR, got {item!r}") from None
    return rates


def descend(fn, names, rates: dict, steps: int, start, noise: float = 0.0, seed: int = 0) -> dict:
    """{'<name> (lr <lr>)': path} for each optimizer, its lr from rates (a name, else '*', else the function's)."""
    paths = {}
    for name in names:
        lr = rates.get(name, rates.get("*", fn.lr))
        paths[f"{name} (lr {lr:g})"] = trajectory(fn, name, lr, steps, start, noise, seed)
    return paths
