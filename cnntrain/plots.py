"""Every figure. Reads run directories and metrics files, never a live model. Headless (Agg)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .runs import atomic_write_bytes, read_csv

DPI = 120
STYLE = {  # one look for every figure: readable on a laptop screen and in a README
    "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
    "legend.fontsize": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
    "axes.spines.right": False, "lines.linewidth": 1.6, "figure.autolayout": False,
}


def _pyplot():
    """pyplot on the non-interactive Agg backend (headless machines), with the shared STYLE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def _save(fig, path) -> Path:
    """The figure as a PNG written atomically to `path`, then closed (pyplot keeps open figures alive)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _pyplot().close(fig)
    return Path(path)


def plot_run(run_dir) -> list[Path]:
    """loss.png, accuracy.png and lr.png of a run directory from its metrics.csv and steps.csv."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    metrics = read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").exists() else {}
    steps = read_csv(run_dir / "steps.csv") if (run_dir / "steps.csv").exists() else {}
    if not metrics:
        return []
    name = run_dir.name
    spe = metrics["step"][0] / metrics["epoch"][0] if metrics["epoch"][0] else 1
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    if steps:
        ax.plot(steps["step"] / spe, steps["loss"], color="0.75", lw=0.6, label="train (per step)")
    ax.plot(metrics["epoch"], metrics["train_loss"], "o-", label="train (epoch mean)")
    if np.isfinite(metrics["val_loss"]).any():
        ax.plot(metrics["epoch"], metrics["val_loss"], "s-", label="validation")
    ax.set(title=f"Loss: {name}", xlabel="epoch", ylabel="loss (log scale)", yscale="log")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, run_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(metrics["epoch"], 100 * metrics["train_acc"], "o-", label="train")
    if np.isfinite(metrics["val_acc"]).any():
        ax.plot(metrics["epoch"], 100 * metrics["val_acc"], "s-", label="validation")
    ax.set(title=f"Accuracy: {name}", xlabel="epoch", ylabel="accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, run_dir / "accuracy.png"))

    if steps:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(steps["step"], steps["lr"])
        ax.set(title=f"Learning rate: {name}", xlabel="step (optimizer update)", ylabel="learning rate")
        ax.grid(alpha=0.3)
        written.append(_save(fig, run_dir / "lr.png"))
    return written


def plot_confusion(cm: np.ndarray, classes, path, title: str) -> Path:
    """A confusion matrix heat map with counts in each cell."""
    plt = _pyplot()
    cm = np.asarray(cm)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    im = ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(k), yticks=range(k), xticklabels=classes, yticklabels=classes,
           xlabel="predicted class", ylabel="true class", title=title)
    plt.setp(ax.get_xticklabels(), rotation=45 if max(len(str(c)) for c in classes) > 2 else 0, ha="right")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > threshold else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    return _save(fig, path)


def plot_schedule(table: dict, steps_per_epoch: int, path, title: str) -> Path:
    """Learning rate (and momentum, when scheduled) against epochs, one point per step."""
    plt = _pyplot()
    has_mu = "momentum" in table
    fig, axes = plt.subplots(2 if has_mu else 1, 1, figsize=(7, 5.5 if has_mu else 3.5), sharex=True, squeeze=False)
    x = table["step"] / steps_per_epoch
    axes[0, 0].plot(x, table["lr"], lw=1.5)
    axes[0, 0].set(title=title, ylabel="learning rate")
    if has_mu:
        axes[1, 0].plot(x, table["momentum"], lw=1.5, color="C1")
        axes[1, 0].set(ylabel="momentum")
    axes[-1, 0].set(xlabel=f"epoch ({steps_per_epoch} steps each)")
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


