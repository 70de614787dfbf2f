"""The figures of the insight commands, in the shared style of plots.py: the Hessian spectrum of
`cnntrain hessian`, the sharpness of a tracking run, `cnntrain lr-find` and `cnntrain landscape`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _pyplot, _save
from ..runs import read_csv
from .lr_find import SKIP_END

LOG_RATIO = 30.0  # a sharpness panel whose values span more than this factor gets a log axis
SUGGESTION_COLORS = {"valley": "C2", "steepest": "C3", "min/10": "C4"}
LOG_LEVELS_ABOVE = 20.0  # a 2-D landscape whose max / min loss exceeds this gets logarithmic contour levels


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


def plot_lr_find(r: dict, path) -> Path:
    """Batch loss and smoothed loss against lr (log axis), each suggestion and the config's lr as a vertical line."""
    plt = _pyplot()
    lrs, losses, smoothed = (np.asarray(r[k], dtype=np.float64) for k in ("lrs", "losses", "smoothed"))
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    ax.plot(lrs, losses, color="0.75", lw=0.8, label="batch loss")
    ax.plot(lrs, smoothed, color="C0", lw=1.8, label="smoothed loss (beta 0.98, bias-corrected)")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:  # the y range of the curve before its blow-up, which then leaves the panel upwards
        before = finite[: len(finite) - SKIP_END] if len(finite) > SKIP_END + 1 else finite
        top = float(before.max())
        low = min(float(finite.min()), float(np.nanmin(np.where(np.isfinite(losses), losses, np.nan))))
        pad = 0.08 * (top - low) or 0.05 * abs(top) or 0.1
        ax.set_ylim(low - pad, top + pad)
    order = np.isfinite(smoothed)
    for name, lr in (r["suggestions"] or {}).items():
        color = SUGGESTION_COLORS[name]
        ax.axvline(lr, color=color, ls="--", lw=1.2, label=f"{name}: {lr:.2g}")
        if order.sum() >= 2:
            ax.plot(lr, np.interp(np.log10(lr), np.log10(lrs[order]), smoothed[order]), "o", color=color, ms=6)
    if r.get("config_lr"):
        ax.axvline(r["config_lr"], color="0.3", ls=":", lw=1.4, label=f"config lr: {r['config_lr']:.2g}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"{r['name']}: lr range test ({r['optimizer']}, batch {r['batch_size']}, {len(lrs)} steps)")
    if r["stopped_early"]:
        ax.text(0.02, 0.03, f"stopped at lr {r['stopped_at']['lr']:.2g}: {r['stopped_early']}", transform=ax.transAxes,
                fontsize=8, va="bottom", bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the curve, which fills the panel
    fig.tight_layout()
    return _save(fig, path)


def plot_landscape(r: dict, path) -> Path:
    """line / 1d: loss and accuracy against alpha; 2d: filled loss contours with the trained point marked."""
    if r["mode"] == "2d":
        return _plot_plane(r, path)
    plt = _pyplot()
    a, loss, acc = r["alphas"], r["loss"], 100 * r["accuracy"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax.plot(a, loss, "o-", ms=3, color="C0")
    ax2.plot(a, acc, "o-", ms=3, color="C1")
    positive = loss[np.isfinite(loss)]
    if positive.size and positive.min() > 0 and positive.max() / positive.min() > 10:
        ax.set_yscale("log")
    if r["mode"] == "line":
        marks = [(0.0, "init", "C2"), (1.0, "final", "C3")]
        xlabel = "alpha: w = (1 - alpha) w_init + alpha w_final"
        title = f"{r['name']}: loss from init (alpha 0) to final (alpha 1)"
    else:
        marks = [(0.0, "trained", "C3")]
        xlabel = "alpha: w = w_final + alpha d (d: filter-normalised random direction)"
        title = f"{r['name']}: loss along a random direction"
    for axis in (ax, ax2):
        for x, label, color in marks:
            axis.axvline(x, color=color, ls="--", lw=1.2, label=label)
        axis.set_xlabel(xlabel, fontsize=9)
        axis.grid(alpha=0.3, which="both")
    ax.set(ylabel=f"loss on {r['images']} training images" + (" (log scale)" if ax.get_yscale() == "log" else ""),
           title=title)
    ax2.set(ylabel="accuracy (%)", title="accuracy, same points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _plot_plane(r: dict, path) -> Path:
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    a, b, loss = r["alphas"], r["betas"], np.asarray(r["loss"], dtype=np.float64)
    shown = np.where(np.isfinite(loss), loss, np.nanmax(np.where(np.isfinite(loss), loss, np.nan)))
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    low, high = float(shown.min()), float(shown.max())
    if low > 0 and high / low > LOG_LEVELS_ABOVE:
        levels = np.geomspace(low, high, 25)
        filled = ax.contourf(a, b, shown, levels=levels, cmap="viridis", norm=LogNorm(low, high))
        lines = ax.contour(a, b, shown, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.7)
        scale = "log levels"
    else:
        filled = ax.contourf(a, b, shown, levels=25, cmap="viridis")
        lines = ax.contour(a, b, shown, levels=filled.levels[::3], colors="white", linewidths=0.5, alpha=0.7)
        scale = "linear levels"
    ax.clabel(lines, fontsize=7, fmt="%.3g")
    bar = fig.colorbar(filled, ax=ax, ticks=lines.levels, format="%.3g")  # the labelled contours' values
    bar.minorticks_off()
    bar.set_label(f"loss on {r['images']} training images ({scale})")
    ax.plot(0, 0, "r*", ms=13, label=f"trained (loss {r['trained']['loss']:.3g})")
    ax.set(xlabel="alpha: w = w_final + alpha d1 + beta d2", ylabel="beta", aspect="equal",
           title=f"{r['name']}: loss around the trained weights\n"
                 f"d1, d2: filter-normalised random directions (seed {r['seed']})")
    ax.title.set_fontsize(10)
    ax.grid(False)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)
