"""Comparing runs: find run directories, label them by what differs, gather their curves and figures."""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .errors import ConfigError, RunError
from .monitor import Monitor
from .registry import did_you_mean
from .runs import read_csv

X_AXES = ("epoch", "step", "time")
MAX_LABEL_KEYS = 3  # runs differing in more config keys than this are labelled by their names


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict
    summary: dict
    label: str = ""
    flat: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)  # steps.csv: per-step loss and lr, drawn when x is the step

    @property
    def monitor(self) -> Monitor:
        """The run's monitor as training used it: from summary.json, else from its config and metrics."""
        s = self.summary
        if "monitor" in s:
            return Monitor(s.get("monitor_requested", s["monitor"]), s.get("val_images", 1) > 0)
        has_val = bool(np.isfinite(self.metrics.get("val_acc", np.array([np.nan]))).any())
        return Monitor(self.flat.get("train.monitor", "val_acc"), has_val)

    def best(self) -> tuple[float | None, int | None]:
        """(best monitored value, its epoch): summary.json's for a finished run, else replayed from metrics.csv."""
        s = self.summary
        if s.get("status") == "completed" and "best_epoch" in s:
            return s.get("best_monitor_value"), s["best_epoch"] or None
        rows = [dict(zip(self.metrics, values)) for values in zip(*self.metrics.values())]
        value, epoch = self.monitor.best(rows)
        return value, epoch or None

    def curve(self, metric: str, axis: str):
        """(x, y) of a metric: per step from steps.csv for train_loss and lr on a step axis, else per epoch."""
        per_step = {"train_loss": "loss", "lr": "lr"}
        if axis == "step" and metric in per_step and self.steps.get(per_step[metric]) is not None:
            return self.steps["step"], self.steps[per_step[metric]]
        return x_values(self, axis), self.metrics[metric]


def flatten(d, prefix="") -> dict:
    """{'optimizer': {'lr': 0.1}} -> {'optimizer.lr': 0.1}; lists (layers) stay whole values."""
    out = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def expand(targets) -> list[Path]:
    """Run directories from paths, globs and group directories (folders whose sub-folders are runs)."""
    found = []
    for target in targets:
        matches = sorted(glob.glob(str(target))) or [str(target)]
        for match in matches:
            path = Path(match)
            if (path / "metrics.csv").is_file() or (path / "config.yaml").is_file():
                found.append(path)
            elif path.is_dir():
                found += sorted(p for p in path.iterdir() if (p / "metrics.csv").is_file())
            elif glob.has_magic(str(target)) and path.exists():
                continue  # a glob over a runs folder also matches its files (compare.png, grid.json)
            else:
                raise ConfigError(f"{target}: no such run directory")
    if not found:
        raise ConfigError(f"no run directories in {', '.join(map(str, targets))}")
    return list(dict.fromkeys(found))


def load_runs(targets, label_keys=()) -> list[Run]:
    runs = []
    for path in expand(targets):
        metrics = read_csv(path / "metrics.csv") if (path / "metrics.csv").is_file() else {}
        if not metrics:
            raise RunError(f"{path}: no epochs in metrics.csv yet: nothing to compare")
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError):
            config = {}
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        steps = read_csv(path / "steps.csv") if (path / "steps.csv").is_file() else {}
        runs.append(Run(path, config, metrics, summary, flat=flatten(config), steps=steps))
    label_runs(runs, label_keys)
    return runs


def require(runs: list[Run], option: str, key: str) -> None:
    """ConfigError unless every run has `key`: a metrics.csv column for --metric, a config key path for --label."""
    for r in runs:
        if option == "--metric":
            where, keys, listing = "metrics.csv has no such column", list(r.metrics), f" (columns: {', '.join(r.metrics)})"
        else:
            where, keys, listing = "config.yaml has no such key", list(r.flat), ""
        if key not in keys:
            raise ConfigError(f"{option} {key}: {r.path}/{where}{did_you_mean(key, keys)}{listing}")


def label_runs(runs: list[Run], keys=()) -> None:
    """Set each run's label: by `keys` (config key paths) or by the config keys whose values differ."""
    for r, label in zip(runs, make_labels(runs, keys)):
        r.label = label