DEFAULT_PANELS = (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc")), ("learning rate", ("lr",)))
AXIS_LABELS = {"epoch": "epoch", "step": "step (optimizer updates)", "time": "training time (s)"}


def plot_compare(runs, panels, x: str, smooth: float | None, logy: bool, path, groups=None) -> Path:
    """compare_figure saved to `path`."""
    return _save(compare_figure(runs, panels, x, smooth, logy, groups), path)


def compare_figure(runs, panels, x: str, smooth: float | None, logy: bool, groups=None):
    """Every run's curves overlaid, one panel per group of metrics; solid train, dashed validation.

    With `groups` (groups.group_runs), each group's mean over its runs instead, with a shaded min-max
    band, labelled 'label (n=3)'. Returns the unsaved Figure.
    """
    from .groups import Group, mean_curve

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, metrics) in zip(axes[0], panels):
        for i, group in enumerate(groups or [Group(r.label, [r]) for r in runs]):
            color = f"C{i % 10}"
            for metric in metrics:
                xs, y, lo, hi = mean_curve(group, metric, x, smooth)
                scale = 100 if metric.endswith("acc") else 1
                label = (f"{group.label} (n={group.n})" if groups else group.label) if metric == metrics[0] else None
                ax.plot(xs, scale * y, "--" if metric.startswith("val_") else "-", color=color,
                        lw=1.6 if len(y) < 200 else 0.8, label=label)
                if groups:
                    ax.fill_between(xs, scale * lo, scale * hi, color=color, alpha=0.2, lw=0)
        kind = ("accuracy (%)" if all(m.endswith("acc") for m in metrics)
                else "loss" if all(m.endswith("loss") for m in metrics) else " / ".join(metrics))
        ax.set(title=title + (" (solid train, dashed validation)" if len(metrics) > 1 else ""),
               xlabel=AXIS_LABELS[x], ylabel=kind)
        if "sharpness" in metrics:  # its points (measured every E epochs) and each run's 2/lr
            from .insight.plots import mark_sharpness
            mark_sharpness(ax, groups or [Group(r.label, [r]) for r in runs], x)
        if logy and not all(m.endswith("acc") for m in metrics):
            ax.set_yscale("log")
        if x == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = 1 if max(map(len, labels)) > 45 else min(len(labels), 3)
    rows = -(-len(labels) // ncol)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.02 + 0.055 * rows, 1, 1))
    return fig


def plot_grad_norms(run_dir) -> Path:
    """grad_norms.png: each layer's gradient norm and update/weight ratio against the step, log scale."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    data = read_csv(run_dir / "grad_norms.csv")
    layers = sorted({k.rsplit(".", 1)[0] for k in data if k.endswith(".grad_norm")}, key=lambda n: int(n.split(".")[1]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, layer in enumerate(layers):
        color = cmap(i / max(len(layers) - 1, 1))
        axes[0].plot(data["step"], data[f"{layer}.grad_norm"], color=color, lw=1, label=layer)
        axes[1].plot(data["step"], data[f"{layer}.update_ratio"], color=color, lw=1, label=layer)
    axes[0].set(title="Gradient norm per layer", xlabel="step (optimizer updates)", ylabel="||dL/dW||", yscale="log")
    axes[1].set(title="Update / weight ratio", xlabel="step (optimizer updates)", ylabel="||update|| / ||W||",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8, title="input -> output", title_fontsize=8)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    return _save(fig, run_dir / "grad_norms.png")


RUNAWAY = 100.0  # a path whose |f| exceeds this many times the contour panel's largest |f| has run off


def value_axis(values: dict, region_f) -> dict:
    """How the value-against-step panel shows `values` ({label: f along the path}): y scale, ticks, label.

    All values > 0: 'log'. A path that runs away (|f| > RUNAWAY * the largest |f| over the contour
    panel, `region_f`) would flatten every other curve on a linear axis, so the axis becomes 'symlog':
    linear within the contour panel's range of f, logarithmic beyond it. Otherwise 'linear'.
    Returns {scale, linthresh, ticks, label, runaway: {label: the last finite f of each path that ran away}}.
    """
    finite = {label: v[np.isfinite(v)] for label, v in values.items()}
    every = np.concatenate(list(finite.values())) if finite else np.zeros(0)
    axis = {"scale": "linear", "linthresh": None, "ticks": None, "label": "f(x, y)", "runaway": {}}
    if every.size and every.min() > 0:
        return {**axis, "scale": "log", "label": "f(x, y) (log scale)"}
    region = np.asarray(region_f, dtype=np.float64)
    region = region[np.isfinite(region)]
    bound = float(np.abs(region).max()) if region.size else 0.0
    bound = float(f"{bound:.2g}") if bound > 0 else 1.0  # two digits: the grid misses the exact extremes
    runaway = {label: float(v[-1]) for label, v in finite.items() if v.size and np.abs(v).max() > RUNAWAY * bound}
    if not runaway:
        return axis
    return {"scale": "symlog", "linthresh": bound, "ticks": symlog_ticks(bound, every.min(), every.max()),
            "label": f"f(x, y) (symlog: linear within \u00b1{bound:.3g}, log beyond)", "runaway": runaway}


def symlog_ticks(linthresh: float, low: float, high: float) -> list[float]:
    """Ticks for a symlog axis over [low, high]: a few round values within +-linthresh, then powers of 10."""
    from matplotlib.ticker import MaxNLocator

    edge = linthresh * (1 + 1e-9)  # the locator's ticks carry rounding errors
    inner = [float(t) for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(-linthresh, linthresh)
             if abs(t) <= edge]
    top = max(-low, high)
    first = math.ceil(math.log10(3 * linthresh))  # half a decade clear of the last linear tick
    last = math.ceil(math.log10(top)) if top > linthresh else first - 1
    powers = [10.0**k for k in range(first, last + 1)]
    outer = [t for t in powers if high > linthresh] + [-t for t in powers if low < -linthresh]
    return sorted(inner + outer)


def _symlog_label(value, _pos=None) -> str:
    """'2', '-0.5' within the linear part; '$-10^{5}$' for the powers of 10 beyond it."""
    if abs(value) >= 100 and math.log10(abs(value)).is_integer():
        return f"${'-' if value < 0 else ''}10^{{{round(math.log10(abs(value)))}}}$"
    return f"{value:g}".replace("-", "\u2212")  # the minus sign matplotlib's own labels use


def first_outside(p: np.ndarray, xlim, ylim) -> int | None:
    """The first step at which path p is outside the plotted region, or None if it stays in."""
    outside = (p[:, 0] < xlim[0]) | (p[:, 0] > xlim[1]) | (p[:, 1] < ylim[0]) | (p[:, 1] > ylim[1])
    return int(np.argmax(outside)) if outside.any() else None


def surface_figure(name, fn, paths: dict):
    """The surface figure, unsaved: (fig, contour axes, value axes, [(line, dot, curve)] per path, values)."""
    plt = _pyplot()
    xs = np.linspace(*fn.xlim, 300)
    ys = np.linspace(*fn.ylim, 300)
    X, Y = np.meshgrid(xs, ys)
    Z = fn.f(X, Y)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.15, 1]})
    if fn.log_levels:
        levels = np.geomspace(max(Z.min(), 1e-3), Z.max(), 30)
        from matplotlib.colors import LogNorm

        ax.contour(X, Y, Z, levels=levels, cmap="viridis", linewidths=0.6, norm=LogNorm())
    else:
        ax.contour(X, Y, Z, levels=30, cmap="viridis", linewidths=0.6)
    artists = []
    values = {k: fn.f(p[:, 0], p[:, 1]) for k, p in paths.items()}
    for i, (label, p) in enumerate(paths.items()):
        color = f"C{i % 10}"
        left = first_outside(p, fn.xlim, fn.ylim)
        shown = label if left is None else f"{label}, leaves the plot at step {left}"
        (line,) = ax.plot(p[:, 0], p[:, 1], "-", color=color, lw=1.5, label=shown)
        (dot,) = ax.plot(p[-1:, 0], p[-1:, 1], "o", color=color, ms=5)
        (curve,) = ax2.plot(np.arange(len(p)), values[label], color=color, lw=1.5, label=label)
        artists.append((line, dot, curve))
    start = next(iter(paths.values()))[0]
    ax.plot(*start, "k*", ms=10, label="start")
    ax.set(xlim=fn.xlim, ylim=fn.ylim, xlabel="x", ylabel="y", title=f"{name}: {fn.about}")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="best")
    axis = value_axis(values, Z)
    ax2.set(xlabel="step", ylabel=axis["label"], title="value against step")
    if axis["scale"] == "symlog":
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

        # linscale 2: the contour panel's range of f gets the room of two decades, so tame curves stay readable
        ax2.set_yscale("symlog", linthresh=axis["linthresh"], linscale=2)
        ax2.yaxis.set_major_locator(FixedLocator(axis["ticks"]))
        ax2.yaxis.set_major_formatter(FuncFormatter(_symlog_label))
        ax2.yaxis.set_minor_locator(NullLocator())
        ax2.axhspan(-axis["linthresh"], axis["linthresh"], color="0.5", alpha=0.08, lw=0)
        ends = "; ".join(f"{label} reaches f = {end:.3g}" for label, end in axis["runaway"].items())
        ax2.text(0.02, 0.02, f"runs away: {ends}\nshaded: the range of f in the contour panel",
                 transform=ax2.transAxes, fontsize=8, va="bottom",
                 bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    else:
        ax2.set_yscale(axis["scale"])
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig, ax, ax2, artists, values


def plot_surface(name, fn, paths: dict, path, animate: bool = False) -> Path:
    """Contours of a 2-D function with each optimizer's path, and f against the step; .gif animates it."""
    plt = _pyplot()
    fig, _, _, artists, values = surface_figure(name, fn, paths)
    if not animate:
        return _save(fig, path)
    from matplotlib.animation import FuncAnimation, PillowWriter

    longest = max(len(p) for p in paths.values())
    frames = np.unique(np.linspace(1, longest, min(longest, 60)).astype(int))

    def update(n):
        for (line, dot, curve), (label, p) in zip(artists, paths.items()):
            k = min(n, len(p))
            line.set_data(p[:k, 0], p[:k, 1])
            dot.set_data(p[k - 1 : k, 0], p[k - 1 : k, 1])
            curve.set_data(np.arange(k), values[label][:k])
        return [a for trio in artists for a in trio]

    anim = FuncAnimation(fig, update, frames=frames, blit=False)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.gif")
    anim.save(tmp, writer=PillowWriter(fps=12), dpi=80)
    plt.close(fig)
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    return Path(path)


def plot_preview(raw: np.ndarray, augmented: np.ndarray, labels, classes, path, title: str) -> Path:
    """Training images as stored (top of each pair) and as the first batch sees them after augmentation."""
    plt = _pyplot()
    n = len(raw)
    cols = min(n, 8)
    rows = 2 * -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = 2 * (i // cols), i % cols
        for ax, img, what in ((axes[r, c], raw[i], "stored"), (axes[r + 1, c], augmented[i], "augmented")):
            grey = img.shape[0] == 1
            ax.imshow(img[0] if grey else img.transpose(1, 2, 0), cmap="gray" if grey else None, vmin=0, vmax=255,
                      interpolation="nearest")
            ax.set_title(f"{classes[labels[i]]}" if what == "stored" else "augmented", fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
