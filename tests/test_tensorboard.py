"""TensorBoard event files (train.tensorboard): read back, they hold exactly the CSV files' values, once per step.

The reader below follows TensorBoard's own rules: a run's event files in name order, and a SessionLog START
after the first one drops every event at a step >= its own (a resumed session restarting at its checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnntrain.callbacks import Checkpointer, PlotCallback
from cnntrain.cli import cli
from cnntrain.compare import flatten
from cnntrain.runs import load_checkpoint, read_csv
from cnntrain.train import TrainState

CONFIG = """
name: tb
data: {dataset: mnist, download: false, validation: 200, limit_train: 300, limit_val: 200, limit_test: 200}
model:
  layers:
    - conv2d: {filters: 4, kernel_size: 3}
    - relu
    - maxpool2d: {size: 2}
    - flatten
    - dense: {units: 10}
optimizer: {name: adam, lr: 0.002}
train: {epochs: 2, batch_size: 32, log_grad_norms: true}
"""


def protos():
    """tensorboardX's protocol buffers; CI installs the extra, so a missing one fails unless CNNTRAIN_SKIP_TENSORBOARD=1."""
    try:
        from tensorboardX.proto import event_pb2, plugin_hparams_pb2
        from tensorboardX.record_writer import masked_crc32c
    except ImportError:
        if os.environ.get("CNNTRAIN_SKIP_TENSORBOARD") == "1":
            pytest.skip("tensorboardX is not installed (CNNTRAIN_SKIP_TENSORBOARD=1)")
        raise
    return event_pb2, plugin_hparams_pb2, masked_crc32c


def read_events(log_dir: Path):
    """({tag: [(step, value), ...]}, {'start': hparams, 'end': status}) as TensorBoard shows them."""
    event_pb2, hparams_pb2, crc = protos()
    scalars, hparams, started = {}, {}, False
    files = sorted(log_dir.glob("events.out.tfevents.*"))
    assert files, f"no event files in {log_dir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            header = data[pos : pos + 8]
            (n,) = struct.unpack("<Q", header)
            if pos + 16 + n > len(data):
                break  # a record cut short by a kill, as TensorBoard skips it
            assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == crc(header), f"{path}: bad length CRC"
            body = data[pos + 12 : pos + 12 + n]
            assert struct.unpack("<I", data[pos + 12 + n : pos + 16 + n])[0] == crc(body), f"{path}: bad data CRC"
            pos += 16 + n
            event = event_pb2.Event.FromString(body)
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                if started:  # a restart: drop what was logged at or after its step
                    scalars = {t: [(s, v) for s, v in points if s < event.step] for t, points in scalars.items()}
                started = True
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.metadata.plugin_data.plugin_name == "hparams":
                    content = hparams_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if content.HasField("session_start_info"):
                        assert "start" not in hparams, "the session start was written twice"
                        hparams["start"] = {k: getattr(v, v.WhichOneof("kind"))
                                            for k, v in content.session_start_info.hparams.items()}
                    if content.HasField("session_end_info"):
                        hparams["end"] = content.session_end_info.status
    return scalars, hparams


def once_per_step(points) -> dict:
    steps = [s for s, _ in points]
    assert len(steps) == len(set(steps)), f"steps logged more than once: {sorted(steps)}"
    return dict(points)


def assert_matches(points, steps, values, what):
    logged = once_per_step(points)
    assert sorted(logged) == [int(s) for s in steps], what
    np.testing.assert_allclose([logged[int(s)] for s in steps], values, rtol=1e-6, atol=1e-12, err_msg=what)


