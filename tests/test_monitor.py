"""One monitor: best.npz, early stopping, summary.json, the final line and compare agree on "best"."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.monitor import Monitor
from cnntrain.runs import load_checkpoint
from cnntrain.train import EPOCH_COLUMNS


def test_val_metrics_fall_back_to_their_train_twin_only_without_validation():
    assert Monitor("val_acc").name == "val_acc" and Monitor("val_acc").mode == "max"
    m = Monitor("val_loss", has_validation=False)
    assert (m.name, m.mode, m.fell_back, m.describe()) == ("train_loss", "min", True, "train_loss (no validation split)")
    assert Monitor("train_acc", has_validation=False).fell_back is False
    with pytest.raises(ValueError, match="monitor: expected one of val_acc"):
        Monitor("val_accuracy")


def test_improvement_needs_more_than_min_delta_and_nan_never_improves():
    acc, loss = Monitor("val_acc", min_delta=0.01), Monitor("val_loss", min_delta=0.01)
    assert acc.improved(0.5, None) and acc.improved(0.52, 0.5) and not acc.improved(0.505, 0.5)
    assert loss.improved(0.48, 0.5) and not loss.improved(0.495, 0.5) and not loss.improved(0.6, 0.5)
    assert not acc.improved(math.nan, None) and not acc.improved(math.inf, 0.5)


def test_best_replays_the_history_as_training_saw_it():
    rows = [{"epoch": 1, "val_acc": 0.5, "train_acc": 0.6}, {"epoch": 2, "val_acc": 0.7, "train_acc": 0.8},
            {"epoch": 3, "val_acc": 0.7, "train_acc": 0.9}, {"epoch": 4, "val_acc": math.nan, "train_acc": 0.85}]
    assert Monitor("val_acc").best(rows) == (0.7, 2)  # a tie is no improvement: the first epoch stays best
    assert Monitor("val_acc", has_validation=False).best(rows) == (0.9, 3)
    assert Monitor("val_loss").best([]) == (None, 0)


NO_VALIDATION = """
name: trainonly
seed: 0
data: {dataset: mnist, download: false, validation: 0, limit_train: 600, limit_test: 500}
model:
  layers: [flatten, {dense: {units: 10}}]
