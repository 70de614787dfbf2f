"""Groups of runs (the seeds of one configuration, or the runs sharing --group-by values): one mean
curve with its min-max band and one table row of mean and spread per group."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .compare import Run, differing_keys, ewma, label_part, make_labels
from .errors import ConfigError
from .monitor import Monitor
from .registry import did_you_mean

SEED_KEYS = ("seed", "name")  # what may differ between the runs of one configuration


@dataclass
class Group:
    """Runs drawn and tabulated as one; `params` are the config values (by key path) that set it apart."""

    label: str
    runs: list[Run]
    params: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def monitor(self) -> Monitor:
        """The metric its runs monitored: best values of different metrics do not average."""
        names = list(dict.fromkeys(r.monitor.name for r in self.runs))
        if len(names) > 1:
            raise ConfigError(f"group {self.label}: its runs monitored different metrics ({', '.join(names)}); "
                              "add --group-by train.monitor")
        return self.runs[0].monitor


def group_runs(runs: list[Run], keys=(), over_seeds: bool = False, label_keys=()) -> list[Group]:
    """Group runs by the values of config `keys`, or (`over_seeds`) by their whole config but seed and name.

    Groups keep the order of their first runs. A group is labelled by `label_keys` when given, else by
    `keys`, else by the config keys that differ between the groups (as compare.make_labels labels runs).
    With neither `keys` nor `over_seeds`, every run is a group of its own.
    """
    if keys and over_seeds:
        raise ConfigError("--group-by and --mean-over-seeds exclude each other: give one of them")
    every = set().union(*(r.flat for r in runs))
    for key in keys or ():
        if key not in every:
            raise ConfigError(f"--group-by {key}: no run's config.yaml has this key{did_you_mean(key, sorted(every))}")
    if not keys and not over_seeds:
        return [Group(r.label, [r]) for r in runs]
    members: dict[str, list[Run]] = {}
    for r in runs:
        defining = {k: r.flat.get(k) for k in keys} if keys else {k: v for k, v in r.flat.items() if k not in SEED_KEYS}
        members.setdefault(json.dumps(defining, sort_keys=True, default=str), []).append(r)
    firsts = [group[0] for group in members.values()]
    differ = list(keys) or differing_keys(firsts, SEED_KEYS)
    if label_keys:
        labels = make_labels(firsts, label_keys)
    elif keys:
        labels = [", ".join(label_part(k, r) for k in keys) for r in firsts]
    elif len(firsts) == 1:  # one configuration: its name rather than a run's folder
        labels = [str(firsts[0].config.get("name") or firsts[0].path.name)]
    else:
        labels = make_labels(firsts, ignore=SEED_KEYS)
    return [Group(label, group, {k: group[0].flat.get(k) for k in differ})
            for label, group in zip(labels, members.values())]


def mean_curve(group: Group, metric: str, axis: str, smooth: float | None = None):
    """(x, mean, lo, hi): the mean, min and max of `metric` over the group's runs at each epoch (each step
    for axis 'step'), over the runs that have that point, so a run that stopped early leaves the rest of
    the curve to the others. Axis 'time': x is those runs' mean cumulative training time at each epoch.
    With `smooth`, each run is smoothed (ewma; never lr) before it is averaged. Non-finite values are gaps.
    """
    curves = []
    for r in group.runs:
        xs, y = r.curve(metric, axis)
        if smooth and metric != "lr":
            y = ewma(y, smooth)
        curves.append((r.metrics["epoch"] if axis == "time" else xs, xs, y))
    grid = np.unique(np.concatenate([keys for keys, _, _ in curves]))  # (P,) epochs or steps
    X = np.full((len(curves), len(grid)), np.nan)  # (runs, P), NaN where a run has no such point
    Y = X.copy()
    for i, (keys, xs, y) in enumerate(curves):
        at = np.searchsorted(grid, keys)
        X[i, at], Y[i, at] = xs, y
    Y[~np.isfinite(Y)] = np.nan
    x = _nanmean(X) if axis == "time" else grid.astype(np.float64)
    return x, _nanmean(Y), np.fmin.reduce(Y, axis=0), np.fmax.reduce(Y, axis=0)


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Column means over the finite entries; NaN (no warning) where a column has none."""
    finite = np.isfinite(a)
    count = finite.sum(axis=0)
    return np.where(count > 0, np.where(finite, a, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def spread(values) -> dict:
    """{'mean', 'std', 'n', 'values'} over the finite values (None and NaN are left out of mean and std);
    std with ddof=1, None below two values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {"mean": float(np.mean(finite)) if finite else None,
            "std": float(np.std(finite, ddof=1)) if len(finite) >= 2 else None,
            "n": len(finite), "values": list(values)}


def group_table(groups: list[Group]) -> list[dict]:
    """One row per group, best first by the monitor's mode: the monitored best value's mean and std
    (`mean`, `std`, `values` per run), the mean best epoch, and the test accuracy's spread when known."""
    rows = []
    for g in groups:
        monitor = g.monitor
        best = [r.best() for r in g.runs]
        epochs = [e for _, e in best]
        known = [e for e in epochs if e is not None]
        tests = [r.summary.get("test_accuracy") for r in g.runs]
        rows.append({"label": g.label, "n": g.n, "params": g.params, "monitor": monitor.describe(),
                     "monitor_metric": monitor.name, "mode": monitor.mode,
                     **{k: v for k, v in spread([v for v, _ in best]).items() if k != "n"},
                     "best_epoch": sum(known) / len(known) if known else None, "best_epochs": epochs,
                     "test_acc": spread(tests) if any(t is not None for t in tests) else None,
                     "runs": [str(r.path) for r in g.runs]})
    return sorted(rows, key=_best_first)


def _best_first(row: dict) -> tuple:
    """Sort key: a 'max' monitor's largest mean first, a 'min' monitor's smallest; no value last."""
    if row["mean"] is None:
        return (True, 0.0)
    return (False, -row["mean"] if row["mode"] == "max" else row["mean"])
