"""Sweeps on this machine: trials in a group folder, halving built on exact resume, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.runs import load_checkpoint

BASE = """
name: sw
data: {dataset: mnist, download: false, validation: 200, limit_train: 400, limit_val: 200, limit_test: 200,
       preprocess: [{normalize: {mean: 0.1307, std: 0.3081}}]}
model:
  layers: [flatten, {dense: {units: 16}}, relu, {dropout: {rate: 0.2}}, {dense: {units: 10}}]
optimizer: {name: sgd, lr: 0.1}
schedule: {name: cosine}
train: {epochs: 1, batch_size: 32}
"""


def write(tmp_path, sweep: str, base: str = BASE, name="sw.yaml") -> Path:
    path = tmp_path / name
    path.write_text(base + sweep)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def group_of(runs: Path) -> Path:
    (group,) = runs.iterdir()
    return group


def sweep_json(group: Path) -> dict:
    return json.loads((group / "sweep.json").read_text())


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.npz")[2]


@pytest.mark.slow
def test_a_local_sweep_samples_seeds_and_averages_them(tmp_path):
    cfg = write(tmp_path, """
sweep:
  sample: {optimizer.lr: {loguniform: [1.0e-3, 0.3]}}
  trials: 2
  sampler_seed: 4
  seeds: [0, 1]
""")
    result = invoke("sweep", cfg, "--jobs", "2", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    group = group_of(tmp_path / "runs")
    assert group.name.startswith("sw-sweep-")
    sweep = sweep_json(group)
    trials = sweep["trials"]
    assert [t["key"] for t in trials] == ["t000", "t001", "t002", "t003"]
    assert [t["seed"] for t in trials] == [0, 1, 0, 1]
    lrs = [t["params"]["optimizer.lr"] for t in trials]
    assert lrs[0] == lrs[1] != lrs[2] == lrs[3] and all(1e-3 <= lr <= 0.3 for lr in lrs)
    for t in trials:
        run = group / t["key"]
        assert t["status"] == "completed" and t["epochs"] == 1 and t["node"] and t["wall_seconds"] > 0
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == t["seed"]
        assert t["metric"] == pytest.approx(summary["best_monitor_value"])  # val_acc, the config's monitor
        config = (run / "config.yaml").read_text()
        assert "sweep" not in config and f"seed: {t['seed']}" in config
    rows = sweep["table"]
    assert [r["n"] for r in rows] == [2, 2] and rows[0]["mean"] >= rows[1]["mean"]
    by_config = {r["config"]: r for r in rows}
    assert by_config[0]["mean"] == pytest.approx(np.mean([trials[0]["metric"], trials[1]["metric"]]))
    assert by_config[0]["std"] == pytest.approx(np.std([trials[0]["metric"], trials[1]["metric"]], ddof=1))
    assert (group / "compare.png").stat().st_size > 10_000
    assert (group / "sensitivity-optimizer.lr.png").stat().st_size > 10_000
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["rank", "optimizer.lr", "val_acc", "n", "epochs", "status"]
    assert "+-" in lines[1] and lines[1].split()[-3:] == ["2", "1", "completed"]


@pytest.mark.slow
def test_halving_promotes_the_best_and_ends_bit_identical_to_a_straight_run(tmp_path):
    cfg = write(tmp_path, """
sweep:
  grid: {optimizer.lr: [0.2, 1.0e-4]}
  halving: {min_epochs: 1, eta: 2}
