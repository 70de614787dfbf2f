"""Grid runs: expansion of --grid values and a small grid trained on real MNIST."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.errors import ConfigError
from cnntrain.grid import parse_grid
from cnntrain.sweep.spec import SweepSpec, expand_trials


def test_grid_expansion_is_the_cartesian_product_in_order():
    assert parse_grid("optimizer.lr=0.1,1e-2") == ("optimizer.lr", [0.1, 0.01])
    assert parse_grid("model.input_shape=[[1, 28, 28], [1, 28, 28]]")[1] == [[1, 28, 28], [1, 28, 28]]
    axes = dict(parse_grid(g) for g in ["optimizer.name=sgd,adam", "optimizer.lr=0.1,0.01"])
    spec = SweepSpec(grid=axes, sample={}, trials=1, seeds=None, metric=None, mode=None, halving=None)
    assert [t.overrides for t in expand_trials(spec, default_seed=3)] == [
        ["optimizer.name=sgd", "optimizer.lr=0.1", "seed=3"],
        ["optimizer.name=sgd", "optimizer.lr=0.01", "seed=3"],
        ["optimizer.name=adam", "optimizer.lr=0.1", "seed=3"],
        ["optimizer.name=adam", "optimizer.lr=0.01", "seed=3"]]
    with pytest.raises(ConfigError, match="expected KEY.PATH=V1,V2"):
        parse_grid("optimizer.lr")


GRID = """
name: gr
data: {dataset: mnist, download: false, validation: 200, limit_train: 300, limit_val: 200, limit_test: 200}
model:
  layers: [flatten, {dense: {units: 10}}]
optimizer: {name: sgd, lr: 0.1}
train: {epochs: 1, batch_size: 32}
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.slow
def test_grid_trains_every_combination_into_one_group_and_compares(tmp_path, jobs):
    cfg = tmp_path / "gr.yaml"
    cfg.write_text(GRID)
    result = CliRunner().invoke(cli, ["run", str(cfg), "--grid", "optimizer.name=sgd,adam", "--grid",
                                      "optimizer.lr=0.1,0.01", "--runs-dir", str(tmp_path / "runs"), "--jobs", jobs])
    assert result.exit_code == 0, result.output
    (group,) = (tmp_path / "runs").iterdir()
    assert group.name.startswith("gr-grid-")
    runs = [p for p in group.iterdir() if p.is_dir()]
    assert len(runs) == 4 and all((r / "checkpoints" / "best.npz").is_file() for r in runs)
    rows = json.loads((group / "compare.json").read_text())
    assert sorted(r["label"] for r in rows) == sorted(["optimizer.name=sgd, optimizer.lr=0.1",
                                                        "optimizer.name=sgd, optimizer.lr=0.01",
                                                        "optimizer.name=adam, optimizer.lr=0.1",
                                                        "optimizer.name=adam, optimizer.lr=0.01"])
    assert (group / "compare.png").stat().st_size > 10_000
    assert "optimizer.name=adam, optimizer.lr=0.01" in result.output


def test_a_bad_grid_value_fails_before_any_training(tmp_path):
    cfg = tmp_path / "gr.yaml"
    cfg.write_text(GRID)
    result = CliRunner().invoke(cli, ["run", str(cfg), "--grid", "optimizer.name=sgd,adamm",
                                      "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "unknown optimizer 'adamm'" in result.output
    assert not (tmp_path / "runs").exists()
