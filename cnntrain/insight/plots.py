"""The curvature figures: the Hessian spectrum of `cnntrain hessian` and the sharpness of a tracking run, in
the shared style of plots.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _pyplot, _save
from ..runs import read_csv

LOG_RATIO = 30.0  # a sharpness panel whose values span more than this factor gets a log axis


def plot_spectrum(r: dict, path) -> Path:
    """The eigenvalue density (log scale) with the top and bottom eigenvalues, 0, and 2/lr when it falls
    near the spectrum; the numbers `cnntrain hessian` prints in a box."""
    plt = _pyplot()
    d = r["density"]
    grid, phi = np.asarray(d["grid"]), np.asarray(d["values"])
    fig, ax = plt.subplots(figsize=(8, 4.4))
    floor = phi.max() * 1e-7
    ax.plot(grid, np.maximum(phi, floor), color="C0", lw=1.4, label=f"density (SLQ, {d['probes']} probes)")
    ax.axvline(0, color="0.4", lw=0.8)
    for i, lam in enumerate(r["top"]):
        ax.axvline(lam, color="C3", lw=0.9, alpha=0.8, label=f"top {len(r['top'])} (Lanczos)" if i == 0 else None)
    for i, lam in enumerate(r["bottom"]):
        ax.axvline(lam, color="C2", lw=0.9, alpha=0.8, label="bottom" if i == 0 else None)
    if r["lr"] > 0 and 2 / r["lr"] <= 1.5 * grid.max():
        ax.axvline(2 / r["lr"], color="C1", ls="--", lw=1.2, label="2 / lr (stability limit)")
    ax.set(yscale="log", ylim=(floor, phi.max() * 3), xlabel="eigenvalue of the Hessian",
           ylabel="density (log scale)",
           title=f"Hessian spectrum: {_where(r['checkpoint'])}, {r['images']:,} {r['split']} images")
    text = (f"$\\lambda_{{max}}$ = {r['top'][0]:.4g}, $\\lambda_{{min}}$ = {r['bottom'][0]:.4g}\n"
            f"trace = {r['trace']:.4g} $\\pm$ {r['trace_stderr']:.2g}\n"
            f"negative mass {100 * r['negative_mass']:.2f}% of $\\Sigma|\\lambda|$\n"
            f"verdict: {r['verdict']} (tolerance {r['tolerance']:.2g})\n"
            f"$\\lambda_{{max}}\\cdot$lr = {r['lambda_max_lr']:.3g} (lr {r['lr']:.3g}; stable below 2)")
    ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=8.5,
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _where(checkpoint: str) -> str:
    path = Path(checkpoint)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


def plot_sharpness(run_dir) -> Path | None:
    """sharpness.png: the top Hessian eigenvalue against the epoch beside 2/lr, the largest curvature gradient
    descent at that lr is stable on; None when metrics.csv has no measured `sharpness`."""
    run_dir = Path(run_dir)
    metrics = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else {}
    s = metrics.get("sharpness")
    if s is None or not np.isfinite(s).any():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    keep = np.isfinite(s)
    ax.plot(metrics["epoch"][keep], s[keep], "o-", ms=3, label="sharpness (top Hessian eigenvalue)")
    with np.errstate(divide="ignore"):
        limit = np.where(metrics["lr"] > 0, 2 / metrics["lr"], np.nan)
    ax.plot(metrics["epoch"], limit, "--", color="C1", label="2 / lr (stability limit of gradient descent)")
    both = np.concatenate([s[keep], limit[np.isfinite(limit)]])
    if both.min() > 0 and both.max() / both.min() > LOG_RATIO:
        ax.set_yscale("log")
    ax.set(title=f"Sharpness: {run_dir.name}", xlabel="epoch", ylabel="top eigenvalue of the Hessian")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    return _save(fig, run_dir / "sharpness.png")


def mark_sharpness(ax, groups, x: str) -> None:
    """In `cnntrain compare --metric sharpness`: each curve's measured points, and its 2/lr dotted, same colour."""
    from ..groups import mean_curve

    for i, group in enumerate(groups):
        color = f"C{i % 10}"
        xs, y, _, _ = mean_curve(group, "sharpness", x)
        keep = np.isfinite(y)
        ax.plot(xs[keep], y[keep], "o", ms=2.5, color=color)
        xs, lr, _, _ = mean_curve(group, "lr", x)
        with np.errstate(divide="ignore"):
            ax.plot(xs, np.where(lr > 0, 2 / lr, np.nan), ":", color=color, lw=1.4)
    ax.set_title(f"{ax.get_title()} (dotted: 2 / lr)")
