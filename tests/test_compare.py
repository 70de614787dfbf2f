"""cnntrain compare on generated run directories."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.compare import ewma, load_runs
from cnntrain.train import EPOCH_COLUMNS


def make_run(root, name, epochs, optimizer, lr, summary=True, seed=0, val_acc=None, monitor=None, best=None,
             test_accuracy=0.9, seconds=2.0):
    """A run directory: config.yaml, metrics.csv and (with `summary`) a completed summary.json.

    val_acc: per-epoch values (default: rising 0.04 an epoch, then 0.1 lower in the last one). monitor and
    best=(value, epoch) go into config.yaml and summary.json as training writes them.
    """
    run = root / name
    run.mkdir(parents=True)
    config = {"name": "exp", "seed": seed, "optimizer": {"name": optimizer, "lr": lr, "weight_decay": 0.0},
              "train": {"epochs": epochs, "batch_size": 64}}
    if optimizer == "adam":
        config["optimizer"]["betas"] = [0.9, 0.999]
    if monitor is not None:
        config["train"]["monitor"] = monitor
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    if val_acc is None:
        val_acc = [0.5 + 0.04 * e - (0.1 if e == epochs else 0) for e in range(1, epochs + 1)]
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EPOCH_COLUMNS)
        w.writeheader()
        for e in range(1, epochs + 1):
            w.writerow({"epoch": e, "step": 10 * e, "train_loss": 1 / e, "train_acc": 0.5 + 0.05 * e,
                        "val_loss": 1.2 / e, "val_acc": val_acc[e - 1], "lr": lr, "seconds": seconds, "reg_loss": 0})
    if summary:
        s = {"images_per_second": 1000.0, "status": "completed"}
        if test_accuracy is not None:
            s["test_accuracy"] = test_accuracy
        if best is not None:
            s.update(monitor=monitor or "val_acc", best_monitor_value=best[0], best_epoch=best[1])
        (run / "summary.json").write_text(json.dumps(s))
    return run


def test_labels_say_what_differs_and_unequal_lengths_compare(tmp_path):
    group = tmp_path / "group"
    make_run(group, "a-1", 3, "sgd", 0.1)
    make_run(group, "b-2", 5, "adam", 0.001, summary=False)
    runs = load_runs([group])
    assert [r.label for r in runs] == ["optimizer.name=sgd, optimizer.lr=0.1, train.epochs=3",
                                      "optimizer.name=adam, optimizer.lr=0.001, train.epochs=5"]
    result = CliRunner().invoke(cli, ["compare", str(group / "*"), "--out", str(tmp_path / "c.png"), "--json",
                                      "--x", "time", "--smooth", "0.9", "--logy"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["runs"]
    # no train.monitor in these configs: val_acc, best at epoch 2 of the 3-epoch run (0.58), 4 of the 5-epoch run (0.66)
    assert [(r["monitor"], r["best"], r["best_epoch"], r["epochs"]) for r in rows] == [
        ("val_acc", pytest.approx(0.58), 2, 3), ("val_acc", pytest.approx(0.66), 4, 5)]
    assert rows[0]["test_acc"] == 0.9 and rows[1]["test_acc"] is None
    assert rows[0]["train_seconds"] == 6.0 and rows[0]["final_train_loss"] == pytest.approx(1 / 3)
    assert (tmp_path / "c.png").stat().st_size > 10_000
    result = CliRunner().invoke(cli, ["compare", str(group), "--out", str(tmp_path / "t.png")])
    assert result.exit_code == 0 and "optimizer.name=adam" in result.output and "66.00%" in result.output


def test_missing_metric_and_missing_runs_are_clear_errors(tmp_path):
    run = make_run(tmp_path, "a", 2, "sgd", 0.1)
    result = CliRunner().invoke(cli, ["compare", str(run), "--metric", "val_accuracy", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "--metric val_accuracy:" in result.output and "columns: epoch, step" in result.output
    result = CliRunner().invoke(cli, ["compare", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output
    assert not (tmp_path / "x.png").exists()


def test_ewma_with_bias_correction():
    # beta 0.5: v1 = 0.5*2 = 1 -> /0.5 = 2; v2 = 0.5*1 + 0.5*4 = 2.5 -> /0.75 = 3.333...
    np.testing.assert_allclose(ewma(np.array([2.0, 4.0]), 0.5), [2.0, 2.5 / 0.75])
    assert np.isnan(ewma(np.array([np.nan, 1.0]), 0.9)[0]) and ewma(np.array([np.nan, 1.0]), 0.9)[1] == 1.0
