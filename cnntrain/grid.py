"""Grid runs: every combination of --grid values, one run each, in one group directory, then compared."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

from .build import load_experiment
from .schema import parse_yaml
from .errors import ConfigError, RunError
from .runs import make_run_dir, write_json


def parse_grid(spec: str) -> tuple[str, list]:
    """'optimizer.lr=0.1,0.01' or 'optimizer.lr=[0.1, 0.01]' -> ('optimizer.lr', [0.1, 0.01])."""
    key, sep, text = spec.partition("=")
    if not sep or not key.strip() or not text.strip():
        raise ConfigError(f"--grid {spec}: expected KEY.PATH=V1,V2,...")
    values = parse_yaml(text, f"--grid {spec}") if text.strip().startswith("[") else [
        parse_yaml(part, f"--grid {spec}") for part in text.split(",")]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"--grid {spec}: expected a list of values")
    return key.strip(), values


def expand(grids) -> list[list[str]]:
    """The --set overrides of every combination, first --grid varying slowest."""
    axes = [parse_grid(spec) for spec in grids]
    return [[f"{key}={_yaml(v)}" for (key, _), v in zip(axes, combo)]
            for combo in itertools.product(*(values for _, values in axes))]


def _yaml(value) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


def run_grid(config: str, overrides, grids, runs_dir, jobs: int = 1, echo=print) -> Path:
    """Train every combination into runs_dir/<name>-grid-<timestamp>/; returns the group directory."""
    combos = expand(grids)
    experiments = [load_experiment(config, list(overrides) + combo) for combo in combos]  # every mistake before any run
    group = make_run_dir(runs_dir, f"{experiments[0].cfg.name}-grid")
    (group / "checkpoints").rmdir()
    write_json(group / "grid.json", {"config": str(config), "overrides": list(overrides), "grid": list(grids),
                                     "runs": [" ".join(c) for c in combos]})
    echo(f"grid of {len(combos)} runs in {group}")
    if jobs <= 1:
        from .session import train_from_config

        for i, (exp, combo) in enumerate(zip(experiments, combos), 1):
            echo(f"[{i}/{len(combos)}] {' '.join(combo)}")
            train_from_config(exp, group, echo=echo)
        return group
    threads = str(max(1, (os.cpu_count() or 1) // jobs))  # BLAS threads per process, so jobs share the cores
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending = list(enumerate(combos, 1))
    running, failed = [], []
    while pending or running:
        while pending and len(running) < jobs:
            i, combo = pending.pop(0)
            args = [sys.executable, "-m", "cnntrain", "run", str(config), "--runs-dir", str(group)]
            args += [f"--set={o}" for o in list(overrides) + combo]
            echo(f"[{i}/{len(combos)}] started: {' '.join(combo)}")
            running.append((i, combo, subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.PIPE, text=True)))
        time.sleep(0.2)
        for item in list(running):
            i, combo, proc = item
            if proc.poll() is not None:
                running.remove(item)
                err = proc.stderr.read().strip().splitlines()
                status = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode}): {err[-1] if err else ''}"
                echo(f"[{i}/{len(combos)}] {status}: {' '.join(combo)}")
                if proc.returncode != 0:
                    failed.append(" ".join(combo))
    if failed:
        raise RunError(f"{len(failed)} of {len(combos)} grid runs failed ({'; '.join(failed)}); the others are in {group}")
    return group


def compare_group(group: Path) -> tuple[Path, list[dict]]:
    """The group's compare.png and compare.json (the table as `cnntrain compare` prints it)."""
    from .compare import load_runs, table
    from .plots import DEFAULT_PANELS, plot_compare

    runs = load_runs([group])
    figure = plot_compare(runs, DEFAULT_PANELS, "epoch", None, False, group / "compare.png")
    rows = table(runs)
    write_json(group / "compare.json", rows)
    return figure, rows
