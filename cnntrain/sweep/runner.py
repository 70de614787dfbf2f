"""A sweep from start to finish: trials planned, handed to an executor rung by rung, recorded in sweep.json.

The group folder holds one run directory per trial (t000, t001, ...) and sweep.json, rewritten
atomically after every finished trial, which is all `cnntrain sweep --resume` needs: finished
trials are kept, interrupted ones resume from their checkpoints, the rest start.
"""

from __future__ import annotations

import math
import shutil
import statistics
import time
from pathlib import Path

from ..errors import ConfigError, RunError, RunInterrupted
from ..runs import make_run_dir, read_csv, write_json
from .spec import SweepSpec, expand_trials, objective, parse_sweep, rungs, survivors
from .trial import FINISHED, TrialResult, TrialTask

SWEEP_FILE = "sweep.json"
HALTED = "halted"  # stopped by successive halving after a rung; its run directory stays, paused


def plan_sweep(config, overrides=(), spec: SweepSpec | None = None, kind: str = "sweep", runs_dir="runs") -> Path:
    """Check every trial's experiment, then create the group folder and its sweep.json; returns the folder."""
    from ..build import load_experiment
    from ..config import load_config

    base = load_config(config, overrides)
    if spec is None:
        if base.sweep is None:
            raise ConfigError(f"{config}: no sweep: section (see the README's Sweeps; or cnntrain run --grid)")
        spec = parse_sweep(base.sweep, str(config))
    trials = expand_trials(spec, base.seed)
    texts = []
    for trial in trials:  # every mistake before any training
        cfg = load_experiment(config, list(overrides) + trial.overrides).cfg
        cfg.sweep = None
        texts.append(cfg.to_yaml())
    metric, mode = objective(spec, base.train.monitor)
    group = make_run_dir(runs_dir, f"{base.name}-{kind}")
    (group / "checkpoints").rmdir()
    write_json(group / SWEEP_FILE, {
        "kind": kind, "config": str(config), "overrides": list(overrides), "sweep": base.sweep or {},
        "metric": metric, "mode": mode, "epochs": base.train.epochs,
        "rungs": rungs(spec.halving, base.train.epochs), "eta": spec.halving.eta if spec.halving else None,
        "sampled": {k: {"numeric": d.is_numeric, "log": d.log_scale} for k, d in spec.sample.items()},
        "status": "planned", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "trials": [{"key": t.key, "config": t.config_index, "params": t.params, "seed": t.seed, "status": "pending",
                    "epochs": 0, "metric": None, "best_epoch": None, "node": None, "wall_seconds": 0.0,
                    "error": None, "config_text": text} for t, text in zip(trials, texts)]})
    return group


