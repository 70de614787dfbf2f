"""The loss landscape around a trained network: along the straight line from its initial weights to
its final ones (Goodfellow et al., 2015), and along random directions normalised filter by filter
(Li et al., 2018), on a fixed subset of the training images in evaluation mode.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..data.splits import load_splits
from ..errors import ConfigError, RunError
from ..inspection import load_model
from ..layers.dense import Dense
from ..memory import keep_freed_memory
from ..model import Sequential
from ..runs import load_checkpoint, split_state
from ..train import evaluate
from .hessian import fair_threads

MODES = ("line", "1d", "2d")
POINTS = {"line": 21, "1d": 21, "2d": 15}     # points along each axis
SPAN = {"line": 0.5, "1d": 1.0, "2d": 1.0}    # line: alpha in [-span, 1 + span]; 1d, 2d: [-span, span]
LIMIT = 1000                                   # the first N training images (after the validation split)
EPS = 1e-10                                    # Li et al.'s guard against a zero direction slice


def filter_axis(layer) -> int:
    """The axis of a weight that indexes its filters (output channels): 0 for conv2d W (F, C, KH, KW),
    1 for dense W (D, units), whose units are columns."""
    return 1 if isinstance(layer, Dense) else 0


def normalize_filters(d: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """d with each slice along `axis` scaled to the norm of w's slice: d_f * ||w_f|| / (||d_f|| + EPS)."""
    dm, wm = np.moveaxis(d, axis, 0), np.moveaxis(w, axis, 0)
    dn = np.sqrt((dm.reshape(len(dm), -1).astype(np.float64) ** 2).sum(axis=1))
    wn = np.sqrt((wm.reshape(len(wm), -1).astype(np.float64) ** 2).sum(axis=1))
    scale = (wn / (dn + EPS)).astype(d.dtype).reshape((-1,) + (1,) * (d.ndim - 1))
    return np.moveaxis(dm * scale, 0, axis)