optimizer: {name: sgd, lr: 0.005}
train: {epochs: 6, batch_size: 50, early_stopping: {patience: 2}}
"""


@pytest.mark.slow
def test_without_validation_everything_follows_train_acc(tmp_path):
    """data.validation: 0 with the default monitor val_acc: early stopping, best.npz, summary.json, the
    final line and compare all follow train_acc (before, early stopping stopped after `patience` epochs
    of NaN val_acc, and the final line said 'best val accuracy -, best val_acc at epoch 3')."""
    path = tmp_path / "noval.yaml"
    path.write_text(NO_VALIDATION)
    result = CliRunner().invoke(cli, ["run", str(path), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    with open(run_dir / "metrics.csv", newline="") as f:
        train_acc = [float(row["train_acc"]) for row in csv.DictReader(f)]
    # the patience rule replayed by hand on train_acc: stop after 2 epochs without a new maximum
    best, wait, expected_epochs = -1.0, 0, 6
    for epoch, acc in enumerate(train_acc, 1):
        best, wait = (acc, 0) if acc > best else (best, wait + 1)
        if wait >= 2:
            expected_epochs = epoch
            break
    assert len(train_acc) == expected_epochs > 2, f"trained {len(train_acc)} epochs, train_acc {train_acc}"
    best_epoch = max(range(len(train_acc)), key=lambda i: (train_acc[i], -i)) + 1

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["monitor"], summary["monitor_requested"]) == ("train_acc", "val_acc")
    assert summary["best_epoch"] == best_epoch and summary["best_monitor_value"] == pytest.approx(max(train_acc))
    assert summary["best_val_accuracy"] is None
    _, meta, _ = load_checkpoint(run_dir / "checkpoints" / "best.npz")
    assert meta["epoch"] == best_epoch

    final = result.output.strip().splitlines()[-1]
    assert f"best train_acc {100 * max(train_acc):.2f}% at epoch {best_epoch} (no validation split)" in final, final
    assert "val" not in final.split(";")[0].replace("(no validation split)", ""), final

    result = CliRunner().invoke(cli, ["compare", str(run_dir), "--out", str(tmp_path / "c.png"), "--json"])
    (row,) = json.loads(result.output)["runs"]
    assert (row["monitor"], row["best_epoch"]) == ("train_acc (no validation split)", best_epoch)
    assert row["best"] == pytest.approx(max(train_acc))


def make_run(root, name, layers, monitor, val_acc, train_loss, summary=None):
    run = root / name
    run.mkdir(parents=True)
    config = {"name": name, "model": {"layers": layers}, "optimizer": {"name": "adam", "lr": 0.001},
              "train": {"monitor": monitor}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
        w.writeheader()
        for e, (va, tl) in enumerate(zip(val_acc, train_loss), 1):
            w.writerow({"epoch": e, "step": 10 * e, "train_loss": tl, "train_acc": 0.5, "val_loss": 1.0,
                        "val_acc": va, "lr": 0.001, "seconds": 1.0, "reg_loss": 0})
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_compare_shows_the_monitored_best_from_summary_json(tmp_path):
    layers = ["flatten", {"dense": {"units": 10}}]
    # monitors train_loss: best (lowest) at epoch 3, although val_acc peaks at epoch 1
    make_run(tmp_path, "a", layers, "train_loss", [0.9, 0.8, 0.7], [1.0, 0.5, 0.2],
             {"status": "completed", "monitor": "train_loss", "monitor_requested": "train_loss", "val_images": 100,
              "best_monitor_value": 0.2, "best_epoch": 3, "test_accuracy": 0.8})
    # running (no summary yet): replayed from metrics.csv with the config's monitor, val_acc
    make_run(tmp_path, "b", layers, "val_acc", [0.6, 0.9, 0.85], [1.0, 0.9, 0.8])
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "*"), "--out", str(tmp_path / "c.png"), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["run_dir"][-1]: r for r in json.loads(result.output)["runs"]}
    assert (rows["a"]["monitor"], rows["a"]["best"], rows["a"]["best_epoch"]) == ("train_loss", 0.2, 3)
    assert (rows["b"]["monitor"], rows["b"]["best"], rows["b"]["best_epoch"]) == ("val_acc", 0.9, 2)
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "*"), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 0
    line_a = next(line for line in result.output.splitlines() if "train_loss" in line and "0.2000" in line)
    assert line_a.split()[-6] == "3", line_a  # the 'at epoch' column


def test_compare_labels_architectures_by_a_layer_summary_and_by_chosen_keys(tmp_path):
    small = ["flatten", {"dense": {"units": 10}}]
    conv = [{"conv2d": {"filters": 8, "kernel_size": 3}}, "relu", {"maxpool2d": {"size": 2}}, "flatten",
            {"dense": {"units": 64}}, "relu", {"dense": {"units": 10}}]
    make_run(tmp_path, "small", small, "val_acc", [0.5], [1.0])
    make_run(tmp_path, "conv", conv, "val_acc", [0.6], [0.9])
    args = ["compare", str(tmp_path / "*"), "--out", str(tmp_path / "c.png"), "--json"]
    result = CliRunner().invoke(cli, args)
    labels = {r["run_dir"].rsplit("/", 1)[-1]: r["label"] for r in json.loads(result.output)["runs"]}
    assert labels == {"small": "layers=dense10", "conv": "layers=conv2d8 relu maxpool2d dense64 relu dense10"}
    assert "items]" not in result.output
    result = CliRunner().invoke(cli, args + ["--label", "optimizer.lr", "--label", "train.monitor"])
    assert {r["label"] for r in json.loads(result.output)["runs"]} == {
        "optimizer.lr=0.001, train.monitor=val_acc (conv)", "optimizer.lr=0.001, train.monitor=val_acc (small)"}
    result = CliRunner().invoke(cli, args + ["--label", "optimizer.lrr"])
    assert result.exit_code == 2 and "--label optimizer.lrr: " in result.output and "did you mean 'optimizer.lr'" in result.output


def test_runs_differing_in_many_keys_are_labelled_by_name(tmp_path):
    layers = ["flatten", {"dense": {"units": 10}}]
    for name, lr in (("alpha", 0.1), ("beta", 0.2)):
        run = make_run(tmp_path, name, layers, "val_acc", [0.5], [1.0])
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["optimizer"]["lr"] = lr
        config["seed"], config["train"]["epochs"], config["data"] = int(lr * 10), int(lr * 100), {"validation": lr}
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "*"), "--out", str(tmp_path / "c.png"), "--json"])
    assert sorted(r["label"] for r in json.loads(result.output)["runs"]) == ["alpha", "beta"]

