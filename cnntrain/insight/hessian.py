"""What `cnntrain hessian` computes: the spectrum of the loss's Hessian at a checkpoint's weights (a dict)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from ..data.loader import BatchLoader
from ..data.splits import load_splits
from ..errors import ConfigError
from ..inspection import load_model
from ..memory import keep_freed_memory
from ..optim.schedules import build_schedule
from ..registry import did_you_mean
from ..runs import find_checkpoint
from ..threads import TrainingProcesses, blas_threads, choose, set_blas_threads
from .objective import Objective, fixed_sample, probe_rng, rademacher
from .spectrum import density, extremes, hutchinson, lanczos, negative_mass, slq

SPLITS = ("train", "val", "test")
CURVATURE_TOL = 1e-3   # negative curvature counts (a saddle) below -CURVATURE_TOL * lambda_max
RTOL = 1e-4            # Lanczos stops when the top Ritz residuals are below RTOL * |largest Ritz value| (and
                       # the bottom ones below CURVATURE_TOL times it: within the verdict's tolerance)
MAX_STEPS = 100        # Lanczos steps at most (one Hessian-vector product each)
TRACE_PROBES = 20      # Hutchinson's Rademacher vectors
DENSITY_PROBES = 3     # Lanczos runs of DENSITY_STEPS steps from random vectors, beside the first one, for the density
DENSITY_STEPS = 40
START, TRACE, DENSITY = 1, 2, 3  # probe_rng purposes


def resolve_checkpoint(target) -> Path:
    """A checkpoint file or a run directory's best.npz (else last.npz); ConfigError (exit 2) for anything else."""
    path = Path(target)
    if not path.exists():
        raise ConfigError(f"{target}: no such run directory or checkpoint")
    if path.is_dir() and not any((path / "checkpoints" / n).is_file() for n in ("best.npz", "last.npz")):
        raise ConfigError(f"{target}: not a run directory (no checkpoints/best.npz or checkpoints/last.npz)")
    return find_checkpoint(path)


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}{did_you_mean(split, SPLITS)}")


def objective_at(checkpoint, split: str = "train", batch: int = 1000, seed: int | None = None, log=None):
    """(experiment, meta, splits, Objective): the loss at the checkpoint's weights on a fixed batch of
    `batch` images of the split, drawn with `seed` (default: the run's seed)."""
    check_split(split)
    exp, meta, model = load_model(checkpoint)
    splits = load_splits(exp.cfg, log=log)
    x, y = getattr(splits, split)
    if len(y) == 0:
        raise ConfigError(f"--split {split}: {checkpoint}'s config leaves no {split} images")
    idx = fixed_sample(len(y), batch, exp.cfg.seed if seed is None else seed)
    preprocess = exp.stored_preprocess(meta, splits.input_shape[0])
    return exp, meta, splits, Objective(model, exp.loss, preprocess(x[idx]), y[idx], exp.penalty(model))


def last_lr(exp, splits, step: int) -> float:
    """The learning rate of the run's step `step` (1-based: the last one before the checkpoint)."""
    cfg = exp.cfg
    n_train = len(splits.train[1])
    steps = len(BatchLoader(*splits.train, cfg.batch_size(n_train), None, drop_last=cfg.train.drop_last))
    schedule = build_schedule(exp.schedule, steps, steps * cfg.train.epochs, cfg.base_lr(n_train),
                              where=f"{cfg.source}: schedule")
    return float(schedule(max(step - 1, 0)))


def sharpness(objective: Objective, iters: int, seed: int) -> float:
    """The top Hessian eigenvalue: the largest Ritz value of `iters` Lanczos steps from the seeded start vector."""
    lz = lanczos(objective.hvp, rademacher(probe_rng(seed, START), objective.n), iters)
    return float(lz.ritz()[0][-1])


def verdict(top: float, bottom: float, bottom_residual: float, tol: float = CURVATURE_TOL) -> tuple[str, float]:
    """(word, absolute tolerance t = tol * lambda_max): saddle when the smallest Ritz value is below -t (it
    bounds the smallest eigenvalue from above, so negative curvature is certain); minimum when it is above
    -t, converged to within t, and some curvature is positive (above t); undetermined otherwise."""
    t = tol * max(top, 0.0)
    if top <= 0 or t == 0:
        return "undetermined", t
    if bottom < -t:
        return "saddle", t
    return ("minimum" if bottom_residual <= t else "undetermined"), t