def assert_matches_csv(run_dir: Path):
    """Every step of steps.csv and grad_norms.csv and every finite metrics.csv cell, once, with the same value."""
    scalars, _ = read_events(run_dir / "tensorboard")
    steps = read_csv(run_dir / "steps.csv")
    for column in ("loss", "acc", "lr"):
        assert_matches(scalars[f"train/{column}"], steps["step"], steps[column], f"train/{column}")
    norms = read_csv(run_dir / "grad_norms.csv")
    for column in set(norms) - {"step", "epoch"}:
        layer, _, kind = column.rpartition(".")
        assert_matches(scalars[f"{kind}/{layer}"], norms["step"], norms[column], column)
    metrics = read_csv(run_dir / "metrics.csv")
    for column in set(metrics) - {"step"}:
        finite = np.isfinite(metrics[column])
        assert_matches(scalars.get(f"epoch/{column}", []), metrics["step"][finite], metrics[column][finite], column)
    return scalars


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_config(tmp_path, text=CONFIG) -> Path:
    path = tmp_path / "tb.yaml"
    path.write_text(text)
    return path


def only_run(runs: Path) -> Path:
    (run_dir,) = runs.iterdir()
    return run_dir


@pytest.fixture
def no_figures(monkeypatch):
    """Training in this process skips drawing the run's figures: half the time of these runs, and not tested here."""
    for hook in ("draw", "on_train_end", "on_interrupt"):
        monkeypatch.setattr(PlotCallback, hook, lambda self, state=None: None)


@pytest.mark.slow
def test_event_files_hold_the_csv_values_hparams_and_final_metrics(tmp_path, no_figures):
    protos()
    result = invoke("run", write_config(tmp_path), "--runs-dir", tmp_path / "runs", "--tensorboard")
    assert result.exit_code == 0, result.output
    run_dir = only_run(tmp_path / "runs")
    scalars = assert_matches_csv(run_dir)
    assert len(scalars["train/loss"]) == 20 and {"epoch/val_acc", "epoch/val_loss", "grad_norm/layers.0"} <= set(scalars)
    _, hparams = read_events(run_dir / "tensorboard")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert set(hparams["start"]) == set(flatten(config))
    assert hparams["start"]["optimizer.lr"] == pytest.approx(0.002) and hparams["start"]["train.tensorboard"] is True
    assert json.loads(hparams["start"]["model.layers"]) == config["model"]["layers"]
    assert hparams["start"]["data.limit_train"] == 300 and hparams["start"]["data.root"] == "null"
    assert hparams["end"] == 1  # STATUS_SUCCESS
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "best_monitor_value", "final_val_accuracy"):
        assert once_per_step(scalars[f"hparams/{key}"]) == {20: pytest.approx(summary[key], rel=1e-6)}, key
    assert [p.name for p in (run_dir / "tensorboard").iterdir()] == [p.name for p in (run_dir / "tensorboard").glob("events.*")]


class Killed(BaseException):
    """Stands for SIGKILL: nothing is closed, no hook runs, and the files hold what was flushed."""


@pytest.mark.slow
def test_killed_then_resumed_run_shows_each_step_once(tmp_path, no_figures, monkeypatch):
    """Killed at step 40 with its checkpoint at step 35: after resume TensorBoard shows each step once."""
    protos()
    text = CONFIG.replace("limit_train: 300", "limit_train: 1600").replace(
        "batch_size: 32, log_grad_norms: true", "batch_size: 16, log_grad_norms: true, checkpoint_every: 7")
    save = Checkpointer.on_step_end

    def kill_at_step_40(self, state, logs):
        save(self, state, logs)
        if state.step == 40:
            raise Killed

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(Checkpointer, "on_step_end", kill_at_step_40)
        invoke("run", write_config(tmp_path, text), "--runs-dir", tmp_path / "runs", "--tensorboard")
    run_dir = only_run(tmp_path / "runs")
    assert load_checkpoint(run_dir / "checkpoints" / "last.npz")[1]["step"] == 35
    logged, _ = read_events(run_dir / "tensorboard")
    assert max(once_per_step(logged["train/loss"])) == 40, "events after the checkpoint are on disk"
    result = invoke("run", "--resume", run_dir)
    assert result.exit_code == 0, result.output
    assert len(list((run_dir / "tensorboard").glob("events.*"))) == 2
    scalars = assert_matches_csv(run_dir)
    assert len(scalars["train/loss"]) == 200 and len(scalars["epoch/val_acc"]) == 2
    _, hparams = read_events(run_dir / "tensorboard")
    assert hparams["start"]["train.checkpoint_every"] == 7 and hparams["end"] == 1