""", base=BASE.replace("epochs: 1,", "epochs: 3,"))
    result = invoke("sweep", cfg, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    group = group_of(tmp_path / "runs")
    sweep = sweep_json(group)
    assert sweep["rungs"] == [1, 2, 3]
    best, worst = sweep["trials"]
    assert (best["status"], best["epochs"]) == ("completed", 3)
    assert (worst["status"], worst["epochs"]) == ("halted", 1)  # lr 1e-4 learns nothing in one epoch
    assert "resuming" in (group / "t000" / "trial.log").read_text()  # promoted twice, by --resume
    assert json.loads((group / "t001" / "summary.json").read_text())["status"] == "paused"
    straight = invoke("run", cfg, "--set", "optimizer.lr=0.2", "--runs-dir", tmp_path / "straight")
    assert straight.exit_code == 0, straight.output
    a, b = weights(group / "t000"), weights(group_of(tmp_path / "straight"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # Adam state, weights: every bit
    metrics = lambda run: (run / "metrics.csv").read_text().splitlines()  # noqa: E731
    assert [line.split(",")[:5] for line in metrics(group / "t000")] == \
           [line.split(",")[:5] for line in metrics(group_of(tmp_path / "straight"))]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_a_stopped_sweep_resumes_without_rerunning_finished_trials(tmp_path, how):
    cfg = write(tmp_path, """
sweep:
  grid: {optimizer.lr: [0.1, 0.05, 0.02]}
""", base=BASE.replace("limit_train: 400", "limit_train: 3000").replace("epochs: 1,", "epochs: 6,"))
    runs = tmp_path / "runs"
    driver = subprocess.Popen([sys.executable, "-m", "cnntrain", "sweep", str(cfg), "--runs-dir", str(runs)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # stop once t000 is done and t001 has a checkpoint
            if (runs.is_dir() and any(runs.iterdir())
                    and (group_of(runs) / "t001" / "checkpoints" / "last.npz").is_file()):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the sweep never reached its second trial")
        os.kill(driver.pid, getattr(signal, how))
        _, stderr = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    group = group_of(runs)
    before = sweep_json(group)
    if how == "SIGKILL":  # the driver wrote nothing more; its orphaned trial got SIGTERM from the kernel
        assert [t["status"] for t in before["trials"]] == ["completed", "running", "pending"]
        deadline = time.time() + 30
        while json.loads((group / "t001" / "summary.json").read_text())["status"] == "running" and time.time() < deadline:
            time.sleep(0.05)
    else:  # Ctrl-C: every trial asked once to checkpoint, then the driver says how to go on
        assert driver.returncode == 130 and f"resume with: cnntrain sweep --resume {group}" in stderr
        assert [t["status"] for t in before["trials"]] == ["completed", "interrupted", "pending"]
        assert before["status"] == "interrupted"
    assert json.loads((group / "t001" / "summary.json").read_text())["status"] == "interrupted"
    t000_log = (group / "t000" / "trial.log").read_text()

    result = invoke("sweep", "--resume", group)
    assert result.exit_code == 0, result.output
    after = sweep_json(group)
    assert [t["status"] for t in after["trials"]] == ["completed"] * 3 and after["status"] == "completed"
    assert (group / "t000" / "trial.log").read_text() == t000_log  # finished: not run again
    assert "resuming" in (group / "t001" / "trial.log").read_text()
    assert [t["epochs"] for t in after["trials"]] == [6, 6, 6]
    assert "2 of 3 trial(s) left" in result.stderr


def test_sweep_mistakes_are_one_line_errors(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(BASE)
    result = invoke("sweep", plain, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "no sweep: section" in result.output and "Traceback" not in result.output
    bad = write(tmp_path, "sweep: {grid: {optimizer.lr: [0.1]}, sedes: [0, 1]}\n", name="bad.yaml")
    result = invoke("sweep", bad, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "sweep.sedes" in result.output and "seeds" in result.output
    wrong_value = write(tmp_path, "sweep: {grid: {optimizer.name: [sgd, adamm]}}\n", name="wrong.yaml")
    result = invoke("sweep", wrong_value, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "unknown optimizer 'adamm'" in result.output
    assert not (tmp_path / "runs").exists()  # every trial checked before any folder is made
    result = invoke("sweep", "--resume", tmp_path)
    assert result.exit_code == 2 and "not a sweep folder" in result.output
    result = invoke("sweep", bad, "--address", "auto")
    assert result.exit_code == 2 and "--address is for --executor ray" in result.output