def random_direction(model: Sequential, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A Gaussian direction over the model's parameters, normalised filter by filter (Li et al., 2018).

    Weights with 2 or more axes get N(0, 1) entries scaled per filter to the weight's filter norm;
    1-axis parameters (biases, batchnorm gamma and beta) get a zero direction, as in Li et al.'s
    `biasbn` setting. Buffers (batchnorm running statistics) are not part of a direction.
    """
    direction = {}
    for i, layer in enumerate(model.layers):
        for key, w in layer.params.items():
            name = f"layers.{i}.{key}"
            if w.ndim < 2:
                direction[name] = np.zeros_like(w)
            else:
                direction[name] = normalize_filters(rng.standard_normal(w.shape).astype(w.dtype), w, filter_axis(layer))
    return direction


def grid_axis(low: float, high: float, points: int, keep=()) -> np.ndarray:
    """points evenly spaced values from low to high, with the values in `keep` (0, and 1 for the line) always in."""
    axis = np.linspace(low, high, points)
    for k in keep:
        axis[np.isclose(axis, k, rtol=0, atol=1e-9 * (high - low))] = k  # exact 0 and 1 where linspace nearly hits them
    return np.union1d(axis, np.asarray(keep, dtype=np.float64))


def interpolate(init: dict, final: dict, alpha: float, buffers=()) -> dict:
    """(1 - alpha) init + alpha final for every array; a batchnorm running_var in `buffers` geometrically,
    init^(1 - alpha) final^alpha, so it stays positive beyond the ends (equal at alpha 0 and 1)."""
    out = {}
    for k, f in final.items():
        i = init[k]
        if k in buffers and k.endswith(".running_var"):
            out[k] = (i.astype(np.float64) ** (1 - alpha) * f.astype(np.float64) ** alpha).astype(f.dtype)
        else:
            out[k] = (f.dtype.type(1 - alpha) * i + f.dtype.type(alpha) * f).astype(f.dtype)  # exact at 0 and 1
    return out


def shifted(final: dict, directions, coords) -> dict:
    """final + sum_k coords[k] * directions[k] (directions cover the parameters; buffers stay final)."""
    out = dict(final)
    for d, c in zip(directions, coords):
        for k, v in d.items():
            out[k] = out[k] + v.dtype.type(c) * v
    return out


def run_checkpoints(run_dir) -> tuple[Path, Path]:
    """(checkpoints/last.npz, checkpoints/init.npz) of a run directory; ConfigError if it is none."""
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.npz"
    if not run_dir.is_dir() or not (run_dir / "config.yaml").is_file() or not last.is_file():
        raise ConfigError(f"{run_dir}: not a run directory with a checkpoint (no config.yaml and "
                          "checkpoints/last.npz); give a directory that `cnntrain run` made")
    return last, run_dir / "checkpoints" / "init.npz"


def landscape(run_dir, mode: str = "2d", points: int | None = None, span: float | None = None,
              limit: int = LIMIT, seed: int = 0, batch_size: int | None = None, log=None) -> dict:
    """Loss and accuracy of the run's weights moved along a line or over a plane.

    line: w(a) = w_init + a (w_final - w_init), a in [-span, 1 + span] (init.npz to last.npz).
    1d:   w_final + a d, a in [-span, span]; 2d: w_final + a d1 + b d2 on a points x points grid;
    d, d1, d2 from random_direction() seeded by `seed`. Evaluated with train.evaluate() on the first
    `limit` training images, with the run's fitted preprocessing, dropout off, batchnorm's running statistics.
    """
    if mode not in MODES:
        raise ConfigError(f"--mode: expected one of {', '.join(MODES)}, got {mode!r}")
    last, init_path = run_checkpoints(run_dir)
    if mode == "line" and not init_path.is_file():
        raise ConfigError(f"{run_dir}: no checkpoints/init.npz (the run predates saving initial weights), so there "
                          "is no line from init to final; --mode 1d and 2d need only the final weights")
    keep_freed_memory()
    with fair_threads():  # BLAS threads shared with the cnntrain runs alongside, as a run shares them
        return _landscape(run_dir, last, init_path, mode, points, span, limit, seed, batch_size, log)


def _landscape(run_dir, last: Path, init_path: Path, mode, points, span, limit, seed, batch_size, log) -> dict:
    points = points or POINTS[mode]
    span = SPAN[mode] if span is None else span
    exp, meta, model = load_model(last)
    cfg = exp.cfg
    splits = load_splits(cfg, log=log)
    x, y = splits.train[0][:limit], splits.train[1][:limit]
    preprocess = exp.stored_preprocess(meta, splits.input_shape[0])
    batch_size = batch_size or cfg.train.eval_batch_size
    final = {k: v.copy() for k, v in model.state_dict().items()}
    began = time.perf_counter()

    def measure(state):
        model.load_state_dict(state, str(last))
        with np.errstate(over="ignore", invalid="ignore"):  # far from the minimum the loss may overflow: inf
            loss, acc, _ = evaluate(model, exp.loss, x, y, preprocess, batch_size)
        return loss, acc

    result = {"run_dir": str(run_dir), "mode": mode, "name": cfg.name, "checkpoint": str(last), "images": int(len(y)),
              "seed": seed, "span": span, "epoch": meta["epoch"]}
    if mode == "line":
        init = _model_state(init_path, final)
        buffers = set(model.named_buffers())
        alphas = grid_axis(-span, 1 + span, points, (0.0, 1.0))
        values = np.array([measure(interpolate(init, final, a, buffers)) for a in alphas])
        result.update(alphas=alphas, init_checkpoint=str(init_path))
    else:
        rng = np.random.default_rng(seed)
        directions = [random_direction(model, rng) for _ in range(1 if mode == "1d" else 2)]
        alphas = grid_axis(-span, span, points, (0.0,))
        if mode == "1d":
            values = np.array([measure(shifted(final, directions, (a,))) for a in alphas])
        else:  # rows are beta (the second direction), columns alpha: contourf(alphas, betas, loss)
            values = np.array([[measure(shifted(final, directions, (a, b))) for a in alphas] for b in alphas])
        result.update(alphas=alphas, **({"betas": alphas} if mode == "2d" else {}))
    model.load_state_dict(final, str(last))
    result.update(loss=values[..., 0], accuracy=values[..., 1], evaluations=int(values[..., 0].size),
                  seconds=round(time.perf_counter() - began, 3))
    result.update(_describe(result))
    return result


def _model_state(path: Path, like: dict) -> dict:
    """The model arrays of the checkpoint at path, checked against the final weights' names and shapes."""
    state = split_state(load_checkpoint(path)[2])[0]
    wrong = sorted(k for k in like if k not in state or state[k].shape != like[k].shape)
    if wrong or set(state) != set(like):
        raise RunError(f"{path}: does not fit the run's last.npz ({', '.join(wrong) or 'different arrays'})")
    return state


def _describe(r: dict) -> dict:
    """The numbers the command prints: the trained (and initial) point and the extremes of the curve or grid."""
    loss, acc, alphas = r["loss"], r["accuracy"], r["alphas"]
    if r["mode"] == "line":
        i0, i1 = int(np.flatnonzero(alphas == 0)[0]), int(np.flatnonzero(alphas == 1)[0])
        inside = loss[i0 : i1 + 1]
        rise = inside - np.minimum.accumulate(inside)  # how far the loss climbs back above its lowest so far
        j = int(np.argmax(rise))
        return {"init": {"loss": float(loss[i0]), "accuracy": float(acc[i0])},
                "final": {"loss": float(loss[i1]), "accuracy": float(acc[i1])},
                "monotone": bool(rise[j] <= 1e-6 * max(abs(float(inside.max())), 1.0)),
                "largest_rise": {"alpha": float(alphas[i0 + j]), "by": float(rise[j])}}
    center = int(np.flatnonzero(alphas == 0)[0])
    trained = loss[center] if r["mode"] == "1d" else loss[center, center]
    trained_acc = acc[center] if r["mode"] == "1d" else acc[center, center]
    return {"trained": {"loss": float(trained), "accuracy": float(trained_acc)},
            "min_loss": float(np.nanmin(loss)), "max_loss": float(np.nanmax(loss))}
