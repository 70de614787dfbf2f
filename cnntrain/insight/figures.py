"""The figures of `cnntrain lr-find` and `cnntrain landscape`, in the shared style of plots.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plots import _pyplot, _save
from .lr_find import SKIP_END

SUGGESTION_COLORS = {"valley": "C2", "steepest": "C3", "min/10": "C4"}
LOG_LEVELS_ABOVE = 20.0  # a 2-D landscape whose max / min loss exceeds this gets logarithmic contour levels


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
