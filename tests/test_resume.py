"""Never lose a run: exact resume, checkpoints that survive SIGKILL, Ctrl-C/SIGTERM, divergence.

The config fits its preprocessing on the training split and augments every batch, so exact
resume covers both: the fitted map comes from the checkpoint, the augmentation from (seed, epoch, batch).
"""

from __future__ import annotations

import csv
import json
import os
import random
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

CONFIG = """
name: rs
data: {dataset: mnist, download: false, validation: 500, limit_train: 1600, limit_val: 300, limit_test: 300,
       preprocess: [standardize], augment: [{random_crop: {padding: 2}}, {hflip: {p: 0.3}}]}
model:
  layers:
    - conv2d: {filters: 4, kernel_size: 3}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dropout: {rate: 0.3}
    - dense: {units: 10}
optimizer: {name: adam, lr: 0.002}
train: {epochs: 2, batch_size: 16, checkpoint_every: 7}
"""


def write_config(tmp_path, text=CONFIG):
    path = tmp_path / "rs.yaml"
    path.write_text(text)
    return path


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def only_run(runs: Path) -> Path:
    (run_dir,) = runs.iterdir()
    return run_dir


def weights(run_dir: Path, name="last.npz") -> dict:
    return load_checkpoint(run_dir / "checkpoints" / name)[2]


def rows(path: Path, drop=("seconds",)) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(open(path))]