def load_sweep(group: Path) -> dict:
    import json

    try:
        return json.loads((Path(group) / SWEEP_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{group}: not a sweep folder (cannot read {SWEEP_FILE}: {exc})") from None


def run_planned(group: Path, executor, echo=print) -> dict:
    """Trains the group's trials rung by rung to the end (or what is left of them); returns sweep.json's content."""
    from ..session import stop_on_signals

    group = Path(group)
    sweep = load_sweep(group)
    if sweep["status"] == "completed":  # nothing to train: the results are made again
        return sweep
    sweep["status"] = "running"
    write_json(group / SWEEP_FILE, sweep)
    trials = {t["key"]: t for t in sweep["trials"]}
    echo(executor.describe())
    with stop_on_signals() as stop_requested:
        for i, until in enumerate(sweep["rungs"]):
            todo = [t for t in trials.values() if t["status"] not in (*FINISHED, HALTED)
                    and t["epochs"] < until and not t.get("stopped_early")]
            if len(sweep["rungs"]) > 1:
                echo(f"rung {i + 1}/{len(sweep['rungs'])}: {len(todo)} trial(s) to epoch {until}")
            _run_trials(group, sweep, todo, until, executor, stop_requested, echo)
            if i + 1 < len(sweep["rungs"]):
                _halve(group, sweep, sweep["rungs"][i + 1], echo)
    sweep["status"] = "completed"
    sweep["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(group / SWEEP_FILE, sweep)
    return sweep


def _run_trials(group, sweep, todo, until, executor, stop_requested, echo) -> None:
    pending, total, done = list(todo), len(todo), 0
    while pending or executor.running:
        started = False
        while pending and len(executor.running) < executor.slots and stop_requested() is None:
            trial = pending.pop(0)
            run_dir = group / trial["key"]
            resume = (run_dir / "checkpoints" / "last.npz").is_file()
            if not resume and run_dir.exists():  # killed before its first checkpoint: start it again
                shutil.rmtree(run_dir)
            trial["status"] = "running"
            executor.start(TrialTask(trial["key"], trial["config_text"], run_dir, until, resume))
            echo(f"[{trial['key']}] {'resumed' if resume else 'started'}: {_params(trial)}")
            started = True
        if started:
            write_json(group / SWEEP_FILE, sweep)
        # a short wait, so that Ctrl-C is seen while trials run: every trial is then asked once to stop
        results = executor.shutdown() if stop_requested() is not None else executor.wait(timeout=0.5)
        for result in results:
            done += 1
            _record(group, sweep, result)
            trial = next(t for t in sweep["trials"] if t["key"] == result.key)
            echo(f"[{result.key}] {result.status} ({done}/{total}): {_params(trial)}  "
                 f"{sweep['metric']} {_fmt(trial['metric'])}{'  ' + result.error if result.error else ''}")
        if results:
            write_json(group / SWEEP_FILE, sweep)
        signum = stop_requested()
        if signum is not None and not executor.running:
            sweep["status"] = "interrupted"
            write_json(group / SWEEP_FILE, sweep)
            raise RunInterrupted(f"sweep interrupted; finished trials are kept, the others have checkpoints; "
                                 f"resume with: cnntrain sweep --resume {group}", signum)


def _record(group: Path, sweep: dict, result: TrialResult) -> None:
    """The trial's status, epochs and best metric, from its result and its run directory."""
    import json

    trial = next(t for t in sweep["trials"] if t["key"] == result.key)
    trial.update(status=result.status, node=result.node, error=result.error,
                 wall_seconds=round(trial["wall_seconds"] + result.wall_seconds, 3))
    run_dir = group / result.key
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    trial["stopped_early"] = bool(summary.get("stopped_early"))
    trial["metric"], trial["best_epoch"], trial["epochs"] = best_metric(run_dir, sweep["metric"], sweep["mode"])


def best_metric(run_dir: Path, metric: str, mode: str) -> tuple[float | None, int | None, int]:
    """(best value of `metric` so far, its epoch, epochs trained) from the run's metrics.csv."""
    try:
        columns = read_csv(run_dir / "metrics.csv")
    except (OSError, RunError):
        return None, None, 0
    values = [float(v) for v in columns.get(metric, [])]
    if metric.startswith("val_") and not any(math.isfinite(v) for v in values):  # no validation split
        values = [float(v) for v in columns.get(metric.replace("val_", "train_"), [])]
    epochs = len(columns.get("epoch", []))
    finite = [(v, e) for e, v in enumerate(values, 1) if math.isfinite(v)]
    if not finite:
        return None, None, epochs
    value, epoch = (max if mode == "max" else min)(finite, key=lambda p: p[0])
    return value, epoch, epochs


def _halve(group: Path, sweep: dict, next_rung: int, echo) -> None:
    """Keeps the best 1/eta of the configurations still running (by their seed-averaged metric); halts the rest."""
    open_configs = {t["config"] for t in sweep["trials"] if t["status"] not in (*FINISHED, HALTED)}
    sign = -1 if sweep["mode"] == "max" else 1
    rows = sorted((row for row in aggregate(sweep) if row["config"] in open_configs),
                  key=lambda r: (r["mean"] is None, sign * r["mean"] if r["mean"] is not None else 0))
    keep = survivors(len(rows), sweep["eta"])
    for row in rows[keep:]:
        for trial in sweep["trials"]:
            if trial["config"] == row["config"] and trial["status"] not in FINISHED:
                trial["status"] = HALTED
    write_json(group / SWEEP_FILE, sweep)
    echo(f"halving: {keep} of {len(rows)} configuration(s) continue to epoch {next_rung}")


def aggregate(sweep: dict) -> list[dict]:
    """One row per configuration: its parameters, the metric's mean, std and n over seeds; best first."""
    configs: dict[int, list[dict]] = {}
    for trial in sweep["trials"]:
        configs.setdefault(trial["config"], []).append(trial)
    rows = []
    for index, trials in configs.items():
        values = [t["metric"] for t in trials if t["metric"] is not None and math.isfinite(t["metric"])]
        statuses = {t["status"] for t in trials}
        rows.append({
            "config": index, "params": {k: v for k, v in trials[0]["params"].items() if k != "seed"},
            "mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values),
            "seeds": [t["seed"] for t in trials], "epochs": max(t["epochs"] for t in trials),
            "status": HALTED if HALTED in statuses else "failed" if not values else
            "completed" if statuses == {"completed"} else ",".join(sorted(statuses))})
    sign = -1 if sweep["mode"] == "max" else 1
    rows.sort(key=lambda r: (r["mean"] is None, r["status"] == HALTED, -r["epochs"],
                             sign * r["mean"] if r["mean"] is not None else 0))
    return rows


def _params(trial: dict) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in {**trial["params"], "seed": trial["seed"]}.items())


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