def test_a_resumed_session_drops_what_followed_its_checkpoint_and_relogs_its_step(tmp_path):
    """Without training: the first session logged steps 1-6 and epoch 1 (at step 4) and was killed; its
    checkpoint is at step 4 with epoch 1 not yet ended (a SIGTERM during the epoch's last step)."""
    from cnntrain.tensorboard import TensorBoardLogger

    protos()
    config = {"seed": 0, "train": {"epochs": 2}, "model": {"layers": ["flatten", {"dense": {"units": 2}}]}}
    first = TensorBoardLogger(tmp_path, config)
    first.on_train_begin(TrainState(), 4)
    for step in range(1, 7):
        first.on_step_end(None, {"step": step, "epoch": (step - 1) // 4 + 1, "loss": 10.0 + step, "lr": 0.1})
        if step == 4:
            first.on_epoch_end(None, {"epoch": 1, "step": 4, "train_loss": 1.0, "val_loss": math.nan, "val_acc": math.nan})
    (tmp_path / "steps.csv").write_text("step,epoch,loss,lr\n" + "".join(f"{s},1,{10 + s},0.1\n" for s in range(1, 5)))
    resumed = TensorBoardLogger(tmp_path, config)
    resumed.on_train_begin(TrainState(step=4, epoch=0), 4)
    resumed.on_epoch_end(None, {"epoch": 1, "step": 4, "train_loss": 1.5, "val_loss": math.nan, "val_acc": math.nan})
    for step in range(5, 9):
        resumed.on_step_end(None, {"step": step, "epoch": 2, "loss": 20.0 + step, "lr": 0.1})
    resumed.on_epoch_end(None, {"epoch": 2, "step": 8, "train_loss": 2.0, "val_loss": math.nan, "val_acc": math.nan})
    resumed.on_train_end(None)
    resumed.finish({"steps": 8, "test_accuracy": 0.5, "test_loss": None, "best_monitor_value": 0.25})
    scalars, hparams = read_events(tmp_path / "tensorboard")
    assert once_per_step(scalars["train/loss"]) == {1: 11, 2: 12, 3: 13, 4: 14, 5: 25, 6: 26, 7: 27, 8: 28}
    assert once_per_step(scalars["epoch/train_loss"]) == {4: 1.5, 8: 2.0}
    assert once_per_step(scalars["epoch/epoch"]) == {4: 1, 8: 2}
    assert "epoch/val_loss" not in scalars, "NaN (no validation split) is not logged"
    assert once_per_step(scalars["hparams/test_accuracy"]) == {8: 0.5} and "hparams/test_loss" not in scalars
    assert hparams["start"] == {"seed": 0, "train.epochs": 2, "model.layers": '["flatten", {"dense": {"units": 2}}]'}
    assert hparams["end"] == 1


def test_flag_config_key_and_resume(tmp_path):
    cfg = write_config(tmp_path)
    result = invoke("run", cfg, "--tensorboard", "--print-config")
    assert result.exit_code == 0 and "tensorboard: true" in result.output
    result = invoke("run", cfg, "--print-config")
    assert result.exit_code == 0 and "tensorboard: false" in result.output
    result = invoke("run", "--resume", tmp_path, "--tensorboard")
    assert result.exit_code == 2 and "--resume RUN_DIR takes no CONFIG, --name, --print-config or --tensorboard" in result.output


def test_missing_tensorboardx_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
    for args in (["--tensorboard"], ["--set", "train.tensorboard=true"]):
        result = invoke("run", write_config(tmp_path), "--runs-dir", tmp_path / "runs", *args)
        assert result.exit_code == 2, result.output
        assert result.output == "error: train.tensorboard needs: pip install 'cnntrain[tensorboard]'\n"
        assert not (tmp_path / "runs").exists()
