"""What `cnntrain sweep` and `cnntrain run --grid` call: pick an executor, run or resume, write the results."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ConfigError
from ..runs import write_json
from .runner import SWEEP_FILE, aggregate, load_sweep, plan_sweep, run_planned

EXECUTORS = ("local", "ray")


def make_executor(name: str, jobs: int | None = None, cpus_per_trial: int | None = None, address: str | None = None):
    """The executor trials run on; Ray is imported only here, only when asked for.

    jobs: trials at once (local default 1; ray default: as many as the cluster's CPUs hold).
    """
    if name == "local":
        if address is not None:
            raise ConfigError("--address is for --executor ray")
        from .local import LocalExecutor

        return LocalExecutor(jobs or 1, cpus_per_trial)
    if name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(address=address, cpus_per_trial=cpus_per_trial or 1, max_running=jobs)
    raise ConfigError(f"--executor {name}: expected one of {', '.join(EXECUTORS)}")


def run_sweep(config, overrides=(), executor=make_executor, runs_dir="runs", spec=None, kind="sweep", echo=print):
    """Plan and run a sweep of CONFIG into runs_dir/<name>-<kind>-<timestamp>/; returns (group, table rows).

    executor: a function making the executor, called once every trial's experiment has been checked
    (so a typo fails before a Ray cluster is joined).
    """
    from .spec import describe

    group = plan_sweep(config, overrides, spec, kind, runs_dir)
    sweep = load_sweep(group)
    echo(f"{kind} of {len(sweep['trials'])} trial(s) in {group}")
    if spec is not None or kind == "sweep":
        from .spec import parse_sweep

        for line in describe(spec or parse_sweep(sweep["sweep"], str(config)), sweep["epochs"]):
            echo(line)
    return group, _run(group, executor, echo)


def resume_sweep(group, executor=make_executor, echo=print):
    """Continue an interrupted sweep: finished trials stay, interrupted ones resume, the rest start."""
    group = Path(group)
    sweep = load_sweep(group)
    left = sum(t["status"] not in ("completed", "failed", "diverged", "halted") for t in sweep["trials"])
    echo(f"resuming {group}: {left} of {len(sweep['trials'])} trial(s) left")
    return group, _run(group, executor, echo)


def _run(group: Path, make, echo) -> list[dict]:
    executor = make()
    try:
        sweep = run_planned(group, executor, echo)
    finally:
        executor.shutdown()  # nothing left running; a Ray the executor started is stopped
    return _finish(group, sweep, echo)


def _finish(group: Path, sweep: dict, echo) -> list[dict]:
    """compare.png, a sensitivity plot per sampled numeric parameter, and the seed-averaged table in sweep.json."""
    from ..grid import compare_group

    rows = aggregate(sweep)
    sweep["table"] = rows
    write_json(group / SWEEP_FILE, sweep)
    runs = [group / t["key"] for t in sweep["trials"] if (group / t["key"] / "metrics.csv").is_file()]
    if runs:
        figure, _ = compare_group(group, over_seeds=len({t["seed"] for t in sweep["trials"]}) > 1)
        echo(f"figure: {figure}")
    for param, kind in sweep.get("sampled", {}).items():
        if not kind["numeric"]:
            continue
        from .plots import plot_sensitivity

        grid = [k for k in sweep["trials"][0]["params"] if k not in sweep["sampled"]]
        points = [(t["params"][param], t["seed"], t["metric"] if t["metric"] is not None else math.nan,
                   ", ".join(f"{k}={t['params'][k]}" for k in grid))
                  for t in sweep["trials"] if t["status"] in ("completed", "diverged", "failed")]
        if points:
            out = plot_sensitivity(param, points, sweep["metric"], kind["log"], group / f"sensitivity-{param}.png")
            echo(f"figure: {out}")
    return rows


def table_lines(sweep_rows: list[dict], metric: str) -> list[str]:
    """The printed table: one line per configuration, best first, mean +- std over seeds."""
    keys = list(dict.fromkeys(k for row in sweep_rows for k in row["params"]))
    header = ["rank", *keys, metric, "n", "epochs", "status"]
    lines = []
    for i, row in enumerate(sweep_rows, 1):
        value = "-" if row["mean"] is None else _value(metric, row["mean"]) + (
            f" +- {_value(metric, row['std'])}" if row["std"] is not None else "")
        lines.append([str(i), *(_cell(row["params"].get(k)) for k in keys), value, str(row["n"]),
                      str(row["epochs"]), row["status"]])
    widths = [max(len(h), *(len(line[c]) for line in lines)) for c, h in enumerate(header)] if lines else []
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.rjust(w) if i == 0 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [fmt(header)] + [fmt(line) for line in lines]


def _value(metric: str, value: float) -> str:
    return f"{100 * value:.2f}%" if metric.endswith("acc") else f"{value:.4f}"


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