def assert_same_run(a: Path, b: Path):
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    assert rows(a / "metrics.csv") == rows(b / "metrics.csv")
    assert rows(a / "steps.csv") == rows(b / "steps.csv")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The reference: the same config trained without interruption."""
    tmp = tmp_path_factory.mktemp("straight")
    result = invoke("run", write_config(tmp), "--runs-dir", tmp / "runs")
    assert result.exit_code == 0, result.output
    return only_run(tmp / "runs")


@pytest.mark.slow
def test_one_epoch_then_resume_for_the_second_is_bit_identical(tmp_path, straight):
    cfg = write_config(tmp_path)
    result = invoke("run", cfg, "--runs-dir", tmp_path / "runs", "--set", "train.epochs=1")
    assert result.exit_code == 0, result.output
    run_dir = only_run(tmp_path / "runs")
    result = invoke("run", "--resume", run_dir)
    assert result.exit_code == 2 and "already trained 1 of 1 epochs" in result.output
    result = invoke("run", "--resume", run_dir, "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert_same_run(run_dir, straight)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def start(args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "cnntrain", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_steps(path: Path, n: int, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and sum(1 for _ in open(path)) > n:
            return
        time.sleep(0.01)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_signal_saves_a_checkpoint_and_resume_matches(tmp_path, straight, sig, code):
    runs = tmp_path / "runs"
    proc = start(["run", write_config(tmp_path), "--runs-dir", runs], tmp_path)
    wait_for_steps_dir = lambda: next(runs.iterdir(), None) if runs.exists() else None  # noqa: E731
    deadline = time.monotonic() + 60
    while wait_for_steps_dir() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run_dir = wait_for_steps_dir()
    wait_for_steps(run_dir / "steps.csv", 30, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"resume with: cnntrain run --resume {run_dir}" in err
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    _, meta, _ = load_checkpoint(run_dir / "checkpoints" / "last.npz")
    assert 30 <= meta["step"] < 200, "the checkpoint is of the step the signal interrupted"
    result = invoke("run", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert_same_run(run_dir, straight)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_last_npz(tmp_path):
    """Kill the training process 12 times at random instants; every last.npz loads and resuming ends
    exactly where an uninterrupted run ends. (20 kills took 80 s of a 9-minute suite on a busy host.)"""
    rng = random.Random(0)
    runs = tmp_path / "runs"
    # long enough (about 8 s of training) that 12 kills land before it ends, however fast the machine
    cfg = write_config(tmp_path, CONFIG.replace("epochs: 2, batch_size: 16", "epochs: 30, batch_size: 8"))
    kills, loads, budget = 0, 0, time.monotonic() + 120
    run_dir = None
    while kills < 12 and time.monotonic() < budget:
        has_checkpoint = run_dir is not None and (run_dir / "checkpoints" / "last.npz").exists()
        if has_checkpoint:
            args = ["run", "--resume", run_dir]
        else:
            if run_dir is not None:  # killed before its first checkpoint: start over
                for p in sorted(run_dir.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() else p.rmdir()
                run_dir.rmdir()
            args = ["run", cfg, "--runs-dir", runs]
        steps = lambda: sum(1 for _ in open(next(runs.glob("*/steps.csv")))) if any(runs.glob("*/steps.csv")) else 0  # noqa: E731
        before = steps()
        proc = start(args, tmp_path)
        started = time.monotonic()  # the random instant counts from the first step, whatever start-up costs
        while steps() <= before and proc.poll() is None and time.monotonic() < started + 60:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=60)
        run_dir = next(runs.iterdir(), None) if runs.exists() else None
        if run_dir is not None and (run_dir / "checkpoints" / "last.npz").exists():
            load_checkpoint(run_dir / "checkpoints" / "last.npz")  # raises if half-written
            loads += 1
        if run_dir is not None and json.loads((run_dir / "summary.json").read_text()).get("status") == "completed":
            break
    assert kills >= 8 and loads >= 4, f"only {kills} kills landed, {loads} checkpoints loaded"
    result = invoke("run", "--resume", run_dir)
    if result.exit_code == 2:  # the last cycle happened to finish training
        assert "already trained" in result.output
    else:
        assert result.exit_code == 0, result.output
    reference = invoke("run", cfg, "--runs-dir", tmp_path / "straight")
    assert reference.exit_code == 0
    assert_same_run(run_dir, only_run(tmp_path / "straight"))
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "stale temporary files were left"


@pytest.mark.slow
def test_divergence_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path):
    text = CONFIG.replace("optimizer: {name: adam, lr: 0.002}", "optimizer: {name: sgd, lr: 0.01}\n"
                          "schedule: {name: exponential, k: -1, interval: step}")
    # k must be > 0: a config error, not a divergence
    result = invoke("run", write_config(tmp_path, text), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "schedule.k: must be a number in (0, inf)" in result.output
    # linear regression with a far too large step: the outputs grow geometrically to inf after ~40 steps
    text = CONFIG.replace("optimizer: {name: adam, lr: 0.002}", "loss: mse\noptimizer: {name: sgd, lr: 0.5}")
    text = text.split("model:")[0] + "model:\n  layers: [flatten, {dense: {units: 10}}]\n" + text.split("    - dense: {units: 10}\n")[1]
    result = invoke("run", write_config(tmp_path, text), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 1, result.output
    assert "Warning" not in result.output
    assert "training diverged" in result.output and "try a smaller optimizer.lr" in result.output
    assert "epoch" in result.output and "step" in result.output and "lr" in result.output
    run_dir = only_run(tmp_path / "runs")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    _, meta, arrays = load_checkpoint(run_dir / "checkpoints" / "last.npz")
    assert all(np.all(np.isfinite(v)) for k, v in arrays.items() if not k.startswith("optim/t"))
    diverged_at = int(result.output.split("step ")[1].split(",")[0])
    assert meta["step"] < diverged_at


@pytest.mark.slow
def test_early_stopping_and_monitor(tmp_path):
    text = CONFIG.replace("train: {epochs: 2,", "train: {epochs: 30, monitor: val_loss, "
                          "early_stopping: {patience: 1, min_delta: 10.0},")
    result = invoke("run", write_config(tmp_path, text), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    summary = json.loads((only_run(tmp_path / "runs") / "summary.json").read_text())
    # min_delta 10 on a loss near 1: nothing after epoch 1 counts as an improvement
    assert summary["stopped_early"] and summary["epochs"] == 2 and summary["monitor"] == "val_loss"
