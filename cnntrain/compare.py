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
from .runs import read_csv

X_AXES = ("epoch", "step", "time")


@dataclass
class Run:
    path: Path
    config: dict
    metrics: dict
    summary: dict
    label: str = ""
    flat: dict = field(default_factory=dict)
    steps: dict = field(default_factory=dict)  # steps.csv: per-step loss and lr, drawn when x is the step

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
            else:
                raise ConfigError(f"{target}: no such run directory")
    if not found:
        raise ConfigError(f"no run directories in {', '.join(map(str, targets))}")
    return list(dict.fromkeys(found))


def load_runs(targets) -> list[Run]:
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
    label_runs(runs)
    return runs


def label_runs(runs: list[Run]) -> None:
    """Label each run by the config keys whose values differ between the runs (not by folder name).

    Only keys every run has count (adam's betas are no difference from sgd, whose name already
    differs), and `*.name` keys come first.
    """
    keys = set.intersection(*(set(r.flat) for r in runs)) - {"name"}
    differ = [k for k in keys if len({json.dumps(r.flat[k], sort_keys=True) for r in runs}) > 1]
    differ.sort(key=lambda k: (not k.endswith(".name"), k))
    for r in runs:
        parts = [f"{k}={_short(r.flat.get(k))}" for k in differ]
        r.label = ", ".join(parts) if parts and len(runs) > 1 else r.path.name
    labels = [r.label for r in runs]
    for r in runs:  # two runs with identical configs (e.g. repeated): tell them apart by folder
        if labels.count(r.label) > 1:
            r.label = f"{r.label} ({r.path.name})"


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
    """One row per run: best val accuracy and its epoch, final train loss, test accuracy, time, speed."""
    rows = []
    for r in runs:
        val = r.metrics.get("val_acc", np.array([np.nan]))
        has_val = np.isfinite(val).any()
        best = int(np.nanargmax(val)) if has_val else None
        s = r.summary
        rows.append({
            "label": r.label, "run_dir": str(r.path),
            "best_val_acc": float(val[best]) if has_val else None,
            "best_epoch": int(r.metrics["epoch"][best]) if has_val else None,
            "final_train_loss": float(r.metrics["train_loss"][-1]),
            "test_acc": s.get("test_accuracy"), "epochs": int(r.metrics["epoch"][-1]),
            "train_seconds": float(np.nansum(r.metrics["seconds"])),
            "images_per_s": s.get("images_per_second"), "status": s.get("status"),
        })
    return rows
