"""Grid runs: every combination of --grid values, one run each, in one group directory, then compared.

`cnntrain run --grid` is a sweep with a grid alone (cnntrain.sweep), run by the local executor.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, RunError
from .runs import write_json
from .schema import parse_yaml


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


def run_grid(config, overrides, grids, runs_dir, jobs: int = 1, echo=print) -> Path:
    """Train every combination into runs_dir/<name>-grid-<timestamp>/ (a sweep with a grid only); the group folder."""
    from .sweep.local import LocalExecutor
    from .sweep.main import run_sweep
    from .sweep.spec import SweepSpec

    axes = [parse_grid(g) for g in grids]
    repeated = sorted({key for key, _ in axes if sum(k == key for k, _ in axes) > 1})
    if repeated:
        raise ConfigError(f"--grid {repeated[0]}: given twice; list all its values in one --grid")
    spec = SweepSpec(grid=dict(axes), sample={}, trials=1, seeds=None, metric=None,
                     mode=None, halving=None)
    group, rows = run_sweep(config, overrides, lambda: LocalExecutor(jobs), runs_dir, spec=spec, kind="grid",
                            echo=echo)
    failed = [row for row in rows if row["status"] in ("failed", "diverged")]
    if failed:
        raise RunError(f"{len(failed)} of {len(rows)} grid runs failed; the others are in {group} (see sweep.json)")
    return group


def compare_group(group: Path, over_seeds: bool = False) -> tuple[Path, list[dict]]:
    """The group's compare.png and compare.json (the table as `cnntrain compare` prints it; seeds averaged if asked)."""
    from .compare import compare_runs

    figure, rows = compare_runs([group], out=group / "compare.png", over_seeds=over_seeds)
    write_json(group / "compare.json", rows)
    return figure, rows
