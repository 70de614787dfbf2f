"""The sweep's figure: a metric against one swept parameter, every seed and their mean."""

from __future__ import annotations

import math
from pathlib import Path

from ..plots import _pyplot, _save

DIVERGED_Y = 0.02  # diverged trials sit this far up from the bottom of the axis (in axes coordinates)


def plot_sensitivity(param: str, points: list[tuple], metric: str, log_x: bool, out: Path) -> Path:
    """sensitivity_figure saved to `out`."""
    return _save(sensitivity_figure(param, points, metric, log_x), out)


def sensitivity_figure(param: str, points: list[tuple], metric: str, log_x: bool):
    """`metric` against `param` from (value, seed, metric) points: a marker per point coloured by seed, the
    mean over seeds at each distinct value as a line, and non-finite (diverged) points as 'x' at the
    bottom of the axis. Points (value, seed, metric, series) of several series (a sweep's grid
    combinations, e.g. "optimizer.name=sgd") get a colour and a mean line each. Returns the unsaved Figure."""
    if not points:
        raise ValueError("plot_sensitivity: no points to draw")
    if log_x and min(p[0] for p in points) <= 0:
        raise ValueError(f"plot_sensitivity: a log x axis needs {param} > 0, got {min(p[0] for p in points)}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    series = list(dict.fromkeys(p[3] for p in points if len(p) > 3))
    if len(series) > 1:  # one colour and one mean line per grid combination; seeds as plain markers
        for i, name in enumerate(series):
            mine = [p[:3] for p in points if len(p) > 3 and p[3] == name]
            _seeds_and_mean(ax, mine, f"C{i % 10}", name)
    else:
        _seeds_and_mean(ax, [p[:3] for p in points], None, "")
    diverged = [p[0] for p in points if p[2] is None or not math.isfinite(p[2])]
    if diverged:  # x in data coordinates, y in axes coordinates: at the bottom whatever the metric's range
        ax.plot(diverged, [DIVERGED_Y] * len(diverged), "x", color="crimson", ms=8, mew=2, clip_on=False,
                transform=ax.get_xaxis_transform(), label="diverged")
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=param, ylabel=metric, title=f"{metric} against {param}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _seeds_and_mean(ax, points, color, name: str) -> None:
    """The finite points (coloured by seed unless `color`) and their mean per distinct value as a line."""
    finite = [(v, s, m) for v, s, m in points if m is not None and math.isfinite(m)]
    for i, seed in enumerate(sorted({s for _, s, _ in points})):
        mine = [(v, m) for v, s, m in finite if s == seed]
        # an empty line still takes its colour and legend entry: a seed whose trials all diverged is listed
        ax.plot([v for v, _ in mine], [m for _, m in mine], "o", color=color or f"C{i % 10}", alpha=0.45 if color else 0.75,
                ms=4 if color else 6, label=None if color else f"seed {seed}")
    by_value: dict[float, list[float]] = {}
    for v, _, m in finite:
        by_value.setdefault(v, []).append(m)
    values = sorted(by_value)
    if values:
        ax.plot(values, [sum(by_value[v]) / len(by_value[v]) for v in values], "-o", color=color or "k", ms=4,
                lw=1.4, zorder=1.5, label=f"{name} (mean)" if name else "mean")  # under the seeds' markers