@contextlib.contextmanager
def fair_threads():
    """BLAS threads chosen as a training run chooses them (threads.py: cores // live cnntrain processes, this
    one counted), so a measurement beside training runs does not slow them all down; restored afterwards."""
    with TrainingProcesses() as processes:
        before = blas_threads()
        n, _ = choose(None, processes.count())
        if n is not None and before is not None and n != before:
            set_blas_threads(n)
        try:
            yield
        finally:
            if n is not None and before is not None and n != before:
                set_blas_threads(before)


def hessian_spectrum(target, split: str = "train", batch: int = 1000, top_k: int = 5, bottom_k: int = 1,
                     with_density: bool = False, seed: int | None = None, iters: int = MAX_STEPS, log=None) -> dict:
    """Top and bottom eigenvalues (Lanczos), trace (Hutchinson), negative spectral mass and, with_density,
    the eigenvalue density (stochastic Lanczos quadrature) of the Hessian of the data loss plus the
    config's L2 term, at the checkpoint's weights, on a fixed batch, in evaluation mode."""
    check_split(split)
    checkpoint = resolve_checkpoint(target)
    keep_freed_memory()  # each gradient pass frees and takes back the same large float64 arrays
    with fair_threads():
        return _spectrum(checkpoint, split, batch, top_k, bottom_k, with_density, seed, iters, log)


def _spectrum(checkpoint, split, batch, top_k, bottom_k, with_density, seed, iters, log) -> dict:
    t0 = time.perf_counter()
    exp, meta, splits, obj = objective_at(checkpoint, split, batch, seed, log)
    seed = exp.cfg.seed if seed is None else seed
    seconds = {"setup": time.perf_counter() - t0}

    t0 = time.perf_counter()
    ext = extremes(obj.hvp, rademacher(probe_rng(seed, START), obj.n), top_k, bottom_k, iters, RTOL, CURVATURE_TOL)
    seconds["lanczos"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    trace, trace_err = hutchinson(obj.hvp, obj.n, TRACE_PROBES, probe_rng(seed, TRACE))
    seconds["trace"] = time.perf_counter() - t0
    runs = [ext["lanczos"]]
    dens = None
    if with_density:
        t0 = time.perf_counter()
        rng = probe_rng(seed, DENSITY)
        runs += [lanczos(obj.hvp, rademacher(rng, obj.n), DENSITY_STEPS) for _ in range(DENSITY_PROBES)]
        grid, phi = density(*slq(runs))
        dens = {"grid": grid, "values": phi, "probes": len(runs)}
        seconds["density"] = time.perf_counter() - t0

    top, bottom = ext["top"], ext["bottom"]
    word, tol = verdict(float(top[0]), float(bottom[0]), float(ext["bottom_residuals"][0]))
    lr = last_lr(exp, splits, meta["step"])
    seconds["total"] = sum(seconds.values())
    return {"checkpoint": str(checkpoint), "epoch": meta["epoch"], "step": meta["step"], "split": split,
            "images": len(obj.y), "seed": seed, "params": obj.n, "loss": obj.value, "data_loss": obj.data_loss,
            "l2": bool(obj.penalty), "grad_norm": float(np.linalg.norm(obj.grad)),
            "top": top.tolist(), "top_residuals": ext["top_residuals"].tolist(), "bottom": bottom.tolist(),
            "bottom_residuals": ext["bottom_residuals"].tolist(), "lanczos_steps": ext["steps"],
            "trace": trace, "trace_stderr": trace_err, "trace_probes": TRACE_PROBES,
            "negative_mass": negative_mass(*slq(runs)), "quadrature_probes": len(runs),
            "verdict": word, "tolerance": tol, "tolerance_rel": CURVATURE_TOL,
            "optimizer": exp.cfg.optimizer.name, "lr": lr, "lambda_max_lr": float(top[0]) * lr,
            "density": dens, "hvps": obj.hvps, "seconds": seconds}
