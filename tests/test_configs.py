"""Every experiment file in configs/ is valid, and the ones on data this machine has train as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cnntrain.cli import cli
from cnntrain.config import load_config
from cnntrain.data import datasets

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_summarizes(path, monkeypatch):
    monkeypatch.chdir(REPO)  # image_folder_example's path is relative to the repository
    assert load_config(path).name == path.stem, "a config's name is its file name, so runs are easy to find"
    result = invoke("summary", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["totals"]["params"] > 0


def test_image_folder_example_learns_the_shapes(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = invoke("run", "configs/image_folder_example.yaml", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"] == ["circle", "square", "triangle"]
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (96, 24, 30)
    assert summary["test_accuracy"] >= 0.8, summary["test_accuracy"]


def test_fashion_mnist_from_the_system_dataset_folder(tmp_path):
    """Real Fashion-MNIST from Debian's dataset-fashion-mnist (installed by .ci/run), one short epoch."""
    folder = datasets.SYSTEM_DATA_DIR / "fashion-mnist"
    assert (folder / "train-images-idx3-ubyte.gz").is_file(), \
        f"{folder} is missing: apt-get install dataset-fashion-mnist (as .ci/run does)"
    result = invoke("run", REPO / "configs" / "fashion_mnist.yaml", "--runs-dir", tmp_path / "runs",
                    "--set", "data.download=false", "--set", "data.limit_train=3000", "--set", "data.limit_val=500",
                    "--set", "data.limit_test=1000", "--set", "train.epochs=2")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["classes"][0] == "T-shirt/top" and summary["test_images"] == 1000
    assert summary["test_accuracy"] > 0.7, summary["test_accuracy"]
    mean = summary["preprocess"]["steps"][0]["mean"][0]
    assert 0.27 < mean < 0.30, f"Fashion-MNIST's pixel mean is about 0.286, fitted {mean}"