def make_labels(runs: list[Run], keys=(), ignore=("name",)) -> list[str]:
    """A label per run from `keys`, else from the config keys (but `ignore`) whose values differ between the runs.

    Only keys every run has count (adam's betas are no difference from sgd, whose name already
    differs), and `*.name` keys come first. Differing architectures are named by a short layer
    summary; other long lists by the run's name.
    """
    for key in keys:
        require(runs, "--label", key)
    differ = list(keys) or differing_keys(runs, ignore)
    labels = []
    for r in runs:
        parts = [label_part(k, r) for k in differ]
        if len(parts) > MAX_LABEL_KEYS and not keys:  # too many differences to read: the run's own name
            parts = [str(r.config.get("name") or r.path.name)]
        labels.append(", ".join(parts) if parts and (len(runs) > 1 or keys) else r.path.name)
    # two runs with identical configs (e.g. repeated): tell them apart by folder
    return [f"{label} ({r.path.name})" if labels.count(label) > 1 else label for r, label in zip(runs, labels)]


def differing_keys(runs: list[Run], ignore=("name",)) -> list[str]:
    """Config key paths every run has, but `ignore`, whose values differ between the runs; `*.name` keys first."""
    common = set.intersection(*(set(r.flat) for r in runs)) - set(ignore)
    differ = [k for k in common if len({json.dumps(r.flat[k], sort_keys=True) for r in runs}) > 1]
    return sorted(differ, key=lambda k: (not k.endswith(".name"), k))


def label_part(key: str, run: Run) -> str:
    value = run.flat.get(key)
    if key == "model.layers" and isinstance(value, list):
        return f"layers={layer_summary(value)}"
    if isinstance(value, list) and len(json.dumps(value)) > 30:
        return f"name={run.config.get('name') or run.path.name}"
    return f"{key}={_short(value)}"


def layer_summary(layers: list) -> str:
    """[conv2d: {filters: 8}, relu, maxpool2d, flatten, dense: {units: 10}] -> 'conv2d8 relu maxpool2d dense10'."""
    words = []
    for entry in layers:
        name, options = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
        if name == "flatten":
            continue
        size = (options or {}).get("filters", (options or {}).get("units", ""))
        words.append(f"{name}{size}")
    return " ".join(words)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list) and len(json.dumps(value)) > 30:
        return f"[{len(value)} items]"
    return json.dumps(value) if not isinstance(value, str) else value


def ewma(values: np.ndarray, beta: float) -> np.ndarray:
    """v_t = beta v_(t-1) + (1 - beta) x_t from v_0 = 0, divided by (1 - beta^t) (bias correction);
    beta 0.9 averages about the last 10 values. NaN entries are skipped."""
    out = np.full(len(values), np.nan)
    v, t = 0.0, 0
    for i, x in enumerate(values):
        if math.isfinite(x):
            t += 1
            v = beta * v + (1 - beta) * x
            out[i] = v / (1 - beta**t)
    return out


def x_values(run: Run, axis: str) -> np.ndarray:
    if axis == "epoch":
        return run.metrics["epoch"]
    if axis == "step":
        return run.metrics["step"]
    return np.cumsum(run.metrics["seconds"])


def table(runs: list[Run]) -> list[dict]:
    """One row per run: the monitored metric's best value and epoch, final train loss, test accuracy, time, speed."""
    rows = []
    for r in runs:
        s = r.summary
        best, epoch = r.best()
        rows.append({
            "label": r.label, "run_dir": str(r.path), "monitor": r.monitor.describe(), "monitor_metric": r.monitor.name,
            "best": best, "best_epoch": epoch,
            "final_train_loss": float(r.metrics["train_loss"][-1]),
            "test_acc": s.get("test_accuracy"), "epochs": int(r.metrics["epoch"][-1]),
            "train_seconds": float(np.nansum(r.metrics["seconds"])),
            "images_per_s": s.get("images_per_second"), "status": s.get("status"),
        })
    return rows


def compare_runs(targets, metrics=(), x="epoch", smooth=None, logy=False, out="compare.png", label_keys=(),
                 group_by=(), over_seeds=False) -> tuple[Path, list[dict]]:
    """`cnntrain compare`: load the runs, draw the figure to `out`, return (figure path, table rows).

    With `group_by` keys or `over_seeds` the runs are grouped (groups.group_runs): a mean curve with
    its min-max band and a table row per group instead of per run.
    """
    from .groups import group_runs, group_table
    from .plots import DEFAULT_PANELS, plot_compare

    runs = load_runs(targets, label_keys)
    for metric in metrics:
        require(runs, "--metric", metric)
    panels = [(m, (m,)) for m in metrics] or DEFAULT_PANELS
    groups = group_runs(runs, group_by, over_seeds, label_keys) if group_by or over_seeds else None
    figure = plot_compare(runs, panels, x, smooth, logy, out, groups)
    return figure, table(runs) if groups is None else group_table(groups)
